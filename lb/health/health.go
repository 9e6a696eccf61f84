// Package health runs active health checks of UDP CoAP backends, the way a
// load balancer such as keepalived (for LVS) or HAProxy does.
//
// A [Checker] probes every target once per interval with a CoAP ping, an
// empty confirmable message (RFC 7252, section 4.3), optionally prefixed with
// a PROXY protocol v2 LOCAL header for backends that sit behind a balancer in
// proxy mode. A probe succeeds when a CoAP reset with the probe's message id
// comes back from the target's address, with or without a PROXY v2 header,
// within the timeout. Every other datagram is ignored and counted.
//
// Each target's state follows the usual rise/fall rules. A new target is
// unknown and is probed as soon as it is added; its first success makes it
// healthy at once, so that a new backend takes traffic quickly, while Fall
// consecutive failures make it unhealthy. From then on an unhealthy target
// needs Rise consecutive successes to become healthy and a healthy one Fall
// consecutive failures to become unhealthy, so a backend that dies is
// declared down within about Fall intervals plus the timeout.
//
// All probes go out of one unconnected UDP socket opened by [Checker.Run].
// ICMP errors are not reported on such sockets, so an unreachable backend
// fails by timeout.
package health

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// Defaults used for zero [Config] fields.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = time.Second // or the interval, if shorter
	DefaultRise     = 2
	DefaultFall     = 3
)

var (
	// ErrConfig is returned (wrapped) by [New] for an invalid
	// configuration.
	ErrConfig = errors.New("health: invalid configuration")
	// ErrRunning is returned by [Checker.Run] when the checker is already
	// running.
	ErrRunning = errors.New("health: checker already running")
)

// Target is a backend to check.
type Target struct {
	// ID identifies the backend across calls to [Checker.SetTargets], for
	// example "10.0.0.2:5683". It is the backend label of the metrics.
	ID string
	// Addr is where probes are sent and where their answers must come
	// from.
	Addr netip.AddrPort
}

// State is the health of a target.
type State struct {
	ID   string
	Addr netip.AddrPort
	// Healthy reports whether the target is up. It is false while the
	// target is unknown.
	Healthy bool
	// Known is false until the target's first transition: its first
	// successful probe or its first Fall consecutive failures.
	Known bool
	// Successes and Failures count the consecutive successful and failed
	// probes up to the latest one; one of them is zero.
	Successes, Failures int
	// LastChange is the time of the latest transition, zero while the
	// target is unknown.
	LastChange time.Time
	// LastRTT is the round-trip time of the latest successful probe.
	LastRTT time.Duration
	// LastError describes why the latest probe failed; it is empty if the
	// latest probe succeeded or none has finished yet.
	LastError string
}

// Config configures a [Checker]. The zero value selects the defaults.
type Config struct {
	// Interval is the time between two probes of a target.
	Interval time.Duration
	// Timeout is how long a probe waits for its answer. It must not
	// exceed Interval, so that a target has at most one probe in flight.
	// The default is DefaultTimeout or Interval, whichever is shorter.
	Timeout time.Duration
	// Rise is the number of consecutive successes that make an unhealthy
	// target healthy.
	Rise int
	// Fall is the number of consecutive failures that make a healthy or
	// unknown target unhealthy.
	Fall int
	// ProxyLocal prefixes each ping with a PROXY v2 LOCAL header, for
	// backends behind a balancer in proxy mode.
	ProxyLocal bool
	// LocalAddr is the address the probe socket binds to. The zero value
	// binds to an ephemeral port on all addresses, dual-stack where the
	// system supports it. An IPv4 address makes an IPv4-only socket.
	LocalAddr netip.AddrPort
	// Logger logs transitions (at Info when a target comes up, at Warn
	// when it goes down); slog.Default() when nil.
	Logger *slog.Logger
	// Registerer, when not nil, registers the checker's metrics.
	Registerer prometheus.Registerer
	// OnChange, when not nil, is called on every transition of a target
	// (including from unknown to healthy or unhealthy) with its new state.
	// It is called from the goroutine running [Checker.Run], never
	// concurrently with itself, and may call the Checker's methods. Probes
	// wait while it runs, so it should return quickly.
	OnChange func(s State)
}

