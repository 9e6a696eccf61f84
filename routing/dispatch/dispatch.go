// Package dispatch answers northbound requests on one cluster instance. It
// reads LESHAN_REQ (fan-out) and LESHAN_REQ:<instance> (direct), decides
// which instance answers each ticket, and publishes the answers on
// LESHAN_RESP.
//
// Exactly one instance answers a ticket, arbitrated by a claim in the
// shared store (Tickets.ClaimTicket):
//
//   - the owner of the endpoint (the instance that handled the device's
//     latest uplink) claims the ticket, publishes {"ack":true}, carries the
//     request out on the device and publishes the resp (or an err);
//   - if the endpoint is not registered, or its owner is not a live member,
//     every instance that sees the request tries to claim it and the winner
//     publishes an err;
//   - if the owner is a live member but does not claim a fan-out request
//     within OwnerGrace (it died since its last heartbeat), the other
//     instances claim it and one answers an err;
//   - a request on an instance's direct channel whose endpoint is owned by
//     another live instance is passed on to that instance's channel.
//
// Requests that cannot be parsed get an err when their ticket can be read,
// otherwise a log line and a metric.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Defaults.
const (
	DefaultWorkers    = 256
	DefaultOwnerGrace = time.Second
	// DefaultMaxInFlight bounds the requests waiting for devices.
	DefaultMaxInFlight = 10000
	// claimMargin keeps a claim beyond the request's timeout, so a late
	// duplicate of the request is not answered again.
	claimMargin = time.Minute
)

// Errors an Executor returns, answered with their own messages.
var (
	// ErrNotRegistered: the endpoint has no registration.
	ErrNotRegistered = errors.New("endpoint is not registered")
	// ErrNoSession: this instance owns the endpoint but holds no session
	// with the device (it restarted since the device's last uplink).
	ErrNoSession = errors.New("the device has no session on its owning instance; it is reachable again after its next update")
)

// Executor carries a request out on a device this instance owns.
type Executor interface {
	// Execute carries req out on the device of reg, for the request with
	// the given ticket.
	Execute(ctx context.Context, reg *registration.Registration, ticket string, req *northbound.Req) (*northbound.Resp, error)
}

// State is the shared state the dispatcher reads (store.Store has it).
type State interface {
	GetByEndpoint(ctx context.Context, ep string) (*registration.Registration, error)
	Owner(ctx context.Context, ep string) (string, error)
	Members(ctx context.Context) ([]store.Member, error)
	ClaimTicket(ctx context.Context, ticket, instance string, ttl time.Duration) (bool, error)
}

// registrationOwner is State that reads an endpoint's registration and
// owner in one round trip (redisstore.Store does).
type registrationOwner interface {
	RegistrationAndOwner(ctx context.Context, ep string) (*registration.Registration, string, error)
}

// Config configures a Dispatcher.
type Config struct {
	InstanceID string
	Bus        northbound.Bus
	State      State
	Exec       Executor
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Workers bounds the requests being routed at once (parsing, lookups,
	// claim, ack); further requests wait (they are not dropped).
	Workers int
	// MaxInFlight bounds the acknowledged requests waiting for their
	// device; beyond it a request is answered with an err (busy).
	MaxInFlight int
	// OwnerGrace is how long a live owner has to claim a fan-out request
	// before the other instances answer it with an err.
	OwnerGrace time.Duration
	// StoreTimeout bounds each shared-store call.
	StoreTimeout time.Duration
}

// Dispatcher answers northbound requests for one instance.
type Dispatcher struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	sem  chan struct{}
	wg   sync.WaitGroup
	now  func() time.Time
	mcMu sync.Mutex
	mc   memberCache
	// ownerChecks counts the owner checks waiting for OwnerGrace.
	ownerChecks atomic.Int64
	// inflight counts the acknowledged requests waiting for a device.
	inflight atomic.Int64
}

type memberCache struct {
	at      time.Time
	members []store.Member
}

