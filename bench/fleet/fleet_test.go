package fleet

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/instance"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
)

// waitFor polls cond until it holds; the test's own timeout bounds it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if t.Context().Err() != nil {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNoAnswerIsLost(t *testing.T) {
	hole, err := StartStub(StubConfig{Silent: true, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	f, err := New(Config{
		Target: hole.Addr(), Devices: 3, Ramp: 0,
		RequestTimeout: 300 * time.Millisecond, ACKTimeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(t.Context())
	// Each device tries to register, is lost, pauses and tries again.
	waitFor(t, "two lost registrations per device", func() bool { return f.c.lost.Load() >= 6 })
	res, err := f.Finish(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 0 || res.Registrations != 0 || res.Up != 0 {
		t.Fatalf("nothing answers, yet ok=%d registrations=%d up=%d", res.OK, res.Registrations, res.Up)
	}
	// Every request sent ended as lost: none is still being retried, none
	// is counted twice.
	if res.Lost < 6 || res.Sent != res.Lost || res.Errors != 0 {
		t.Fatalf("sent %d, lost %d, errors %d: want every request lost once", res.Sent, res.Lost, res.Errors)
	}
	if res.Errs["register: timeout"] != res.Lost {
		t.Fatalf("errors by kind %v, want %d register timeouts", res.Errs, res.Lost)
	}
	if res.LossPercent != 100 {
		t.Fatalf("loss %v%%, want 100%%", res.LossPercent)
	}
	// go-coap gives up a request when its context ends: at most the
	// initial datagram and its 4 retransmissions per request, whatever
	// the timing.
	if got := hole.Received.Load(); got > res.Sent*5 {
		t.Fatalf("the black hole got %d datagrams for %d requests: requests are retried beyond their timeout", got, res.Sent)
	}
}

func TestUnansweredUpdatesAreLost(t *testing.T) {
	stub, err := StartStub(StubConfig{DropUpdates: true, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()
	f, err := New(Config{
		Target: stub.Addr(), Devices: 4, UpdateEvery: 50 * time.Millisecond, NotifyEvery: -1,
		RequestTimeout: 200 * time.Millisecond, ACKTimeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(t.Context())
	if err := f.WaitRamp(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lost updates", func() bool { return f.c.lost.Load() >= 8 })
	res, err := f.Finish(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if res.Registrations != 4 || res.Up != 4 || res.Register.Count != 4 {
		t.Fatalf("registrations %d up %d, want 4", res.Registrations, res.Up)
	}
	if res.Updates != 0 || res.Update.Count != 0 {
		t.Fatalf("%d updates answered, want none", res.Updates)
	}
	if res.Sent != res.OK+res.Lost || res.OK != 4 || res.Errs["update: timeout"] != res.Lost {
		t.Fatalf("sent %d ok %d lost %d errors %v", res.Sent, res.OK, res.Lost, res.Errs)
	}
	// Every device's updates failed since its registration.
	if d := f.Disruptions(res.Started); len(d) != 4 {
		t.Fatalf("%d devices disrupted, want 4: %+v", len(d), d)
	}
	if _, err := json.Marshal(res); err != nil {
		t.Fatal(err)
	}
}

func TestAgainstStub(t *testing.T) {
	stub, err := StartStub(StubConfig{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()
	f, err := New(Config{Target: stub.Addr(), Devices: 20, Ramp: 100 * time.Millisecond, UpdateEvery: 20 * time.Millisecond,
		RebindEvery: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(t.Context())
	if err := f.WaitRamp(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "updates and rebinds", func() bool { return f.c.updates.Load() >= 100 && f.c.rebindKept.Load() >= 20 })
	res, err := f.Finish(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if res.Up != 20 || res.Registrations != 20 || res.Update.Count != res.Updates || res.Sent != res.OK+res.Lost+res.Errors {
		t.Fatalf("up %d registrations %d updates %d/%d sent %d ok %d lost %d errors %d",
			res.Up, res.Registrations, res.Updates, res.Update.Count, res.Sent, res.OK, res.Lost, res.Errors)
	}
}

// TestFleetAgainstServer runs a small fleet against an in-process
// lwm2m-server (in-memory store) with the northbound driver.
func TestFleetAgainstServer(t *testing.T) {
	ctx := t.Context()
	in, err := instance.Start(ctx, instance.Options{
		CoAPAddr: "127.0.0.1:0", AdminAddr: "", InstanceID: "bench-test",
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Stop(context.Background())
	nb := nbclient.New(in.Bus(), in.Store(), nbclient.Options{NotificationBuffer: 16})
	defer nb.Close()

	f, err := New(Config{
		Target: in.CoAPAddr().String(), Devices: 50, Ramp: 500 * time.Millisecond,
		UpdateEvery: 500 * time.Millisecond, NotifyEvery: 200 * time.Millisecond,
		RebindEvery: time.Second, Northbound: nb, ReadRate: 20,
		Registered: func(ctx context.Context) (map[string]string, error) {
			regs, err := in.Store().List(ctx)
			if err != nil {
				return nil, err
			}
			m := map[string]string{}
			for _, r := range regs {
				m[r.Endpoint] = r.ID
			}
			return m, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(ctx)
	if err := f.WaitRamp(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "updates, reads, notifications and rebinds", func() bool {
		return f.c.updates.Load() >= 100 && f.c.readOK.Load() >= 10 && f.c.notifications.Load() >= 50 && f.c.rebindKept.Load() >= 10
	})
	res, err := f.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d ok %d lost %d errors %v; reads %d/%d; observes %d/%d; notifications %d; rebinds %d kept %d",
		res.Sent, res.OK, res.Lost, res.Errs, res.ReadOK, res.Reads, res.ObserveOK, res.Observes, res.Notifications, res.Rebinds, res.RebindKept)
	if res.Up != 50 || res.Registrations < 50 {
		t.Fatalf("up %d, registrations %d, want 50", res.Up, res.Registrations)
	}
	if !res.RegistrationsChecked || res.RegisteredAtEnd != 50 || res.RegistrationsLost != 0 {
		t.Fatalf("registrations checked %v: %d registered, %d lost (%v)", res.RegistrationsChecked, res.RegisteredAtEnd, res.RegistrationsLost, res.LostEndpoints)
	}
	if res.Register.Count < 50 || res.Update.Count == 0 || res.Read.Count == 0 || res.Notify.Count == 0 {
		t.Fatalf("histograms: register %d update %d read %d notify %d", res.Register.Count, res.Update.Count, res.Read.Count, res.Notify.Count)
	}
	if res.Notify.Min > uint64(time.Minute) {
		t.Fatalf("notification latency %v: the value is not the time it was set", time.Duration(res.Notify.Min))
	}
	if len(res.Timeline) == 0 {
		t.Fatal("no timeline")
	}
}

// TestFleetDTLS runs DTLS devices, with and without Connection IDs,
// against an in-process server and rebinds them all.
func TestFleetDTLS(t *testing.T) {
	for _, cid := range []bool{true, false} {
		t.Run(map[bool]string{true: "cid", false: "no-cid"}[cid], func(t *testing.T) {
			ctx := t.Context()
			in, err := instance.Start(ctx, instance.Options{
				CoAPSAddr: "127.0.0.1:0", AdminAddr: "", InstanceID: "bench-dtls", NodeID: 7,
				Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer in.Stop(context.Background())
			cfg := Config{
				Target: in.CoAPSAddr().String(), Devices: 10, Ramp: 200 * time.Millisecond,
				UpdateEvery: time.Hour, NotifyEvery: -1, DTLS: true, CID: cid,
			}
			if err := ProvisionPSK(ctx, cfg, func(ctx context.Context, ep, id string, key []byte) error {
				return in.Store().PutSecurity(ctx, store.SecurityInfo{Endpoint: ep, Identity: id, Key: key})
			}); err != nil {
				t.Fatal(err)
			}
			f, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			f.Start(ctx)
			if err := f.WaitRamp(ctx); err != nil {
				t.Fatal(err)
			}
			f.RebindAll(0)
			waitFor(t, "every rebind accounted", func() bool {
				return f.c.rebindKept.Load()+f.c.rebindLost.Load()+f.c.rebindResumed.Load()+f.c.rebindFull.Load() >= 10
			})
			res, err := f.Finish(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("handshakes full %d resumed %d failed %d; rebinds %d kept %d resumed %d full %d lost %d; errors %v",
				res.HandshakesFull, res.HandshakesResumed, res.HandshakesFailed, res.Rebinds, res.RebindKept, res.RebindResumed, res.RebindFull, res.RebindLost, res.Errs)
			if res.Up != 10 || res.HandshakesFull != 10 {
				t.Fatalf("up %d, full handshakes %d, want 10 each", res.Up, res.HandshakesFull)
			}
			if cid && (res.RebindKept != 10 || res.HandshakesResumed != 0) {
				t.Fatalf("with CID every session must survive the rebind: kept %d, resumed handshakes %d", res.RebindKept, res.HandshakesResumed)
			}
			if !cid && (res.RebindResumed != 10 || res.HandshakesResumed != 10) {
				t.Fatalf("without CID every rebind must resume: resumed %d", res.RebindResumed)
			}
		})
	}
}
