// Package nbclient is the Go client of the cluster's northbound request API
// (LESHAN_REQ / LESHAN_RESP, docs/northbound.md): it sends a request for a
// device to the cluster and waits for the answer.
//
//	c := nbclient.New(northbound.NewRedisBus(rdb), st, nbclient.Options{})
//	defer c.Close()
//	resp, err := c.Do(ctx, "dev1", northbound.Req{Kind: northbound.KindRead, Path: "/3/0/0"})
//
// A Client holds one subscription on LESHAN_RESP, opened on first use (or
// by Start) and ended by Close, and hands each message to the caller
// waiting for its ticket; messages with other tickets are ignored.
//
// Routing: Do looks up the endpoint's owner (Owners, satisfied by
// store.Store). When the owner is a live member it publishes on the owner's
// own channel LESHAN_REQ:<owner>; otherwise, or when the owner does not
// acknowledge within Options.DirectAckTimeout (it just died), it publishes
// on the fan-out channel LESHAN_REQ, where exactly one live instance answers.
// Both publications carry the same ticket, and instances claim tickets, so
// a request is never carried out twice.
//
// Answers: a "resp" is returned as a *northbound.Resp, also when its Code
// is a device error (check it with IsSuccess); an "err" becomes a
// *RemoteError; no ack within Options.AckTimeout is ErrNoAck; no resp
// within the request's timeout plus Options.ResponseMargin is ErrTimeout.
package nbclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Defaults of Options.
const (
	DefaultAckTimeout         = 2 * time.Second
	DefaultDirectAckTimeout   = 500 * time.Millisecond
	DefaultResponseMargin     = 2 * time.Second
	DefaultNotificationBuffer = 1024
)

// Owners finds where a device is connected; store.Store satisfies it.
type Owners interface {
	// Owner returns the instance owning ep, or "" when none does.
	Owner(ctx context.Context, ep string) (string, error)
	// Members lists the live instances.
	Members(ctx context.Context) ([]store.Member, error)
}

// Options tune a Client. Zero values take the defaults.
type Options struct {
	// AckTimeout bounds the wait for the cluster's first answer to a
	// request (an ack, or an err when no instance can carry it out).
	AckTimeout time.Duration
	// DirectAckTimeout is how long a request published on its owner's
	// channel waits for an ack before it is published again, with the
	// same ticket, on the fan-out channel. Negative disables the second
	// publication.
	DirectAckTimeout time.Duration
	// ResponseMargin is added to the request's timeout (the "timeout"
	// member, 5 s by default) to bound the wait for the resp after the
	// ack: the owning instance answers an err when the device is late, so
	// the margin only covers the cluster's own delays.
	ResponseMargin time.Duration
	// NotificationBuffer is how many notifications an observation holds
	// for a slow reader before it drops them (counted by
	// Observation.Dropped).
	NotificationBuffer int
}

func (o *Options) defaults() {
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.DirectAckTimeout == 0 {
		o.DirectAckTimeout = DefaultDirectAckTimeout
	}
	if o.ResponseMargin <= 0 {
		o.ResponseMargin = DefaultResponseMargin
	}
	if o.NotificationBuffer <= 0 {
		o.NotificationBuffer = DefaultNotificationBuffer
	}
}

// Errors of the client.
var (
	// ErrNoAck: no instance acknowledged or answered the request in time
	// (no instance is running, or the bus lost the request).
	ErrNoAck = errors.New("no instance acknowledged the request")
	// ErrTimeout: the request was acknowledged but its answer did not
	// come within the request's timeout plus the margin.
	ErrTimeout = errors.New("no answer within the request's timeout")
	// ErrClosed: the client is closed, or its subscription ended.
	ErrClosed = errors.New("nbclient: client closed")
)

// RemoteError is an "err" answer: the cluster could not carry the request
// out (endpoint not registered, owner gone, device timeout, bad request).
type RemoteError struct {
	Message string
}

func (e *RemoteError) Error() string { return "server error: " + e.Message }

// CodeError is a device error code where success was needed: the first
// answer of an observe, or the answer of a cancelObserve.
type CodeError struct {
	Resp *northbound.Resp
}

func (e *CodeError) Error() string {
	if e.Resp.ErrorMessage != "" {
		return fmt.Sprintf("device answered %s: %s", e.Resp.Code, e.Resp.ErrorMessage)
	}
	return "device answered " + e.Resp.Code
}