// New validates cfg and returns a Dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.InstanceID == "" || cfg.Bus == nil || cfg.State == nil || cfg.Exec == nil {
		return nil, errors.New("dispatch: instance id, bus, state and executor are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.OwnerGrace <= 0 {
		cfg.OwnerGrace = DefaultOwnerGrace
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 5 * time.Second
	}
	return &Dispatcher{
		cfg: cfg,
		log: cfg.Logger.With("instance", cfg.InstanceID),
		m:   newMetrics(cfg.Registerer),
		sem: make(chan struct{}, cfg.Workers),
		now: time.Now,
	}, nil
}

// Subscribe subscribes to the request channels. Once it returns, requests
// published are received; Serve handles them.
func (d *Dispatcher) Subscribe(ctx context.Context) (northbound.Subscription, error) {
	sub, err := d.cfg.Bus.Subscribe(ctx, northbound.ChannelReq, northbound.InstanceReqChannel(d.cfg.InstanceID))
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	return sub, nil
}

// Serve handles the requests of sub until ctx is cancelled or sub ends,
// then waits for the requests in flight and closes sub.
func (d *Dispatcher) Serve(ctx context.Context, sub northbound.Subscription) {
	defer func() {
		_ = sub.Close()
		d.wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-sub.C():
			if !ok {
				return
			}
			select {
			case d.sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			d.wg.Add(1)
			go func() {
				defer func() { <-d.sem; d.wg.Done() }()
				d.handle(ctx, msg)
			}()
		}
	}
}

// Run subscribes and serves until ctx is cancelled.
func (d *Dispatcher) Run(ctx context.Context) error {
	sub, err := d.Subscribe(ctx)
	if err != nil {
		return err
	}
	d.Serve(ctx, sub)
	return nil
}

func (d *Dispatcher) handle(ctx context.Context, msg northbound.Message) {
	direct := msg.Channel != northbound.ChannelReq
	req, err := northbound.ParseRequest(msg.Payload)
	if err != nil {
		d.m.invalid.Inc()
		var re *northbound.RequestError
		if errors.As(err, &re) && re.Ticket != "" {
			// Any instance may answer: the claim makes it one.
			d.answerErr(ctx, re.Ticket, err.Error(), "invalid")
			return
		}
		d.log.Warn("northbound request dropped: no readable ticket", "channel", msg.Channel, "err", err, "bytes", len(msg.Payload))
		return
	}
	log := d.log.With("ticket", req.Ticket, "ep", req.Endpoint, "kind", req.Req.Kind)

	sctx, cancel := context.WithTimeout(ctx, d.cfg.StoreTimeout)
	reg, owner, err := d.registrationAndOwner(sctx, req.Endpoint)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound):
		d.answerErr(ctx, req.Ticket, fmt.Sprintf("endpoint %q is not registered", req.Endpoint), "unregistered")
		return
	case err != nil:
		// Without the shared state nobody can decide; the owner (which
		// may see it) would fail the same way. Answer so the caller
		// does not wait for nothing.
		log.Warn("northbound request: shared state unavailable", "err", err)
		d.answerErr(ctx, req.Ticket, "shared state unavailable: "+err.Error(), "store")
		return
	}
	if owner == d.cfg.InstanceID {
		d.execute(ctx, req, reg, log)
		return
	}
	alive := owner != "" && d.isMember(ctx, owner)
	switch {
	case !alive:
		msg := fmt.Sprintf("endpoint %q has no live owning instance; it is reachable again after its next update", req.Endpoint)
		if owner != "" {
			msg = fmt.Sprintf("endpoint %q: its owning instance %q is not available; the device is reachable again after its next update", req.Endpoint, owner)
		}
		d.answerErr(ctx, req.Ticket, msg, "no-owner")
	case direct:
		// Ownership moved: pass the request on to the owner.
		if err := d.cfg.Bus.Publish(ctx, northbound.InstanceReqChannel(owner), msg.Payload); err != nil {
			log.Warn("northbound request: cannot pass on to the owner", "owner", owner, "err", err)
			d.answerErr(ctx, req.Ticket, "cannot reach the owning instance: "+err.Error(), "forward")
			return
		}
		d.m.outcomes.WithLabelValues("forwarded").Inc()
	default:
		// The owner answers. If it died since its last heartbeat, it will
		// not claim the ticket: answer for it after OwnerGrace.
		d.checkOwnerLater(ctx, req, owner)
	}
}

