package memstore

import (
	"context"
	"fmt"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

type ticketEntry struct {
	instance string
	expires  time.Time
}

// ticketSweepEvery is the least number of claims between sweeps of expired
// ticket claims (as for DTLS sessions, a sweep waits for half as many
// claims as there are entries, so its cost is constant per claim).
const ticketSweepEvery = 1024

// ClaimTicket implements store.Tickets.
func (s *Store) ClaimTicket(_ context.Context, ticket, instance string, ttl time.Duration) (bool, error) {
	if err := store.CheckTicketClaim(ticket, instance, ttl); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.ticketClaims++
	if s.ticketClaims >= max(ticketSweepEvery, len(s.tickets)/2) {
		for k, e := range s.tickets {
			if !now.Before(e.expires) {
				delete(s.tickets, k)
			}
		}
		s.ticketClaims = 0
	}
	if e, ok := s.tickets[ticket]; ok && now.Before(e.expires) {
		return false, nil
	}
	s.tickets[ticket] = ticketEntry{instance: instance, expires: now.Add(ttl)}
	return true, nil
}

// AddObservation implements store.Observations. The registration check
// and the insert are under s.mu, which the registration removals (Add,
// Remove, RemoveExpired) hold while they delete observations, so an
// observation is either refused or stored before its registration's
// removal deletes it.
func (s *Store) AddObservation(_ context.Context, o *store.Observation) error {
	if err := o.Validate(); err != nil {
		return err
	}
	c := o.Clone()
	tok := string(c.Token)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.byEP[s.byID[c.RegID]]; r == nil || r.ID != c.RegID || r.Endpoint != c.Endpoint {
		return fmt.Errorf("%w: %s of endpoint %q", store.ErrNotRegistered, c.RegID, c.Endpoint)
	}
	if old := s.obsByToken[tok]; old != nil {
		s.unindexObservation(old)
	}
	s.obsByToken[tok] = c
	s.obsByTicket[c.Ticket] = tok
	set := s.obsByReg[c.RegID]
	if set == nil {
		set = map[string]struct{}{}
		s.obsByReg[c.RegID] = set
	}
	set[tok] = struct{}{}
	return nil
}

// unindexObservation deletes o and the indexes that point at it.
func (s *Store) unindexObservation(o *store.Observation) {
	tok := string(o.Token)
	delete(s.obsByToken, tok)
	if s.obsByTicket[o.Ticket] == tok {
		delete(s.obsByTicket, o.Ticket)
	}
	if set := s.obsByReg[o.RegID]; set != nil {
		delete(set, tok)
		if len(set) == 0 {
			delete(s.obsByReg, o.RegID)
		}
	}
}

// removeObservationsLocked deletes and returns a registration's
// observations; s.mu is held.
func (s *Store) removeObservationsLocked(regID string) []*store.Observation {
	set := s.obsByReg[regID]
	out := make([]*store.Observation, 0, len(set))
	for tok := range set {
		if o := s.obsByToken[tok]; o != nil {
			out = append(out, o)
		}
	}
	for _, o := range out {
		s.unindexObservation(o)
	}
	delete(s.obsByReg, regID)
	return out
}

// ObservationByToken implements store.Observations.
func (s *Store) ObservationByToken(_ context.Context, token []byte) (*store.Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.obsByToken[string(token)]
	if o == nil {
		return nil, store.ErrNotFound
	}
	return o.Clone(), nil
}

// ObservationByTicket implements store.Observations.
func (s *Store) ObservationByTicket(_ context.Context, ticket string) (*store.Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, ok := s.obsByTicket[ticket]
	if !ok {
		return nil, store.ErrNotFound
	}
	o := s.obsByToken[tok]
	if o == nil || o.Ticket != ticket {
		return nil, store.ErrNotFound
	}
	return o.Clone(), nil
}

// ObservationsByRegistration implements store.Observations.
func (s *Store) ObservationsByRegistration(_ context.Context, regID string) ([]*store.Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.obsByReg[regID]
	out := make([]*store.Observation, 0, len(set))
	for tok := range set {
		if o := s.obsByToken[tok]; o != nil {
			out = append(out, o.Clone())
		}
	}
	return out, nil
}

// RemoveObservation implements store.Observations.
func (s *Store) RemoveObservation(_ context.Context, token []byte) (*store.Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.obsByToken[string(token)]
	if o == nil {
		return nil, store.ErrNotFound
	}
	s.unindexObservation(o)
	return o, nil
}

// RemoveObservations implements store.Observations.
func (s *Store) RemoveObservations(_ context.Context, regID string) ([]*store.Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeObservationsLocked(regID), nil
}
