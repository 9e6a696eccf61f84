package health_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// Test timing. Assertions on durations use slack times the bound the
// checker promises, so that a loaded machine does not make them fail.
const (
	interval = 50 * time.Millisecond
	slack    = 10
	// long bounds waits for things that should happen within a few
	// intervals.
	long = 5 * time.Second
)

// backend is a fake CoAP backend answering pings with resets.
type backend struct {
	t    *testing.T
	addr netip.AddrPort

	// wrapReply prefixes resets with a PROXY LOCAL header.
	wrapReply bool
	// requireLocal drops pings without a PROXY LOCAL header.
	requireLocal bool
	// answer, when not nil, answers instead of the backend: it gets the
	// backend's socket and the ping's message id and source.
	answer func(conn *net.UDPConn, mid uint16, from netip.AddrPort)

	pings atomic.Int64 // pings received

	mu   sync.Mutex
	conn *net.UDPConn
	done chan struct{}
}

// newBackend starts a fake backend on 127.0.0.1 (or addr, if given).
func newBackend(t *testing.T, configure func(b *backend)) *backend {
	t.Helper()
	b := &backend{t: t}
	if configure != nil {
		configure(b)
	}
	b.start(netip.MustParseAddrPort("127.0.0.1:0"))
	t.Cleanup(b.stop)
	return b
}

func (b *backend) start(at netip.AddrPort) {
	b.t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(at))
	if err != nil {
		b.t.Fatal(err)
	}
	done := make(chan struct{})
	b.mu.Lock()
	b.conn, b.done = conn, done
	b.addr = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	b.mu.Unlock()
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			h, payload, err := proxyv2.Parse(p)
			switch {
			case err == nil && h.Command == proxyv2.Local:
				p = payload
			case errors.Is(err, proxyv2.ErrNoSignature) && !b.requireLocal:
			default:
				continue
			}
			mid, ok := peek.IsCoAPPing(p)
			if !ok {
				continue
			}
			b.pings.Add(1)
			if b.answer != nil {
				b.answer(conn, mid, from)
				continue
			}
			var out []byte
			if b.wrapReply {
				out = proxyv2.AppendHeader(out, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
			}
			out = peek.AppendCoAPReset(out, mid)
			conn.WriteToUDPAddrPort(out, from)
		}
	}()
}

// stop kills the backend; its port then answers nothing.
func (b *backend) stop() {
	b.mu.Lock()
	conn, done := b.conn, b.done
	b.conn = nil
	b.mu.Unlock()
	if conn != nil {
		conn.Close()
		<-done
	}
}

// restart starts the backend again on the same port.
func (b *backend) restart() { b.start(b.addr) }

func (b *backend) target() health.Target {
	return health.Target{ID: b.addr.String(), Addr: b.addr}
}

// checker is a running Checker with a record of its transitions.
type checker struct {
	*health.Checker
	reg     *prometheus.Registry
	changes chan health.State
}

// start creates and runs a Checker with the given targets; the test's
// cleanup stops it and checks that Run returned nil.
func start(t *testing.T, cfg health.Config, ts ...health.Target) *checker {
	t.Helper()
	c := &checker{reg: prometheus.NewRegistry(), changes: make(chan health.State, 100)}
	if cfg.Interval == 0 {
		cfg.Interval = interval
	}
	cfg.Registerer = c.reg
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.OnChange = func(s health.State) {
		// The callback may use the checker, which already reflects
		// the transition.
		if got := c.Healthy(s.ID); got != s.Healthy {
			t.Errorf("OnChange(%+v): Healthy = %v", s, got)
		}
		c.changes <- s
	}
	var err error
	c.Checker, err = health.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTargets(ts)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(long):
			t.Error("Run did not return after cancel")
		}
	})
	return c
}

// next returns the next transition, failing the test if none comes within
// d.
func (c *checker) next(t *testing.T, d time.Duration) health.State {
	t.Helper()
	select {
	case s := <-c.changes:
		return s
	case <-time.After(d):
		t.Fatalf("no transition within %v; states %+v", d, c.States())
		return health.State{}
	}
}

