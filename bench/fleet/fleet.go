// Package fleet simulates a fleet of LwM2M devices against one target (a
// server, or a balancer in front of several) and measures what happens:
// registrations and handshakes per second, request round-trip latency
// (register, update, northbound reads, notifications), loss, errors by
// kind, sessions kept across NAT rebinds, devices disrupted by the loss of a
// backend and registrations lost.
//
// Each device is a bench/simdevice.Device with its own UDP socket (its own
// source port). A device starts at its slot of the ramp, registers, then
// sends an Update every UpdateEvery, changes its temperature value
// (/3303/0/5700) every NotifyEvery (a notification when the server
// observes it), and moves to a new source port every RebindEvery, as a NAT
// rebinding would. The device answers the server's requests itself.
//
// A request that gets no answer within RequestTimeout is counted lost and
// abandoned (go-coap stops retransmitting it); the device goes on with its
// schedule, a registration being retried after a pause. Nothing is
// retried forever.
//
// With a Northbound client the fleet also drives the northbound API: it
// observes every registered device's temperature (so that value changes
// become notifications, whose end-to-end latency is measured from the
// value itself, the time it was set) and reads /3/0/0 on random devices at
// ReadRate per second.
package fleet

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
)

// Defaults of Config.
const (
	DefaultDevices        = 100
	DefaultRamp           = 10 * time.Second
	DefaultDuration       = 30 * time.Second
	DefaultUpdateEvery    = 10 * time.Second
	DefaultNotifyEvery    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultACKTimeout     = 2 * time.Second
	DefaultLifetime       = 300 * time.Second
	DefaultPrefix         = "bench-"
	DefaultPSKPrefix      = "bench-psk"
	// registerRetry is the pause before a failed registration is tried
	// again (plus up to as much jitter).
	registerRetry = time.Second
)

// TempPath is the resource the fleet changes every NotifyEvery and the
// northbound driver observes.
var TempPath = node.MustPath(3303, 0, simdevice.TempSensorValue)

// ManufacturerPath is what the northbound driver reads.
const ManufacturerPath = "/3/0/0"

