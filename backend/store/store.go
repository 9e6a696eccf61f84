// Package store defines the cluster's shared, long-lived state as small
// interfaces: registrations, device ownership, instance membership, DTLS-PSK
// security info, DTLS node ids, DTLS session resumption state, northbound
// ticket claims and observe relations.
//
// Each interface has two implementations that pass one conformance suite
// (package storetest): an in-memory one for a single instance and tests
// (package memstore) and a Redis one shared by every instance of a cluster
// (package redisstore).
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
)

// ErrNotFound is returned when a registration, security entry, DTLS
// session or observation does not exist.
var ErrNotFound = errors.New("not found")

// DefaultGrace is added to a registration's lifetime before it expires, so
// that a device whose update is a little late is not dropped.
const DefaultGrace = 2 * time.Second

// Registrations stores registrations indexed by endpoint name, registration
// id and device address, with lifetime expiry.
type Registrations interface {
	// Add stores a new registration. An existing registration of the same
	// endpoint is removed atomically (with its observations, unless it has
	// the same id) and returned as replaced.
	Add(ctx context.Context, r *registration.Registration) (replaced *registration.Registration, err error)
	// Get returns the registration with the given id, or ErrNotFound.
	Get(ctx context.Context, id string) (*registration.Registration, error)
	// GetByEndpoint returns an endpoint's registration, or ErrNotFound.
	GetByEndpoint(ctx context.Context, ep string) (*registration.Registration, error)
	// GetByAddr returns the registration of the device at addr, or ErrNotFound.
	GetByAddr(ctx context.Context, addr netip.AddrPort) (*registration.Registration, error)
	// Update applies u to the registration u.ID at time now and returns the
	// updated registration, or ErrNotFound. Concurrent updates of the same
	// registration are serialised; none is lost.
	Update(ctx context.Context, u *registration.Update, now time.Time) (*registration.Registration, error)
	// Remove deletes the registration with the given id (and its ownership
	// and observations) and returns it. Of concurrent callers exactly one
	// gets it; the others get ErrNotFound.
	Remove(ctx context.Context, id string) (*registration.Registration, error)
	// RemoveExpired deletes at most max registrations whose lifetime plus
	// grace ended before now (with their observations) and returns them.
	// Each expired registration is returned to exactly one caller, however
	// many instances sweep.
	RemoveExpired(ctx context.Context, now time.Time, max int) ([]*registration.Registration, error)
	// List returns every registration.
	List(ctx context.Context) ([]*registration.Registration, error)
}

// Ownership records which instance holds each device's session: the one
// that handled its latest uplink.
type Ownership interface {
	// SetOwner records instance as the owner of endpoint ep.
	SetOwner(ctx context.Context, ep, instance string) error
	// Owner returns ep's owner, or "" when nobody owns it.
	Owner(ctx context.Context, ep string) (string, error)
}

// Member states.
const (
	StateActive   = "active"
	StateDraining = "draining"
)

// Member is one live instance of the cluster, as it announces itself.
type Member struct {
	ID string `json:"id"`
	// NodeID is the instance's 16-bit node id (DTLS Connection ID prefix).
	NodeID uint16 `json:"nodeId"`
	// CoAP and CoAPS are the addresses the instance listens on; Backend is
	// the address a balancer should forward to (host:port).
	CoAP    string `json:"coap,omitempty"`
	CoAPS   string `json:"coaps,omitempty"`
	Backend string `json:"backend,omitempty"`
	Admin   string `json:"admin,omitempty"`
	State   string `json:"state"`
	Started int64  `json:"started"` // ms since the epoch
	// Seen is the time of the latest heartbeat (ms since the epoch).
	Seen int64 `json:"seen"`
}

// Membership is the set of live instances. An instance that stops
// announcing itself disappears after its TTL.
type Membership interface {
	// Announce records or refreshes m for ttl.
	Announce(ctx context.Context, m Member, ttl time.Duration) error
	// Leave removes an instance at once.
	Leave(ctx context.Context, id string) error
	// Members lists the live instances, ordered by id.
	Members(ctx context.Context) ([]Member, error)
}

// Store is the whole shared state of the cluster.
type Store interface {
	Registrations
	Ownership
	Membership
	Security
	NodeIDs
	DTLSSessions
	Tickets
	Observations
	// Ping checks that the store can be reached.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}
