package udpio

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func pair(t testing.TB, network, addr string) (*Conn, *Conn) {
	t.Helper()
	a, err := ListenReusePort(context.Background(), network, addr, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ListenReusePort(context.Background(), network, addr, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	ca, err := NewConn(a, 64)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := NewConn(b, 64)
	if err != nil {
		t.Fatal(err)
	}
	return ca, cb
}

func msgs(n, size int) []Msg {
	ms := make([]Msg, n)
	for i := range ms {
		ms[i].Buf = make([]byte, size)
	}
	return ms
}

func testRoundTrip(t *testing.T, network, addr string) {
	a, b := pair(t, network, addr)
	to := b.UDPConn().LocalAddr().(*net.UDPAddr).AddrPort()
	out := msgs(3, 100)
	for i := range out {
		out[i].Offset = 10
		out[i].N = copy(out[i].Buf[10:], fmt.Sprintf("datagram-%d", i))
		out[i].Addr = to
	}
	if n, err := a.WriteBatch(out); err != nil || n != 3 {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	in := msgs(8, 2048)
	for i := range in {
		in[i].Offset = 52
	}
	got := 0
	b.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	from := a.UDPConn().LocalAddr().(*net.UDPAddr).AddrPort()
	for got < 3 {
		n, err := b.ReadBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if want := fmt.Sprintf("datagram-%d", got); string(in[i].Payload()) != want {
				t.Fatalf("got %q, want %q", in[i].Payload(), want)
			}
			if in[i].Addr.Port() != from.Port() || !in[i].Addr.Addr().IsLoopback() {
				t.Fatalf("source %v, want %v", in[i].Addr, from)
			}
			got++
		}
	}
}

func TestRoundTripIPv4(t *testing.T) { testRoundTrip(t, "udp4", "127.0.0.1:0") }
func TestRoundTripIPv6(t *testing.T) { testRoundTrip(t, "udp6", "[::1]:0") }

func TestReusePort(t *testing.T) {
	a, err := ListenReusePort(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ListenReusePort(context.Background(), "udp4", a.LocalAddr().String(), 0)
	if err != nil {
		t.Fatalf("second SO_REUSEPORT socket on the same address: %v", err)
	}
	b.Close()
}

func TestWriteSkipsBadAddress(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1:0")
	to := b.UDPConn().LocalAddr().(*net.UDPAddr).AddrPort()
	out := msgs(2, 10)
	out[0].N, out[0].Addr = 1, netip.MustParseAddrPort("[2001:db8::1]:9") // v6 on a v4 socket
	out[1].N, out[1].Addr = 1, to
	if n, err := a.WriteBatch(out); err != nil || n != 1 {
		t.Fatalf("WriteBatch = %d, %v; want 1 sent (the refused one skipped)", n, err)
	}
	in := msgs(4, 100)
	b.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := b.ReadBatch(in); err != nil || n != 1 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
}

func TestZeroAlloc(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1:0")
	to := b.UDPConn().LocalAddr().(*net.UDPAddr).AddrPort()
	out := msgs(32, 64)
	for i := range out {
		out[i].N, out[i].Addr = 60, to
	}
	in := msgs(32, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := a.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := b.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch round trip, want 0", allocs)
	}
}

// BenchmarkBatch: 32 datagrams of 60 bytes written and read per op.
func BenchmarkBatch(b *testing.B) {
	x, y := pair(b, "udp4", "127.0.0.1:0")
	to := y.UDPConn().LocalAddr().(*net.UDPAddr).AddrPort()
	out := msgs(32, 64)
	for i := range out {
		out[i].N, out[i].Addr = 60, to
	}
	in := msgs(32, 2048)
	b.ReportAllocs()
	for b.Loop() {
		x.WriteBatch(out)
		for got := 0; got < len(out); {
			n, _ := y.ReadBatch(in)
			got += n
		}
	}
	b.ReportMetric(float64(b.N*32)/b.Elapsed().Seconds(), "datagrams/s")
}

// BenchmarkXNetBatch is the same with golang.org/x/net/ipv4, for comparison.
func BenchmarkXNetBatch(b *testing.B) {
	x, y := pair(b, "udp4", "127.0.0.1:0")
	px, py := ipv4.NewPacketConn(x.UDPConn()), ipv4.NewPacketConn(y.UDPConn())
	to := y.UDPConn().LocalAddr()
	out := make([]ipv4.Message, 32)
	for i := range out {
		out[i].Buffers = [][]byte{make([]byte, 60)}
		out[i].Addr = to
	}
	in := make([]ipv4.Message, 32)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	b.ReportAllocs()
	for b.Loop() {
		px.WriteBatch(out, 0)
		for got := 0; got < len(out); {
			n, _ := py.ReadBatch(in, 0)
			got += n
		}
	}
	b.ReportMetric(float64(b.N*32)/b.Elapsed().Seconds(), "datagrams/s")
}
