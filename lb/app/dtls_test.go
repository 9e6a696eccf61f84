package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/lwm2mcluster/lwm2m/backend/secure"
	"github.com/lwm2mcluster/lwm2m/backend/secure/securetest"
	"github.com/lwm2mcluster/lwm2m/lb/health"
)

// coapsBackend runs lwm2m-server's DTLS layer (backend/secure on a
// backend/dgram listener, as --coaps does) with an echo behind it.
func coapsBackend(t *testing.T, keys map[string]string) string {
	t.Helper()
	addr, _ := securetest.Serve(t, secure.Config{
		Keys: func(_ context.Context, id string) ([]byte, error) {
			if k, ok := keys[id]; ok {
				return []byte(k), nil
			}
			return nil, errors.New("unknown identity")
		},
		NodeID: 0x0102, Logger: slog.New(slog.DiscardHandler), HandshakeTimeout: 5 * time.Second,
	}, true)
	return addr.String()
}

// TestNATDTLSService: a nat-mode DTLS service of the configuration file in
// front of lwm2m-server's DTLS layer is healthy (ClientHello probes), and a
// device handshakes through it and talks.
func TestNATDTLSService(t *testing.T) {
	be := coapsBackend(t, map[string]string{"dev": "secret"})
	admin := freeAddr(t, "tcp")
	vip := freeAddr(t, "udp")
	path := filepath.Join(t.TempDir(), "lb.json")
	cfg := writeConfig(t, path, `{"admin": "`+admin+`", "healthInterval": "100ms", "healthTimeout": "80ms",
	  "services": [{"name": "coaps", "listen": ["`+vip+`"], "mode": "nat", "dtls": true, "backends": ["`+be+`"]}]}`)
	a, err := Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	if p, local := a.Balancer("coaps").HealthProbe(); p != health.ProbeDTLSHello || local {
		t.Errorf("probe %v, PROXY LOCAL %v", p, local)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := get(t, "http://"+admin+"/healthz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz %d %s; backends %+v", code, body, a.Backends())
		}
		time.Sleep(20 * time.Millisecond)
	}

	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	raddr, _ := net.ResolveUDPAddr("udp4", vip)
	client, err := dtls.Client(pc, raddr, &dtls.Config{
		PSK:                   func([]byte) ([]byte, error) { return []byte("secret"), nil },
		PSKIdentityHint:       []byte("dev"),
		CipherSuites:          []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
		ConnectionIDGenerator: dtls.OnlySendCIDGenerator(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.HandshakeContext(ctx); err != nil {
		t.Fatalf("handshake through lwm2m-lb: %v", err)
	}
	if _, err := client.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := client.Read(buf)
	if err != nil || string(buf[:n]) != "echo:hi" {
		t.Fatalf("echo %q, %v", buf[:n], err)
	}
	if bs := a.Backends()["coaps"]; len(bs) != 1 || bs[0].State != "up" || bs[0].Flows != 1 {
		t.Errorf("backends %+v", bs)
	}
}
