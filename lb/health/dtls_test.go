package health_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lwm2mcluster/lwm2m/backend/secure"
	"github.com/lwm2mcluster/lwm2m/backend/secure/securetest"
	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
)

var pskSuites = []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8}

func psk([]byte) ([]byte, error) { return []byte("secret"), nil }

// pionServer is a pion DTLS server that accepts every session and runs its
// handshake, closed with the test.
type pionServer struct {
	ln       net.Listener
	addr     netip.AddrPort
	accepted atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

// startPion starts a pion server; handshakes that do not finish within
// handshakeTimeout are abandoned (the session is closed, and the next
// ClientHello from the same address opens a new one).
func startPion(t *testing.T, cfg *dtls.Config, handshakeTimeout time.Duration) *pionServer {
	t.Helper()
	ln, err := dtls.Listen("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &pionServer{ln: ln, addr: ln.Addr().(*net.UDPAddr).AddrPort(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
				defer cancel()
				if c.(*dtls.Conn).HandshakeContext(ctx) != nil {
					c.Close()
				}
			}()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// stop closes the listener and every session: the port answers nothing.
func (s *pionServer) stop() {
	s.ln.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

func (s *pionServer) target() health.Target {
	return health.Target{ID: s.addr.String(), Addr: s.addr}
}

// TestDTLSHelloPion: a pion server with cookies on (the default) answers the
// ClientHello with a HelloVerifyRequest and stays up across probes and
// abandoned handshakes; it goes down once closed. The CoAP ping would never
// bring it up.
func TestDTLSHelloPion(t *testing.T) {
	s := startPion(t, &dtls.Config{PSK: psk, PSKIdentityHint: []byte("lwm2m"), CipherSuites: pskSuites}, 300*time.Millisecond)
	c := start(t, health.Config{Probe: health.ProbeDTLSHello, Fall: 2}, s.target())
	checkState(t, c.next(t, long), s.addr.String(), true, 1, 0)
	// Several abandoned handshakes later, no probe has failed.
	c.none(t, 1200*time.Millisecond)
	if st := c.States()[0]; st.Failures != 0 || st.Successes < 10 {
		t.Errorf("state %+v", st)
	}
	// The alert after each HelloVerifyRequest ends the session: every
	// probe meets a new one.
	if n, st := s.accepted.Load(), c.States()[0]; n < int64(st.Successes)-1 {
		t.Errorf("%d sessions for %d probes", n, st.Successes)
	}
	if v := c.checks(t, "timeout"); v != 0 {
		t.Errorf("%v timeouts", v)
	}
	s.stop()
	checkState(t, c.next(t, long), s.addr.String(), false, 0, 2)

	// The same server is never up for the CoAP ping.
	s2 := startPion(t, &dtls.Config{PSK: psk, PSKIdentityHint: []byte("lwm2m"), CipherSuites: pskSuites}, time.Second)
	c2 := start(t, health.Config{Fall: 2}, s2.target())
	checkState(t, c2.next(t, long), s2.addr.String(), false, 0, 2)
}

// TestDTLSHelloAnswers: a server with cookies off answers with a ServerHello
// (the checker then aborts the handshake with an alert, so every probe
// starts a new one), and one with no cipher suite in common with an alert;
// both are up.
func TestDTLSHelloAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *dtls.Config
	}{
		{"server hello", &dtls.Config{PSK: psk, PSKIdentityHint: []byte("lwm2m"), CipherSuites: pskSuites,
			InsecureSkipVerifyHello: true, ExtendedMasterSecret: dtls.RequireExtendedMasterSecret}},
		{"alert", &dtls.Config{PSK: psk, PSKIdentityHint: []byte("lwm2m"),
			CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CBC_SHA256}, InsecureSkipVerifyHello: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startPion(t, tc.cfg, 5*time.Second)
			c := start(t, health.Config{Probe: health.ProbeDTLSHello, Fall: 2}, s.target())
			checkState(t, c.next(t, long), s.addr.String(), true, 1, 0)
			c.none(t, 10*interval)
			if st := c.States()[0]; st.Failures != 0 || st.Successes < 5 {
				t.Errorf("state %+v", st)
			}
			// Each probe met a fresh session: the alert ended the
			// previous one.
			if n := s.accepted.Load(); n < 5 {
				t.Errorf("%d sessions for %d probes", n, c.States()[0].Successes)
			}
		})
	}
}

// TestDTLSHelloSecureLayer runs the checker against lwm2m-server's own DTLS
// layer (backend/secure on a backend/dgram listener, as --coaps does) in
// nat mode: it is up, and no PSK is looked up for the probes.
func TestDTLSHelloSecureLayer(t *testing.T) {
	var looked atomic.Int64
	reg := prometheus.NewRegistry()
	addr, stop := securetest.Serve(t, secure.Config{
		Keys:             func(context.Context, string) ([]byte, error) { looked.Add(1); return []byte("k"), nil },
		Logger:           slog.New(slog.DiscardHandler),
		HandshakeTimeout: 300 * time.Millisecond,
		Registerer:       reg,
	}, false)
	c := start(t, health.Config{Probe: health.ProbeDTLSHello, Fall: 2}, health.Target{ID: "coaps", Addr: addr})
	checkState(t, c.next(t, long), "coaps", true, 1, 0)
	c.none(t, time.Second)
	if st := c.States()[0]; st.Failures != 0 {
		t.Errorf("state %+v", st)
	}
	if n := looked.Load(); n != 0 {
		t.Errorf("%d key look-ups for probes", n)
	}
	// The alert ends each probe's handshake at once: the instance counts
	// a failed handshake per probe, none timed out.
	failures := func(reason string) float64 {
		return testutil.ToFloat64(secureFailures(t, reg, reason))
	}
	if h, to := failures("handshake"), failures("timeout"); h < 10 || to != 0 {
		t.Errorf("instance handshake failures: %v ended, %v timed out", h, to)
	}
	// The bug this probe fixes: the CoAP ping finds the port dead.
	ping := start(t, health.Config{Fall: 2}, health.Target{ID: "coaps", Addr: addr})
	checkState(t, ping.next(t, long), "coaps", false, 0, 2)
	stop()
	checkState(t, c.next(t, long), "coaps", false, 0, 2)
}