// none checks that no transition happens within d.
func (c *checker) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case s := <-c.changes:
		t.Fatalf("unexpected transition %+v", s)
	case <-time.After(d):
	}
}

// metric returns the value of the metric with the given name and label, and
// whether it exists.
func (c *checker) metric(t *testing.T, name, label, value string) (float64, bool) {
	t.Helper()
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.Counter != nil {
						return m.Counter.GetValue(), true
					}
					return m.Gauge.GetValue(), true
				}
			}
		}
	}
	return 0, false
}

func (c *checker) checks(t *testing.T, result string) float64 {
	t.Helper()
	v, _ := c.metric(t, "lwm2m_lb_health_checks_total", "result", result)
	return v
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(long)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, long)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func checkState(t *testing.T, s health.State, id string, healthy bool, successes, failures int) {
	t.Helper()
	if s.ID != id || !s.Known || s.Healthy != healthy || s.Successes != successes || s.Failures != failures || s.LastChange.IsZero() {
		t.Fatalf("state %+v; want %s known healthy=%v successes=%d failures=%d", s, id, healthy, successes, failures)
	}
}

func TestKillAndRestore(t *testing.T) {
	const rise, fall = 2, 3
	b := newBackend(t, nil)
	c := start(t, health.Config{Rise: rise, Fall: fall}, b.target())
	id := b.addr.String()

	s := c.next(t, long)
	checkState(t, s, id, true, 1, 0)
	if s.LastRTT <= 0 || s.LastError != "" || s.Addr != b.addr {
		t.Errorf("first state %+v", s)
	}
	if !c.Healthy(id) {
		t.Error("not Healthy after going up")
	}

	// Kill: down within fall intervals plus the timeout.
	killed := time.Now()
	b.stop()
	s = c.next(t, long)
	detect := time.Since(killed)
	t.Logf("down %v after the kill", detect)
	checkState(t, s, id, false, 0, fall)
	if s.LastError == "" {
		t.Error("no LastError when down")
	}
	if bound := fall*interval + interval; detect > slack*bound {
		t.Errorf("down after %v, want about %v", detect, bound)
	}
	if c.Healthy(id) {
		t.Error("Healthy after going down")
	}
	if v, _ := c.metric(t, "lwm2m_lb_backend_up", "backend", id); v != 0 {
		t.Errorf("backend_up = %v while down", v)
	}

	// Restore: up again after rise successes, not before.
	b.restart()
	s = c.next(t, long)
	checkState(t, s, id, true, rise, 0)
	if v, _ := c.metric(t, "lwm2m_lb_backend_up", "backend", id); v != 1 {
		t.Errorf("backend_up = %v while up", v)
	}
	c.none(t, 4*interval)

	if v, _ := c.metric(t, "lwm2m_lb_backend_transitions_total", "to", "up"); v != 2 {
		t.Errorf("transitions to up = %v, want 2", v)
	}
	if v, _ := c.metric(t, "lwm2m_lb_backend_transitions_total", "to", "down"); v != 1 {
		t.Errorf("transitions to down = %v, want 1", v)
	}
	if c.checks(t, "ok") < 1+rise || c.checks(t, "timeout") < fall {
		t.Errorf("checks: ok %v, timeout %v", c.checks(t, "ok"), c.checks(t, "timeout"))
	}
}

// TestFirstSuccess checks that a new target is probed as soon as it is added
// and that its first success makes it healthy, with an interval far longer
// than the test.
func TestFirstSuccess(t *testing.T) {
	b := newBackend(t, nil)
	c := start(t, health.Config{Interval: time.Hour, Rise: 5})
	c.SetTargets([]health.Target{b.target()})
	checkState(t, c.next(t, long), b.addr.String(), true, 1, 0)
	if b.pings.Load() != 1 {
		t.Errorf("%d pings, want 1", b.pings.Load())
	}
}