// Config configures a Fleet. Zero values take the defaults.
type Config struct {
	// Target is the host:port the devices send to. Required.
	Target string
	// Devices is the number of simulated devices.
	Devices int
	// Prefix starts every endpoint name: Prefix + a 6-digit index.
	Prefix string
	// Ramp spreads the devices' starts evenly over this time (0 starts
	// them all at once).
	Ramp time.Duration
	// Duration is how long Run keeps the fleet going after the ramp.
	Duration time.Duration
	// UpdateEvery is the registration update interval; negative disables
	// updates.
	UpdateEvery time.Duration
	// NotifyEvery is the interval of value changes of TempPath; negative
	// disables them.
	NotifyEvery time.Duration
	// RebindEvery moves each device to a new source port at this
	// interval; 0 never does.
	RebindEvery time.Duration
	// RequestTimeout bounds each register and update: unanswered by then,
	// the request is lost.
	RequestTimeout time.Duration
	// ACKTimeout is CoAP's ACK_TIMEOUT for the devices' confirmable
	// messages (go-coap doubles it at each retransmission).
	ACKTimeout time.Duration
	// Lifetime is the registration lifetime.
	Lifetime time.Duration

	// DTLS makes the devices speak CoAP over DTLS 1.2 with PSKs derived
	// from PSKPrefix and the endpoint (see PSK); the target must be a
	// CoAPS address whose server knows the keys (ProvisionPSK). CID asks
	// for a Connection ID, so that a rebind keeps the session; without
	// it a rebind opens a new session, resumed from the fleet's shared
	// session cache unless NoResumption.
	DTLS         bool
	CID          bool
	PSKPrefix    string
	NoResumption bool

	// Northbound, when set, drives the northbound API (observations on
	// TempPath of every registered device, reads at ReadRate).
	Northbound Northbound
	// ReadRate is the number of northbound reads per second.
	ReadRate float64
	// ObserveFraction is the share of the devices the northbound driver
	// observes, in [0, 1]; default 1 when Northbound is set. Negative
	// disables observations.
	ObserveFraction float64
	// ReadConcurrency bounds the reads in flight (default 256); a read
	// due while that many are waiting is skipped and counted.
	ReadConcurrency int

	// Registered, when set, lists the endpoints the server side holds at
	// the end (endpoint -> registration id), for registrations lost.
	Registered func(ctx context.Context) (map[string]string, error)

	// Dial, when set, opens each device's socket (tests).
	Dial func(ctx context.Context, server string) (*net.UDPConn, error)
	// Logger receives the fleet's logs (default: discarded). Devices log
	// nothing.
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Target == "" && c.Dial == nil {
		return errors.New("fleet: no target")
	}
	if c.Devices <= 0 {
		c.Devices = DefaultDevices
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.PSKPrefix == "" {
		c.PSKPrefix = DefaultPSKPrefix
	}
	if c.Ramp < 0 {
		c.Ramp = 0
	}
	if c.Duration < 0 {
		c.Duration = 0
	}
	if c.UpdateEvery == 0 {
		c.UpdateEvery = DefaultUpdateEvery
	}
	if c.NotifyEvery == 0 {
		c.NotifyEvery = DefaultNotifyEvery
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ACKTimeout <= 0 {
		c.ACKTimeout = DefaultACKTimeout
	}
	if c.Lifetime <= 0 {
		c.Lifetime = DefaultLifetime
	}
	if c.ReadConcurrency <= 0 {
		c.ReadConcurrency = 256
	}
	if c.Northbound != nil && c.ObserveFraction == 0 {
		c.ObserveFraction = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Endpoint returns the endpoint name of device i.
func (c *Config) Endpoint(i int) string { return fmt.Sprintf("%s%06d", c.Prefix, i) }

// Mark is a named moment of a run (a backend killed, devices rebound).
type Mark struct {
	Name string        `json:"name"`
	At   time.Duration `json:"at_ns"` // since the start
}

// Fleet is a running set of simulated devices. Start it, optionally act on
// it while it runs (Mark, RebindAll, Disruptions), then Finish it; Run does
// all of that for a plain run.
type Fleet struct {
	cfg   Config
	log   *slog.Logger
	devs  []*dev
	start time.Time
	c     counters

	registerH, updateH, readH, observeH, notifyH *Histogram

	errMu  sync.Mutex
	errs   map[string]uint64
	marks  []Mark
	series []Sample

	ramped   chan struct{}
	upCount  atomic.Int64
	rampMu   sync.Mutex
	rampEnd  time.Time // when the last device of the ramp registered
	runCtx   context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	sampler  sync.WaitGroup
	obsQ     chan *dev
	sessions *simdevice.SessionCache // shared DTLS client sessions
	readSem  chan struct{}
	started  bool
	atRamp   Sample        // counters when the ramp ended
	cpu0     time.Duration // process CPU time at Start
	nbWG     sync.WaitGroup
}

// counters are the fleet's totals.
type counters struct {
	sent, ok, lost, errors atomic.Uint64 // device requests (register, update)
	registrations          atomic.Uint64 // successful registers, re-registrations included
	reregistrations        atomic.Uint64
	updates                atomic.Uint64 // successful updates
	retransmissions        atomic.Uint64 // inferred
	valueChanges           atomic.Uint64
	rebinds                atomic.Uint64
	rebindKept, rebindLost atomic.Uint64
	rebindResumed          atomic.Uint64 // rebinds that needed a resumed handshake
	rebindFull             atomic.Uint64 // rebinds that needed a full handshake
	handshakesFailed       atomic.Uint64
	sessionRestarts        atomic.Uint64
	socketReopen           atomic.Uint64
	handshakesFull         atomic.Uint64
	handshakesResumed      atomic.Uint64
	reads, readOK          atomic.Uint64
	readLost, readErrors   atomic.Uint64
	readSkipped            atomic.Uint64
	observes, observeOK    atomic.Uint64
	observeErrors          atomic.Uint64
	notifications          atomic.Uint64
}

// dev is one simulated device and what the fleet tracks about it.
type dev struct {
	idx  int
	ep   string
	d    *simdevice.Device
	kick chan struct{} // RebindAll: rebind and update now

	mu        sync.Mutex
	up        bool
	failStart time.Time // start of the current run of failures, zero when fine
	outages   []outage
	rebound   bool // rebound, the next update tells whether the session survived
	hsFull    int  // handshakes of d already counted
	hsResumed int
	hsFailed  int
	cfg       simdevice.Config
	lostRun   int // consecutive lost updates (device goroutine only)
}

type outage struct{ start, end time.Time }

// maxOutages bounds the outages kept per device.
const maxOutages = 8

// New checks cfg and returns a fleet that has not started.
func New(cfg Config) (*Fleet, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	f := &Fleet{
		cfg: cfg, log: cfg.Logger,
		registerH: NewHistogram(), updateH: NewHistogram(), readH: NewHistogram(),
		observeH: NewHistogram(), notifyH: NewHistogram(),
		errs: map[string]uint64{}, ramped: make(chan struct{}),
		obsQ: make(chan *dev, cfg.Devices), readSem: make(chan struct{}, cfg.ReadConcurrency),
	}
	if cfg.DTLS && !cfg.NoResumption {
		f.sessions = simdevice.NewSessionCache()
	}
	f.devs = make([]*dev, cfg.Devices)
	for i := range f.devs {
		f.devs[i] = &dev{idx: i, ep: cfg.Endpoint(i), kick: make(chan struct{}, 1)}
	}
	return f, nil
}

// Config returns the fleet's configuration with its defaults.
func (f *Fleet) Config() Config { return f.cfg }

// Endpoints returns every device's endpoint name.
func (f *Fleet) Endpoints() []string {
	eps := make([]string, len(f.devs))
	for i, d := range f.devs {
		eps[i] = d.ep
	}
	return eps
}

// Start starts the ramp and returns; the fleet runs until Finish or the
// end of ctx.
func (f *Fleet) Start(ctx context.Context) {
	if f.started {
		return
	}
	f.started = true
	f.cpu0, _ = processUsage()
	f.start = time.Now()
	f.runCtx, f.cancel = context.WithCancel(ctx)
	n := len(f.devs)
	for i, dv := range f.devs {
		var at time.Duration
		if n > 1 {
			at = f.cfg.Ramp * time.Duration(i) / time.Duration(n-1)
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.runDevice(f.runCtx, dv, at)
		}()
	}
	f.sampler.Add(1)
	go func() {
		defer f.sampler.Done()
		f.sample(f.runCtx)
	}()
	if f.cfg.Northbound != nil {
		f.startNorthbound(f.runCtx)
	}
}

// Ramped is closed when every device has registered once, or the ramp
// has given up (a failed device keeps trying in the background).
func (f *Fleet) Ramped() <-chan struct{} { return f.ramped }

// Up returns the number of devices currently registered.
func (f *Fleet) Up() int { return int(f.upCount.Load()) }

// Elapsed returns the time since Start.
func (f *Fleet) Elapsed() time.Duration { return time.Since(f.start) }

// Mark records a named moment of the run, for the report and the
// timeline.
func (f *Fleet) Mark(name string) time.Time {
	now := time.Now()
	f.errMu.Lock()
	f.marks = append(f.marks, Mark{Name: name, At: now.Sub(f.start)})
	f.errMu.Unlock()
	return now
}

// Run starts the fleet, waits for the ramp (at most Ramp plus
// RequestTimeout plus 30 s), keeps it going for Duration and finishes it.
func (f *Fleet) Run(ctx context.Context) (*Result, error) {
	f.Start(ctx)
	if err := f.WaitRamp(ctx); err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(f.cfg.Duration):
	}
	return f.Finish(ctx)
}

// WaitRamp waits until every device has registered once or the ramp's
// time (Ramp + RequestTimeout + 30 s) has passed.
func (f *Fleet) WaitRamp(ctx context.Context) error {
	t := time.NewTimer(time.Until(f.start.Add(f.cfg.Ramp + f.cfg.RequestTimeout + 30*time.Second)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-f.ramped:
	case <-t.C:
		f.log.Warn("ramp incomplete", "up", f.Up(), "devices", len(f.devs))
	}
	f.rampMu.Lock()
	if f.rampEnd.IsZero() {
		f.rampEnd = time.Now()
	}
	f.rampMu.Unlock()
	f.atRamp = f.snapshot()
	return nil
}

// runDevice is one device's life.
func (f *Fleet) runDevice(ctx context.Context, dv *dev, at time.Duration) {
	if !sleepCtx(ctx, at) {
		return
	}
	dc := simdevice.Config{
		Endpoint:   dv.ep,
		Server:     f.cfg.Target,
		Lifetime:   f.cfg.Lifetime,
		Logger:     f.log,
		Dial:       f.cfg.Dial,
		ACKTimeout: f.cfg.ACKTimeout,
	}
	if f.cfg.DTLS {
		dc.PSKIdentity, dc.PSK = PSK(f.cfg.PSKPrefix, dv.ep)
		dc.CID = f.cfg.CID
		dc.SessionStore = f.sessions
		dc.NoResumption = f.cfg.NoResumption
		dc.HandshakeTimeout = f.cfg.RequestTimeout
	}
	dv.cfg = dc
	if !f.startDevice(ctx, dv) {
		return
	}
	defer func() { _ = dv.d.Close() }()
	for !f.register(ctx, dv) {
		if !sleepCtx(ctx, registerRetry+rand.N(registerRetry)) {
			return
		}
	}
	f.registered(dv, true)

	now := time.Now()
	next := func(every time.Duration) time.Time {
		if every <= 0 {
			return time.Time{}
		}
		return now.Add(rand.N(every) + 1)
	}
	nextUpdate, nextNotify, nextRebind := next(f.cfg.UpdateEvery), next(f.cfg.NotifyEvery), next(f.cfg.RebindEvery)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wake := earliest(nextUpdate, nextNotify, nextRebind)
		if wake.IsZero() {
			wake = time.Now().Add(time.Hour)
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return
		case <-dv.kick:
			f.rebind(ctx, dv)
			f.update(ctx, dv)
			if f.cfg.UpdateEvery > 0 {
				nextUpdate = time.Now().Add(f.cfg.UpdateEvery)
			}
			continue
		case now = <-timer.C:
		}
		if !nextRebind.IsZero() && !now.Before(nextRebind) {
			f.rebind(ctx, dv)
			nextRebind = now.Add(f.cfg.RebindEvery)
		}
		if !nextUpdate.IsZero() && !now.Before(nextUpdate) {
			f.update(ctx, dv)
			nextUpdate = now.Add(f.cfg.UpdateEvery)
		}
		if !nextNotify.IsZero() && !now.Before(nextNotify) {
			f.changeValue(dv)
			nextNotify = now.Add(f.cfg.NotifyEvery)
		}
	}
}

// startDevice makes dv's simdevice and starts it (a DTLS handshake with
// DTLS), trying again after a pause until it works or ctx ends.
func (f *Fleet) startDevice(ctx context.Context, dv *dev) bool {
	for {
		d := simdevice.New(dv.cfg)
		dv.mu.Lock()
		dv.d = d
		dv.hsFull, dv.hsResumed, dv.hsFailed = 0, 0, 0
		dv.mu.Unlock()
		err := d.Start(ctx)
		f.handshakes(dv)
		if err == nil {
			return true
		}
		_ = d.Close()
		if ctx.Err() != nil {
			return false
		}
		if errors.Is(err, simdevice.ErrHandshake) {
			f.countError("handshake", err)
		} else {
			f.countError("dial", err)
		}
		if !sleepCtx(ctx, registerRetry+rand.N(registerRetry)) {
			return false
		}
	}
}

// restart replaces a DTLS device whose session is gone (its updates are
// lost: the backend holding the session died) by a new one, which
// handshakes (resuming when it can) and registers again.
func (f *Fleet) restart(ctx context.Context, dv *dev) {
	_ = dv.d.Close()
	f.c.sessionRestarts.Add(1)
	if !f.startDevice(ctx, dv) {
		return
	}
	f.c.reregistrations.Add(1)
	for !f.register(ctx, dv) {
		if !sleepCtx(ctx, registerRetry+rand.N(registerRetry)) {
			return
		}
	}
	f.registered(dv, false)
}

func earliest(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if !t.IsZero() && (m.IsZero() || t.Before(m)) {
			m = t
		}
	}
	return m
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// registered marks dv up and hands it to the northbound driver.
func (f *Fleet) registered(dv *dev, _ bool) {
	dv.mu.Lock()
	wasUp := dv.up
	dv.up = true
	dv.mu.Unlock()
	if !wasUp {
		if f.upCount.Add(1) == int64(len(f.devs)) {
			f.rampMu.Lock()
			if f.rampEnd.IsZero() {
				f.rampEnd = time.Now()
				close(f.ramped)
			}
			f.rampMu.Unlock()
		}
	}
	if f.cfg.Northbound != nil && f.observed(dv) {
		select {
		case f.obsQ <- dv:
		default:
		}
	}
}

// observed reports whether the northbound driver observes dv.
func (f *Fleet) observed(dv *dev) bool {
	fr := f.cfg.ObserveFraction
	return fr > 0 && float64(dv.idx%1000) < fr*1000
}

// outcome classifies the end of one device request.
type outcome int

const (
	outcomeOK outcome = iota
	outcomeLost
	outcomeError
)

// request runs one register or update with the request timeout and does
// the accounting common to both: sent, ok/lost/errors, latency, inferred
// retransmissions, disruption tracking. It returns the outcome and the
// error.
func (f *Fleet) request(ctx context.Context, dv *dev, kind string, h *Histogram, do func(ctx context.Context) error) (outcome, error) {
	rctx, cancel := context.WithTimeout(ctx, f.cfg.RequestTimeout)
	defer cancel()
	f.c.sent.Add(1)
	t0 := time.Now()
	err := do(rctx)
	rtt := time.Since(t0)
	switch {
	case err == nil:
		f.c.ok.Add(1)
		h.Record(rtt)
		f.c.retransmissions.Add(inferredRetransmissions(rtt, f.cfg.ACKTimeout))
		dv.result(true, t0)
		return outcomeOK, nil
	case ctx.Err() != nil:
		// The run ended, not the request: not counted either way.
		f.c.sent.Add(^uint64(0))
		return outcomeError, err
	case errors.Is(err, context.DeadlineExceeded):
		f.c.lost.Add(1)
		f.countError(kind+": timeout", nil)
		dv.result(false, t0)
		return outcomeLost, err
	default:
		f.c.errors.Add(1)
		f.countError(kind+": "+errorKind(err), err)
		dv.result(false, t0)
		if connClosed(err) {
			// The socket died (an ICMP error, say): open a new one, as
			// a device's stack would.
			if rerr := dv.d.Rebind(ctx); rerr == nil {
				f.c.socketReopen.Add(1)
			}
			f.handshakes(dv)
		}
		return outcomeError, err
	}
}

// inferredRetransmissions is the number of retransmissions go-coap had
// made before an answer that took rtt: it retransmits after ACKTimeout,
// then doubles the wait.
func inferredRetransmissions(rtt, ack time.Duration) uint64 {
	// The k-th retransmission goes out at (2^k - 1) * ack.
	var n uint64
	for n < 8 && rtt > ack*time.Duration(uint64(1)<<(n+1)-1) {
		n++
	}
	return n
}

// result records the outcome of a request sent at t for the disruption
// tracking.
func (dv *dev) result(ok bool, t time.Time) {
	dv.mu.Lock()
	defer dv.mu.Unlock()
	switch {
	case !ok && dv.failStart.IsZero():
		dv.failStart = t
	case ok && !dv.failStart.IsZero():
		if len(dv.outages) == maxOutages {
			dv.outages = slices.Delete(dv.outages, 0, 1)
		}
		dv.outages = append(dv.outages, outage{start: dv.failStart, end: time.Now()})
		dv.failStart = time.Time{}
	}
}

func (f *Fleet) register(ctx context.Context, dv *dev) bool {
	out, _ := f.request(ctx, dv, "register", f.registerH, func(ctx context.Context) error {
		_, err := dv.d.Register(ctx)
		return err
	})
	if out == outcomeOK {
		f.c.registrations.Add(1)
		return true
	}
	return false
}

func (f *Fleet) update(ctx context.Context, dv *dev) {
	out, err := f.request(ctx, dv, "update", f.updateH, dv.d.Update)
	dv.mu.Lock()
	rebound := dv.rebound
	dv.rebound = false
	dv.mu.Unlock()
	if out == outcomeLost {
		dv.lostRun++
	} else {
		dv.lostRun = 0
	}
	switch {
	case out == outcomeOK:
		f.c.updates.Add(1)
		if rebound {
			f.c.rebindKept.Add(1)
		}
		return
	case ctx.Err() != nil:
		return
	}
	if rebound {
		f.c.rebindLost.Add(1)
	}
	if f.cfg.DTLS && dv.lostRun >= 2 {
		dv.lostRun = 0
		f.restart(ctx, dv)
		return
	}
	if errors.Is(err, simdevice.ErrNotRegistered) || isCode(err, "NotFound") {
		// The server forgot the registration: register again.
		f.c.reregistrations.Add(1)
		if f.register(ctx, dv) {
			f.registered(dv, false)
		}
	}
}

// rebind moves dv to a new source port.
func (f *Fleet) rebind(ctx context.Context, dv *dev) {
	if err := dv.d.Rebind(ctx); err != nil {
		if ctx.Err() == nil {
			f.countError("rebind", err)
		}
		return
	}
	f.c.rebinds.Add(1)
	full, resumed := f.handshakes(dv)
	switch {
	case full > 0:
		// The session did not survive the rebind.
		f.c.rebindFull.Add(1)
	case resumed > 0:
		f.c.rebindResumed.Add(1)
	default:
		dv.mu.Lock()
		dv.rebound = true
		dv.mu.Unlock()
	}
}

// handshakes adds dv's new DTLS handshakes to the counters and returns
// them.
func (f *Fleet) handshakes(dv *dev) (full, resumed int) {
	if !f.cfg.DTLS {
		return 0, 0
	}
	fl, rs := dv.d.Handshakes()
	failed := dv.d.HandshakeFailures()
	dv.mu.Lock()
	full, resumed = fl-dv.hsFull, rs-dv.hsResumed
	nfailed := failed - dv.hsFailed
	dv.hsFull, dv.hsResumed, dv.hsFailed = fl, rs, failed
	dv.mu.Unlock()
	f.c.handshakesFull.Add(uint64(full))
	f.c.handshakesResumed.Add(uint64(resumed))
	f.c.handshakesFailed.Add(uint64(nfailed))
	return full, resumed
}

// PSK returns the DTLS PSK identity and key of endpoint ep for a prefix:
// the identity is prefix/ep, the key the first 16 bytes of
// SHA-256(prefix/ep), so that whoever knows the prefix can provision the
// fleet's keys.
func PSK(prefix, ep string) (identity string, key []byte) {
	identity = prefix + "/" + ep
	sum := sha256.Sum256([]byte(identity))
	return identity, sum[:16]
}

// changeValue sets TempPath to the time since the start in milliseconds,
// which the northbound observer turns into the notification's latency.
func (f *Fleet) changeValue(dv *dev) {
	v := float64(time.Since(f.start).Microseconds()) / 1000
	if err := dv.d.Set(TempPath, node.FloatValue(v)); err != nil {
		f.countError("set value", err)
		return
	}
	f.c.valueChanges.Add(1)
}

// RebindAll moves every registered device to a new source port, spread
// over spread, each sending an Update right after; the Updates tell
// whether the sessions survived (Result.RebindKept). It returns at once.
func (f *Fleet) RebindAll(spread time.Duration) {
	t0 := time.Now()
	go func() {
		n := len(f.devs)
		for i, dv := range f.devs {
			if n > 1 && spread > 0 {
				at := t0.Add(spread * time.Duration(i) / time.Duration(n-1))
				if !sleepCtx(f.runCtx, time.Until(at)) {
					return
				}
			}
			select {
			case dv.kick <- struct{}{}:
			default:
			}
		}
	}()
}

// countError counts an error of the given kind.
func (f *Fleet) countError(kind string, err error) {
	f.errMu.Lock()
	f.errs[kind]++
	first := f.errs[kind] == 1
	f.errMu.Unlock()
	if first && err != nil {
		f.log.Debug("first error of its kind", "kind", kind, "err", err)
	}
}

// errorKind names an error for the errors-by-kind table.
func errorKind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case connClosed(err):
		return "socket closed"
	case errors.Is(err, simdevice.ErrUnexpected):
		s := err.Error()
		if i := strings.LastIndex(s, ": "); i >= 0 {
			return "answer " + s[i+2:]
		}
		return "unexpected answer"
	case errors.Is(err, simdevice.ErrNotRegistered):
		return "not registered"
	}
	return "other"
}

func connClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		errors.Is(err, simdevice.ErrClosed) || strings.Contains(err.Error(), "connection was closed")
}

