package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeExec answers every request with a CONTENT resp naming the instance,
// after delay.
type fakeExec struct {
	id    string
	delay time.Duration
	calls atomic.Int64
	err   error
}

func (f *fakeExec) Execute(ctx context.Context, reg *registration.Registration, ticket string, req *northbound.Req) (*northbound.Resp, error) {
	f.calls.Add(1)
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return &northbound.Resp{Kind: req.Kind, Code: "CONTENT", ErrorMessage: f.id}, nil
}

type cluster struct {
	t     *testing.T
	bus   *northbound.Broker
	st    *memstore.Store
	execs map[string]*fakeExec
	resp  northbound.Subscription
}

// newCluster starts a dispatcher per id on one in-process bus and store,
// each with a fakeExec; every id is announced as a member.
func newCluster(t *testing.T, ids ...string) *cluster {
	t.Helper()
	return newClusterWith(t, nil, ids...)
}

// newClusterWith is newCluster with each dispatcher's Config changed by
// tune (which may replace the executor).
func newClusterWith(t *testing.T, tune func(*Config), ids ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, bus: northbound.NewBroker(), st: memstore.New(0), execs: map[string]*fakeExec{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); c.bus.Close() })
	for _, id := range ids {
		if err := c.st.Announce(ctx, store.Member{ID: id, State: store.StateActive}, time.Hour); err != nil {
			t.Fatal(err)
		}
		ex := &fakeExec{id: id}
		c.execs[id] = ex
		cfg := Config{InstanceID: id, Bus: c.bus, State: c.st, Exec: ex, Logger: quiet, OwnerGrace: 300 * time.Millisecond}
		if tune != nil {
			tune(&cfg)
		}
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := d.Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); d.Serve(ctx, sub) }()
	}
	sub, err := c.bus.Subscribe(ctx, northbound.ChannelResp)
	if err != nil {
		t.Fatal(err)
	}
	c.resp = sub
	return c
}

func (c *cluster) register(ep, owner string) {
	c.t.Helper()
	ctx := context.Background()
	r := &registration.Registration{Endpoint: ep, ID: registration.NewID(), Lifetime: 3600, Version: "1.1",
		Binding: "U", Address: "127.0.0.1", Port: 5000, RegDate: time.Now().UnixMilli(), LastUp: time.Now().UnixMilli()}
	if _, err := c.st.Add(ctx, r); err != nil {
		c.t.Fatal(err)
	}
	if owner != "" {
		if err := c.st.SetOwner(ctx, ep, owner); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) publish(channel, payload string) {
	c.t.Helper()
	if err := c.bus.Publish(context.Background(), channel, []byte(payload)); err != nil {
		c.t.Fatal(err)
	}
}

// collect returns the LESHAN_RESP messages of ticket received within d.
func (c *cluster) collect(ticket string, d time.Duration) []northbound.Response {
	c.t.Helper()
	var out []northbound.Response
	deadline := time.After(d)
	for {
		select {
		case m := <-c.resp.C():
			var r northbound.Response
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				c.t.Fatalf("bad LESHAN_RESP %s: %v", m.Payload, err)
			}
			if r.Ticket == ticket {
				out = append(out, r)
			}
		case <-deadline:
			return out
		}
	}
}

func kinds(rs []northbound.Response) string {
	var s []string
	for _, r := range rs {
		switch {
		case r.Ack:
			s = append(s, "ack")
		case r.Err != nil:
			s = append(s, "err:"+r.Err.ErrorMessage)
		case r.Resp != nil:
			s = append(s, "resp:"+r.Resp.ErrorMessage)
		}
	}
	return strings.Join(s, " | ")
}