// secureFailures returns the instance's failed-handshake counter for a
// reason.
func secureFailures(t *testing.T, reg *prometheus.Registry, reason string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != "lwm2m_dtls_handshake_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					c.Add(m.GetCounter().GetValue())
				}
			}
		}
	}
	return c
}

// helloServer is a fake DTLS server: answer gets each probe's record
// sequence number. It counts the alerts it receives.
func helloServer(t *testing.T, answer func(conn *net.UDPConn, seq uint64, from netip.AddrPort)) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seqs []uint64
	var first []byte
	alerts := new(atomic.Int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if n == 15 && p[0] == peek.ContentAlert && p[13] == 2 && p[14] == 90 {
				alerts.Add(1) // fatal user_canceled: the checker ends the handshake
				continue
			}
			if !peek.IsDTLSClientHello(p) || n != peek.DTLSClientHelloLen {
				t.Errorf("probe %x", p)
				continue
			}
			seq := uint64(p[5])<<40 | uint64(p[6])<<32 | uint64(p[7])<<24 | uint64(p[8])<<16 | uint64(p[9])<<8 | uint64(p[10])
			// Every probe carries the same ClientHello.
			if first == nil {
				first = bytes.Clone(p)
			} else if !bytes.Equal(first[11:], p[11:]) || !bytes.Equal(first[:5], p[:5]) {
				t.Errorf("ClientHello changed: %x, then %x", first, p)
			}
			mu.Lock()
			seqs = append(seqs, seq)
			mu.Unlock()
			answer(conn, seq, from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Errorf("sequence numbers do not increase: %d", seqs)
				break
			}
		}
	})
	return conn.LocalAddr().(*net.UDPAddr).AddrPort(), alerts
}

// hvr is a HelloVerifyRequest in a record with the given sequence number.
func hvr(seq uint64) []byte {
	return []byte{22, 0xFE, 0xFF, 0, 0, byte(seq >> 40), byte(seq >> 32), byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq),
		0, 17, 3, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 5, 0xFE, 0xFF, 2, 0xC0, 0x0C}
}

// TestDTLSHelloMatching: a stateless server echoing the probe's sequence
// number is up; answers echoing an earlier probe, from another address, or
// that are not DTLS answers are ignored; a late answer does not count.
func TestDTLSHelloMatching(t *testing.T) {
	rogue, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	t.Run("echo", func(t *testing.T) {
		addr, alerts := helloServer(t, func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
			conn.WriteToUDPAddrPort(hvr(seq), from)
		})
		c := start(t, health.Config{Probe: health.ProbeDTLSHello, Fall: 2}, health.Target{ID: "echo", Addr: addr})
		checkState(t, c.next(t, long), "echo", true, 1, 0)
		c.none(t, 5*interval)
		if v := c.checks(t, "bad_reply"); v != 0 {
			t.Errorf("%v bad replies", v)
		}
		eventually(t, "handshakes ended by alerts", func() bool { return alerts.Load() >= 5 })
	})
	for _, tc := range []struct {
		name   string
		answer func(conn *net.UDPConn, seq uint64, from netip.AddrPort)
	}{
		{"earlier probe", func() func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
			first := true
			return func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
				if !first { // the first probe has no predecessor: no answer
					conn.WriteToUDPAddrPort(hvr(seq-1), from)
				}
				first = false
			}
		}()},
		{"wrong source port", func(_ *net.UDPConn, seq uint64, from netip.AddrPort) {
			rogue.WriteToUDPAddrPort(hvr(seq), from)
		}},
		{"coap reset", func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
			conn.WriteToUDPAddrPort(peek.AppendCoAPReset(nil, uint16(seq)), from)
		}},
		{"client hello", func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
			conn.WriteToUDPAddrPort(peek.AppendDTLSClientHello(nil, new([32]byte), seq), from)
		}},
		{"late", func(conn *net.UDPConn, seq uint64, from netip.AddrPort) {
			time.AfterFunc(3*interval/4, func() { conn.WriteToUDPAddrPort(hvr(seq), from) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, alerts := helloServer(t, tc.answer)
			c := start(t, health.Config{Probe: health.ProbeDTLSHello, Fall: 2, Timeout: interval / 2}, health.Target{ID: "x", Addr: addr})
			checkState(t, c.next(t, long), "x", false, 0, 2)
			eventually(t, "bad replies counted", func() bool { return c.checks(t, "bad_reply") >= 2 })
			if v := c.checks(t, "ok"); v != 0 {
				t.Errorf("%v ok checks", v)
			}
			if tc.name != "earlier probe" && alerts.Load() != 0 {
				t.Errorf("%d alerts for answers that matched no probe", alerts.Load())
			}
		})
	}
}

func TestDTLSHelloConfig(t *testing.T) {
	for _, cfg := range []health.Config{
		{Probe: health.ProbeDTLSHello, ProxyLocal: true},
		{Probe: 7},
	} {
		if _, err := health.New(cfg); !errors.Is(err, health.ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	if health.ProbeCoAPPing.String() != "coap-ping" || health.ProbeDTLSHello.String() != "dtls-hello" {
		t.Error("Probe.String")
	}
}