func TestUnknownToDown(t *testing.T) {
	const fall = 2
	b := newBackend(t, nil)
	b.stop()
	c := start(t, health.Config{Fall: fall}, b.target())
	s := c.next(t, long)
	checkState(t, s, b.addr.String(), false, 0, fall)
	if states := c.States(); len(states) != 1 || states[0] != s {
		t.Errorf("States = %+v, want [%+v]", states, s)
	}
}

func TestUnknownBeforeFirstResult(t *testing.T) {
	b := newBackend(t, nil)
	b.stop()
	c := start(t, health.Config{Interval: time.Hour, Timeout: time.Hour}, b.target())
	c.none(t, 3*interval)
	s := c.States()[0]
	if s.Known || s.Healthy || s.Successes != 0 || s.Failures != 0 || !s.LastChange.IsZero() {
		t.Errorf("state of a new target %+v", s)
	}
	if v, ok := c.metric(t, "lwm2m_lb_backend_up", "backend", s.ID); !ok || v != 0 {
		t.Errorf("backend_up = %v, %v for an unknown target", v, ok)
	}
}

func TestProxyLocal(t *testing.T) {
	for _, tc := range []struct {
		name                           string
		proxyLocal, wrap, requireLocal bool
		up                             bool
	}{
		{"bare ping, bare reset", false, false, false, true},
		{"bare ping, wrapped reset", false, true, false, true},
		{"LOCAL ping, bare reset", true, false, false, true},
		{"LOCAL ping, wrapped reset", true, true, false, true},
		{"LOCAL required, LOCAL ping", true, true, true, true},
		{"LOCAL required, bare ping", false, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, func(b *backend) { b.wrapReply, b.requireLocal = tc.wrap, tc.requireLocal })
			c := start(t, health.Config{ProxyLocal: tc.proxyLocal, Fall: 2}, b.target())
			s := c.next(t, long)
			if s.Healthy != tc.up {
				t.Fatalf("state %+v, want healthy %v", s, tc.up)
			}
			if !tc.up && c.checks(t, "timeout") < 2 {
				t.Errorf("%v timeouts", c.checks(t, "timeout"))
			}
		})
	}
}

// TestDgramBackend checks the checker against the backend's real listener in
// PROXY mode, which only answers LOCAL pings from trusted balancers.
func TestDgramBackend(t *testing.T) {
	l, err := dgram.Listen("127.0.0.1:0", dgram.Config{
		ProxyProtocol: true,
		Trusted:       []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().(*net.UDPAddr).AddrPort()
	c := start(t, health.Config{ProxyLocal: true}, health.Target{ID: "backend-1", Addr: addr})
	checkState(t, c.next(t, long), "backend-1", true, 1, 0)
	if st := l.Stats(); st.HealthPings == 0 || st.Sessions != 0 {
		t.Errorf("listener stats %+v", st)
	}
	l.Close()
	checkState(t, c.next(t, long), "backend-1", false, 0, health.DefaultFall)
}

func TestIgnoredReplies(t *testing.T) {
	rogue, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	reset := func(mid uint16) []byte { return peek.AppendCoAPReset(nil, mid) }
	for _, tc := range []struct {
		name   string
		answer func(conn *net.UDPConn, mid uint16, from netip.AddrPort)
	}{
		{"wrong message id", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			conn.WriteToUDPAddrPort(reset(mid+1), from)
		}},
		{"wrong source port", func(_ *net.UDPConn, mid uint16, from netip.AddrPort) {
			rogue.WriteToUDPAddrPort(reset(mid), from)
		}},
		{"wrong source address", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			// The same port on another loopback address.
			port := conn.LocalAddr().(*net.UDPAddr).Port
			other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port})
			if err != nil {
				t.Logf("cannot bind 127.0.0.2: %v; answering from another port", err)
				rogue.WriteToUDPAddrPort(reset(mid), from)
				return
			}
			defer other.Close()
			other.WriteToUDPAddrPort(reset(mid), from)
		}},
		{"ack instead of reset", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			conn.WriteToUDPAddrPort([]byte{0x60, 0, byte(mid >> 8), byte(mid)}, from)
		}},
		{"reset with trailing byte", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			conn.WriteToUDPAddrPort(append(reset(mid), 0), from)
		}},
		{"bad PROXY header", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			h := proxyv2.AppendHeader(nil, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
			h[12] = 0x10 // version 1
			conn.WriteToUDPAddrPort(append(h, reset(mid)...), from)
		}},
		{"garbage", func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			conn.WriteToUDPAddrPort([]byte("\x16\xfe\xfdgarbage"), from)
			conn.WriteToUDPAddrPort(nil, from)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, func(b *backend) { b.answer = tc.answer })
			c := start(t, health.Config{Fall: 2}, b.target())
			checkState(t, c.next(t, long), b.addr.String(), false, 0, 2)
			eventually(t, "bad replies counted", func() bool { return c.checks(t, "bad_reply") >= 2 })
			if v := c.checks(t, "ok"); v != 0 {
				t.Errorf("%v ok checks", v)
			}
		})
	}
}