func TestOwnerAnswersOnce(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	c.register("dev1", "b")
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"t1","req":{"kind":"read","path":"/3/0/1"}}`)
	got := c.collect("t1", 800*time.Millisecond)
	if k := kinds(got); k != "ack | resp:b" {
		t.Fatalf("got %q, want one ack and one resp from b", k)
	}
	if n := c.execs["a"].calls.Load() + c.execs["c"].calls.Load(); n != 0 {
		t.Fatalf("non-owners executed %d requests", n)
	}
}

func TestDuplicateDeliveryExecutesOnce(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.register("dev1", "a")
	req := `{"ep":"dev1","ticket":"dup","req":{"kind":"read","path":"/3/0"}}`
	c.publish(northbound.ChannelReq, req)
	c.publish(northbound.InstanceReqChannel("a"), req)
	got := c.collect("dup", 800*time.Millisecond)
	if k := kinds(got); k != "ack | resp:a" {
		t.Fatalf("got %q", k)
	}
	if n := c.execs["a"].calls.Load(); n != 1 {
		t.Fatalf("executed %d times", n)
	}
}

func TestUnregisteredGetsOneErr(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	c.publish(northbound.ChannelReq, `{"ep":"ghost","ticket":"t2","req":{"kind":"read","path":"/3/0/1"}}`)
	got := c.collect("t2", 800*time.Millisecond)
	if len(got) != 1 || got[0].Err == nil || !strings.Contains(got[0].Err.ErrorMessage, "not registered") {
		t.Fatalf("got %q, want one err saying not registered", kinds(got))
	}
}

func TestDeadOwnerGetsOneErr(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.register("dev1", "gone") // owner not a member
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"t3","req":{"kind":"read","path":"/3/0/1"}}`)
	got := c.collect("t3", 800*time.Millisecond)
	if len(got) != 1 || got[0].Err == nil || !strings.Contains(got[0].Err.ErrorMessage, `"gone"`) {
		t.Fatalf("got %q, want one err naming the owner", kinds(got))
	}
}

func TestSilentLiveOwnerGetsOneErrAfterGrace(t *testing.T) {
	c := newCluster(t, "a", "b")
	// "z" heartbeats but runs no dispatcher: it died since.
	if err := c.st.Announce(context.Background(), store.Member{ID: "z", State: store.StateActive}, time.Hour); err != nil {
		t.Fatal(err)
	}
	c.register("dev1", "z")
	start := time.Now()
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"t4","req":{"kind":"read","path":"/3/0/1"}}`)
	got := c.collect("t4", time.Second)
	if len(got) != 1 || got[0].Err == nil || !strings.Contains(got[0].Err.ErrorMessage, "did not take") {
		t.Fatalf("got %q, want one err", kinds(got))
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("answered before the owner's grace")
	}
}

func TestDirectToNonOwnerIsForwarded(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.register("dev1", "a")
	c.publish(northbound.InstanceReqChannel("b"), `{"ep":"dev1","ticket":"t5","req":{"kind":"read","path":"/3/0/1"}}`)
	got := c.collect("t5", 800*time.Millisecond)
	if k := kinds(got); k != "ack | resp:a" {
		t.Fatalf("got %q, want the owner a to answer", k)
	}
}

func TestInvalidRequests(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.register("dev1", "a")
	for ticket, payload := range map[string]string{
		"bad1": `{"ep":"dev1","ticket":"bad1","req":{"kind":"frobnicate","path":"/3/0"}}`,
		"bad2": `{"ep":"dev1","ticket":"bad2","req":{"kind":"read","path":"/3/x"}}`,
		"bad3": `{"ep":"dev1","ticket":"bad3","req":{"kind":"write","path":"/3/0/1","node":{"kind":"singleresource","id":2,"type":"string","value":"x"}}}`,
		"bad4": `{"ep":"dev1","ticket":"bad4","req":5}`,
	} {
		c.publish(northbound.ChannelReq, payload)
		got := c.collect(ticket, 500*time.Millisecond)
		if len(got) != 1 || got[0].Err == nil {
			t.Errorf("%s: got %q, want exactly one err", ticket, kinds(got))
		}
	}
	// No ticket: nothing can be answered, nothing crashes.
	c.publish(northbound.ChannelReq, `not json`)
	c.publish(northbound.ChannelReq, `{"ep":"dev1","req":{"kind":"read","path":"/3/0"}}`)
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"ok","req":{"kind":"read","path":"/3/0"}}`)
	if k := kinds(c.collect("ok", 800*time.Millisecond)); k != "ack | resp:a" {
		t.Fatalf("valid request after garbage: got %q", k)
	}
}

