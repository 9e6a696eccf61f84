package localnet

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestFreePort(t *testing.T) {
	for _, n := range []string{"udp4", "tcp4"} {
		if p, err := FreePort(n); err != nil || p == 0 {
			t.Fatalf("%s: %d %v", n, p, err)
		}
	}
	if _, err := FreePort("unix"); err == nil {
		t.Fatal("unix accepted")
	}
}

func TestWaitHTTP(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	if err := WaitHTTP(context.Background(), srv.URL, 5*time.Second, nil); err != nil || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls, want success on the third", err, calls.Load())
	}
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer down.Close()
	err := WaitHTTP(context.Background(), down.URL, 300*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("got %v, want a timeout naming the 503", err)
	}
	err = WaitHTTP(context.Background(), down.URL, time.Minute, func() bool { return true })
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("got %v, want exited", err)
	}
}
