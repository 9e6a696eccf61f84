package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Tickets makes sure exactly one instance answers each northbound request.
type Tickets interface {
	// ClaimTicket records instance as the one answering ticket for ttl.
	// Exactly one of concurrent callers with the same ticket gets true
	// (until ttl has passed); the others get false.
	ClaimTicket(ctx context.Context, ticket, instance string, ttl time.Duration) (bool, error)
}

// Observation is an observe relation a server holds on a device: the CoAP
// token the device's notifications carry, and what they are published with.
type Observation struct {
	Token         []byte   `json:"token"` // CoAP token (1-8 bytes)
	Endpoint      string   `json:"ep"`
	RegID         string   `json:"regId"`
	Paths         []string `json:"paths"` // one path, or several for observeComposite
	Composite     bool     `json:"composite,omitempty"`
	ContentFormat uint16   `json:"contentFormat"`
	Ticket        string   `json:"ticket"`   // northbound ticket of the observe request
	Instance      string   `json:"instance"` // instance that set it up
	Created       int64    `json:"created"`  // ms since the epoch
}

// Observations stores observe relations by token, with indexes by
// registration and by northbound ticket, so a notification reaching any
// instance is matched to its ticket.
//
// Removing a registration (Registrations.Remove, RemoveExpired, or Add
// replacing the endpoint's registration with one of another id) removes its
// observations in the same atomic step; they are not returned there, so a
// caller that needs them calls RemoveObservations first. AddObservation
// stores an observation only while o.RegID is the current registration of
// o.Endpoint, checked atomically with the insert: an observation added
// concurrently with its registration's removal is either refused
// (ErrNotRegistered) or stored and then deleted by the removal, so none
// outlives its registration.
//
// Lookups and removals with a token or ticket that could never be stored
// (see CheckToken) return ErrNotFound.
type Observations interface {
	// AddObservation stores o. A token already stored is replaced. It
	// returns an error wrapping ErrInvalidObservation (see Validate), or
	// ErrNotRegistered when o.RegID is not a current registration or not
	// o.Endpoint's; then nothing is stored or replaced.
	AddObservation(ctx context.Context, o *Observation) error
	// ObservationByToken returns the observation with the token, or ErrNotFound.
	ObservationByToken(ctx context.Context, token []byte) (*Observation, error)
	// ObservationByTicket returns the observation created by a ticket, or ErrNotFound.
	ObservationByTicket(ctx context.Context, ticket string) (*Observation, error)
	// ObservationsByRegistration returns a registration's observations (any order).
	ObservationsByRegistration(ctx context.Context, regID string) ([]*Observation, error)
	// RemoveObservation deletes the observation with the token and returns it; of
	// concurrent callers exactly one gets it, the others ErrNotFound.
	RemoveObservation(ctx context.Context, token []byte) (*Observation, error)
	// RemoveObservations deletes every observation of a registration and returns them.
	RemoveObservations(ctx context.Context, regID string) ([]*Observation, error)
}

// MaxTokenLength is the longest CoAP token (RFC 7252 section 3).
const MaxTokenLength = 8

// ErrInvalidObservation wraps the errors of Observation.Validate and
// CheckToken.
var ErrInvalidObservation = errors.New("invalid observation")

// ErrNotRegistered is returned by AddObservation when the observation's
// RegID is not a current registration, or is the registration of another
// endpoint than o.Endpoint.
var ErrNotRegistered = errors.New("registration not found")

// ErrInvalidTicket wraps the errors of CheckTicketClaim.
var ErrInvalidTicket = errors.New("invalid ticket claim")

// CheckToken checks that token is a CoAP token an observation can have:
// 1 to MaxTokenLength bytes. Its errors wrap ErrInvalidObservation.
func CheckToken(token []byte) error {
	switch {
	case len(token) == 0:
		return fmt.Errorf("%w: empty token", ErrInvalidObservation)
	case len(token) > MaxTokenLength:
		return fmt.Errorf("%w: token of %d bytes, longer than %d", ErrInvalidObservation, len(token), MaxTokenLength)
	}
	return nil
}

// Validate checks o before it is stored: a token of 1 to MaxTokenLength
// bytes, a registration id and a ticket. Its errors wrap
// ErrInvalidObservation.
func (o *Observation) Validate() error {
	if o == nil {
		return fmt.Errorf("%w: nil observation", ErrInvalidObservation)
	}
	if err := CheckToken(o.Token); err != nil {
		return err
	}
	switch {
	case o.RegID == "":
		return fmt.Errorf("%w: empty registration id", ErrInvalidObservation)
	case o.Ticket == "":
		return fmt.Errorf("%w: empty ticket", ErrInvalidObservation)
	}
	return nil
}

// Clone returns a deep copy of o (nil for nil).
func (o *Observation) Clone() *Observation {
	if o == nil {
		return nil
	}
	c := *o
	c.Token = bytes.Clone(o.Token)
	c.Paths = slices.Clone(o.Paths)
	return &c
}

// CheckTicketClaim validates ClaimTicket's arguments: a non-empty ticket and
// instance and a positive ttl. Its errors wrap ErrInvalidTicket.
func CheckTicketClaim(ticket, instance string, ttl time.Duration) error {
	switch {
	case ticket == "":
		return fmt.Errorf("%w: empty ticket", ErrInvalidTicket)
	case instance == "":
		return fmt.Errorf("%w: empty instance", ErrInvalidTicket)
	case ttl <= 0:
		return fmt.Errorf("%w: ttl %v: must be positive", ErrInvalidTicket, ttl)
	}
	return nil
}