func TestTimeout(t *testing.T) {
	c := newCluster(t, "a")
	c.execs["a"].delay = time.Hour
	c.register("dev1", "a")
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"slow","req":{"kind":"read","path":"/3/0","timeout":200}}`)
	got := c.collect("slow", time.Second)
	if len(got) != 2 || !got[0].Ack || got[1].Err == nil || !strings.Contains(got[1].Err.ErrorMessage, "200 ms") {
		t.Fatalf("got %q, want ack then a timeout err", kinds(got))
	}
}

func TestExecutorErrors(t *testing.T) {
	c := newCluster(t, "a")
	c.execs["a"].err = ErrNoSession
	c.register("dev1", "a")
	c.publish(northbound.ChannelReq, `{"ep":"dev1","ticket":"nosess","req":{"kind":"read","path":"/3/0"}}`)
	got := c.collect("nosess", 600*time.Millisecond)
	if len(got) != 2 || got[1].Err == nil || got[1].Err.ErrorMessage != ErrNoSession.Error() {
		t.Fatalf("got %q", kinds(got))
	}
}

// TestFanOutForOthersDoesNotBlock: waiting for another instance's devices'
// requests (OwnerGrace) holds no worker, so a burst of fan-out requests for
// a's devices does not delay b's own.
func TestFanOutForOthersDoesNotBlock(t *testing.T) {
	c := newClusterWith(t, func(cfg *Config) { cfg.Workers, cfg.OwnerGrace = 2, 5*time.Second }, "a", "b")
	c.register("dev-a", "a")
	c.register("dev-b", "b")
	for i := 0; i < 20; i++ {
		c.publish(northbound.ChannelReq, fmt.Sprintf(`{"ep":"dev-a","ticket":"a%d","req":{"kind":"read","path":"/3/0"}}`, i))
	}
	c.publish(northbound.ChannelReq, `{"ep":"dev-b","ticket":"mine","req":{"kind":"read","path":"/3/0"}}`)
	if k := kinds(c.collect("mine", 4*time.Second)); k != "ack | resp:b" {
		t.Fatalf("b's own request behind a burst for a's devices: got %q within 4s", k)
	}
}

// slowExec sleeps (until ctx ends) for the endpoint "sleepy" and answers
// the others at once.
type slowExec struct{}

func (slowExec) Execute(ctx context.Context, reg *registration.Registration, ticket string, req *northbound.Req) (*northbound.Resp, error) {
	if reg.Endpoint == "sleepy" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &northbound.Resp{Kind: req.Kind, Code: "CONTENT"}, nil
}

// TestSleepyDeviceDoesNotBlock: requests waiting for a device that does not
// answer hold no worker; the instance goes on answering for other devices,
// and answers the waiting ones with a timeout err.
func TestSleepyDeviceDoesNotBlock(t *testing.T) {
	c := newClusterWith(t, func(cfg *Config) { cfg.Exec, cfg.Workers = slowExec{}, 2 }, "a")
	c.register("sleepy", "a")
	c.register("awake", "a")
	for i := 0; i < 6; i++ {
		c.publish(northbound.ChannelReq, fmt.Sprintf(`{"ep":"sleepy","ticket":"z%d","req":{"kind":"read","path":"/3/0","timeout":3000}}`, i))
	}
	c.publish(northbound.ChannelReq, `{"ep":"awake","ticket":"now","req":{"kind":"read","path":"/3/0"}}`)
	if k := kinds(c.collect("now", time.Second)); k != "ack | resp:" {
		t.Fatalf("request for an awake device behind sleeping ones: got %q", k)
	}
	// (z5's ack went by while waiting for "now".)
	got := c.collect("z5", 4*time.Second)
	if n := len(got); n == 0 || got[n-1].Err == nil || !strings.Contains(got[n-1].Err.ErrorMessage, "timeout") {
		t.Fatalf("sleepy request: got %q, want a timeout err", kinds(got))
	}
}
