package lbbench

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// startEcho starts an echo for the test and stops it at the end.
func startEcho(t *testing.T, cfg EchoConfig) *Echo {
	t.Helper()
	e, err := StartEcho(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// dial returns a UDP socket connected to addr, closed at the end of the
// test.
func dial(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends b on c and returns the answer, or nil after timeout.
func roundTrip(t *testing.T, c *net.UDPConn, b []byte, timeout time.Duration) []byte {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil
		}
		t.Fatal(err)
	}
	return buf[:n]
}

func TestEchoPlain(t *testing.T) {
	e := startEcho(t, EchoConfig{Workers: 2})
	if !e.Addr().Addr().IsLoopback() || e.Addr().Port() == 0 {
		t.Fatalf("Addr() = %v, want a loopback address with a port", e.Addr())
	}
	c := dial(t, e.Addr())
	for _, msg := range [][]byte{[]byte("hello"), bytes.Repeat([]byte{0xA5}, 60), {0}} {
		if got := roundTrip(t, c, msg, 2*time.Second); !bytes.Equal(got, msg) {
			t.Errorf("echo of %x = %x", msg, got)
		}
	}
	// A bare CoAP ping is a health check: answered with a reset.
	ping := peek.AppendCoAPPing(nil, 0x1234)
	if got := roundTrip(t, c, ping, 2*time.Second); !peek.IsCoAPReset(got, 0x1234) {
		t.Errorf("answer to a CoAP ping = %x, want a reset with message id 0x1234", got)
	}
	if want, st := (EchoStats{Received: 4, Replied: 4, Pings: 1}), settledStats(e); st != want {
		t.Errorf("Stats() = %+v, want %+v", st, want)
	}
}

// settledStats returns e's counters once every datagram received has been
// accounted for (a worker counts its replies after sending them, so a
// client may see an answer before the count), or after a second.
func settledStats(e *Echo) EchoStats {
	deadline := time.Now().Add(time.Second)
	for {
		st := e.Stats()
		if st.Received == st.Replied+st.Dropped || time.Now().After(deadline) {
			return st
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEchoProxyV2(t *testing.T) {
	e := startEcho(t, EchoConfig{Workers: 2, ProxyV2: true})
	c := dial(t, e.Addr())
	client := netip.MustParseAddrPort("192.0.2.7:40123")
	service := netip.MustParseAddrPort("198.51.100.1:5683")
	client6 := netip.MustParseAddrPort("[2001:db8::7]:40123")
	service6 := netip.MustParseAddrPort("[2001:db8::1]:5683")

	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"IPv4", client, service},
		{"IPv6", client6, service6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte("p"), 60)
			msg := append(proxyv2.AppendHeader(nil, proxyv2.Proxy, tc.src, tc.dst), payload...)
			got := roundTrip(t, c, msg, 2*time.Second)
			if got == nil {
				t.Fatal("no answer")
			}
			h, body, err := proxyv2.Parse(got)
			if err != nil {
				t.Fatalf("answer %x: %v", got, err)
			}
			want := proxyv2.Header{Command: proxyv2.Proxy, Src: tc.dst, Dst: tc.src}
			if h != want {
				t.Errorf("answer header = %+v, want %+v (source and destination swapped)", h, want)
			}
			if !bytes.Equal(body, payload) {
				t.Errorf("answer payload = %q, want %q", body, payload)
			}
		})
	}

	t.Run("LOCAL ping", func(t *testing.T) {
		msg := peek.AppendCoAPPing(proxyv2.AppendHeader(nil, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{}), 0xBEEF)
		got := roundTrip(t, c, msg, 2*time.Second)
		h, body, err := proxyv2.Parse(got)
		if err != nil {
			t.Fatalf("answer %x: %v", got, err)
		}
		if h.Command != proxyv2.Local {
			t.Errorf("answer command = %v, want LOCAL", h.Command)
		}
		if !peek.IsCoAPReset(body, 0xBEEF) {
			t.Errorf("answer payload = %x, want a CoAP reset with message id 0xBEEF", body)
		}
	})

	before := settledStats(e)
	t.Run("dropped", func(t *testing.T) {
		for _, msg := range [][]byte{
			[]byte("no PROXY header"),
			peek.AppendCoAPPing(nil, 1), // a bare ping: no header
			append(proxyv2.AppendHeader(nil, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{}), "not a ping"...),
		} {
			if got := roundTrip(t, c, msg, 200*time.Millisecond); got != nil {
				t.Errorf("answer to %q = %x, want none", msg, got)
			}
		}
	})
	after := settledStats(e)
	if d := after.Dropped - before.Dropped; d != 3 {
		t.Errorf("Dropped grew by %d, want 3", d)
	}
	if after.Pings != 1 {
		t.Errorf("Pings = %d, want 1", after.Pings)
	}
}

func TestEchoReusePort(t *testing.T) {
	// Several workers share one port; each answers from it.
	e := startEcho(t, EchoConfig{Workers: 4})
	for i := range 20 {
		c := dial(t, e.Addr())
		msg := []byte{byte(i)}
		if got := roundTrip(t, c, msg, 2*time.Second); !bytes.Equal(got, msg) {
			t.Fatalf("client %d: echo = %x, want %x", i, got, msg)
		}
		if ra := c.RemoteAddr().(*net.UDPAddr).AddrPort(); ra != e.Addr() {
			t.Fatalf("client %d: answer from %v, want %v", i, ra, e.Addr())
		}
	}
}
