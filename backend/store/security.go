package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"
)

// ErrIdentityTaken is returned by PutSecurity when the PSK identity is bound
// to another endpoint.
var ErrIdentityTaken = errors.New("psk identity already bound to another endpoint")

// ErrInvalidSecurity wraps every error of SecurityInfo.Validate.
var ErrInvalidSecurity = errors.New("invalid security info")

// Limits of SecurityInfo fields. RFC 4279 section 5.3 asks implementations to
// support identities up to 128 bytes and keys up to 64 bytes; identities may
// be as long as an endpoint name, since devices often use it as identity.
const (
	MaxEndpointLength    = 255
	MaxPSKIdentityLength = 255
	MaxPSKKeyLength      = 64
)

// SecurityInfo binds an endpoint to its DTLS-PSK credentials.
//
// Its input JSON form is {"ep","pskIdentity","pskKey"} with the key in hex
// (UnmarshalJSON). Nothing prints the key: String, GoString, LogValue and
// MarshalJSON show a fingerprint instead (MarshalJSON gives the
// SecuritySummary shape), so printing, logging or encoding a SecurityInfo,
// or a slice of them, never reveals it. Code that must write the key out
// does so explicitly, with hex.EncodeToString(s.Key).
type SecurityInfo struct {
	Endpoint string
	Identity string
	Key      []byte
}

type securityJSON struct {
	Endpoint string `json:"ep"`
	Identity string `json:"pskIdentity"`
	Key      string `json:"pskKey"`
}

// MarshalJSON encodes s without its key, as s.Summary().
func (s SecurityInfo) MarshalJSON() ([]byte, error) {
	return json.Marshal(s.Summary())
}

// UnmarshalJSON decodes {"ep","pskIdentity","pskKey"} with the key in hex.
func (s *SecurityInfo) UnmarshalJSON(b []byte) error {
	var j securityJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	key, err := hex.DecodeString(j.Key)
	if err != nil {
		return errors.New("pskKey: not a hex string")
	}
	*s = SecurityInfo{Endpoint: j.Endpoint, Identity: j.Identity, Key: key}
	return nil
}

// KeyFingerprint identifies the key without revealing it: "sha256:" and the
// first 4 hex digits of its SHA-256, or "(none)" when there is no key.
func (s SecurityInfo) KeyFingerprint() string {
	if len(s.Key) == 0 {
		return "(none)"
	}
	h := sha256.Sum256(s.Key)
	return "sha256:" + hex.EncodeToString(h[:2])
}

// String implements fmt.Stringer without the key.
func (s SecurityInfo) String() string {
	return fmt.Sprintf("{ep=%q identity=%q key=%s}", s.Endpoint, s.Identity, s.KeyFingerprint())
}

// GoString implements fmt.GoStringer (%#v) without the key.
func (s SecurityInfo) GoString() string { return "store.SecurityInfo" + s.String() }

// LogValue implements slog.LogValuer without the key.
func (s SecurityInfo) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("ep", s.Endpoint),
		slog.String("pskIdentity", s.Identity),
		slog.String("pskKey", s.KeyFingerprint()),
	)
}

// Summary returns what may be shown of s: everything but the key.
func (s SecurityInfo) Summary() SecuritySummary {
	return SecuritySummary{Endpoint: s.Endpoint, Identity: s.Identity, KeyFingerprint: s.KeyFingerprint()}
}

// SecuritySummary is a SecurityInfo without its key, for listings.
type SecuritySummary struct {
	Endpoint       string `json:"ep"`
	Identity       string `json:"pskIdentity"`
	KeyFingerprint string `json:"pskKeyFingerprint"`
}

