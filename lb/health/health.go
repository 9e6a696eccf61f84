// Package health runs active health checks of UDP CoAP backends, the way a
// load balancer such as keepalived (for LVS) or HAProxy does.
//
// A [Checker] probes every target once per interval with one of two probes
// ([Config.Probe]):
//
//   - [ProbeCoAPPing], a CoAP ping, an empty confirmable message (RFC 7252,
//     section 4.3), optionally prefixed with a PROXY protocol v2 LOCAL header
//     for backends that sit behind a balancer in proxy mode. A probe succeeds
//     when a CoAP reset with the probe's message id comes back from the
//     target's address, with or without a PROXY v2 header, within the
//     timeout.
//   - [ProbeDTLSHello], for CoAP-over-DTLS servers reached directly, which do
//     not answer plain CoAP on their DTLS port: a DTLS 1.2 ClientHello. A
//     probe succeeds when the target's address answers within the timeout
//     with a HelloVerifyRequest (servers with cookies on, RFC 6347 section
//     4.2.1: stateless, no key looked up), a ServerHello (cookies off) or a
//     plaintext alert. An alert counts as alive on purpose: it proves that a
//     DTLS server runs on the port, which is what is checked, even if it
//     refuses the probe's cipher suites (handshake_failure). See
//     [ProbeDTLSHello] for how answers are matched to probes.
//
// Every other datagram is ignored and counted.
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
	crand "crypto/rand"
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

// Probe is the kind of probe a [Checker] sends.
type Probe uint8

// Probes.
const (
	// ProbeCoAPPing sends a CoAP ping (behind a PROXY v2 LOCAL header with
	// Config.ProxyLocal) and expects a CoAP reset with its message id.
	ProbeCoAPPing Probe = iota
	// ProbeDTLSHello sends a DTLS 1.2 ClientHello (PSK and ECDHE-ECDSA
	// cipher suites, no cookie) and expects a HelloVerifyRequest, a
	// ServerHello or an alert.
	//
	// Every probe of a checker carries the same ClientHello, so that a
	// server keeping per-peer handshake state (pion/dtls) takes a repeated
	// probe for a retransmission and answers it again, and record
	// sequence numbers that increase from probe to probe (DTLS replay
	// detection drops a record whose number it has seen or that is far
	// behind). The low 16 bits of the sequence number are the probe id: a
	// server that echoes the ClientHello's sequence number in its
	// HelloVerifyRequest, as RFC 6347 (section 4.2.1) recommends, answers
	// the probe with its id, and its late answers to earlier probes are
	// told apart. A server that numbers its own records (pion) cannot be
	// matched that way; its answer is taken for the target's probe in
	// flight when it comes from the target's address. Both ways, at most
	// one probe per target is in flight.
	//
	// After a HelloVerifyRequest or a ServerHello that answers a probe, the
	// checker sends the server a fatal user_canceled alert, so that it
	// drops the handshake at once: a server keeping per-peer handshake
	// state (pion keeps a session per peer until its handshake times out,
	// and retransmits its ServerHello flight meanwhile) spends nothing on
	// the probe beyond the round trip, and the next probe starts a new
	// handshake. A stateless server drops the alert, which belongs to no
	// session.
	ProbeDTLSHello
)

// String returns "coap-ping" or "dtls-hello".
func (p Probe) String() string {
	switch p {
	case ProbeCoAPPing:
		return "coap-ping"
	case ProbeDTLSHello:
		return "dtls-hello"
	}
	return fmt.Sprintf("Probe(%d)", uint8(p))
}

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
	// Probe is the kind of probe; the zero value is ProbeCoAPPing.
	Probe Probe
	// ProxyLocal prefixes each ping with a PROXY v2 LOCAL header, for
	// backends behind a balancer in proxy mode. It applies only to
	// ProbeCoAPPing.
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
	tmpl    []byte        // probe template
	idOff   int           // offset of the CoAP message id in tmpl
	wake    chan struct{} // tells Run that the targets changed
	running atomic.Bool

	// seqBase is the first record sequence number of DTLS probes, random
	// in [2^40, 2^41): far above the numbers a server gives its own
	// records, so that an echo of an earlier probe is recognised, and far
	// below 2^48, which a checker sending a million records a second
	// would reach in seven years.
	seqBase uint64

	mu      sync.RWMutex
	targets map[string]*target
	// pending maps the id of each probe in flight (the CoAP message id, or
	// the low 16 bits of the DTLS record sequence number) to its target.
	pending map[uint16]*target
	// seq is the sequence number of the latest DTLS record sent.
	seq   uint64
	alert []byte // buffer for the alerts that end DTLS handshakes
}

