package dgram

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
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

func client(t *testing.T, l *Listener) *net.UDPConn {
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
	a, b := client(t, l), client(t, l)
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
	a := client(t, l)
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
	a, b := client(t, l), client(t, l)
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
	_ = netip.AddrPort{}
}

func TestClose(t *testing.T) {
	l, err := Listen("127.0.0.1:0", Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := client(t, l)
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
