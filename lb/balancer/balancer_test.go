package balancer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/maglev"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// echo is a test backend: it answers CoAP pings with resets and echoes
// everything else prefixed with its name, speaking PROXY v2 when proxy.
type echo struct {
	name  string
	pc    *net.UDPConn
	proxy bool
	mu    sync.Mutex
	seen  map[netip.AddrPort]int // client -> datagrams (proxy mode: from the header)
	hdrs  []proxyv2.Header
	done  chan struct{}
}

func startEcho(t *testing.T, ip string, proxy bool) *echo {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{name: pc.LocalAddr().String(), pc: pc, proxy: proxy, seen: map[netip.AddrPort]int{}, done: make(chan struct{})}
	go e.serve()
	t.Cleanup(e.stop)
	return e
}

func (e *echo) addr() netip.AddrPort { return e.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (e *echo) stop() {
	select {
	case <-e.done:
	default:
		e.pc.Close()
		<-e.done
	}
}

func (e *echo) serve() {
	defer close(e.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := e.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		if e.proxy {
			h, payload, err := proxyv2.Parse(b)
			if err != nil {
				continue
			}
			if h.Command == proxyv2.Local {
				if mid, ok := peek.IsCoAPPing(payload); ok {
					out := proxyv2.AppendHeader(nil, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
					e.pc.WriteToUDPAddrPort(peek.AppendCoAPReset(out, mid), from)
				}
				continue
			}
			e.mu.Lock()
			e.seen[h.Src]++
			e.hdrs = append(e.hdrs, h)
			e.mu.Unlock()
			out := proxyv2.AppendHeader(nil, proxyv2.Proxy, h.Dst, h.Src)
			out = append(out, e.name+":"...)
			e.pc.WriteToUDPAddrPort(append(out, payload...), from)
			continue
		}
		if mid, ok := peek.IsCoAPPing(b); ok {
			e.pc.WriteToUDPAddrPort(peek.AppendCoAPReset(nil, mid), from)
			continue
		}
		e.mu.Lock()
		e.seen[from]++
		e.mu.Unlock()
		e.pc.WriteToUDPAddrPort(append([]byte(e.name+":"), b...), from)
	}
}

type lbFixture struct {
	b      *Balancer
	vip    netip.AddrPort
	echoes []*echo
	cancel context.CancelFunc
	done   chan error
}

func startLB(t *testing.T, mode Mode, n int) *lbFixture {
	t.Helper()
	f := &lbFixture{}
	var bs []Backend
	for i := range n {
		e := startEcho(t, fmt.Sprintf("127.0.1.%d", i+1), mode == ModeProxy)
		f.echoes = append(f.echoes, e)
		bs = append(bs, Backend{Addr: e.addr()})
	}
	port := freePort(t)
	f.vip = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	b, err := New(Config{
		Listen: []netip.AddrPort{f.vip}, Mode: mode, Workers: 2, Logger: quiet,
		Health: health.Config{Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond, Rise: 2, Fall: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetBackends(bs)
	f.b = b
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan error, 1)
	go func() { f.done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-f.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "backends up", func() bool {
		for _, s := range b.Backends() {
			if s.State != "up" {
				return false
			}
		}
		return true
	})
	return f
}

func freePort(t *testing.T) int {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ask sends payload from c to the VIP and returns the answering backend's
// name.
func ask(t *testing.T, c *net.UDPConn, vip netip.AddrPort, payload string) (string, error) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(payload), vip); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", err
	}
	if from != vip {
		return "", fmt.Errorf("answer from %v, want the service address %v", from, vip)
	}
	name, rest, ok := cut(string(buf[:n]))
	if !ok || rest != payload {
		return "", fmt.Errorf("answer %q to %q", buf[:n], payload)
	}
	return name, nil
}

func cut(s string) (string, string, bool) {
	// names are "127.0.1.x:port"; the payload follows the second ':'.
	first := -1
	for i := range s {
		if s[i] == ':' {
			if first >= 0 {
				return s[:i], s[i+1:], true
			}
			first = i
		}
	}
	return "", "", false
}

func clients(t *testing.T, n int) []*net.UDPConn {
	cs := make([]*net.UDPConn, n)
	for i := range cs {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs
}

func testStickyFailover(t *testing.T, mode Mode) {
	f := startLB(t, mode, 3)
	cs := clients(t, 150)
	first := map[*net.UDPConn]string{}
	per := map[string]int{}
	for i, c := range cs {
		name, err := ask(t, c, f.vip, fmt.Sprintf("hello-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		first[c] = name
		per[name]++
	}
	if len(per) != 3 {
		t.Fatalf("flows spread over %d backends, want 3: %v", len(per), per)
	}
	for i, c := range cs { // every flow sticks
		if name, err := ask(t, c, f.vip, fmt.Sprintf("again-%d", i)); err != nil || name != first[c] {
			t.Fatalf("client %d moved from %s to %s (%v)", i, first[c], name, err)
		}
	}
	if mode == ModeProxy {
		e := f.echoes[0]
		e.mu.Lock()
		for _, h := range e.hdrs {
			if h.Dst != f.vip || !h.Src.Addr().IsLoopback() {
				t.Fatalf("PROXY header %+v: want src = the client, dst = %v", h, f.vip)
			}
		}
		e.mu.Unlock()
	}
	// Kill one backend: only its flows move.
	dead := f.echoes[1]
	dead.stop()
	waitFor(t, "backend down", func() bool {
		for _, s := range f.b.Backends() {
			if s.Addr == dead.name {
				return s.State == "down"
			}
		}
		return false
	})
	for i, c := range cs {
		name, err := ask(t, c, f.vip, fmt.Sprintf("after-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if first[c] == dead.name {
			if name == dead.name {
				t.Fatalf("client %d still on the dead backend", i)
			}
		} else if name != first[c] {
			t.Fatalf("client %d of a live backend moved from %s to %s", i, first[c], name)
		}
	}
}

func TestProxyStickyFailover(t *testing.T) { testStickyFailover(t, ModeProxy) }
func TestNATStickyFailover(t *testing.T)   { testStickyFailover(t, ModeNAT) }

func TestProxyForgedAndBadReplies(t *testing.T) {
	f := startLB(t, ModeProxy, 1)
	c := clients(t, 1)[0]
	forged := proxyv2.AppendHeader(nil, proxyv2.Proxy, netip.MustParseAddrPort("10.9.9.9:1"), f.vip)
	c.WriteToUDPAddrPort(append(forged, "x"...), f.vip)
	// A backend that sends garbage to the VIP.
	e := f.echoes[0]
	e.pc.WriteToUDPAddrPort([]byte("garbage"), f.vip)
	// A reply naming a service address the balancer does not have.
	bad := proxyv2.AppendHeader(nil, proxyv2.Proxy, netip.MustParseAddrPort("127.0.0.99:5683"), c.LocalAddr().(*net.UDPAddr).AddrPort())
	e.pc.WriteToUDPAddrPort(append(bad, "y"...), f.vip)
	waitFor(t, "drops counted", func() bool {
		d := f.b.Totals().Dropped
		return d["forged_proxy_header"] == 1 && d["bad_backend_reply"] == 2
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.hdrs) != 0 {
		t.Fatalf("forged datagram reached the backend: %+v", e.hdrs)
	}
}

func TestAddBackendMovesNoFlow(t *testing.T) {
	f := startLB(t, ModeProxy, 2)
	cs := clients(t, 100)
	first := map[*net.UDPConn]string{}
	for i, c := range cs {
		name, err := ask(t, c, f.vip, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		first[c] = name
	}
	e := startEcho(t, "127.0.1.9", true)
	f.b.SetBackends([]Backend{{Addr: f.echoes[0].addr()}, {Addr: f.echoes[1].addr()}, {Addr: e.addr()}})
	// Up in the health checks, then in the published Maglev table (the
	// rebuild that follows the transition takes a few milliseconds).
	waitFor(t, "new backend up", func() bool {
		return len(f.b.Backends()) == 3 && f.b.Backends()[2].State == "up" && len(f.b.snap.Load().tableIDs) == 3
	})
	for i, c := range cs {
		if name, _ := ask(t, c, f.vip, fmt.Sprint(i)); name != first[c] {
			t.Fatalf("client %d moved from %s to %s when a backend was added", i, first[c], name)
		}
	}
	// New clients do reach the new backend.
	got := false
	for _, c := range clients(t, 60) {
		if name, _ := ask(t, c, f.vip, "new"); name == e.name {
			got = true
		}
	}
	if !got {
		t.Fatal("no new client placed on the added backend")
	}
}

func TestDrainingKeepsFlows(t *testing.T) {
	f := startLB(t, ModeProxy, 2)
	cs := clients(t, 60)
	first := map[*net.UDPConn]string{}
	for i, c := range cs {
		first[c], _ = ask(t, c, f.vip, fmt.Sprint(i))
	}
	drained := f.echoes[0]
	f.b.SetBackends([]Backend{{Addr: drained.addr(), Draining: true}, {Addr: f.echoes[1].addr()}})
	for i, c := range cs {
		if name, _ := ask(t, c, f.vip, fmt.Sprint(i)); name != first[c] {
			t.Fatalf("client %d moved off a draining backend", i)
		}
	}
	for _, c := range clients(t, 60) {
		if name, _ := ask(t, c, f.vip, "new"); name == drained.name {
			t.Fatal("a new client was placed on a draining backend")
		}
	}
}

func TestSamePlacementAcrossBalancers(t *testing.T) {
	mk := func(order []int) *Balancer {
		b, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		addrs := []string{"10.0.0.1:5683", "10.0.0.2:5683", "10.0.0.3:5683"}
		var bs []Backend
		for _, i := range order {
			bs = append(bs, Backend{Addr: netip.MustParseAddrPort(addrs[i])})
		}
		b.SetBackends(bs)
		return b
	}
	// Placement depends only on the healthy set: build the tables as if
	// every backend were healthy, without probing.
	b1, b2 := mk([]int{0, 1, 2}), mk([]int{2, 0, 1})
	forceHealthy(b1)
	forceHealthy(b2)
	for i := range 1000 {
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), uint16(10000+i))
		p1, ok1 := b1.Place(c)
		p2, ok2 := b2.Place(c)
		if !ok1 || !ok2 || p1 != p2 {
			t.Fatalf("client %v: %v vs %v", c, p1, p2)
		}
	}
}

// forceHealthy builds the snapshot as if every backend were healthy.
func forceHealthy(b *Balancer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &snapshot{usable: make([]bool, len(b.backends)), addrs: make([]netip.AddrPort, len(b.backends)), byAddr: map[netip.AddrPort]int32{}, byNode: map[uint16]int32{}}
	var mb []maglev.Backend
	var ids []int32
	for _, be := range b.backends {
		s.addrs[be.id], s.usable[be.id] = be.addr, true
		s.byAddr[be.addr] = be.id
		if be.nodeID != 0 {
			s.byNode[be.nodeID] = be.id
		}
		mb = append(mb, maglev.Backend{Name: be.addr.String(), Weight: 1})
		ids = append(ids, be.id)
	}
	t, err := b.builder.Build(mb)
	if err != nil {
		panic(err)
	}
	s.table, s.tableIDs = t, ids
	b.snap.Store(s)
}

func TestRunErrors(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("no listen address accepted")
	}
	if _, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:5683")}}); err == nil {
		t.Fatal("wildcard listen address accepted")
	}
	if _, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5683")}, Mode: "dsr"}); err == nil {
		t.Fatal("unknown mode accepted")
	}
	if _, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5683")}, MaglevSize: 100}); err == nil {
		t.Fatal("non-prime maglev size accepted")
	}
}