// target is the checker's record of one target. Its fields are guarded by
// Checker.mu.
type target struct {
	st   State
	dst  netip.AddrPort // Addr with IPv4 unmapped, where probes go
	src  netip.AddrPort // dst without zone, compared with answer sources
	next time.Time      // when to send the next probe; zero: at once

	inFlight bool
	id       uint16    // id of the probe in flight
	seq      uint64    // its DTLS record sequence number (ProbeDTLSHello)
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
	switch cfg.Probe {
	case ProbeCoAPPing:
	case ProbeDTLSHello:
		if cfg.ProxyLocal {
			return nil, fmt.Errorf("%w: ProxyLocal applies only to the CoAP ping", ErrConfig)
		}
	default:
		return nil, fmt.Errorf("%w: unknown probe %v", ErrConfig, cfg.Probe)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Checker{
		cfg:     cfg,
		log:     cfg.Logger,
		m:       m,
		wake:    make(chan struct{}, 1),
		targets: map[string]*target{},
		pending: map[uint16]*target{},
	}
	switch cfg.Probe {
	case ProbeCoAPPing:
		if cfg.ProxyLocal {
			c.tmpl = proxyv2.AppendHeader(c.tmpl, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
		}
		c.tmpl = peek.AppendCoAPPing(c.tmpl, 0)
		c.idOff = len(c.tmpl) - 2
	case ProbeDTLSHello:
		var random [32]byte
		crand.Read(random[:]) // never fails
		c.tmpl = peek.AppendDTLSClientHello(nil, &random, 0)
		c.seqBase = 1<<40 + rand.Uint64N(1<<40)
		c.seq = c.seqBase - 1
	}
	return c, nil
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
			delete(c.pending, t.id)
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

// reply is an answer to a probe received by the read loop.
type reply struct {
	from netip.AddrPort // canonical
	id   uint16         // CoAP message id, or low 16 bits of seq
	seq  uint64         // DTLS record sequence number
	dtls peek.DTLSHelloAnswer
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

	buf := make([]byte, 0, len(c.tmpl))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var changes []State
	for {
		// Take the answers already read before timing probes out.
	drain:
		for {
			select {
			case r := <-replies:
				changes = c.handleReply(conn, r, changes)
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
				changes = c.notify(c.handleReply(conn, r, changes))
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

// read reads the socket until it is closed and passes the answers to probes
// it receives to out. Anything else is counted as a bad reply.
func (c *Checker) read(ctx context.Context, conn *net.UDPConn, out chan<- reply) {
	// Large enough for a reset behind a PROXY header with a few TLVs and
	// for a HelloVerifyRequest or the ServerHello at the start of a
	// datagram; a longer datagram is read truncated, which leaves its
	// first record whole.
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
		if c.cfg.Probe == ProbeDTLSHello {
			a, seq := peek.ParseDTLSHelloAnswer(p)
			if a == peek.NotDTLSHelloAnswer {
				c.badReply(from, "not an answer to a DTLS ClientHello", nil)
				continue
			}
			select {
			case out <- reply{from: canonical(from), id: uint16(seq), seq: seq, dtls: a, at: at}:
			case <-ctx.Done():
				return
			}
			continue
		}
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
		case out <- reply{from: canonical(from), id: binary.BigEndian.Uint16(p[2:]), at: at}:
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

// appendAlert appends a plaintext fatal user_canceled alert record (epoch
// 0) with the next sequence number to b. c.mu must be held.
func (c *Checker) appendAlert(b []byte) []byte {
	const userCanceled = 90
	c.seq++
	seq := c.seq
	return append(b, peek.ContentAlert, 0xFE, 0xFD, 0, 0,
		byte(seq>>40), byte(seq>>32), byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq),
		0, 2, 2, userCanceled)
}

// handleReply matches an answer to its probe and appends the resulting
// transition, if any, to changes.
func (c *Checker) handleReply(conn *net.UDPConn, r reply, changes []State) []State {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t *target
	if c.cfg.Probe == ProbeDTLSHello {
		if t = c.matchDTLS(r); t == nil {
			return changes
		}
		if r.dtls != peek.DTLSAlert {
			// The server may keep state for the handshake until it
			// times out: end it.
			c.alert = c.appendAlert(c.alert[:0])
			if _, err := conn.WriteToUDPAddrPort(c.alert, t.dst); err != nil {
				c.log.Debug("health check: send alert", "backend", t.st.ID, "err", err)
			}
		}
	} else {
		t = c.pending[r.id]
		switch {
		case t == nil:
			c.badReply(r.from, "no probe in flight with this message id", nil)
			return changes
		case r.from != t.src:
			c.badReply(r.from, "reset from another address than the target's", nil)
			return changes
		}
	}
	if r.at.Sub(t.sent) > c.cfg.Timeout {
		// The timeout is about to be handled.
		c.badReply(r.from, "late answer", nil)
		return changes
	}
	delete(c.pending, t.id)
	t.inFlight = false
	c.m.check(resultOK)
	if r.dtls != peek.NotDTLSHelloAnswer && c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("health check: DTLS answer", "backend", t.st.ID, "answer", r.dtls.String(), "seq", r.seq, "echo", r.seq == t.seq)
	}
	t.st.LastRTT = r.at.Sub(t.sent)
	t.st.LastError = ""
	t.st.Failures = 0
	t.st.Successes++
	if !t.st.Known || (!t.st.Healthy && t.st.Successes >= c.cfg.Rise) {
		changes = append(changes, c.transition(t, true, r.at))
	}
	return changes
}

// matchDTLS returns the target whose probe a DTLS answer answers, or nil
// after counting it as a bad reply. c.mu must be held.
func (c *Checker) matchDTLS(r reply) *target {
	if t := c.pending[r.id]; t != nil && t.seq == r.seq && t.src == r.from {
		return t // the server echoed the probe's sequence number
	}
	// The server numbers its own records, or echoes an earlier probe:
	// find the probe in flight to its address.
	for _, t := range c.pending {
		if t.src != r.from {
			continue
		}
		if r.seq >= c.seqBase && r.seq < t.seq {
			c.badReply(r.from, "answer to an earlier probe", nil)
			return nil
		}
		return t
	}
	c.badReply(r.from, "no probe in flight to this address", nil)
	return nil
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
			delete(c.pending, t.id)
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

// probe sends a probe to t. c.mu must be held.
func (c *Checker) probe(conn *net.UDPConn, t *target, buf []byte, changes []State) ([]byte, []State) {
	now := time.Now()
	if !t.dst.IsValid() || t.dst.Port() == 0 {
		return buf, c.fail(t, now, resultSendError, "invalid address "+t.st.Addr.String(), changes)
	}
	buf = append(buf[:0], c.tmpl...)
	var id uint16
	var seq uint64
	if c.cfg.Probe == ProbeDTLSHello {
		seq = c.newSeq()
		id = uint16(seq)
		// The 48-bit sequence number; its low 16 bits are the id.
		binary.BigEndian.PutUint16(buf[peek.DTLSSeqOffset:], uint16(seq>>32))
		binary.BigEndian.PutUint32(buf[peek.DTLSSeqOffset+2:], uint32(seq))
	} else {
		id = c.newMID(t.id)
		binary.BigEndian.PutUint16(buf[c.idOff:], id)
	}
	if _, err := conn.WriteToUDPAddrPort(buf, t.dst); err != nil {
		return buf, c.fail(t, now, resultSendError, "send: "+err.Error(), changes)
	}
	t.inFlight = true
	t.id = id
	t.seq = seq
	t.sent = now
	c.pending[id] = t
	return buf, changes
}

// newSeq returns the next DTLS record sequence number whose low 16 bits are
// not the id of a probe in flight. c.mu must be held.
func (c *Checker) newSeq() uint64 {
	for {
		c.seq++
		if _, busy := c.pending[uint16(c.seq)]; !busy {
			return c.seq
		}
	}
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
