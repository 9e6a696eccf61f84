package natsim

import (
	"net"
	"testing"
	"time"
)

func TestRebind(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	exchange := func(msg string) int {
		if _, err := c.WriteTo([]byte(msg), srv.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := srv.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("server got %q %v", buf[:n], err)
		}
		srv.WriteToUDP([]byte("re:"+msg), from)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err = c.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "re:"+msg {
			t.Fatalf("client got %q %v", buf[:n], err)
		}
		return from.Port
	}
	p1 := exchange("one")
	if p1 != c.Port() {
		t.Fatalf("source port %d, Port() %d", p1, c.Port())
	}
	if err := c.Rebind(); err != nil {
		t.Fatal(err)
	}
	p2 := exchange("two")
	if p2 == p1 || p2 != c.Port() {
		t.Fatalf("after Rebind: source port %d (was %d, Port() %d)", p2, p1, c.Port())
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := c.ReadFrom(buf); err == nil {
		t.Fatal("ReadFrom past the deadline returned data")
	}
}
