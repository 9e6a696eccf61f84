package secure

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs a DTLS echo server on a cookie-checking dgram listener.
func serve(t *testing.T, keys Keys) (*dgram.Listener, *Layer) {
	t.Helper()
	layer, err := New(Config{Keys: keys, NodeID: 0x0102, Logger: quiet, HandshakeTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := dgram.Listen("127.0.0.1:0", dgram.Config{CIDLen: layer.CIDLen()})
	if err != nil {
		t.Fatal(err)
	}
	ln := layer.Listener(dl)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptWithContext(context.Background())
			if err != nil {
				return
			}
			go func() {
				sc := c.(*Conn)
				if err := sc.HandshakeContext(context.Background()); err != nil {
					return
				}
				buf := make([]byte, 1500)
				for {
					n, err := sc.Read(buf)
					if err != nil {
						return
					}
					id, _ := sc.PSKIdentity()
					sc.Write(append([]byte(id+":"), buf[:n]...))
				}
			}()
		}
	}()
	return dl, layer
}

func keys(m map[string]string) Keys {
	return func(_ context.Context, id string) ([]byte, error) {
		if k, ok := m[id]; ok {
			return []byte(k), nil
		}
		return nil, errors.New("unknown")
	}
}

func dial(t *testing.T, addr net.Addr, identity, key string, cid bool) (*dtls.Conn, error) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	cfg := &dtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte(key), nil },
		PSKIdentityHint: []byte(identity),
		CipherSuites:    []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
	}
	if cid {
		cfg.ConnectionIDGenerator = dtls.OnlySendCIDGenerator()
	}
	c, err := dtls.Client(pc, addr, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func TestHandshakeAndEcho(t *testing.T) {
	dl, layer := serve(t, keys(map[string]string{"dev": "secret"}))
	c, err := dial(t, dl.Addr(), "dev", "secret", true)
	if err != nil {
		t.Fatalf("%v; listener %+v", err, dl.Stats())
	}
	defer c.Close()
	c.Write([]byte("hi"))
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "dev:hi" {
		t.Fatalf("echo %q %v", buf[:n], err)
	}
	_ = layer
	if s := dl.Stats(); s.Sessions != 1 {
		t.Fatalf("listener stats %+v", s)
	}
}

func TestWrongKeyAndUnknownIdentity(t *testing.T) {
	dl, _ := serve(t, keys(map[string]string{"dev": "secret"}))
	if _, err := dial(t, dl.Addr(), "dev", "wrong", false); err == nil {
		t.Fatal("handshake with a wrong key succeeded")
	}
	if _, err := dial(t, dl.Addr(), "nobody", "secret", false); err == nil {
		t.Fatal("handshake with an unknown identity succeeded")
	}
}

// TestSpoofedHellosBounded: ClientHellos from sources that never answer the
// cookie get a HelloVerifyRequest and cost at most MaxPendingHandshakes
// sessions, each released after the handshake timeout; no key is looked up.
func TestSpoofedHellosBounded(t *testing.T) {
	looked := 0
	layer, err := New(Config{Keys: func(context.Context, string) ([]byte, error) { looked++; return []byte("k"), nil },
		Logger: quiet, HandshakeTimeout: 300 * time.Millisecond, MaxPendingHandshakes: 10})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := dgram.Listen("127.0.0.1:0", dgram.Config{CIDLen: layer.CIDLen()})
	if err != nil {
		t.Fatal(err)
	}
	ln := layer.Listener(dl)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.AcceptWithContext(context.Background())
			if err != nil {
				return
			}
			go func() {
				if c.(*Conn).HandshakeContext(context.Background()) != nil {
					c.Close()
				}
			}()
		}
	}()
	for range 50 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		cfg := &dtls.Config{PSK: func([]byte) ([]byte, error) { return []byte("x"), nil }, PSKIdentityHint: []byte("x"),
			CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8}}
		c, _ := dtls.Client(&sendOnly{pc}, dl.Addr(), cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_ = c.HandshakeContext(ctx)
		cancel()
		pc.Close()
	}
	if s := dl.Stats(); s.Sessions > 10 {
		t.Fatalf("%d sessions open for spoofed hellos, want at most 10", s.Sessions)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dl.Stats().Sessions != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spoofed sessions not released: %+v", dl.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if looked != 0 {
		t.Fatalf("%d key look-ups for sources that never returned the cookie", looked)
	}
}

// sendOnly drops everything it receives: a spoofed source never sees the
// HelloVerifyRequest.
type sendOnly struct{ *net.UDPConn }

func (s *sendOnly) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if _, _, err := s.UDPConn.ReadFrom(b); err != nil {
			return 0, nil, err
		}
	}
}

func testutilCount(l *Layer, kind string) float64 {
	return testutil.ToFloat64(l.m.handshakes.WithLabelValues(kind))
}