// isCode reports whether err is an unexpected answer with the given code
// name (go-coap's spelling, "NotFound").
func isCode(err error, name string) bool {
	return err != nil && errors.Is(err, simdevice.ErrUnexpected) && strings.HasSuffix(err.Error(), ": "+name)
}

// Outage is a device's run of failed requests.
type Outage struct {
	Endpoint string
	// Start is when the first failed request was sent; End when the
	// first successful one after it was answered (zero if it never was).
	Start, End time.Time
}

// Disruptions returns, for every device that had failed requests after
// since (or a run of failures that was still going on at since), its
// first such outage.
func (f *Fleet) Disruptions(since time.Time) []Outage {
	var out []Outage
	for _, dv := range f.devs {
		dv.mu.Lock()
		found := false
		for _, o := range dv.outages {
			if !o.end.Before(since) {
				out = append(out, Outage{Endpoint: dv.ep, Start: o.start, End: o.end})
				found = true
				break
			}
		}
		if !found && !dv.failStart.IsZero() {
			out = append(out, Outage{Endpoint: dv.ep, Start: dv.failStart})
		}
		dv.mu.Unlock()
	}
	return out
}

// Finish stops the traffic, checks the registrations the server holds
// (Config.Registered), closes the devices and returns the result.
func (f *Fleet) Finish(ctx context.Context) (*Result, error) {
	if !f.started {
		return nil, errors.New("fleet: not started")
	}
	end := time.Now()
	f.cancel()
	f.wg.Wait()
	f.sampler.Wait()
	f.stopNorthbound()
	// Requests cut short by the end are not counted (see request).
	final := f.snapshot()
	f.errMu.Lock()
	f.series = append(f.series, final)
	f.errMu.Unlock()
	res := f.result(end, final)
	if f.cfg.Registered != nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		held, err := f.cfg.Registered(cctx)
		cancel()
		if err != nil {
			res.Notes = append(res.Notes, "registrations not checked: "+err.Error())
		} else {
			f.checkRegistrations(res, held)
		}
	}
	runtime.GC()
	return res, nil
}

