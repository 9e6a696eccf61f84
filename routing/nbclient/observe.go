package nbclient

import (
	"context"
	"fmt"
	"sync"

	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Observation is an observe or observeComposite request in progress: the
// first value, then a resp per notification, all with the observe's ticket.
type Observation struct {
	c      *Client
	ep     string
	ticket string
	first  *northbound.Resp
	out    chan *northbound.Resp

	stop     chan struct{} // closed to stop delivery
	stopOnce sync.Once
	ended    chan struct{} // closed when the delivery goroutine has returned (and out is closed)

	mu  sync.Mutex
	err error

	cancelOnce sync.Once
	cancelDone chan struct{}
	cancelErr  error
}

// Observe sends an observe or observeComposite request (req.Kind; empty
// means observe) and waits for its first answer like Do. A first answer
// with a device error code is a *CodeError: there is no observation.
//
// Notifications are then delivered on the Observation's C until Cancel,
// until ctx is done (the observation is then cancelled in the background),
// until the cluster answers an err for the ticket, or until the client is
// closed; C is closed afterwards. A notification may carry a device error
// code (the device ended the observation, or the server could not decode
// the value): the caller decides whether to Cancel.
func (c *Client) Observe(ctx context.Context, ep string, req northbound.Req) (*Observation, error) {
	switch req.Kind {
	case "":
		req.Kind = northbound.KindObserve
	case northbound.KindObserve, northbound.KindObserveComposite:
	default:
		return nil, fmt.Errorf("nbclient: Observe needs an %q or %q request, not %q",
			northbound.KindObserve, northbound.KindObserveComposite, req.Kind)
	}
	ticket, first, early, done, err := c.exchange(ctx, ep, NewTicket(), req, c.opts.NotificationBuffer)
	if err == nil && !IsSuccess(first.Code) {
		err = &CodeError{Resp: first}
	}
	if err != nil {
		if ticket != "" {
			c.unregister(ticket)
		}
		return nil, err
	}
	o := &Observation{c: c, ep: ep, ticket: ticket, first: first,
		out: make(chan *northbound.Resp), stop: make(chan struct{}), ended: make(chan struct{}),
		cancelDone: make(chan struct{})}
	c.mu.Lock()
	w := c.waiters[ticket]
	c.mu.Unlock()
	go o.deliver(ctx, w, done, early)
	return o, nil
}

// Ticket returns the observe request's ticket.
func (o *Observation) Ticket() string { return o.ticket }

// First returns the first answer: the value when the observation started.
func (o *Observation) First() *northbound.Resp { return o.first }

// C returns the channel of notifications. It is closed when the
// observation ends (see Observe).
func (o *Observation) C() <-chan *northbound.Resp { return o.out }

// Err returns why delivery ended on its own: a *RemoteError answered by
// the cluster, ErrClosed, or the ctx's error. It is nil while delivery
// goes on and after Cancel.
func (o *Observation) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// Dropped returns how many notifications were dropped because the reader
// of C fell more than Options.NotificationBuffer behind.
func (o *Observation) Dropped() uint64 {
	o.c.mu.Lock()
	defer o.c.mu.Unlock()
	if w := o.c.waiters[o.ticket]; w != nil {
		return w.dropped
	}
	return 0
}

func (o *Observation) deliver(ctx context.Context, w *waiter, done <-chan struct{}, early []*northbound.Resp) {
	defer close(o.ended)
	defer close(o.out)
	fail := func(err error) {
		o.mu.Lock()
		o.err = err
		o.mu.Unlock()
	}
	for _, r := range early {
		select {
		case o.out <- r:
		case <-o.stop:
			return
		case <-ctx.Done():
			o.ctxDone(ctx)
			return
		}
	}
	for {
		select {
		case r := <-w.c:
			switch {
			case r.Err != nil:
				fail(&RemoteError{Message: r.Err.ErrorMessage})
				o.c.unregister(o.ticket)
				return
			case r.Resp != nil:
				select {
				case o.out <- r.Resp:
				case <-o.stop:
					return
				case <-ctx.Done():
					o.ctxDone(ctx)
					return
				}
			}
		case <-o.stop:
			return
		case <-ctx.Done():
			o.ctxDone(ctx)
			return
		case <-done:
			fail(ErrClosed)
			return
		}
	}
}

// ctxDone ends the observation after its ctx: the cancelObserve goes out
// in the background, with a fresh context.
func (o *Observation) ctxDone(ctx context.Context) {
	o.mu.Lock()
	o.err = ctx.Err()
	o.mu.Unlock()
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(),
			o.c.opts.AckTimeout+o.c.opts.ResponseMargin+northbound.DefaultTimeoutMs*1e6)
		defer cancel()
		_ = o.cancel(cctx)
	}()
}

// Done returns a channel closed once the observation has ended and its
// cancelObserve (from Cancel, or after ctx) has been answered or failed.
func (o *Observation) Done() <-chan struct{} { return o.cancelDone }

// Cancel stops delivery (C is closed when Cancel returns) and sends a
// cancelObserve with the observe's ticket. It returns the error of that
// request, a *CodeError when the server answered with an error code (for
// example NOT_FOUND: the observation had already ended). Calling Cancel
// again returns the first call's result.
func (o *Observation) Cancel(ctx context.Context) error {
	o.stopOnce.Do(func() { close(o.stop) })
	<-o.ended
	return o.cancel(ctx)
}

func (o *Observation) cancel(ctx context.Context) error {
	o.cancelOnce.Do(func() {
		defer close(o.cancelDone)
		o.c.unregister(o.ticket)
		resp, err := o.c.Do(ctx, o.ep, northbound.Req{Kind: northbound.KindCancelObserve, ObserveTicket: o.ticket})
		if err == nil && !IsSuccess(resp.Code) {
			err = &CodeError{Resp: resp}
		}
		o.cancelErr = err
	})
	select {
	case <-o.cancelDone:
		return o.cancelErr
	case <-ctx.Done():
		return ctx.Err()
	}
}
