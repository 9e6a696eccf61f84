package udpio

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// offloadPair returns a writer with GSO and a reader with GRO.
func offloadPair(t testing.TB) (w, r *Conn, to netip.AddrPort) {
	t.Helper()
	w, r = pair(t, "udp4", "127.0.0.1:0")
	// pair's sockets share a port (SO_REUSEPORT); give the reader its own.
	pc, err := ListenReusePort(t.Context(), "udp4", "127.0.0.1:0", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	if r, err = NewConn(pc, 64); err != nil {
		t.Fatal(err)
	}
	if err := w.EnableGSO(); err != nil {
		t.Fatalf("EnableGSO: %v", err)
	}
	if err := r.EnableGRO(); err != nil {
		t.Fatalf("EnableGRO: %v", err)
	}
	return w, r, pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// readAll reads datagrams until want have arrived, split into segments;
// it returns them and the number of Msgs they came in.
func readAll(t *testing.T, r *Conn, want int) (got [][]byte, reads int) {
	t.Helper()
	in := msgs(8, 65535)
	r.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < want {
		n, err := r.ReadBatch(in)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		for i := range n {
			reads++
			for d, next, ok := in[i].Segment(0); ok; d, next, ok = in[i].Segment(next) {
				got = append(got, bytes.Clone(d))
			}
		}
	}
	return got, reads
}

func TestGSOToGRO(t *testing.T) {
	w, r, to := offloadPair(t)
	// 100 datagrams of 88 bytes, then a shorter one: two full segmented
	// sends of 64 and 37, the second one ending with the short datagram.
	var out []Msg
	for i := range 101 {
		size := 88
		if i == 100 {
			size = 20
		}
		b := make([]byte, 8+size)
		n := copy(b[8:], fmt.Sprintf("d%03d", i))
		for j := 8 + n; j < len(b); j++ {
			b[j] = byte(i)
		}
		out = append(out, Msg{Buf: b, Offset: 8, N: size, Addr: to})
	}
	if n, err := w.WriteBatch(out); err != nil || n != len(out) {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got, reads := readAll(t, r, len(out))
	if len(got) != len(out) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(out))
	}
	for i := range out {
		if !bytes.Equal(got[i], out[i].Payload()) {
			t.Fatalf("datagram %d = %q, want %q", i, got[i], out[i].Payload())
		}
	}
	// On loopback the segmented sends reach the GRO socket whole.
	if reads >= len(out) {
		t.Fatalf("%d datagrams came in %d reads: nothing was coalesced", len(out), reads)
	}
	t.Logf("%d datagrams in %d reads", len(out), reads)
}

func TestGSOKeepsOrderAndDestinations(t *testing.T) {
	w, r, to := offloadPair(t)
	plain, err := ListenReusePort(t.Context(), "udp4", "127.0.0.1:0", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pr, err := NewConn(plain, 64)
	if err != nil {
		t.Fatal(err)
	}
	other := plain.LocalAddr().(*net.UDPAddr).AddrPort()
	// Interleaved destinations and sizes, an empty datagram and one too
	// large to coalesce: every datagram arrives once, in order per
	// destination; the plain reader (no GRO) sees single datagrams.
	sizes := []int{50, 50, 0, 50, 30, 50, 1500, 1500, 50, 50, 7, 50}
	var out []Msg
	var wantTo, wantOther [][]byte
	for i, size := range sizes {
		b := bytes.Repeat([]byte{byte('a' + i)}, size)
		m := Msg{Buf: b, N: size, Addr: to}
		if i%3 == 2 {
			m.Addr = other
			wantOther = append(wantOther, b)
		} else {
			wantTo = append(wantTo, b)
		}
		out = append(out, m)
	}
	if n, err := w.WriteBatch(out); err != nil || n != len(out) {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	for _, c := range []struct {
		r    *Conn
		want [][]byte
	}{{r, wantTo}, {pr, wantOther}} {
		got, _ := readAll(t, c.r, len(c.want))
		if len(got) != len(c.want) {
			t.Fatalf("got %d datagrams, want %d", len(got), len(c.want))
		}
		for i := range got {
			if !bytes.Equal(got[i], c.want[i]) {
				t.Fatalf("datagram %d = %d bytes %q..., want %d bytes", i, len(got[i]), got[i][:min(4, len(got[i]))], len(c.want[i]))
			}
		}
	}
}

func TestGSOSkipsBadAddress(t *testing.T) {
	w, r, to := offloadPair(t)
	bad := netip.MustParseAddrPort("[2001:db8::1]:9") // v6 on a v4 socket
	out := msgs(5, 40)
	for i := range out {
		out[i].N, out[i].Addr = 40, bad
	}
	out[3].Addr, out[4].Addr = to, to
	if n, err := w.WriteBatch(out); err != nil || n != 2 {
		t.Fatalf("WriteBatch = %d, %v; want 2 sent (3 refused and skipped)", n, err)
	}
	if got, _ := readAll(t, r, 2); len(got) != 2 {
		t.Fatalf("got %d datagrams, want 2", len(got))
	}
}

func TestSegment(t *testing.T) {
	m := Msg{Buf: []byte("xxabcdefgh"), Offset: 2, N: 8, Seg: 3}
	var got []string
	for d, next, ok := m.Segment(0); ok; d, next, ok = m.Segment(next) {
		got = append(got, string(d))
	}
	if fmt.Sprint(got) != "[abc def gh]" {
		t.Fatalf("segments %q", got)
	}
	m.Seg = 0
	if d, _, ok := m.Segment(0); !ok || string(d) != "abcdefgh" {
		t.Fatalf("one datagram: %q %v", d, ok)
	}
	if _, _, ok := m.Segment(8); ok {
		t.Fatal("segment past the end")
	}
	m.N = 0
	d, next, ok := m.Segment(0)
	if !ok || len(d) != 0 {
		t.Fatalf("empty datagram: %q %v", d, ok)
	}
	if _, _, ok := m.Segment(next); ok {
		t.Fatal("a second segment after the empty datagram")
	}
}

func TestOffloadZeroAlloc(t *testing.T) {
	w, r, to := offloadPair(t)
	out := msgs(64, 64)
	for i := range out {
		out[i].N, out[i].Addr = 60, to
	}
	in := msgs(8, 65535)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := w.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := r.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				for _, next, ok := in[i].Segment(0); ok; _, next, ok = in[i].Segment(next) {
					got++
				}
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch round trip, want 0", allocs)
	}
}

// BenchmarkBatchOffload is BenchmarkBatch (32 datagrams of 60 bytes per
// op) with GSO on the writer and GRO on the reader.
func BenchmarkBatchOffload(b *testing.B) {
	x, y, to := offloadPair(b)
	out := msgs(32, 64)
	for i := range out {
		out[i].N, out[i].Addr = 60, to
	}
	in := msgs(8, 65535)
	b.ReportAllocs()
	for b.Loop() {
		x.WriteBatch(out)
		for got := 0; got < len(out); {
			n, _ := y.ReadBatch(in)
			for i := range n {
				for _, next, ok := in[i].Segment(0); ok; _, next, ok = in[i].Segment(next) {
					got++
				}
			}
		}
	}
	b.ReportMetric(float64(b.N*32)/b.Elapsed().Seconds(), "datagrams/s")
}