// checkRegistrations compares the devices that believe they are
// registered with what the server holds.
func (f *Fleet) checkRegistrations(res *Result, held map[string]string) {
	res.RegistrationsChecked = true
	for _, dv := range f.devs {
		if dv.d == nil {
			continue
		}
		id := dv.d.RegistrationID()
		if id == "" {
			continue
		}
		res.RegisteredAtEnd++
		got, ok := held[dv.ep]
		switch {
		case !ok:
			res.RegistrationsLost++
			if len(res.LostEndpoints) < 10 {
				res.LostEndpoints = append(res.LostEndpoints, dv.ep)
			}
		case got != id:
			res.RegistrationsStale++
		}
	}
}

// ProvisionPSK stores the DTLS credentials of every device of cfg (see
// PSK) through put (store.Security's PutSecurity), with up to 32 puts in
// flight.
func ProvisionPSK(ctx context.Context, cfg Config, put func(ctx context.Context, ep, identity string, key []byte) error) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	sem := make(chan struct{}, 32)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for i := range cfg.Devices {
		ep := cfg.Endpoint(i)
		id, key := PSK(cfg.PSKPrefix, ep)
		select {
		case sem <- struct{}{}:
		case err := <-errc:
			wg.Wait()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := put(ctx, ep, id, key); err != nil {
				select {
				case errc <- fmt.Errorf("provisioning %s: %w", ep, err):
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
