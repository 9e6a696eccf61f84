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

// cidRecord returns a tls12_cid record header (and a few payload bytes)
// whose CID starts with node.
func cidRecord(node uint16) []byte {
	b := []byte{25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7, byte(node >> 8), byte(node), 1, 2, 3, 4, 5, 6, 0, 8}
	return append(b, make([]byte, 8)...)
}

// TestCIDRouting: a CID record goes to the node that issued the CID, even
// from a client the flow table places elsewhere; the new address follows;
// an unknown node falls back to the flow table.
func TestCIDRouting(t *testing.T) {
	w, _ := hotWorker(t, 1)
	b := w.b
	b.cfg.CIDLen = 8
	var bs []Backend
	for i, a := range b.snap.Load().addrs {
		bs = append(bs, Backend{Addr: a, NodeID: uint16(100 + i)})
	}
	b.SetBackends(bs)
	forceHealthy(b)
	s := b.snap.Load()
	client := netip.MustParseAddrPort("192.0.2.55:40000")
	placed, _ := b.Place(client)
	var target int
	for i, a := range s.addrs {
		if a != placed {
			target = i
			break
		}
	}
	send := func(payload []byte) netip.AddrPort {
		m := &w.in[0]
		m.Offset, m.Addr = headroom, client
		m.N = copy(m.Buf[headroom:], payload)
		w.handle(1, time.Now())
		if len(w.out) != 1 {
			t.Fatalf("%d datagrams out", len(w.out))
		}
		return w.out[0].Addr
	}
	if got := send(cidRecord(uint16(100 + target))); got != s.addrs[target] {
		t.Fatalf("CID record for node %d went to %v, want %v", 100+target, got, s.addrs[target])
	}
	// A plain datagram from the same client now follows the CID's node.
	if got := send([]byte("coap")); got != s.addrs[target] {
		t.Fatalf("the client's next datagram went to %v, want %v", got, s.addrs[target])
	}
	if got := send(cidRecord(999)); got != s.addrs[target] {
		t.Fatalf("unknown node: went to %v, want the flow's backend %v", got, s.addrs[target])
	}
	if tot := b.Totals(); tot.CIDRouted != 1 || tot.CIDUnknown != 1 {
		t.Fatalf("CID counters %+v", tot)
	}
}