// TestLateReply checks that a reset arriving after its probe timed out does
// not count as a success.
func TestLateReply(t *testing.T) {
	b := newBackend(t, func(b *backend) {
		b.answer = func(conn *net.UDPConn, mid uint16, from netip.AddrPort) {
			time.AfterFunc(3*interval/4, func() {
				// Fails harmlessly once the backend is closed.
				conn.WriteToUDPAddrPort(peek.AppendCoAPReset(nil, mid), from)
			})
		}
	})
	c := start(t, health.Config{Fall: 3, Timeout: interval / 2}, b.target())
	checkState(t, c.next(t, long), b.addr.String(), false, 0, 3)
	eventually(t, "late replies counted", func() bool { return c.checks(t, "bad_reply") >= 1 })
}

func TestSetTargets(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	c := start(t, health.Config{}, a.target())
	sa := c.next(t, long)
	checkState(t, sa, a.addr.String(), true, 1, 0)

	// Add b: a keeps its state, b comes up.
	c.SetTargets([]health.Target{b.target(), a.target()})
	checkState(t, c.next(t, long), b.addr.String(), true, 1, 0)
	states := c.States()
	if len(states) != 2 || states[0].ID > states[1].ID {
		t.Fatalf("States = %+v, want two sorted by ID", states)
	}
	for _, s := range states {
		if s.ID == a.addr.String() && s.LastChange != sa.LastChange {
			t.Errorf("a's state was reset: %+v", s)
		}
	}

	// Remove a: no more pings, no state, no metric.
	c.SetTargets([]health.Target{b.target()})
	pings := a.pings.Load()
	eventually(t, "b probed", func() bool { return b.pings.Load() > 3 })
	bPings := b.pings.Load()
	eventually(t, "b probed", func() bool { return b.pings.Load() > bPings+3 })
	if got := a.pings.Load(); got > pings+1 { // one may have been on its way
		t.Errorf("a got %d pings after removal", got-pings)
	}
	if c.Healthy(a.addr.String()) {
		t.Error("removed target Healthy")
	}
	if states := c.States(); len(states) != 1 || states[0].ID != b.addr.String() {
		t.Errorf("States = %+v", states)
	}
	if _, ok := c.metric(t, "lwm2m_lb_backend_up", "backend", a.addr.String()); ok {
		t.Error("backend_up series of a removed target")
	}
	if v, ok := c.metric(t, "lwm2m_lb_backend_up", "backend", b.addr.String()); !ok || v != 1 {
		t.Errorf("backend_up of b = %v, %v", v, ok)
	}

	// Same ID, new address: a new target, unknown until probed.
	c.SetTargets([]health.Target{{ID: b.addr.String(), Addr: a.addr}})
	s := c.next(t, long)
	checkState(t, s, b.addr.String(), true, 1, 0)
	if s.Addr != a.addr {
		t.Errorf("state %+v, want address %v", s, a.addr)
	}

	// Empty set, then no transitions.
	c.SetTargets(nil)
	if states := c.States(); len(states) != 0 {
		t.Errorf("States = %+v", states)
	}
	c.none(t, 3*interval)
}

