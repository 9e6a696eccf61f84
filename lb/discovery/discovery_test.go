package discovery

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
)

func TestBackends(t *testing.T) {
	bs := Backends([]store.Member{
		{ID: "b", Backend: "10.0.0.2:5683", State: store.StateDraining},
		{ID: "a", Backend: "10.0.0.1:5683", State: store.StateActive},
		{ID: "c", Backend: "[::]:5683"},
		{ID: "d", Backend: ""},
	}, 0, false)
	if len(bs) != 2 || bs[0].Addr.String() != "10.0.0.1:5683" || bs[0].Draining || !bs[1].Draining {
		t.Fatalf("Backends = %+v", bs)
	}
	if bs := Backends([]store.Member{{Backend: "10.0.0.1:1"}}, 5684, false); bs[0].Addr.Port() != 5684 {
		t.Fatalf("port override: %+v", bs)
	}
	bs = Backends([]store.Member{{Backend: "10.0.0.1:5683", CoAPS: "10.0.0.1:5684", NodeID: 7}, {Backend: "10.0.0.2:5683"}}, 0, true)
	if len(bs) != 1 || bs[0].Addr.Port() != 5684 || bs[0].NodeID != 7 {
		t.Fatalf("dtls backends: %+v", bs)
	}
}

func TestWatch(t *testing.T) {
	s := memstore.New(0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen [][]store.Member
	go Watch(ctx, s, 20*time.Millisecond, slog.Default(), func(ms []store.Member) {
		mu.Lock()
		seen = append(seen, ms)
		mu.Unlock()
	})
	calls := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	wait := func(n int) {
		deadline := time.Now().Add(5 * time.Second)
		for calls() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d calls, want %d", calls(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(1) // initial, empty
	s.Announce(ctx, store.Member{ID: "a", Backend: "10.0.0.1:5683", State: store.StateActive}, time.Minute)
	wait(2)
	// A heartbeat that changes nothing but Seen is not a change.
	time.Sleep(30 * time.Millisecond)
	s.Announce(ctx, store.Member{ID: "a", Backend: "10.0.0.1:5683", State: store.StateActive}, time.Minute)
	time.Sleep(100 * time.Millisecond)
	if calls() != 2 {
		t.Fatalf("%d calls after a plain heartbeat, want 2", calls())
	}
	s.Announce(ctx, store.Member{ID: "a", Backend: "10.0.0.1:5683", State: store.StateDraining}, time.Minute)
	wait(3)
	s.Leave(ctx, "a")
	wait(4)
	mu.Lock()
	defer mu.Unlock()
	if len(seen[1]) != 1 || seen[2][0].State != store.StateDraining || len(seen[3]) != 0 {
		t.Fatalf("sequence %+v", seen)
	}
}