// registrationAndOwner reads ep's registration and owner, in one round
// trip when the state can.
func (d *Dispatcher) registrationAndOwner(ctx context.Context, ep string) (*registration.Registration, string, error) {
	if ro, ok := d.cfg.State.(registrationOwner); ok {
		return ro.RegistrationAndOwner(ctx, ep)
	}
	reg, err := d.cfg.State.GetByEndpoint(ctx, ep)
	if err != nil {
		return nil, "", err
	}
	owner, err := d.cfg.State.Owner(ctx, ep)
	return reg, owner, err
}

// maxOwnerChecks bounds the owner checks waiting for their OwnerGrace.
const maxOwnerChecks = 100000

// checkOwnerLater tries to claim the ticket of a request that another live
// instance owns once OwnerGrace has passed, and answers an err if the claim
// succeeds (the owner never took it). The wait holds no worker, so fan-out
// traffic for other instances' devices does not slow this one down.
func (d *Dispatcher) checkOwnerLater(ctx context.Context, req *northbound.Request, owner string) {
	if d.ownerChecks.Add(1) > maxOwnerChecks {
		d.ownerChecks.Add(-1)
		d.m.outcomes.WithLabelValues("owner-check-skipped").Inc()
		return
	}
	d.wg.Add(1)
	time.AfterFunc(d.cfg.OwnerGrace, func() {
		defer d.wg.Done()
		defer d.ownerChecks.Add(-1)
		if ctx.Err() != nil {
			return
		}
		d.answerErr(ctx, req.Ticket, fmt.Sprintf("endpoint %q: its owning instance %q did not take the request", req.Endpoint, owner), "owner-silent")
	})
}

// execute carries out a request on a device this instance owns.
func (d *Dispatcher) execute(ctx context.Context, req *northbound.Request, reg *registration.Registration, log *slog.Logger) {
	timeout := time.Duration(req.Req.TimeoutMs()) * time.Millisecond
	won, err := d.claim(ctx, req.Ticket, timeout+claimMargin)
	if err != nil {
		// Without the claim this instance cannot know whether another
		// copy of the request is being answered: publishing anything
		// could make two answers. The caller's ack timeout covers it.
		log.Warn("northbound request: ticket claim failed", "err", err)
		d.m.outcomes.WithLabelValues("store").Inc()
		return
	}
	if !won {
		d.m.outcomes.WithLabelValues("duplicate").Inc()
		return
	}
	if d.inflight.Add(1) > int64(d.cfg.MaxInFlight) {
		d.inflight.Add(-1)
		d.m.outcomes.WithLabelValues("busy").Inc()
		d.publish(ctx, &northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{
			ErrorMessage: fmt.Sprintf("instance %q is busy: %d requests in flight", d.cfg.InstanceID, d.cfg.MaxInFlight)}})
		return
	}
	d.publish(ctx, &northbound.Response{Ticket: req.Ticket, Ack: true})
	// The device exchange runs without holding a worker: a slow or
	// sleeping device must not stop this instance reading requests.
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.inflight.Add(-1)
		d.carryOut(ctx, req, reg, timeout, log)
	}()
}