func TestDuplicateID(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	c := start(t, health.Config{}, health.Target{ID: "x", Addr: a.addr}, health.Target{ID: "x", Addr: b.addr})
	s := c.next(t, long)
	if s.ID != "x" || s.Addr != a.addr || len(c.States()) != 1 {
		t.Errorf("state %+v, states %+v", s, c.States())
	}
}

func TestInvalidAddress(t *testing.T) {
	c := start(t, health.Config{Fall: 1}, health.Target{ID: "zero"})
	s := c.next(t, long)
	checkState(t, s, "zero", false, 0, 1)
	if c.checks(t, "send_error") < 1 {
		t.Error("no send_error counted")
	}
}

func TestIPv6(t *testing.T) {
	conn, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	conn.Close()
	b := &backend{t: t}
	b.start(netip.MustParseAddrPort("[::1]:0"))
	t.Cleanup(b.stop)
	v4 := newBackend(t, nil)
	c := start(t, health.Config{}, b.target(), v4.target())
	for range 2 {
		if s := c.next(t, long); !s.Healthy {
			t.Errorf("state %+v", s)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, cfg := range []health.Config{
		{Interval: -1},
		{Timeout: -1},
		{Rise: -1},
		{Fall: -1},
		{Interval: time.Second, Timeout: 2 * time.Second},
		{Timeout: 2 * time.Second}, // default interval 1s
		{LocalAddr: netip.MustParseAddrPort("[fe80::1%eth0]:0")},
	} {
		if _, err := health.New(cfg); !errors.Is(err, health.ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := health.New(health.Config{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := health.New(health.Config{Registerer: reg}); !errors.Is(err, health.ErrConfig) {
		t.Errorf("second checker on one registry: %v", err)
	}
}

func TestRunTwice(t *testing.T) {
	b := newBackend(t, nil)
	c := start(t, health.Config{}, b.target())
	c.next(t, long) // running
	if err := c.Run(t.Context()); !errors.Is(err, health.ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
}

func TestRunBadLocalAddr(t *testing.T) {
	c, err := health.New(health.Config{LocalAddr: netip.MustParseAddrPort("192.0.2.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(t.Context()); err == nil {
		t.Error("Run on an address this host does not have succeeded")
	}
}

// TestRestart checks that Run can run again and probes at once.
func TestRestart(t *testing.T) {
	b := newBackend(t, nil)
	changes := make(chan health.State, 10)
	c, err := health.New(health.Config{Interval: time.Hour, OnChange: func(s health.State) { changes <- s }})
	if err != nil {
		t.Fatal(err)
	}
	c.SetTargets([]health.Target{b.target()})
	for i := range 2 {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		want := int64(i + 1)
		eventually(t, "probed", func() bool { return b.pings.Load() == want })
		if i == 0 {
			if s := <-changes; !s.Healthy {
				t.Errorf("state %+v", s)
			}
		}
		eventually(t, "answered", func() bool { return c.States()[0].Successes == i+1 })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// TestNoLeak checks that Run leaves no goroutine behind.
func TestNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		b := newBackend(t, nil)
		dead := newBackend(t, nil)
		dead.stop()
		c, err := health.New(health.Config{Interval: interval})
		if err != nil {
			t.Fatal(err)
		}
		c.SetTargets([]health.Target{b.target(), dead.target()})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		eventually(t, "probed", func() bool { return b.pings.Load() >= 3 })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		b.stop()
	}()
	eventually(t, "goroutines gone", func() bool { return runtime.NumGoroutine() <= before })
}