// Client sends northbound requests. It is safe for concurrent use.
type Client struct {
	bus    northbound.Bus
	owners Owners
	opts   Options

	startMu sync.Mutex // serialises opening the subscription
	mu      sync.Mutex
	sub     northbound.Subscription
	done    chan struct{} // closed when sub's reader ends
	waiters map[string]*waiter
	closed  bool
	loops   sync.WaitGroup

	mmu         sync.Mutex // guards the membership cache
	membersList []store.Member
	membersAt   time.Time
}

type waiter struct {
	c       chan *northbound.Response
	dropped uint64 // guarded by Client.mu
}

// New returns a client on bus. owners may be nil: every request then goes
// to the fan-out channel.
func New(bus northbound.Bus, owners Owners, opts Options) *Client {
	opts.defaults()
	return &Client{bus: bus, owners: owners, opts: opts, waiters: map[string]*waiter{}}
}

// Start opens the LESHAN_RESP subscription now rather than on the first
// request. It returns once the subscription is active.
func (c *Client) Start(ctx context.Context) error {
	_, err := c.ensureStarted(ctx)
	return err
}

func (c *Client) ensureStarted(ctx context.Context) (<-chan struct{}, error) {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if c.sub != nil {
		d := c.done
		c.mu.Unlock()
		return d, nil
	}
	c.mu.Unlock()
	sub, err := c.bus.Subscribe(ctx, northbound.ChannelResp)
	if err != nil {
		return nil, fmt.Errorf("nbclient: subscribe to %s: %w", northbound.ChannelResp, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = sub.Close()
		return nil, ErrClosed
	}
	c.sub, c.done = sub, make(chan struct{})
	c.loops.Add(1)
	go c.read(sub, c.done)
	return c.done, nil
}

// read hands the messages of sub to the waiters of their tickets.
func (c *Client) read(sub northbound.Subscription, done chan struct{}) {
	defer c.loops.Done()
	for m := range sub.C() {
		r, err := northbound.ParseResponse(m.Payload)
		if err != nil {
			continue // not ours to judge; other clients share the channel
		}
		c.mu.Lock()
		if w := c.waiters[r.Ticket]; w != nil {
			select {
			case w.c <- r:
			default:
				w.dropped++
			}
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	if c.sub == sub {
		c.sub = nil // the next request subscribes again
	}
	close(done)
	c.mu.Unlock()
}

// Close ends the subscription. Requests in progress fail with ErrClosed
// and observations end.
func (c *Client) Close() error {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	c.mu.Lock()
	c.closed = true
	sub := c.sub
	c.sub = nil
	c.mu.Unlock()
	var err error
	if sub != nil {
		err = sub.Close()
	}
	c.loops.Wait()
	return err
}

// NewTicket returns a random 128-bit ticket in hex.
func NewTicket() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (c *Client) register(ctx context.Context, ticket string, buf int) (*waiter, <-chan struct{}, error) {
	for range 2 {
		if _, err := c.ensureStarted(ctx); err != nil {
			return nil, nil, err
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, nil, ErrClosed
		}
		if c.sub == nil { // ended in between: subscribe again
			c.mu.Unlock()
			continue
		}
		if _, dup := c.waiters[ticket]; dup {
			c.mu.Unlock()
			return nil, nil, fmt.Errorf("nbclient: ticket %q already in use", ticket)
		}
		w := &waiter{c: make(chan *northbound.Response, buf)}
		c.waiters[ticket] = w
		d := c.done
		c.mu.Unlock()
		return w, d, nil
	}
	return nil, nil, ErrClosed
}

func (c *Client) unregister(ticket string) {
	c.mu.Lock()
	delete(c.waiters, ticket)
	c.mu.Unlock()
}

// Route returns the channel a request for ep is published on first: the
// owner's own channel when the owner is a live member, else the fan-out
// channel. Lookup errors fall back to fan-out, which always reaches the
// cluster.
func (c *Client) Route(ctx context.Context, ep string) (channel string, direct bool) {
	if c.owners == nil {
		return northbound.ChannelReq, false
	}
	owner, err := c.owners.Owner(ctx, ep)
	if err != nil || owner == "" {
		return northbound.ChannelReq, false
	}
	ms, err := c.members(ctx)
	if err != nil || !slices.ContainsFunc(ms, func(m store.Member) bool { return m.ID == owner }) {
		return northbound.ChannelReq, false
	}
	return northbound.InstanceReqChannel(owner), true
}

// membersTTL is how long a membership list is reused. An owner that died
// within it does not ack its direct request, which is then published on
// the fan-out channel (Options.DirectAckTimeout).
const membersTTL = 500 * time.Millisecond

// members returns the live members, from a list at most membersTTL old.
func (c *Client) members(ctx context.Context) ([]store.Member, error) {
	c.mmu.Lock()
	defer c.mmu.Unlock()
	if c.membersList != nil && time.Since(c.membersAt) < membersTTL {
		return c.membersList, nil
	}
	ms, err := c.owners.Members(ctx)
	if err != nil {
		return nil, err
	}
	if ms == nil {
		ms = []store.Member{}
	}
	c.membersList, c.membersAt = ms, time.Now()
	return ms, nil
}

// Do sends req for endpoint ep and returns the device's answer. A resp
// carrying a device error code (NOT_FOUND, ...) is returned without error:
// check resp.Code with IsSuccess. An invalid req fails before anything is
// published, with an error wrapping northbound.ErrBadRequest.
func (c *Client) Do(ctx context.Context, ep string, req northbound.Req) (*northbound.Resp, error) {
	ticket, resp, _, _, err := c.exchange(ctx, ep, NewTicket(), req, 8)
	if ticket != "" {
		c.unregister(ticket)
	}
	return resp, err
}

// exchange registers ticket, publishes the request and waits for its first
// resp. On return the ticket is still registered (when returned non-empty):
// the caller unregisters it, or keeps it for notifications. Notifications
// ("observe": true) that overtake the first resp (the device notified
// while the instance was still publishing it) are returned in early, in
// order, to be delivered after it.
func (c *Client) exchange(ctx context.Context, ep, ticket string, req northbound.Req, buf int) (_ string, _ *northbound.Resp, early []*northbound.Resp, _ <-chan struct{}, _ error) {
	payload, err := json.Marshal(northbound.Request{Endpoint: ep, Ticket: ticket, Req: req})
	if err != nil {
		return "", nil, nil, nil, fmt.Errorf("nbclient: encode request: %w", err)
	}
	parsed, err := northbound.ParseRequest(payload)
	if err != nil {
		return "", nil, nil, nil, err
	}
	w, done, err := c.register(ctx, ticket, buf)
	if err != nil {
		return "", nil, nil, nil, err
	}
	channel, direct := c.Route(ctx, ep)
	if err := c.bus.Publish(ctx, channel, payload); err != nil {
		return ticket, nil, early, done, fmt.Errorf("nbclient: publish on %s: %w", channel, err)
	}

	ackTimer := time.NewTimer(c.opts.AckTimeout)
	defer ackTimer.Stop()
	var retry <-chan time.Time
	if direct && c.opts.DirectAckTimeout > 0 && c.opts.DirectAckTimeout < c.opts.AckTimeout {
		t := time.NewTimer(c.opts.DirectAckTimeout)
		defer t.Stop()
		retry = t.C
	}
	var respTimer <-chan time.Time // set once acked
	for {
		select {
		case r := <-w.c:
			switch {
			case r.Err != nil:
				return ticket, nil, early, done, &RemoteError{Message: r.Err.ErrorMessage}
			case r.Resp != nil && r.Resp.Observe && len(early) < buf:
				early = append(early, r.Resp)
			case r.Resp != nil:
				return ticket, r.Resp, early, done, nil
			case r.Ack && respTimer == nil:
				ackTimer.Stop()
				retry = nil
				t := time.NewTimer(time.Duration(parsed.Req.TimeoutMs())*time.Millisecond + c.opts.ResponseMargin)
				defer t.Stop()
				respTimer = t.C
			}
		case <-retry:
			retry = nil
			if err := c.bus.Publish(ctx, northbound.ChannelReq, payload); err != nil {
				return ticket, nil, early, done, fmt.Errorf("nbclient: publish on %s: %w", northbound.ChannelReq, err)
			}
		case <-ackTimer.C:
			return ticket, nil, early, done, fmt.Errorf("%w within %v (endpoint %q, ticket %s)", ErrNoAck, c.opts.AckTimeout, ep, ticket)
		case <-respTimer:
			return ticket, nil, early, done, fmt.Errorf("%w (%d ms plus %v; endpoint %q, ticket %s)", ErrTimeout,
				parsed.Req.TimeoutMs(), c.opts.ResponseMargin, ep, ticket)
		case <-ctx.Done():
			return ticket, nil, early, done, ctx.Err()
		case <-done:
			return ticket, nil, early, done, ErrClosed
		}
	}
}