// Probe results, the result label of lwm2m_lb_health_checks_total.
const (
	resultOK        = "ok"
	resultTimeout   = "timeout"
	resultBadReply  = "bad_reply"
	resultSendError = "send_error"
)

// Checker checks the health of a set of targets. Create it with [New], set
// its targets with [Checker.SetTargets] and start it with [Checker.Run].
// Its methods may be called concurrently.
type Checker struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	ping    []byte        // probe template; the last two bytes are the message id
	wake    chan struct{} // tells Run that the targets changed
	running atomic.Bool

	mu      sync.RWMutex
	targets map[string]*target
	// pending maps the message id of each probe in flight to its target.
	pending map[uint16]*target
}

// target is the checker's record of one target. Its fields are guarded by
// Checker.mu.
type target struct {
	st   State
	dst  netip.AddrPort // Addr with IPv4 unmapped, where probes go
	src  netip.AddrPort // dst without zone, compared with answer sources
	next time.Time      // when to send the next probe; zero: at once

	inFlight bool
	mid      uint16    // message id of the probe in flight
	sent     time.Time // when it was sent
}

// New returns a Checker with no targets.
func New(cfg Config) (*Checker, error) {
	if cfg.Interval < 0 || cfg.Timeout < 0 || cfg.Rise < 0 || cfg.Fall < 0 {
		return nil, fmt.Errorf("%w: negative interval, timeout, rise or fall", ErrConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = min(cfg.Interval, DefaultTimeout)
	}
	if cfg.Timeout > cfg.Interval {
		return nil, fmt.Errorf("%w: timeout %v exceeds interval %v", ErrConfig, cfg.Timeout, cfg.Interval)
	}
	if cfg.Rise == 0 {
		cfg.Rise = DefaultRise
	}
	if cfg.Fall == 0 {
		cfg.Fall = DefaultFall
	}
	if cfg.LocalAddr.IsValid() && cfg.LocalAddr.Addr().Zone() != "" {
		return nil, fmt.Errorf("%w: local address %v has a zone", ErrConfig, cfg.LocalAddr)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	var ping []byte
	if cfg.ProxyLocal {
		ping = proxyv2.AppendHeader(ping, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
	}
	ping = peek.AppendCoAPPing(ping, 0)
	return &Checker{
		cfg:     cfg,
		log:     cfg.Logger,
		m:       m,
		ping:    ping,
		wake:    make(chan struct{}, 1),
		targets: map[string]*target{},
		pending: map[uint16]*target{},
	}, nil
}

// SetTargets replaces the set of targets. A target whose ID and address are
// both unchanged keeps its state; any other target starts unknown and is
// probed at once if the checker is running. Removed targets are no longer
// probed once SetTargets returns. When several targets share an ID, the
// first one wins.
func (c *Checker) SetTargets(ts []Target) {
	c.mu.Lock()
	old := c.targets
	c.targets = make(map[string]*target, len(ts))
	for _, nt := range ts {
		if _, dup := c.targets[nt.ID]; dup {
			c.log.Warn("health check: duplicate target id ignored", "backend", nt.ID, "addr", nt.Addr)
			continue
		}
		if t, ok := old[nt.ID]; ok && t.st.Addr == nt.Addr {
			c.targets[nt.ID] = t
			delete(old, nt.ID)
			continue
		}
		c.targets[nt.ID] = &target{
			st:  State{ID: nt.ID, Addr: nt.Addr},
			dst: netip.AddrPortFrom(nt.Addr.Addr().Unmap(), nt.Addr.Port()),
			src: canonical(nt.Addr),
		}
		c.m.setUp(nt.ID, false)
	}
	for id, t := range old {
		if t.inFlight {
			delete(c.pending, t.mid)
		}
		if _, ok := c.targets[id]; !ok {
			c.m.deleteUp(id)
		}
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Healthy reports whether the target with the given ID is healthy. It
// reports false for unknown targets and IDs not in the set.
func (c *Checker) Healthy(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t, ok := c.targets[id]
	return ok && t.st.Healthy
}

// States returns the states of all targets, sorted by ID.
func (c *Checker) States() []State {
	c.mu.RLock()
	s := make([]State, 0, len(c.targets))
	for _, t := range c.targets {
		s = append(s, t.st)
	}
	c.mu.RUnlock()
	slices.SortFunc(s, func(a, b State) int { return cmp.Compare(a.ID, b.ID) })
	return s
}

// reply is a CoAP reset received by the read loop.
type reply struct {
	from netip.AddrPort // canonical
	mid  uint16
	at   time.Time
}

// Run probes the targets until ctx is cancelled, then closes its socket
// and returns nil. It returns an error if the socket cannot be opened or if
// the checker is already running. It may be called again after it returns;
// target states are kept and every target is probed at once.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	if ctx.Err() != nil {
		return nil
	}

	var laddr *net.UDPAddr
	if c.cfg.LocalAddr.IsValid() {
		laddr = net.UDPAddrFromAddrPort(c.cfg.LocalAddr)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return fmt.Errorf("health: open probe socket: %w", err)
	}

	rctx, cancel := context.WithCancel(ctx)
	replies := make(chan reply, 64)
	var wg sync.WaitGroup
	wg.Go(func() { c.read(rctx, conn, replies) })
	defer func() {
		cancel()
		conn.Close()
		wg.Wait()
		c.mu.Lock()
		c.clearPending()
		c.mu.Unlock()
	}()

	c.mu.Lock()
	c.clearPending()
	for _, t := range c.targets {
		t.next = time.Time{}
	}
	c.mu.Unlock()

	buf := make([]byte, 0, len(c.ping))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var changes []State
	for {
		// Take the answers already read before timing probes out.
	drain:
		for {
			select {
			case r := <-replies:
				changes = c.handleReply(r, changes)
			default:
				break drain
			}
		}
		var wake time.Time
		changes, wake, buf = c.step(conn, time.Now(), changes, buf)
		changes = c.notify(changes)
		if !wake.IsZero() {
			timer.Reset(time.Until(wake))
		} else {
			timer.Stop()
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case r := <-replies:
				// An answer only cancels a timeout: no need to
				// walk the targets.
				changes = c.notify(c.handleReply(r, changes))
			case <-c.wake:
				break wait
			case <-timer.C:
				break wait
			}
		}
	}
}

// clearPending forgets the probes in flight. c.mu must be held.
func (c *Checker) clearPending() {
	for _, t := range c.targets {
		t.inFlight = false
	}
	clear(c.pending)
}

// read reads the socket until it is closed and passes the CoAP resets it
// receives to out. Anything else is counted as a bad reply.
func (c *Checker) read(ctx context.Context, conn *net.UDPConn, out chan<- reply) {
	// Large enough for a reset behind a PROXY header with a few TLVs;
	// anything longer is not an answer to a probe.
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		at := time.Now()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// Transient errors such as an ICMP error reported by
			// the kernel: keep reading, but do not spin.
			c.log.Debug("health check: read", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p := buf[:n]
		if _, payload, err := proxyv2.Parse(p); err == nil {
			p = payload
		} else if err != proxyv2.ErrNoSignature {
			c.badReply(from, "invalid PROXY header", err)
			continue
		}
		if len(p) != peek.CoAPPingLen || !peek.IsCoAPReset(p, binary.BigEndian.Uint16(p[2:])) {
			c.badReply(from, "not a CoAP reset", nil)
			continue
		}
		select {
		case out <- reply{from: canonical(from), mid: binary.BigEndian.Uint16(p[2:]), at: at}:
		case <-ctx.Done():
			return
		}
	}
}

// badReply counts and logs an ignored datagram.
func (c *Checker) badReply(from netip.AddrPort, why string, err error) {
	c.m.check(resultBadReply)
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("health check: ignored datagram", "from", from, "reason", why, "err", err)
	}
}

// handleReply matches a reset to its probe and appends the resulting
// transition, if any, to changes.
func (c *Checker) handleReply(r reply, changes []State) []State {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.pending[r.mid]
	switch {
	case t == nil:
		c.badReply(r.from, "no probe in flight with this message id", nil)
		return changes
	case r.from != t.src:
		c.badReply(r.from, "reset from another address than the target's", nil)
		return changes
	case r.at.Sub(t.sent) > c.cfg.Timeout:
		// The timeout is about to be handled.
		c.badReply(r.from, "late reset", nil)
		return changes
	}
	delete(c.pending, r.mid)
	t.inFlight = false
	c.m.check(resultOK)
	t.st.LastRTT = r.at.Sub(t.sent)
	t.st.LastError = ""
	t.st.Failures = 0
	t.st.Successes++
	if !t.st.Known || (!t.st.Healthy && t.st.Successes >= c.cfg.Rise) {
		changes = append(changes, c.transition(t, true, r.at))
	}
	return changes
}

// fail records a failed probe of t and appends the resulting transition, if
// any, to changes. c.mu must be held.
func (c *Checker) fail(t *target, now time.Time, result, why string, changes []State) []State {
	c.m.check(result)
	t.st.LastError = why
	t.st.Successes = 0
	t.st.Failures++
	if (t.st.Healthy || !t.st.Known) && t.st.Failures >= c.cfg.Fall {
		changes = append(changes, c.transition(t, false, now))
	}
	return changes
}

// transition makes t healthy or unhealthy and returns its new state. c.mu
// must be held.
func (c *Checker) transition(t *target, healthy bool, now time.Time) State {
	t.st.Known = true
	t.st.Healthy = healthy
	t.st.LastChange = now
	c.m.setUp(t.st.ID, healthy)
	c.m.transition(healthy)
	return t.st
}

// step times out the probes whose time is up and sends those that are due.
// It appends the resulting transitions to changes and returns them with the
// time of the next event (zero if there are no targets) and the send buffer.
func (c *Checker) step(conn *net.UDPConn, now time.Time, changes []State, buf []byte) ([]State, time.Time, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var wake time.Time
	later := func(t time.Time) {
		if wake.IsZero() || t.Before(wake) {
			wake = t
		}
	}
	for _, t := range c.targets {
		if t.inFlight && !now.Before(t.sent.Add(c.cfg.Timeout)) {
			delete(c.pending, t.mid)
			t.inFlight = false
			changes = c.fail(t, now, resultTimeout, "no answer within "+c.cfg.Timeout.String(), changes)
		}
		if !t.inFlight && !now.Before(t.next) {
			if t.next.IsZero() {
				t.next = now
			}
			// Keep the schedule, unless it fell behind.
			if t.next = t.next.Add(c.cfg.Interval); !t.next.After(now) {
				t.next = now.Add(c.cfg.Interval)
			}
			buf, changes = c.probe(conn, t, buf, changes)
		}
		if t.inFlight {
			later(t.sent.Add(c.cfg.Timeout))
		}
		later(t.next)
	}
	return changes, wake, buf
}

// probe sends a ping to t. c.mu must be held.
func (c *Checker) probe(conn *net.UDPConn, t *target, buf []byte, changes []State) ([]byte, []State) {
	now := time.Now()
	if !t.dst.IsValid() || t.dst.Port() == 0 {
		return buf, c.fail(t, now, resultSendError, "invalid address "+t.st.Addr.String(), changes)
	}
	mid := c.newMID(t.mid)
	buf = append(buf[:0], c.ping...)
	binary.BigEndian.PutUint16(buf[len(buf)-2:], mid)
	if _, err := conn.WriteToUDPAddrPort(buf, t.dst); err != nil {
		return buf, c.fail(t, now, resultSendError, "send: "+err.Error(), changes)
	}
	t.inFlight = true
	t.mid = mid
	t.sent = now
	c.pending[mid] = t
	return buf, changes
}

// newMID returns a random message id that is not in flight and differs
// from prev, so that a stale answer cannot be taken for a fresh one. c.mu
// must be held.
func (c *Checker) newMID(prev uint16) uint16 {
	for {
		mid := uint16(rand.Uint32())
		if _, busy := c.pending[mid]; !busy && mid != prev {
			return mid
		}
	}
}

// notify logs the transitions and reports them to OnChange. It returns
// changes emptied for reuse.
func (c *Checker) notify(changes []State) []State {
	for _, s := range changes {
		if s.Healthy {
			c.log.Info("backend up", "backend", s.ID, "addr", s.Addr, "rtt", s.LastRTT, "successes", s.Successes)
		} else {
			c.log.Warn("backend down", "backend", s.ID, "addr", s.Addr, "err", s.LastError, "failures", s.Failures)
		}
		if c.cfg.OnChange != nil {
			c.cfg.OnChange(s)
		}
	}
	clear(changes)
	return changes[:0]
}

// canonical returns ap with an IPv4-mapped address unmapped and without
// zone, the form in which probe destinations and answer sources are
// compared.
func canonical(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}
