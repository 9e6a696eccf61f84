package dgram

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

func listen(t *testing.T, cfg Config) *Listener {
	t.Helper()
	l, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func dialTo(t *testing.T, l *Listener) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, l.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func accept(t *testing.T, l *Listener) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.AcceptWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*Conn)
}

func TestDemux(t *testing.T) {
	l := listen(t, Config{})
	a, b := dialTo(t, l), dialTo(t, l)
	a.Write([]byte("a1"))
	ca := accept(t, l)
	b.Write([]byte("b1"))
	cb := accept(t, l)
	a.Write([]byte("a2"))
	if ca.RemoteAddr().String() != a.LocalAddr().String() || cb.Peer().String() != b.LocalAddr().String() {
		t.Fatalf("peers %v %v, want %v %v", ca.RemoteAddr(), cb.Peer(), a.LocalAddr(), b.LocalAddr())
	}
	buf := make([]byte, 100)
	for _, want := range []struct {
		c *Conn
		s string
	}{{ca, "a1"}, {ca, "a2"}, {cb, "b1"}} {
		n, err := want.c.Read(buf)
		if err != nil || string(buf[:n]) != want.s {
			t.Fatalf("Read = %q, %v; want %q", buf[:n], err, want.s)
		}
	}
	if _, err := cb.Write([]byte("to-b")); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.Read(buf)
	if err != nil || string(buf[:n]) != "to-b" {
		t.Fatalf("peer got %q, %v", buf[:n], err)
	}
	// Closing a session forgets the peer: its next datagram opens a new one.
	ca.Close()
	if _, err := ca.Read(buf); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	a.Write([]byte("a3"))
	ca2 := accept(t, l)
	if ca2 == ca {
		t.Fatal("closed session reused")
	}
	if n, _ := ca2.Read(buf); string(buf[:n]) != "a3" {
		t.Fatalf("new session read %q", buf[:n])
	}
	if s := l.Stats(); s.Received != 4 || s.Sent != 1 || s.Sessions != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReadDeadline(t *testing.T) {
	l := listen(t, Config{})
	a := dialTo(t, l)
	a.Write([]byte("x"))
	c := accept(t, l)
	buf := make([]byte, 10)
	c.Read(buf)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past deadline: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("deadline not honoured")
	}
	c.SetReadDeadline(time.Time{})
	a.Write([]byte("y"))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("Read after clearing deadline: %q %v", buf[:n], err)
	}
}

func TestLimits(t *testing.T) {
	l := listen(t, Config{MaxSessions: 1, QueueLen: 2})
	a, b := dialTo(t, l), dialTo(t, l)
	for range 5 {
		a.Write([]byte("a"))
	}
	b.Write([]byte("b"))
	accept(t, l)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := l.Stats()
		if s.Received == 6 {
			if s.DroppedQueue != 3 || s.DroppedSessions != 1 || s.Sessions != 1 {
				t.Fatalf("stats %+v", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("datagrams not received: %+v", l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDial(t *testing.T) {
	l := listen(t, Config{})
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pa := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	c, err := l.Dial(pa)
	if err != nil {
		t.Fatal(err)
	}
	if got := accept(t, l); got != c {
		t.Fatal("dialled session not accepted")
	}
	if c2, _ := l.Dial(pa); c2 != c || l.Lookup(pa) != c {
		t.Fatal("second Dial opened another session")
	}
	c.Write([]byte("hello"))
	buf := make([]byte, 10)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "hello" || from.Port() != l.Addr().(*net.UDPAddr).AddrPort().Port() {
		t.Fatalf("peer got %q from %v: %v", buf[:n], from, err)
	}
}

func TestClose(t *testing.T) {
	l, err := Listen("127.0.0.1:0", Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := dialTo(t, l)
	a.Write([]byte("x"))
	c := accept(t, l)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		c.Read(make([]byte, 10))
		_, err = c.Read(make([]byte, 10))
		done <- err
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Read after listener Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read blocked after Close")
	}
	if _, err := l.Accept(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

func TestProxyMode(t *testing.T) {
	l := listen(t, Config{ProxyProtocol: true, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	lbConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer lbConn.Close()
	to := l.Addr().(*net.UDPAddr)
	client := netip.MustParseAddrPort("198.51.100.7:40001")
	vip := netip.MustParseAddrPort("203.0.113.1:5683")

	msg := proxyv2.AppendHeader(nil, proxyv2.Proxy, client, vip)
	msg = append(msg, "hello"...)
	lbConn.WriteToUDP(msg, to)
	c := accept(t, l)
	if c.Peer() != client || c.RemoteAddr().String() != client.String() || c.LocalAddr().String() != vip.String() {
		t.Fatalf("session peer %v local %v, want %v %v", c.RemoteAddr(), c.LocalAddr(), client, vip)
	}
	buf := make([]byte, 100)
	if n, _ := c.Read(buf); string(buf[:n]) != "hello" {
		t.Fatalf("payload %q", buf[:n])
	}
	// The reply goes to the balancer behind a header naming the client.
	if _, err := c.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	lbConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := lbConn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	h, payload, err := proxyv2.Parse(buf[:n])
	if err != nil || h.Command != proxyv2.Proxy || h.Src != vip || h.Dst != client || string(payload) != "world" {
		t.Fatalf("reply header %+v payload %q err %v", h, payload, err)
	}

	// LOCAL CoAP ping: answered with a LOCAL reset, no session.
	ping := proxyv2.AppendHeader(nil, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
	ping = peek.AppendCoAPPing(ping, 0x1234)
	lbConn.WriteToUDP(ping, to)
	n, err = lbConn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	h, payload, err = proxyv2.Parse(buf[:n])
	if err != nil || h.Command != proxyv2.Local || !peek.IsCoAPReset(payload, 0x1234) {
		t.Fatalf("ping answer %+v %x %v", h, payload, err)
	}

	// Garbage from the balancer, and a forged header from elsewhere: dropped.
	lbConn.WriteToUDP([]byte("no header"), to)
	lbConn.WriteToUDP(msg[:10], to)
	other := dialTo(t, l) // 127.0.0.1: not trusted
	other.Write(msg)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := l.Stats()
		if s.DroppedHeader == 2 && s.DroppedUntrusted == 1 && s.HealthPings == 1 {
			if s.Sessions != 1 {
				t.Fatalf("sessions = %d, want 1", s.Sessions)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case c, ok := <-l.accept:
		t.Fatalf("dropped datagram opened a session: %v %v", c, ok)
	default:
	}
}

func TestProxyModeNeedsTrusted(t *testing.T) {
	if _, err := Listen("127.0.0.1:0", Config{ProxyProtocol: true}); err == nil {
		t.Fatal("PROXY mode without trusted prefixes accepted")
	}
}
