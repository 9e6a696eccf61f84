// Package registration holds the LwM2M registration model: what a device
// tells the server in Register and Update (OMA LwM2M 1.1 transport, 1.0
// accepted), how the query and payload are validated, and the JSON shape the
// northbound API publishes (the Leshan cluster wiki's shape, field for field).
package registration

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/linkformat"
)

// Defaults of the LwM2M specification.
const (
	DefaultLifetime = 86400 // seconds
	DefaultVersion  = "1.0"
	DefaultBinding  = "U"
	// MaxLifetime bounds lt so that expiry arithmetic cannot overflow.
	MaxLifetime = 10 * 365 * 24 * 3600
	// MaxEndpointLength bounds endpoint names.
	MaxEndpointLength = 255
)

// SupportedVersions lists the LwM2M enabler versions a device may register with.
var supportedVersions = map[string]bool{"1.0": true, "1.1": true, "1.2": true}

// Errors of query and payload validation. ErrUnsupportedVersion maps to
// CoAP 4.12 Precondition Failed, the others to 4.00 Bad Request.
var (
	ErrBadRequest         = errors.New("bad request")
	ErrUnsupportedVersion = errors.New("unsupported LwM2M version")
)

// Registration is one device's registration, as stored and as published on
// LESHAN_REG_NEW / LESHAN_REG_DEL (field names of the seed).
type Registration struct {
	RegDate  int64             `json:"regDate"` // ms since the epoch
	Address  string            `json:"address"` // device's IP
	Port     uint16            `json:"port"`    // device's UDP port
	RegAddr  string            `json:"regAddr"` // server address the Register came in on
	RegPort  uint16            `json:"regPort"`
	Lifetime uint32            `json:"lt"`
	Version  string            `json:"ver"`
	Binding  string            `json:"bnd"`
	SMS      string            `json:"sms,omitempty"`
	Queue    bool              `json:"queueMode,omitempty"`
	Endpoint string            `json:"ep"`
	ID       string            `json:"regId"`
	ObjLinks []linkformat.Link `json:"objLink"`
	AddAttr  map[string]string `json:"addAttr"`
	Root     string            `json:"root"`
	LastUp   int64             `json:"lastUp"` // ms since the epoch
	// Secure is true when the device registered over DTLS.
	Secure bool `json:"secure,omitempty"`
	// Instance is the id of the instance that owns the device (handled its
	// latest uplink). It is filled in when the registration is published.
	Instance string `json:"instance,omitempty"`
}

// Update is what a device changes with an Update request, published as
// "regUpdate" on LESHAN_REG_UP. Absent fields are unchanged.
type Update struct {
	ID       string            `json:"regId"`
	Address  string            `json:"address"`
	Port     uint16            `json:"port"`
	Lifetime *uint32           `json:"lt,omitempty"`
	Binding  string            `json:"bnd,omitempty"`
	SMS      *string           `json:"sms,omitempty"`
	ObjLinks []linkformat.Link `json:"objLink,omitempty"`
	AddAttr  map[string]string `json:"addAttr,omitempty"`
}

// UpdateEvent is the LESHAN_REG_UP payload.
type UpdateEvent struct {
	Update  Update       `json:"regUpdate"`
	Updated Registration `json:"regUpdated"`
}

// AddrPort returns the device's address as a netip.AddrPort.
func (r *Registration) AddrPort() netip.AddrPort {
	a, err := netip.ParseAddr(r.Address)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, r.Port)
}

// ExpiresAt is the time the registration expires, lifetime after the last
// update plus grace.
func (r *Registration) ExpiresAt(grace time.Duration) time.Time {
	return time.UnixMilli(r.LastUp).Add(time.Duration(r.Lifetime)*time.Second + grace)
}

// Clone returns a deep copy.
func (r *Registration) Clone() *Registration {
	c := *r
	c.ObjLinks = cloneLinks(r.ObjLinks)
	c.AddAttr = cloneMap(r.AddAttr)
	return &c
}

