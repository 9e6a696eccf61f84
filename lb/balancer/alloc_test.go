package balancer

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// hotWorker returns a proxy-mode worker whose snapshot has three healthy
// backends (sinks that never answer) and whose input batch holds n client
// datagrams of 60 bytes from 1,000 distinct clients.
func hotWorker(tb testing.TB, n int) (*worker, func(i int)) {
	tb.Helper()
	sinks := make([]*net.UDPConn, 3)
	var bs []Backend
	for i := range sinks {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tb.Fatal(err)
		}
		pc.SetReadBuffer(1 << 16)
		tb.Cleanup(func() { pc.Close() })
		sinks[i] = pc
		bs = append(bs, Backend{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()})
	}
	b, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Logger: quiet, Batch: n})
	if err != nil {
		tb.Fatal(err)
	}
	b.SetBackends(bs)
	forceHealthy(b)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	w, err := newWorker(b, pc, pc.LocalAddr().(*net.UDPAddr).AddrPort(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	fill := func(round int) {
		for i := range w.in {
			m := &w.in[i]
			m.Offset = headroom
			m.N = 60
			c := (round*n + i) % 1000
			m.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(c % 250)}), uint16(20000+c))
		}
	}
	return w, fill
}

// TestForwardAllocs: forwarding a batch through an established flow table
// allocates nothing.
func TestForwardAllocs(t *testing.T) {
	w, fill := hotWorker(t, 64)
	now := time.Now()
	for r := range 20 { // establish the flows
		fill(r)
		w.handle(64, now)
	}
	round := 0
	allocs := testing.AllocsPerRun(200, func() {
		fill(round)
		round++
		w.handle(64, now)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 64-datagram batch, want 0", allocs)
	}
	if got := w.c.tx.Load(); got == 0 {
		t.Fatal("nothing was sent")
	}
	if d := w.b.Totals().Dropped; d["no_backend"] != 0 || d["internal"] != 0 {
		t.Fatalf("drops: %v", d)
	}
}

// TestReplyAllocs: relaying a batch of backend replies allocates nothing.
func TestReplyAllocs(t *testing.T) {
	w, _ := hotWorker(t, 64)
	backend := w.b.snap.Load().addrs[0]
	client := netip.MustParseAddrPort("127.0.0.1:9") // discard port
	for i := range w.in {
		m := &w.in[i]
		m.Offset = headroom
		h := proxyv2.AppendHeader(m.Buf[headroom:headroom], proxyv2.Proxy, w.vip, client)
		m.N = len(h) + copy(m.Buf[headroom+len(h):], make([]byte, 60))
		m.Addr = backend
	}
	allocs := testing.AllocsPerRun(200, func() { w.handle(64, time.Now()) })
	if allocs != 0 {
		t.Fatalf("%v allocations per 64-reply batch, want 0", allocs)
	}
	if got := w.c.replies.Load(); got == 0 {
		t.Fatal("no reply relayed")
	}
}

// BenchmarkForwardProxy: per-datagram cost of the proxy-mode forward path
// (flow lookup, PROXY v2 header, sendmmsg), 64-datagram batches.
func BenchmarkForwardProxy(b *testing.B) {
	w, fill := hotWorker(b, 64)
	now := time.Now()
	round := 0
	b.ReportAllocs()
	for b.Loop() {
		fill(round)
		round++
		w.handle(64, now)
	}
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "datagrams/s")
}
