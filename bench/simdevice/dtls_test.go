package simdevice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/instance"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	lwstore "github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// secureServer is an in-process lwm2m server instance with CoAPS only, on
// an in-memory store.
type secureServer struct {
	t    *testing.T
	in   *instance.Instance
	addr string
	nb   *nbclient.Client
}

func startSecureServer(t *testing.T) *secureServer {
	t.Helper()
	in, err := instance.Start(context.Background(), instance.Options{
		CoAPSAddr:        "127.0.0.1:0",
		InstanceID:       "simdev-" + t.Name(),
		HandshakeTimeout: 2 * time.Second,
		Logger:           testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	nb := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	t.Cleanup(func() {
		nb.Close()
		in.Stop(context.Background())
	})
	return &secureServer{t: t, in: in, addr: in.CoAPSAddr().String(), nb: nb}
}

func (s *secureServer) provision(ep, identity, key string) {
	s.t.Helper()
	if err := s.in.Store().PutSecurity(ctx5s(s.t), lwstore.SecurityInfo{Endpoint: ep, Identity: identity, Key: []byte(key)}); err != nil {
		s.t.Fatal(err)
	}
}

// port is the device port of ep's registration, as the server stored it.
func (s *secureServer) port(ep string) int {
	s.t.Helper()
	r, err := s.in.Store().GetByEndpoint(ctx5s(s.t), ep)
	if err != nil {
		s.t.Fatal(err)
	}
	if !r.Secure {
		s.t.Fatalf("registration of %s not secure", ep)
	}
	return int(r.Port)
}

// read reads path on ep through the northbound API: the server sends a
// GET over the device's DTLS session.
func (s *secureServer) read(ep, path string) (*northbound.Resp, error) {
	return s.nb.Do(ctx5s(s.t), ep, northbound.Req{Kind: northbound.KindRead, Path: path})
}

func (s *secureServer) device(ep, identity, key string, mod ...func(*Config)) *Device {
	cfg := Config{Endpoint: ep, Server: s.addr, Lifetime: time.Minute, Logger: testLogger(s.t),
		ACKTimeout: 500 * time.Millisecond, PSKIdentity: identity, PSK: []byte(key)}
	for _, m := range mod {
		m(&cfg)
	}
	d := New(cfg)
	s.t.Cleanup(func() { _ = d.Close() })
	return d
}

// runCtx is a context for Start, which ends the device when it is done:
// it lasts as long as the test.
func runCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

func localPort(d *Device) int { return d.LocalAddr().(*net.UDPAddr).Port }

func wantHandshakes(t *testing.T, d *Device, full, resumed int) {
	t.Helper()
	if f, r := d.Handshakes(); f != full || r != resumed {
		t.Fatalf("handshakes: %d full, %d resumed; want %d, %d", f, r, full, resumed)
	}
}

func TestDTLSRegisterUpdateDeregister(t *testing.T) {
	s := startSecureServer(t)
	s.provision("sec-dev", "sec-id", "sec-key-0123")
	d := s.device("sec-dev", "sec-id", "sec-key-0123")
	if err := d.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	wantHandshakes(t, d, 1, 0)
	if _, err := d.Register(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if p := s.port("sec-dev"); p != localPort(d) {
		t.Fatalf("registration port %d, device at %d", p, localPort(d))
	}
	if err := d.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	// The device's handler answers over DTLS.
	resp, err := s.read("sec-dev", "/3/0/2")
	if err != nil || resp.Code != nbclient.CodeContent {
		t.Fatalf("read: %+v %v", resp, err)
	}
	if v, _ := resp.Node.Node.(node.Resource).Value.AsString(); v != "SN-sec-dev" {
		t.Fatalf("read /3/0/2: %+v", resp.Node.Node)
	}
	if d.Count(OpRead) != 1 {
		t.Fatalf("%d reads", d.Count(OpRead))
	}
	// The Security object says PSK, and the server cannot read it.
	if v, _ := d.Value(node.MustPath(0, 0, 2)); !v.Equal(node.IntValue(0)) {
		t.Fatalf("security mode %v", v)
	}
	if v, _ := d.Value(node.MustPath(0, 0, 0)); !v.Equal(node.StringValue("coaps://" + s.addr)) {
		t.Fatalf("server URI %v", v)
	}
	if resp, err := s.read("sec-dev", "/0/0/5"); err != nil || nbclient.IsSuccess(resp.Code) {
		t.Fatalf("read of the key: %+v %v", resp, err)
	}
	if err := d.Deregister(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.in.Store().GetByEndpoint(ctx5s(t), "sec-dev"); !errors.Is(err, lwstore.ErrNotFound) {
		t.Fatalf("registration after deregister: %v", err)
	}
	wantHandshakes(t, d, 1, 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDTLSWrongCredentials(t *testing.T) {
	s := startSecureServer(t)
	s.provision("dev-a", "id-a", "key-a")
	s.provision("dev-b", "id-b", "key-b")

	// A wrong key: the server cannot decrypt the Finished, the handshake
	// times out.
	d := s.device("dev-a", "id-a", "not-the-key", func(c *Config) { c.HandshakeTimeout = time.Second })
	err := d.Start(runCtx(t))
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("start with a wrong key: %v", err)
	}
	if d.HandshakeFailures() != 1 {
		t.Fatalf("%d handshake failures", d.HandshakeFailures())
	}
	wantHandshakes(t, d, 0, 0)
	if _, err := d.Register(ctx5s(t)); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("register after a failed start: %v", err)
	}

	// An unknown identity.
	d = s.device("dev-a", "who", "key-a", func(c *Config) { c.HandshakeTimeout = time.Second })
	if err := d.Start(runCtx(t)); !errors.Is(err, ErrHandshake) {
		t.Fatalf("start with an unknown identity: %v", err)
	}

	// Another endpoint's credentials: the session is fine, the
	// registration is refused.
	d = s.device("dev-a", "id-b", "key-b")
	if err := d.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	_, err = d.Register(ctx5s(t))
	if !errors.Is(err, ErrUnexpected) || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("register with another endpoint's identity: %v", err)
	}
}

func TestDTLSRebindWithCID(t *testing.T) {
	s := startSecureServer(t)
	s.provision("cid-dev", "cid-id", "cid-key")
	var dials atomic.Int32
	d := s.device("cid-dev", "cid-id", "cid-key", func(c *Config) {
		c.CID = true
		c.Dial = func(ctx context.Context, server string) (*net.UDPConn, error) {
			dials.Add(1)
			raddr, err := net.ResolveUDPAddr("udp", server)
			if err != nil {
				return nil, err
			}
			return net.DialUDP("udp", nil, raddr)
		}
	})
	if err := d.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	if !d.CIDInUse() {
		t.Fatal("no Connection ID negotiated")
	}
	if _, err := d.Register(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	// Observe the temperature: the observation survives the rebinds.
	octx, ocancel := context.WithCancel(context.Background())
	defer ocancel()
	obs, err := s.nb.Observe(octx, "cid-dev", northbound.Req{Kind: northbound.KindObserve, Path: "/3303/0/5700"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		before := localPort(d)
		if err := d.Rebind(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		after := localPort(d)
		if after == before {
			t.Fatalf("rebind %d: still on port %d", i, after)
		}
		wantHandshakes(t, d, 1, 0) // the same session
		// The first record from the new port is a notification: the
		// server finds the session by its CID and follows the device (a
		// lost first transmission is retransmitted: CoAP's reliability,
		// not a timing goal of this test).
		if err := d.Set(node.MustPath(3303, 0, TempSensorValue), node.FloatValue(float64(30+i))); err != nil {
			t.Fatal(err)
		}
		waitNotification(t, obs, float64(30+i))
		if err := d.Update(ctx5s(t)); err != nil {
			t.Fatalf("update after rebind %d: %v", i, err)
		}
		if p := s.port("cid-dev"); p != after {
			t.Fatalf("rebind %d: registration port %d, device at %d", i, p, after)
		}
		if resp, err := s.read("cid-dev", "/3/0/0"); err != nil || resp.Code != nbclient.CodeContent {
			t.Fatalf("read after rebind %d: %+v %v", i, resp, err)
		}
	}
	if n := dials.Load(); n != 4 {
		t.Fatalf("%d dials, want 4 (start and 3 rebinds)", n)
	}
	if !d.CIDInUse() || d.HandshakeFailures() != 0 {
		t.Fatal("session lost")
	}
}

// waitNotification waits for a notification of the value v.
func waitNotification(t *testing.T, obs *nbclient.Observation, v float64) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case r, ok := <-obs.C():
			if !ok {
				t.Fatalf("observation ended: %v", obs.Err())
			}
			if r.Node == nil {
				continue
			}
			if res, ok := r.Node.Node.(node.Resource); ok {
				if f, _ := res.Value.AsFloat(); f == v {
					return
				}
			}
		case <-timeout:
			t.Fatalf("no notification of %v", v)
		}
	}
}

func TestDTLSRebindWithoutCIDResumes(t *testing.T) {
	s := startSecureServer(t)
	s.provision("res-dev", "res-id", "res-key")
	s.provision("res-dev2", "res-id2", "res-key2")
	cache := NewSessionCache() // shared by both devices
	d := s.device("res-dev", "res-id", "res-key", func(c *Config) { c.SessionStore = cache })
	d2 := s.device("res-dev2", "res-id2", "res-key2", func(c *Config) { c.SessionStore = cache })
	for _, d := range []*Device{d, d2} {
		if err := d.Start(runCtx(t)); err != nil {
			t.Fatal(err)
		}
		if d.CIDInUse() {
			t.Fatal("Connection ID without Config.CID")
		}
		if _, err := d.Register(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		wantHandshakes(t, d, 1, 0)
	}
	if cache.Len() != 2 {
		t.Fatalf("%d cached sessions, want one per device", cache.Len())
	}
	for i, d := range []*Device{d, d2} {
		before := localPort(d)
		if err := d.Rebind(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		after := localPort(d)
		if after == before {
			t.Fatalf("device %d still on port %d", i, after)
		}
		wantHandshakes(t, d, 1, 1)
		if err := d.Update(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		if p := s.port(d.Endpoint()); p != after {
			t.Fatalf("registration port %d, device at %d", p, after)
		}
		if resp, err := s.read(d.Endpoint(), "/3/0/0"); err != nil || resp.Code != nbclient.CodeContent {
			t.Fatalf("read after rebind: %+v %v", resp, err)
		}
	}

	// A new Device of the same identity (a fleet's device restarting)
	// resumes from the shared cache.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = s.device("res-dev", "res-id", "res-key", func(c *Config) { c.SessionStore = cache })
	if err := d.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	wantHandshakes(t, d, 0, 1)
	if _, err := d.Register(ctx5s(t)); err != nil {
		t.Fatal(err)
	}

	// Without resumption every rebind is a full handshake.
	s.provision("full-dev", "full-id", "full-key")
	d3 := s.device("full-dev", "full-id", "full-key", func(c *Config) { c.NoResumption = true })
	if err := d3.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := d3.Register(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if err := d3.Rebind(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	wantHandshakes(t, d3, 2, 0)
	if err := d3.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
}

// TestDTLSCustomConn: a DTLS device on a socket given in Config.Conn.
func TestDTLSCustomConn(t *testing.T) {
	s := startSecureServer(t)
	s.provision("conn-dev", "conn-id", "conn-key")
	raddr, err := net.ResolveUDPAddr("udp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	d := s.device("conn-dev", "conn-id", "conn-key", func(c *Config) { c.Conn = conn })
	if err := d.Start(runCtx(t)); err != nil {
		t.Fatal(err)
	}
	if d.LocalAddr().String() != conn.LocalAddr().String() {
		t.Fatalf("device on %s, not on the given socket %s", d.LocalAddr(), conn.LocalAddr())
	}
	if _, err := d.Register(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte{0}); err == nil {
		t.Fatal("the given socket is still open after Close")
	}
}

// TestDTLSNoGoroutineLeak: DTLS devices that start, rebind (with and
// without CID) and close leave no goroutine behind, on either side.
func TestDTLSNoGoroutineLeak(t *testing.T) {
	s := startSecureServer(t)
	for i := range 6 {
		ep := fmt.Sprintf("leak-%d", i)
		s.provision(ep, "id-"+ep, "key-"+ep)
	}
	base := runtime.NumGoroutine()
	for i := range 6 {
		ep := fmt.Sprintf("leak-%d", i)
		d := s.device(ep, "id-"+ep, "key-"+ep, func(c *Config) { c.CID = i%2 == 0 })
		ctx, cancel := context.WithCancel(context.Background())
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Register(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		if err := d.Rebind(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		if err := d.Update(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		cancel() // closes the device
		_ = d.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
