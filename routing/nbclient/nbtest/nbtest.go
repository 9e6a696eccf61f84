// Package nbtest plays cluster instances on a northbound.Bus for tests of
// northbound clients: a Responder subscribes to LESHAN_REQ and
// LESHAN_REQ:<id> and answers the requests for the endpoints it owns the
// way an instance does (ack, then a resp or an err), keeps observations
// and publishes notifications on demand.
package nbtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Handler answers a request for an owned endpoint: a resp, or an error
// published as an err with the error's text.
type Handler func(r *northbound.Request) (*northbound.Resp, error)

// Received is a request as a Responder saw it.
type Received struct {
	Channel string
	Request *northbound.Request
}

// Claims arbitrates tickets between the Responders of one test, like the
// shared store does between instances: the first claim of a ticket wins.
type Claims struct {
	mu sync.Mutex
	m  map[string]string
}

// NewClaims returns an empty claim set.
func NewClaims() *Claims { return &Claims{m: map[string]string{}} }

func (c *Claims) claim(ticket, id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[ticket]; ok {
		return false
	}
	c.m[ticket] = id
	return true
}

// Responder is one fake instance.
type Responder struct {
	ID string
	// Handler answers requests for owned endpoints; nil answers every
	// request with CONTENT and no value. The Responder answers
	// cancelObserve itself: DELETED, or NOT_FOUND when it holds no such
	// observation.
	Handler Handler
	// AnswerUnowned makes the responder answer an err for fan-out
	// requests for endpoints it does not own, when no responder sharing
	// its Claims has claimed the ticket within OwnerGrace (as exactly one
	// instance answers for an unregistered endpoint or a dead owner).
	AnswerUnowned bool
	// Silent: receive and record requests, answer nothing (a dead owner
	// whose channel is still subscribed).
	Silent bool
	// AckDelay delays the ack (and the answer).
	AckDelay time.Duration

	bus    northbound.Bus
	claims *Claims
	sub    northbound.Subscription
	wg     sync.WaitGroup

	mu        sync.Mutex
	owned     map[string]bool
	received  []Received
	observing map[string]*northbound.Request // ticket -> observe request
	changed   chan struct{}
}

// OwnerGrace is how long an AnswerUnowned responder leaves the owner to
// claim a fan-out request.
const OwnerGrace = 100 * time.Millisecond

// ErrNotRegistered is the err text for an endpoint nobody owns.
func ErrNotRegistered(ep string) string { return fmt.Sprintf("endpoint %q is not registered", ep) }

// New returns a stopped responder for instance id owning endpoints eps.
// claims may be shared with other responders, or nil.
func New(bus northbound.Bus, id string, claims *Claims, eps ...string) *Responder {
	if claims == nil {
		claims = NewClaims()
	}
	r := &Responder{ID: id, bus: bus, claims: claims, owned: map[string]bool{},
		observing: map[string]*northbound.Request{}, changed: make(chan struct{})}
	for _, ep := range eps {
		r.owned[ep] = true
	}
	return r
}

// Start subscribes and answers in the background until Stop or the end of
// the test.
func (r *Responder) Start(t testing.TB) *Responder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := r.bus.Subscribe(ctx, northbound.ChannelReq, northbound.InstanceReqChannel(r.ID))
	if err != nil {
		t.Fatalf("responder %s: %v", r.ID, err)
	}
	r.sub = sub
	r.wg.Add(1)
	go r.run()
	t.Cleanup(r.Stop)
	return r
}

// Stop unsubscribes and waits for answers in progress.
func (r *Responder) Stop() {
	if r.sub != nil {
		_ = r.sub.Close()
	}
	r.wg.Wait()
}

// Own adds endpoints to the responder's.
func (r *Responder) Own(eps ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ep := range eps {
		r.owned[ep] = true
	}
}

// Received returns the requests seen so far.
func (r *Responder) Received() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Received(nil), r.received...)
}

// WaitReceived waits until the responder has seen n requests and returns
// them.
func (r *Responder) WaitReceived(t testing.TB, n int) []Received {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ch := r.changed
		count := len(r.received)
		r.mu.Unlock()
		if count >= n {
			return r.Received()
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("responder %s: %d requests, want %d", r.ID, count, n)
		}
	}
}

// Observations returns the tickets of the observations in progress.
func (r *Responder) Observations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var l []string
	for t := range r.observing {
		l = append(l, t)
	}
	return l
}