// Validate checks s: a non-empty endpoint, identity and key, each within its
// limit, and endpoint and identity valid UTF-8 without control characters.
// Its errors wrap ErrInvalidSecurity and never contain the key.
func (s SecurityInfo) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSecurity, fmt.Sprintf(format, a...))
	}
	switch {
	case s.Endpoint == "":
		return bad("empty endpoint name")
	case len(s.Endpoint) > MaxEndpointLength:
		return bad("endpoint name longer than %d bytes", MaxEndpointLength)
	case !printable(s.Endpoint):
		return bad("endpoint name is not printable UTF-8")
	case s.Identity == "":
		return bad("empty PSK identity")
	case len(s.Identity) > MaxPSKIdentityLength:
		return bad("PSK identity longer than %d bytes", MaxPSKIdentityLength)
	case !printable(s.Identity):
		return bad("PSK identity is not printable UTF-8")
	case len(s.Key) == 0:
		return bad("empty PSK key")
	case len(s.Key) > MaxPSKKeyLength:
		return bad("PSK key longer than %d bytes", MaxPSKKeyLength)
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Security stores the DTLS-PSK credentials of endpoints, indexed by endpoint
// and by PSK identity. Identities are unique across endpoints.
type Security interface {
	// PutSecurity stores s (which must pass Validate), replacing the
	// endpoint's previous credentials; its previous identity no longer
	// resolves. It returns ErrIdentityTaken when s.Identity belongs to
	// another endpoint; of concurrent puts binding one identity to
	// different endpoints exactly one succeeds.
	PutSecurity(ctx context.Context, s SecurityInfo) error
	// SecurityByEndpoint returns ep's credentials, or ErrNotFound.
	SecurityByEndpoint(ctx context.Context, ep string) (SecurityInfo, error)
	// SecurityByIdentity returns the credentials with the given PSK
	// identity, or ErrNotFound.
	SecurityByIdentity(ctx context.Context, identity string) (SecurityInfo, error)
	// RemoveSecurity deletes ep's credentials, or returns ErrNotFound.
	RemoveSecurity(ctx context.Context, ep string) error
	// ListSecurity returns every entry, sorted by endpoint.
	ListSecurity(ctx context.Context) ([]SecurityInfo, error)
}

// ErrNodeIDTaken is returned by ClaimNodeID when another instance holds the id.
var ErrNodeIDTaken = errors.New("node id held by another instance")

// ErrNoNodeID is returned by AllocateNodeID when all 65535 ids are held.
var ErrNoNodeID = errors.New("no free node id")

// NodeIDs hands out the 16-bit node ids that prefix DTLS Connection IDs.
// An id, once bound to an instance, stays bound to it (also across
// restarts) until another ClaimNodeID by the same instance moves it.
type NodeIDs interface {
	// AllocateNodeID returns instance's node id: the one it had before if
	// any, else the lowest free id in 1..65535, atomically (two instances
	// starting at once never get the same id). ErrNoNodeID when none is
	// free.
	AllocateNodeID(ctx context.Context, instance string) (uint16, error)
	// ClaimNodeID binds a fixed id (from a flag) to instance, releasing any
	// other id the instance had. It returns an error wrapping
	// ErrNodeIDTaken if another instance holds id. Id 0 is invalid.
	ClaimNodeID(ctx context.Context, instance string, id uint16) error
}

// DTLSSessions keeps DTLS session resumption state shared by the cluster.
// Session ids are opaque bytes; data is stored as given.
type DTLSSessions interface {
	// PutDTLSSession stores data under id for ttl (which must be positive),
	// replacing what was there.
	PutDTLSSession(ctx context.Context, id []byte, data []byte, ttl time.Duration) error
	// GetDTLSSession returns the data stored under id, or ErrNotFound
	// (also once its ttl has passed).
	GetDTLSSession(ctx context.Context, id []byte) ([]byte, error)
	// DeleteDTLSSession removes id; removing a missing id is not an error.
	DeleteDTLSSession(ctx context.Context, id []byte) error
}

// CheckDTLSSession validates PutDTLSSession's arguments.
func CheckDTLSSession(id []byte, ttl time.Duration) error {
	if len(id) == 0 {
		return errors.New("empty DTLS session id")
	}
	if ttl <= 0 {
		return fmt.Errorf("DTLS session ttl %v: must be positive", ttl)
	}
	return nil
}
