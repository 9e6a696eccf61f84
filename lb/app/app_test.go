package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
)

// pinger is a backend that only answers CoAP pings (enough for health).
func pinger(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if mid, ok := peek.IsCoAPPing(buf[:n]); ok {
				pc.WriteToUDPAddrPort(peek.AppendCoAPReset(nil, mid), from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

func writeConfig(t *testing.T, path, body string) Config {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v\n%s", err, body)
	}
	return c
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReload(t *testing.T) {
	be := pinger(t)
	admin := freeAddr(t, "tcp")
	vip := freeAddr(t, "udp")
	path := filepath.Join(t.TempDir(), "lb.json")
	tmpl := `{"admin": "` + admin + `", "healthInterval": "100ms", "healthTimeout": "80ms", "flowIdleTimeout": "IDLE",
	  "services": [{"name": "coap", "listen": ["` + vip + `"], "mode": "nat", "backends": ["` + be + `"]}]}`
	cfg := writeConfig(t, path, strings.Replace(tmpl, "IDLE", "60s", 1))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := Start(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	waitHealthy := func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if code, _ := get(t, "http://"+admin+"/healthz"); code == 200 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("not healthy")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitHealthy()
	// A tuning change restarts the service; twice, to catch metric
	// re-registration.
	for _, idle := range []string{"30s", "45s"} {
		if err := a.Reload(context.Background(), writeConfig(t, path, strings.Replace(tmpl, "IDLE", idle, 1))); err != nil {
			t.Fatalf("Reload(%s): %v", idle, err)
		}
		waitHealthy()
	}
	code, body := get(t, "http://"+admin+"/metrics")
	if code != 200 || strings.Count(body, `lwm2m_lb_received_total{service="coap"}`) != 1 {
		t.Fatalf("/metrics after reloads: %d\n%s", code, body)
	}
	// A configuration that cannot start (its listen address is taken by a
	// plain socket) is refused and the running one is restored.
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := strings.Replace(strings.Replace(tmpl, "IDLE", "45s", 1), vip, taken.LocalAddr().String(), 1)
	if err := a.Reload(context.Background(), writeConfig(t, path, bad)); err == nil {
		t.Fatal("reload onto a taken address succeeded")
	}
	waitHealthy()
	if bs := a.Backends()["coap"]; len(bs) != 1 || bs[0].State != "up" {
		t.Fatalf("after a refused reload: %+v", bs)
	}
	// Admin changes need a restart.
	c2 := cfg
	c2.Admin = "127.0.0.1:1"
	if err := a.Reload(context.Background(), c2); err == nil {
		t.Fatal("admin change accepted on reload")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown field": `{"services":[{"name":"a","listen":["127.0.0.1:1"],"backends":["127.0.0.1:2"]}], "bogus": 1}`,
		"no services":   `{}`,
		"bad listen":    `{"services":[{"listen":["nope"],"backends":["127.0.0.1:2"]}]}`,
		"bad mode":      `{"services":[{"listen":["127.0.0.1:1"],"mode":"dsr","backends":["127.0.0.1:2"]}]}`,
		"no backends":   `{"services":[{"listen":["127.0.0.1:1"]}]}`,
		"duplicate":     `{"services":[{"name":"a","listen":["127.0.0.1:1"],"backends":["127.0.0.1:2"]},{"name":"a","listen":["127.0.0.1:3"],"backends":["127.0.0.1:2"]}]}`,
		"bad duration":  `{"healthInterval": 5, "services":[{"listen":["127.0.0.1:1"],"backends":["127.0.0.1:2"]}]}`,
	} {
		p := filepath.Join(dir, "c.json")
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := Load(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
