package balancer

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// TestCoalescedClientDatagrams: client datagrams that the kernel coalesced
// into one read (UDP GRO) each reach the client's backend behind their own
// PROXY header, in order, the later ones through the spill space.
func TestCoalescedClientDatagrams(t *testing.T) {
	w, _ := hotWorker(t, 4)
	client := netip.MustParseAddrPort("192.0.2.7:41000")
	m := &w.in[0]
	m.Offset, m.Addr, m.Seg = headroom, client, 30
	var want [][]byte
	for i, c := range []byte("abcd") {
		d := bytes.Repeat([]byte{c}, 30)
		if i == 3 {
			d = d[:12]
		}
		want = append(want, d)
		m.N += copy(m.Buf[headroom+m.N:], d)
	}
	w.handle(1, time.Now())
	if len(w.out) != 4 {
		t.Fatalf("%d datagrams out, want 4", len(w.out))
	}
	placed, _ := w.b.Place(client)
	for i, o := range w.out {
		if o.Addr != placed {
			t.Fatalf("datagram %d went to %v, want the client's backend %v", i, o.Addr, placed)
		}
		h, payload, err := proxyv2.Parse(o.Payload())
		if err != nil || h.Src != client || h.Dst != w.vip {
			t.Fatalf("datagram %d: header %+v, %v", i, h, err)
		}
		if !bytes.Equal(payload, want[i]) {
			t.Fatalf("datagram %d payload %q, want %q", i, payload, want[i])
		}
	}
	if c := w.b.Totals().Coalesced; c != 1 {
		t.Fatalf("coalesced reads = %d, want 1", c)
	}
}

// TestCoalescedReplies: a backend's replies coalesced into one read each
// reach their own client.
func TestCoalescedReplies(t *testing.T) {
	w, _ := hotWorker(t, 4)
	backend := w.b.snap.Load().addrs[1]
	m := &w.in[0]
	m.Offset, m.Addr, m.N = headroom, backend, 0
	var clients []netip.AddrPort
	var seg int
	for i := range 3 {
		c := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(9+i))
		clients = append(clients, c)
		start := headroom + m.N
		h := proxyv2.AppendHeader(m.Buf[start:start], proxyv2.Proxy, w.vip, c)
		n := len(h) + copy(m.Buf[start+len(h):], bytes.Repeat([]byte{byte('x' + i)}, 20))
		seg = n
		m.N += n
	}
	m.Seg = seg
	w.handle(1, time.Now())
	if len(w.out) != 3 {
		t.Fatalf("%d datagrams out, want 3", len(w.out))
	}
	for i, o := range w.out {
		if o.Addr != clients[i] || !bytes.Equal(o.Payload(), bytes.Repeat([]byte{byte('x' + i)}, 20)) {
			t.Fatalf("reply %d: %q to %v, want client %v", i, o.Payload(), o.Addr, clients[i])
		}
	}
}

// TestSpillFull: when the spill space is full, what is queued is sent
// first and the space reused; no datagram is lost.
func TestSpillFull(t *testing.T) {
	w, _ := hotWorker(t, 4)
	w.spill = w.spill[:100] // room for one 30-byte datagram and its header
	m := &w.in[0]
	m.Offset, m.Addr, m.Seg, m.N = headroom, netip.MustParseAddrPort("192.0.2.8:41000"), 30, 0
	for _, c := range []byte("abcde") {
		m.N += copy(m.Buf[headroom+m.N:], bytes.Repeat([]byte{c}, 30))
	}
	w.handle(1, time.Now())
	tot := w.b.Totals()
	if tot.Sent != 5 || tot.WriteErrors != 0 {
		t.Fatalf("sent %d datagrams (%d write errors), want 5", tot.Sent, tot.WriteErrors)
	}
	for reason, n := range tot.Dropped {
		if n != 0 {
			t.Fatalf("dropped %d (%s)", n, reason)
		}
	}
	// The last flush holds the last datagram, from the spill space.
	last := w.out[len(w.out)-1]
	if _, p, err := proxyv2.Parse(last.Payload()); err != nil || string(p) != string(bytes.Repeat([]byte("e"), 30)) {
		t.Fatalf("last datagram %q, %v", p, err)
	}
}

// TestRefusedCounted: a datagram the kernel refuses for its destination
// (an IPv6 client on an IPv4 service socket) is counted as a write error,
// and the others of the batch are sent.
func TestRefusedCounted(t *testing.T) {
	w, _ := hotWorker(t, 4)
	backend := w.b.snap.Load().addrs[0]
	for i, client := range []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:9"), netip.MustParseAddrPort("127.0.0.1:9")} {
		m := &w.in[i]
		m.Offset, m.Addr, m.Seg = headroom, backend, 0
		h := proxyv2.AppendHeader(m.Buf[headroom:headroom], proxyv2.Proxy, w.vip, client)
		m.N = len(h) + copy(m.Buf[headroom+len(h):], "reply")
	}
	w.handle(2, time.Now())
	if tot := w.b.Totals(); tot.Sent != 1 || tot.WriteErrors != 1 {
		t.Fatalf("sent %d, write errors %d; want 1 and 1", tot.Sent, tot.WriteErrors)
	}
}
