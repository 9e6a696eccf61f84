package balancer

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
)

// startPlainEcho runs a backend that echoes every datagram as is, without
// allocating, until the test ends; size, when not 0, pads the answers to
// that many bytes.
func startPlainEcho(tb testing.TB, size int) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	pc.SetReadBuffer(1 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, max(2048, size))
		rst := make([]byte, 0, 16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if mid, ok := peek.IsCoAPPing(buf[:n]); ok { // health checks
				pc.WriteToUDPAddrPort(peek.AppendCoAPReset(rst[:0], mid), from)
				continue
			}
			pc.WriteToUDPAddrPort(buf[:max(n, size)], from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// natWorker returns a NAT-mode worker (with its reply relay running) in
// front of three echo backends, and a function that fills its input batch
// with n datagrams of 60 bytes from 1,000 distinct loopback clients.
func natWorker(tb testing.TB, n int) (*worker, func(round int)) {
	tb.Helper()
	var bs []Backend
	for range 3 {
		bs = append(bs, Backend{Addr: startPlainEcho(tb, 0)})
	}
	b, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Mode: ModeNAT, Logger: quiet, Batch: n})
	if err != nil {
		tb.Fatal(err)
	}
	b.SetBackends(bs)
	forceHealthy(b)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	w, err := newWorker(b, pc, pc.LocalAddr().(*net.UDPAddr).AddrPort(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close(); b.nat.closeAll() })
	fill := func(round int) {
		for i := range w.in {
			m := &w.in[i]
			m.Offset = headroom
			m.N = 60
			c := (round*n + i) % 1000
			// Replies go to closed loopback ports: sent, then dropped.
			m.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(40000+c))
		}
	}
	return w, fill
}