// carryOut runs an acknowledged request on the device and publishes its
// answer.
func (d *Dispatcher) carryOut(ctx context.Context, req *northbound.Request, reg *registration.Registration, timeout time.Duration, log *slog.Logger) {
	start := d.now()
	ectx, cancel := context.WithTimeout(ctx, timeout)
	resp, err := d.cfg.Exec.Execute(ectx, reg, req.Ticket, &req.Req)
	timedOut := ectx.Err() == context.DeadlineExceeded
	cancel()
	d.m.duration.WithLabelValues(req.Req.Kind).Observe(d.now().Sub(start).Seconds())
	// The answer is published even when the instance is stopping: the
	// caller has an ack and waits for it.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.StoreTimeout)
	defer pcancel()
	switch {
	case err == nil:
		d.m.outcomes.WithLabelValues("resp").Inc()
		d.publish(pctx, &northbound.Response{Ticket: req.Ticket, Resp: resp})
		log.Debug("northbound request answered", "code", resp.Code, "duration", d.now().Sub(start))
	case ctx.Err() != nil:
		d.m.outcomes.WithLabelValues("error").Inc()
		d.publish(pctx, &northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{
			ErrorMessage: fmt.Sprintf("instance %q is shutting down; retry the request", d.cfg.InstanceID)}})
	case timedOut || errors.Is(err, context.DeadlineExceeded):
		d.m.outcomes.WithLabelValues("timeout").Inc()
		d.publish(pctx, &northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{
			ErrorMessage: fmt.Sprintf("timeout: the device did not answer within %d ms", req.Req.TimeoutMs())}})
	default:
		d.m.outcomes.WithLabelValues("error").Inc()
		log.Info("northbound request failed", "err", err)
		d.publish(pctx, &northbound.Response{Ticket: req.Ticket, Err: &northbound.ErrorMsg{ErrorMessage: err.Error()}})
	}
}

func (d *Dispatcher) claim(ctx context.Context, ticket string, ttl time.Duration) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, d.cfg.StoreTimeout)
	defer cancel()
	return d.cfg.State.ClaimTicket(cctx, ticket, d.cfg.InstanceID, ttl)
}

// answerErr claims ticket and, when this instance wins, answers it with an
// err. The claim lasts as long as the longest request (MaxTimeoutMs) so a
// late copy of the request is never carried out after the err.
func (d *Dispatcher) answerErr(ctx context.Context, ticket, message, outcome string) {
	won, err := d.claim(ctx, ticket, northbound.MaxTimeoutMs*time.Millisecond+claimMargin)
	if err != nil {
		d.log.Warn("northbound request: ticket claim failed", "ticket", ticket, "err", err)
		return
	}
	if !won {
		return
	}
	d.m.outcomes.WithLabelValues(outcome).Inc()
	d.publish(ctx, &northbound.Response{Ticket: ticket, Err: &northbound.ErrorMsg{ErrorMessage: message}})
}

func (d *Dispatcher) publish(ctx context.Context, r *northbound.Response) {
	if err := northbound.PublishJSON(ctx, d.cfg.Bus, northbound.ChannelResp, r); err != nil {
		d.m.publishErrors.Inc()
		d.log.Warn("northbound response not published", "ticket", r.Ticket, "err", err)
	}
}

// isMember reports whether id is a live member, from a membership list at
// most 500 ms old.
func (d *Dispatcher) isMember(ctx context.Context, id string) bool {
	d.mcMu.Lock()
	defer d.mcMu.Unlock()
	if d.now().Sub(d.mc.at) > 500*time.Millisecond {
		sctx, cancel := context.WithTimeout(ctx, d.cfg.StoreTimeout)
		ms, err := d.cfg.State.Members(sctx)
		cancel()
		if err != nil {
			d.log.Warn("membership unavailable", "err", err)
			return true // assume alive: the owner-grace path still answers
		}
		d.mc = memberCache{at: d.now(), members: ms}
	}
	return slices.ContainsFunc(d.mc.members, func(m store.Member) bool { return m.ID == id })
}

type metrics struct {
	invalid       prometheus.Counter
	outcomes      *prometheus.CounterVec
	publishErrors prometheus.Counter
	duration      *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lwm2m_northbound_invalid_requests_total",
			Help: "LESHAN_REQ messages that could not be parsed or validated (answered with err when their ticket was readable).",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_northbound_requests_total",
			Help: "Northbound requests handled by this instance, by outcome (resp, timeout, error, unregistered, no-owner, owner-silent, owner-check-skipped, invalid, forwarded, duplicate, store, busy).",
		}, []string{"outcome"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lwm2m_northbound_response_publish_errors_total",
			Help: "LESHAN_RESP messages that could not be published.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lwm2m_northbound_request_duration_seconds",
			Help:    "Time from ack to answer of the northbound requests this instance carried out, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.invalid, m.outcomes, m.publishErrors, m.duration)
	}
	return m
}