// WaitObservations waits until n observations are in progress.
func (r *Responder) WaitObservations(t testing.TB, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ch := r.changed
		count := len(r.observing)
		r.mu.Unlock()
		if count == n {
			return r.Observations()
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("responder %s: %d observations, want %d", r.ID, count, n)
		}
	}
}

// Notify publishes a notification for the observation with ticket (Observe
// and Kind are set from the observation).
func (r *Responder) Notify(ctx context.Context, ticket string, resp northbound.Resp) error {
	r.mu.Lock()
	o := r.observing[ticket]
	r.mu.Unlock()
	if o == nil {
		return errors.New("nbtest: no such observation")
	}
	resp.Observe = true
	if resp.Kind == "" {
		resp.Kind = o.Req.Kind
	}
	return northbound.PublishJSON(ctx, r.bus, northbound.ChannelResp, &northbound.Response{Ticket: ticket, Resp: &resp})
}

func (r *Responder) signal() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *Responder) run() {
	defer r.wg.Done()
	for m := range r.sub.C() {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.handle(m)
		}()
	}
}

func (r *Responder) publish(resp *northbound.Response) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = northbound.PublishJSON(ctx, r.bus, northbound.ChannelResp, resp)
}

func (r *Responder) handle(m northbound.Message) {
	req, err := northbound.ParseRequest(m.Payload)
	if err != nil {
		var re *northbound.RequestError
		if errors.As(err, &re) && re.Ticket != "" && r.AnswerUnowned && r.claims.claim(re.Ticket, r.ID) {
			r.publish(&northbound.Response{Ticket: re.Ticket, Err: &northbound.ErrorMsg{ErrorMessage: err.Error()}})
		}
		return
	}
	r.mu.Lock()
	r.received = append(r.received, Received{Channel: m.Channel, Request: req})
	owned := r.owned[req.Endpoint]
	r.signal()
	r.mu.Unlock()
	if r.Silent {
		return
	}
	if !owned {
		if m.Channel != northbound.ChannelReq || !r.AnswerUnowned {
			return
		}
		// Give the owner, if any, the time to claim the ticket first.
		time.Sleep(OwnerGrace)
		if r.claims.claim(req.Ticket, r.ID) {
			r.publish(&northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{ErrorMessage: ErrNotRegistered(req.Endpoint)}})
		}
		return
	}
	if !r.claims.claim(req.Ticket, r.ID) {
		return // a duplicate (direct, then fan-out), or another's
	}
	time.Sleep(r.AckDelay)
	r.publish(&northbound.Response{Ticket: req.Ticket, Ack: true})

	observe := req.Req.Kind == northbound.KindObserve || req.Req.Kind == northbound.KindObserveComposite
	if req.Req.Kind == northbound.KindCancelObserve {
		r.mu.Lock()
		found := false
		for t, o := range r.observing {
			if t == req.Req.ObserveTicket || (req.Req.Path != "" && o.Req.Path == req.Req.Path && o.Endpoint == req.Endpoint) {
				delete(r.observing, t)
				found = true
			}
		}
		r.signal()
		r.mu.Unlock()
		resp := &northbound.Resp{Kind: req.Req.Kind, Code: "DELETED"}
		if !found {
			resp.Code, resp.ErrorMessage = "NOT_FOUND", "no such observation"
		}
		r.publish(&northbound.Response{Ticket: req.Ticket, Resp: resp})
		return
	}
	if observe {
		// Kept before the answer, as an instance stores the observation
		// before the device can notify.
		r.mu.Lock()
		r.observing[req.Ticket] = req
		r.signal()
		r.mu.Unlock()
	}
	resp := &northbound.Resp{Kind: req.Req.Kind, Code: "CONTENT"}
	if r.Handler != nil {
		resp, err = r.Handler(req)
	}
	switch {
	case err != nil:
		r.publish(&northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{ErrorMessage: err.Error()}})
	case resp == nil:
		// The handler chose not to answer.
	default:
		if resp.Kind == "" {
			resp.Kind = req.Req.Kind
		}
		r.publish(&northbound.Response{Ticket: req.Ticket, Resp: resp})
	}
	if observe && (err != nil || resp == nil || !isSuccess(resp.Code)) {
		r.mu.Lock()
		delete(r.observing, req.Ticket)
		r.signal()
		r.mu.Unlock()
	}
}

func isSuccess(code string) bool {
	switch code {
	case "CREATED", "DELETED", "VALID", "CHANGED", "CONTENT", "CONTINUE":
		return true
	}
	return false
}
