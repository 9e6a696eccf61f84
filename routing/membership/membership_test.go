package membership

import (
	"context"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAnnouncer(t *testing.T) {
	s := memstore.New(0)
	a := New(s, store.Member{ID: "i1", NodeID: 7, Backend: "127.0.0.1:5683"}, 50*time.Millisecond, 150*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	members := func() []store.Member { m, _ := s.Members(context.Background()); return m }
	waitFor(t, "announce", func() bool { m := members(); return len(m) == 1 && m[0].State == store.StateActive })
	// The heartbeat keeps it alive well past its TTL.
	time.Sleep(400 * time.Millisecond)
	if m := members(); len(m) != 1 {
		t.Fatalf("entry lapsed despite heartbeat: %v", m)
	}
	a.SetState(store.StateDraining)
	waitFor(t, "draining", func() bool { m := members(); return len(m) == 1 && m[0].State == store.StateDraining })
	cancel()
	<-done
	if m := members(); len(m) != 0 {
		t.Fatalf("entry left behind after stop: %v", m)
	}
}