// Apply applies an update to the registration (which must be the one named
// by u.ID) at time now.
func (r *Registration) Apply(u *Update, now time.Time) {
	r.Address, r.Port = u.Address, u.Port
	if u.Lifetime != nil {
		r.Lifetime = *u.Lifetime
	}
	if u.Binding != "" {
		r.Binding = u.Binding
		// LwM2M 1.0 expresses queue mode in the binding.
		r.Queue = strings.Contains(u.Binding, "Q") || (r.Queue && r.Version != "1.0")
	}
	if u.SMS != nil {
		r.SMS = *u.SMS
	}
	if u.ObjLinks != nil {
		r.ObjLinks = cloneLinks(u.ObjLinks)
	}
	for k, v := range u.AddAttr {
		if r.AddAttr == nil {
			r.AddAttr = map[string]string{}
		}
		r.AddAttr[k] = v
	}
	r.LastUp = now.UnixMilli()
}

func cloneLinks(ls []linkformat.Link) []linkformat.Link {
	if ls == nil {
		return nil
	}
	out := make([]linkformat.Link, len(ls))
	for i, l := range ls {
		out[i] = linkformat.Link{URL: l.URL, Attrs: cloneMap(l.Attrs)}
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// RegisterParams are the parsed query parameters of a Register request.
type RegisterParams struct {
	Endpoint string
	Lifetime uint32
	Version  string
	Binding  string
	SMS      string
	Queue    bool
	AddAttr  map[string]string
}

// UpdateParams are the parsed query parameters of an Update request.
type UpdateParams struct {
	Lifetime *uint32
	Binding  string
	SMS      *string
	AddAttr  map[string]string
}

// ParseRegisterQuery parses the Uri-Query options of a Register request
// (each "name=value" or "name"). Unknown parameters become additional
// attributes.
func ParseRegisterQuery(queries []string) (RegisterParams, error) {
	p := RegisterParams{Lifetime: DefaultLifetime, Version: DefaultVersion, Binding: DefaultBinding}
	seen := map[string]bool{}
	for _, q := range queries {
		name, value, hasValue := strings.Cut(q, "=")
		if name == "" {
			return p, fmt.Errorf("%w: empty query parameter name", ErrBadRequest)
		}
		if seen[name] {
			return p, fmt.Errorf("%w: duplicate query parameter %q", ErrBadRequest, name)
		}
		seen[name] = true
		var err error
		switch name {
		case "ep":
			if value == "" || len(value) > MaxEndpointLength || !validText(value) {
				return p, fmt.Errorf("%w: invalid endpoint name", ErrBadRequest)
			}
			p.Endpoint = value
		case "lt":
			if p.Lifetime, err = parseLifetime(value); err != nil {
				return p, err
			}
		case "lwm2m":
			if !supportedVersions[value] {
				return p, fmt.Errorf("%w: %q", ErrUnsupportedVersion, value)
			}
			p.Version = value
		case "b":
			if p.Binding, err = parseBinding(value); err != nil {
				return p, err
			}
		case "sms":
			if !validText(value) {
				return p, fmt.Errorf("%w: invalid sms number", ErrBadRequest)
			}
			p.SMS = value
		case "Q":
			if hasValue {
				return p, fmt.Errorf("%w: Q takes no value", ErrBadRequest)
			}
			p.Queue = true
		default:
			if !validText(name) || !validText(value) {
				return p, fmt.Errorf("%w: invalid query parameter", ErrBadRequest)
			}
			if p.AddAttr == nil {
				p.AddAttr = map[string]string{}
			}
			p.AddAttr[name] = value
		}
	}
	if p.Endpoint == "" {
		return p, fmt.Errorf("%w: missing endpoint name (ep)", ErrBadRequest)
	}
	// LwM2M 1.0 expresses queue mode in the binding ("UQ"); 1.1 with Q.
	if strings.Contains(p.Binding, "Q") {
		p.Queue = true
	}
	return p, nil
}

// ParseUpdateQuery parses the Uri-Query options of an Update request.
func ParseUpdateQuery(queries []string) (UpdateParams, error) {
	var p UpdateParams
	seen := map[string]bool{}
	for _, q := range queries {
		name, value, _ := strings.Cut(q, "=")
		if name == "" {
			return p, fmt.Errorf("%w: empty query parameter name", ErrBadRequest)
		}
		if seen[name] {
			return p, fmt.Errorf("%w: duplicate query parameter %q", ErrBadRequest, name)
		}
		seen[name] = true
		switch name {
		case "lt":
			lt, err := parseLifetime(value)
			if err != nil {
				return p, err
			}
			p.Lifetime = &lt
		case "b":
			b, err := parseBinding(value)
			if err != nil {
				return p, err
			}
			p.Binding = b
		case "sms":
			if !validText(value) {
				return p, fmt.Errorf("%w: invalid sms number", ErrBadRequest)
			}
			s := value
			p.SMS = &s
		case "ep", "lwm2m":
			return p, fmt.Errorf("%w: %s cannot change in an update", ErrBadRequest, name)
		default:
			if !validText(name) || !validText(value) {
				return p, fmt.Errorf("%w: invalid query parameter", ErrBadRequest)
			}
			if p.AddAttr == nil {
				p.AddAttr = map[string]string{}
			}
			p.AddAttr[name] = value
		}
	}
	return p, nil
}

func parseLifetime(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 || n > MaxLifetime {
		return 0, fmt.Errorf("%w: invalid lifetime %q", ErrBadRequest, v)
	}
	return uint32(n), nil
}

// parseBinding accepts the binding modes of LwM2M 1.0 (U, UQ, S, SQ, US,
// UQS) and 1.1 (any of U, M, H, T, S, N, plus the 1.0 Q).
func parseBinding(v string) (string, error) {
	if v == "" || len(v) > 8 {
		return "", fmt.Errorf("%w: invalid binding %q", ErrBadRequest, v)
	}
	seen := map[rune]bool{}
	for _, c := range v {
		if !strings.ContainsRune("UMHTSNQ", c) || seen[c] {
			return "", fmt.Errorf("%w: invalid binding %q", ErrBadRequest, v)
		}
		seen[c] = true
	}
	return v, nil
}

// validText rejects control characters and invalid UTF-8.
func validText(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == 0xfffd {
			return false
		}
	}
	return true
}

// ObjectLinks validates the link-format payload of a Register or Update and
// returns the links and the LwM2M root path: the URL of a link with
// rt="oma.lwm2m" (alternate path), "/" when there is none. Every other link
// must be /objectID or /objectID/instanceID under the root.
func ObjectLinks(payload []byte) ([]linkformat.Link, string, error) {
	return ObjectLinksUnder(payload, "/")
}

// ObjectLinksUnder is ObjectLinks for a device whose root path is already
// known (an Update): links are checked under root unless the payload names
// another one.
func ObjectLinksUnder(payload []byte, root string) ([]linkformat.Link, string, error) {
	links, err := linkformat.Parse(string(payload))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if root == "" {
		root = "/"
	}
	if !strings.HasSuffix(root, "/") {
		root += "/"
	}
	for _, l := range links {
		if l.Attrs["rt"] == "oma.lwm2m" {
			root = l.URL
			if !strings.HasPrefix(root, "/") {
				return nil, "", fmt.Errorf("%w: alternate path %q must start with /", ErrBadRequest, root)
			}
			if !strings.HasSuffix(root, "/") {
				root += "/"
			}
		}
	}
	for _, l := range links {
		if l.Attrs["rt"] == "oma.lwm2m" {
			continue
		}
		rest, ok := strings.CutPrefix(l.URL, root)
		if !ok {
			return nil, "", fmt.Errorf("%w: object link %q outside root %q", ErrBadRequest, l.URL, root)
		}
		if rest == "" {
			continue // the root itself, for example </>;ct=11543
		}
		if err := checkObjectPath(rest); err != nil {
			return nil, "", fmt.Errorf("%w: object link %q: %w", ErrBadRequest, l.URL, err)
		}
	}
	if links == nil {
		links = []linkformat.Link{}
	}
	if root != "/" {
		root = strings.TrimSuffix(root, "/")
	}
	return links, root, nil
}

func checkObjectPath(p string) error {
	parts := strings.Split(p, "/")
	if len(parts) > 2 {
		return errors.New("too deep")
	}
	for _, s := range parts {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 65535 {
			return errors.New("not an object or object instance id")
		}
	}
	return nil
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// NewID returns a random registration id: 10 characters of [A-Za-z0-9],
// like Leshan's (about 59 bits of entropy).
func NewID() string {
	var b [10]byte
	var r [10]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux.
	for i := range b {
		b[i] = idAlphabet[int(r[i])%len(idAlphabet)]
	}
	return string(b[:])
}

// ValidID tells whether s can be a registration id (as NewID makes them);
// used to reject garbage before a store look-up.
func ValidID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(idAlphabet+"-_", s[i]) < 0 {
			return false
		}
	}
	return true
}
