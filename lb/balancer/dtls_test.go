package balancer

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/lwm2mcluster/lwm2m/lb/health"
)

// startPionEcho runs a pion DTLS-PSK server (cookies on, the default) that
// echoes what it reads prefixed with its name. It answers no CoAP ping.
func startPionEcho(t *testing.T, ip string) (netip.AddrPort, func()) {
	t.Helper()
	ln, err := dtls.Listen("udp4", &net.UDPAddr{IP: net.ParseIP(ip)}, &dtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte("secret"), nil },
		PSKIdentityHint: []byte("lwm2m"),
		CipherSuites:    []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.UDPAddr).AddrPort()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := c.(*dtls.Conn).HandshakeContext(ctx)
				cancel()
				if err != nil {
					return
				}
				buf := make([]byte, 1500)
				for {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(append([]byte(addr.String()+":"), buf[:n]...))
				}
			}()
		}
	}()
	stop := func() { ln.Close(); <-done }
	t.Cleanup(stop)
	return addr, stop
}

// TestNATDTLSService: a nat-mode DTLS service in front of plain DTLS
// servers checks them with a ClientHello, finds them up, and a DTLS client
// handshakes through the balancer and exchanges data.
func TestNATDTLSService(t *testing.T) {
	a, _ := startPionEcho(t, "127.0.1.1")
	b2, stop2 := startPionEcho(t, "127.0.1.2")
	vip := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	// Health.Probe is left at the CoAP ping: the DTLS service overrides it.
	b, err := New(Config{
		Listen: []netip.AddrPort{vip}, Mode: ModeNAT, Workers: 2, Logger: quiet, CIDLen: 8,
		Health: health.Config{Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond, Rise: 2, Fall: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetBackends([]Backend{{Addr: a}, {Addr: b2}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	allUp := func() bool {
		for _, s := range b.Backends() {
			if s.State != "up" {
				return false
			}
		}
		return true
	}
	waitFor(t, "DTLS backends up", allUp)

	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	client, err := dtls.Client(pc, net.UDPAddrFromAddrPort(vip), &dtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte("secret"), nil },
		PSKIdentityHint: []byte("device"),
		CipherSuites:    []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	if err := client.HandshakeContext(hctx); err != nil {
		t.Fatalf("handshake through the balancer: %v", err)
	}
	owner, ok := b.Place(pc.LocalAddr().(*net.UDPAddr).AddrPort())
	if !ok {
		t.Fatal("no placement")
	}
	buf := make([]byte, 1500)
	for i := range 3 {
		msg := []byte("hello")
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := client.Read(buf)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if want := owner.String() + ":hello"; string(buf[:n]) != want {
			t.Fatalf("echo %q, want %q", buf[:n], want)
		}
	}
	// The probes still work once the backend has a live session, and a
	// stopped DTLS server goes down.
	stop2()
	waitFor(t, "stopped backend down", func() bool {
		for _, s := range b.Backends() {
			if s.Addr == b2.String() {
				return s.State == "down"
			}
		}
		return false
	})
	for _, s := range b.Backends() {
		if s.Addr == a.String() && s.State != "up" {
			t.Errorf("backend %s %s", s.Addr, s.State)
		}
	}
}

// TestNATDTLSProbeChoice: the probe follows the mode and the service kind.
func TestNATDTLSProbeChoice(t *testing.T) {
	vip := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5684")}
	for _, tc := range []struct {
		mode   Mode
		cidLen int
		probe  health.Probe
		want   health.Probe
		local  bool
	}{
		{ModeNAT, 8, health.ProbeCoAPPing, health.ProbeDTLSHello, false},
		{ModeNAT, 0, health.ProbeCoAPPing, health.ProbeCoAPPing, false},
		{ModeNAT, 0, health.ProbeDTLSHello, health.ProbeDTLSHello, false},
		{ModeProxy, 8, health.ProbeDTLSHello, health.ProbeCoAPPing, true},
		{ModeProxy, 0, health.ProbeCoAPPing, health.ProbeCoAPPing, true},
	} {
		b, err := New(Config{Listen: vip, Mode: tc.mode, CIDLen: tc.cidLen, Logger: quiet, Health: health.Config{Probe: tc.probe}})
		if err != nil {
			t.Fatal(err)
		}
		if got, local := b.HealthProbe(); got != tc.want || local != tc.local {
			t.Errorf("%s, CID length %d, %v asked: probe %v, PROXY LOCAL %v; want %v, %v", tc.mode, tc.cidLen, tc.probe, got, local, tc.want, tc.local)
		}
	}
}
