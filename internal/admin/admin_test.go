package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.Gatherer == nil {
		reg := prometheus.NewRegistry()
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_total", Help: "a test counter"})
		reg.MustRegister(c)
		c.Add(3)
		cfg.Gatherer = reg
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s
}

func TestEndpoints(t *testing.T) {
	var unhealthy atomic.Bool
	s := start(t, Config{
		Health: func(context.Context) error {
			if unhealthy.Load() {
				return errors.New("redis down")
			}
			return nil
		},
		Handlers: map[string]http.Handler{"GET /thing": JSON(func(context.Context) (any, error) { return map[string]int{"n": 1}, nil })},
	})
	if code, body := get(t, s, "/metrics"); code != 200 || !strings.Contains(body, "test_total 3") {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	if code, body := get(t, s, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	unhealthy.Store(true)
	if code, body := get(t, s, "/healthz"); code != 503 || !strings.Contains(body, "redis down") {
		t.Fatalf("unhealthy /healthz: %d %q", code, body)
	}
	if code, body := get(t, s, "/thing"); code != 200 || !strings.Contains(body, `"n": 1`) {
		t.Fatalf("/thing: %d %q", code, body)
	}
	if code, _ := get(t, s, "/debug/pprof/heap"); code != 404 {
		t.Fatalf("/debug/pprof/heap without Pprof: %d, want 404", code)
	}
}

func TestPprof(t *testing.T) {
	s := start(t, Config{Pprof: true})
	if code, body := get(t, s, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d", code)
	}
	if code, body := get(t, s, "/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Fatalf("/debug/pprof/heap: %d %.80q", code, body)
	}
}