// TestNATAllocs: in NAT mode, forwarding a batch through established flows
// and relaying the backends' replies allocates nothing.
func TestNATAllocs(t *testing.T) {
	w, fill := natWorker(t, 64)
	now := time.Now()
	for r := range 20 { // open the 1,000 flows
		fill(r)
		w.handle(64, now)
	}
	if got := w.b.nat.open(); got != 1000 {
		t.Fatalf("%d flows open, want 1000", got)
	}
	rc := w.b.m.relayCounters
	waitFor(t, "replies relayed", func() bool { return rc.replies.Load() > 0 })
	round := 0
	allocs := testing.AllocsPerRun(200, func() {
		fill(round)
		round++
		w.handle(64, now)
		time.Sleep(100 * time.Microsecond) // let the relay run
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 64-datagram batch and its replies, want 0", allocs)
	}
	want := uint64(64 * 220)
	waitFor(t, "every reply relayed", func() bool { return rc.replies.Load() >= want*9/10 })
	if d := w.b.Totals().Dropped; d["no_backend"] != 0 || d["upstream_socket"] != 0 {
		t.Fatalf("drops: %v", d)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestNATLifecycle: flows expire, move off a lost backend, respect the
// flow cap, and closeAll leaves no descriptor or goroutine behind.
func TestNATLifecycle(t *testing.T) {
	fds, gs := openFDs(t), runtime.NumGoroutine()
	func() {
		w, fill := natWorker(t, 10)
		b := w.b
		b.cfg.FlowIdleTimeout = time.Second
		b.nat.max = 25
		now := time.Now()
		for r := range 3 {
			fill(r)
			w.handle(10, now)
		}
		if got := b.nat.open(); got != 25 {
			t.Fatalf("%d flows open, want the cap of 25", got)
		}
		if d := b.Totals().Dropped["flow_limit"]; d != 5 {
			t.Fatalf("flow_limit drops %d, want 5", d)
		}
		waitFor(t, "replies", func() bool { return b.m.relayCounters.replies.Load() >= 25 })
		counts := b.nat.countByBackend()
		closed := b.nat.closeBackend(0)
		if closed != counts[0] || b.nat.open() != int64(25-closed) {
			t.Fatalf("closeBackend closed %d of %v; %d open", closed, counts, b.nat.open())
		}
		b.nat.sweep(now.Add(500 * time.Millisecond))
		if b.nat.open() != int64(25-closed) {
			t.Fatal("sweep closed flows that were not idle")
		}
		b.nat.sweep(now.Add(2 * time.Second))
		if b.nat.open() != 0 {
			t.Fatalf("%d flows left after their idle timeout", b.nat.open())
		}
		// Replacing flows reuses the relay's slots.
		fill(0)
		w.handle(10, time.Now())
		waitFor(t, "replies on reopened flows", func() bool { return b.m.relayCounters.replies.Load() >= 35 })
		if n := len(w.relay.flows); n > 25 {
			t.Fatalf("relay has %d slots for at most 25 flows", n)
		}
		b.nat.closeAll()
		if b.nat.open() != 0 {
			t.Fatal("flows left after closeAll")
		}
	}()
	if got := openFDs(t); got > fds+8 { // the test's own echo sockets close at cleanup
		t.Fatalf("%d descriptors open, %d before", got, fds)
	}
	waitFor(t, "relays gone", func() bool { return runtime.NumGoroutine() <= gs+3 })
}

// TestNATRunStopsClean: a running NAT balancer with open flows stops without
// leaking upstream sockets or relays.
func TestNATRunStopsClean(t *testing.T) {
	fds, gs := openFDs(t), runtime.NumGoroutine()
	var echoes []netip.AddrPort
	for range 2 {
		echoes = append(echoes, startPlainEcho(t, 0))
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	b, err := New(Config{Listen: []netip.AddrPort{vip}, Mode: ModeNAT, Workers: 2, Logger: quiet,
		Health: health.Config{Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond, Rise: 1, Fall: 2}})
	if err != nil {
		t.Fatal(err)
	}
	b.SetBackends([]Backend{{Addr: echoes[0]}, {Addr: echoes[1]}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	waitFor(t, "backends up", func() bool { return len(b.snap.Load().tableIDs) == 2 })
	cs := clients(t, 50)
	buf := make([]byte, 64)
	for _, c := range cs {
		if _, err := c.WriteToUDPAddrPort([]byte("ping-me"), vip); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || from != vip || string(buf[:n]) != "ping-me" {
			t.Fatalf("answer %q from %v (%v)", buf[:n], from, err)
		}
	}
	if b.nat.open() != 50 {
		t.Fatalf("%d flows, want 50", b.nat.open())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		c.Close()
	}
	if got := openFDs(t); got > fds+4 { // the echo sockets
		t.Fatalf("%d descriptors open after Run, %d before", got, fds)
	}
	waitFor(t, "goroutines gone", func() bool { return runtime.NumGoroutine() <= gs+2 })
}

// TestNATICMPAndTruncation: a closed backend port (ICMP errors) counts
// read errors without stopping the relay; an oversized reply is dropped.
func TestNATICMPAndTruncation(t *testing.T) {
	w, fill := natWorker(t, 1)
	b := w.b
	big := startPlainEcho(t, relayBuf+100)
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	good := b.snap.Load().addrs[0]
	b.SetBackends([]Backend{{Addr: good}, {Addr: big}, {Addr: deadAddr}})
	forceHealthy(b)
	s := b.snap.Load()
	ids := map[netip.AddrPort]int32{}
	for id, a := range s.addrs {
		ids[a] = int32(id)
	}
	send := func(client int, to netip.AddrPort) {
		fill(client)
		m := &w.in[0]
		b.nat.forward(w, s, ids[to], m.Addr, m.Payload(), time.Now())
	}
	rc := b.m.relayCounters
	for i := range 3 {
		send(1, deadAddr)
		time.Sleep(20 * time.Millisecond)
		_ = i
	}
	waitFor(t, "ICMP errors counted", func() bool { return rc.readErrors.Load()+w.c.writeErrors.Load() >= 2 })
	send(2, big)
	waitFor(t, "oversized reply dropped", func() bool { return rc.dropped[dropTooBig].Load() == 1 })
	before := rc.replies.Load()
	send(3, good)
	waitFor(t, "relay still relays", func() bool { return rc.replies.Load() == before+1 })
}
