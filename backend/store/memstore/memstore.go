// Package memstore implements the store interfaces in memory, for a single
// instance (the embedded default) and for tests.
package memstore

import (
	"context"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Store is an in-memory store.Store. The zero value is not usable; call New.
type Store struct {
	grace time.Duration

	mu      sync.Mutex
	byEP    map[string]*registration.Registration
	byID    map[string]string // regId -> ep
	byAddr  map[netip.AddrPort]string
	owners  map[string]string
	members map[string]memberEntry

	secByEP    map[string]store.SecurityInfo
	secByID    map[string]string // identity -> ep
	nodeByInst map[string]uint16
	instByNode map[uint16]string
	dtls       map[string]dtlsEntry
	dtlsPuts   int // puts since the last sweep of expired sessions

	tickets      map[string]ticketEntry
	ticketClaims int                            // claims since the last sweep of expired tickets
	obsByToken   map[string]*store.Observation  // string(token) -> observation
	obsByTicket  map[string]string              // ticket -> string(token)
	obsByReg     map[string]map[string]struct{} // regId -> set of string(token)
}

type dtlsEntry struct {
	data    []byte
	expires time.Time
}

type memberEntry struct {
	m       store.Member
	expires time.Time
}

var _ store.Store = (*Store)(nil)

// New returns an empty store whose registrations expire grace after their
// lifetime.
func New(grace time.Duration) *Store {
	return &Store{
		grace:   grace,
		byEP:    map[string]*registration.Registration{},
		byID:    map[string]string{},
		byAddr:  map[netip.AddrPort]string{},
		owners:  map[string]string{},
		members: map[string]memberEntry{},

		secByEP:    map[string]store.SecurityInfo{},
		secByID:    map[string]string{},
		nodeByInst: map[string]uint16{},
		instByNode: map[uint16]string{},
		dtls:       map[string]dtlsEntry{},

		tickets:     map[string]ticketEntry{},
		obsByToken:  map[string]*store.Observation{},
		obsByTicket: map[string]string{},
		obsByReg:    map[string]map[string]struct{}{},
	}
}

// Add implements store.Registrations.
func (s *Store) Add(_ context.Context, r *registration.Registration) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.byEP[r.Endpoint]
	if old != nil {
		s.unindex(old)
		if old.ID != r.ID {
			s.removeObservationsLocked(old.ID)
		}
	}
	c := r.Clone()
	s.byEP[c.Endpoint] = c
	s.byID[c.ID] = c.Endpoint
	s.byAddr[c.AddrPort()] = c.Endpoint
	return old, nil
}

func (s *Store) unindex(r *registration.Registration) {
	delete(s.byEP, r.Endpoint)
	delete(s.byID, r.ID)
	if a := r.AddrPort(); s.byAddr[a] == r.Endpoint {
		delete(s.byAddr, a)
	}
}

// Get implements store.Registrations.
func (s *Store) Get(_ context.Context, id string) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.byEP[s.byID[id]]
	if r == nil || r.ID != id {
		return nil, store.ErrNotFound
	}
	return r.Clone(), nil
}

// GetByEndpoint implements store.Registrations.
func (s *Store) GetByEndpoint(_ context.Context, ep string) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.byEP[ep]
	if r == nil {
		return nil, store.ErrNotFound
	}
	return r.Clone(), nil
}

// GetByAddr implements store.Registrations.
func (s *Store) GetByAddr(_ context.Context, a netip.AddrPort) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.byAddr[a]
	if !ok {
		return nil, store.ErrNotFound
	}
	return s.byEP[ep].Clone(), nil
}

// Update implements store.Registrations.
func (s *Store) Update(_ context.Context, u *registration.Update, now time.Time) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.byEP[s.byID[u.ID]]
	if r == nil || r.ID != u.ID {
		return nil, store.ErrNotFound
	}
	if a := r.AddrPort(); s.byAddr[a] == r.Endpoint {
		delete(s.byAddr, a)
	}
	r.Apply(u, now)
	s.byAddr[r.AddrPort()] = r.Endpoint
	return r.Clone(), nil
}

// Remove implements store.Registrations.
func (s *Store) Remove(_ context.Context, id string) (*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.byEP[s.byID[id]]
	if r == nil || r.ID != id {
		return nil, store.ErrNotFound
	}
	s.unindex(r)
	delete(s.owners, r.Endpoint)
	s.removeObservationsLocked(r.ID)
	return r, nil
}

// RemoveExpired implements store.Registrations.
func (s *Store) RemoveExpired(_ context.Context, now time.Time, max int) ([]*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*registration.Registration
	for _, r := range s.byEP {
		if len(out) == max {
			break
		}
		if r.ExpiresAt(s.grace).Before(now) {
			out = append(out, r)
		}
	}
	for _, r := range out {
		s.unindex(r)
		delete(s.owners, r.Endpoint)
		s.removeObservationsLocked(r.ID)
	}
	return out, nil
}

// List implements store.Registrations.
func (s *Store) List(_ context.Context) ([]*registration.Registration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*registration.Registration, 0, len(s.byEP))
	for _, r := range s.byEP {
		out = append(out, r.Clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint < out[j].Endpoint })
	return out, nil
}

// SetOwner implements store.Ownership.
func (s *Store) SetOwner(_ context.Context, ep, instance string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owners[ep] = instance
	return nil
}

// Owner implements store.Ownership.
func (s *Store) Owner(_ context.Context, ep string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owners[ep], nil
}

// Announce implements store.Membership.
func (s *Store) Announce(_ context.Context, m store.Member, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	m.Seen = now.UnixMilli()
	s.members[m.ID] = memberEntry{m: m, expires: now.Add(ttl)}
	return nil
}

// Leave implements store.Membership.
func (s *Store) Leave(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.members, id)
	return nil
}

// Members implements store.Membership.
func (s *Store) Members(_ context.Context) ([]store.Member, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := []store.Member{}
	for id, e := range s.members {
		if now.After(e.expires) {
			delete(s.members, id)
			continue
		}
		out = append(out, e.m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Ping implements store.Store.
func (s *Store) Ping(context.Context) error { return nil }

// Close implements store.Store.
func (s *Store) Close() error { return nil }
