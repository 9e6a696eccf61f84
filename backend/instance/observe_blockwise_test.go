package instance

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// TestObserveBlockwiseNotification: a notification larger than a block
// (RFC 7959 section 2.6: the device sends the first block, Block2 NUM 0
// with M set, and the server gets the others with GET or FETCH) reaches
// the northbound whole, with the observe's ticket, for an Observe and an
// Observe-Composite, with the in-memory store and with Redis.
func TestObserveBlockwiseNotification(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testObserveBlockwise(t, "") })
	t.Run("redis", func(t *testing.T) { testObserveBlockwise(t, redistest.Start(t).URL) })
}

func testObserveBlockwise(t *testing.T, redisURL string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "bwobs", RedisURL: redisURL})

	const block = 512
	d := simdevice.New(simdevice.Config{Endpoint: "bwobs-dev", Server: in.CoAPAddr().String(), Logger: quiet,
		BlockSize: block})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Register(ctx); err != nil {
		t.Fatal(err)
	}
	p := node.MustPath(3, 0, 0)
	value := func(seed string, n int) string { return strings.Repeat(seed, n/len(seed)+1)[:n] }
	first := value("first value ", 3000)
	if err := d.Set(p, node.StringValue(first)); err != nil {
		t.Fatal(err)
	}
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	text := uint16(codec.TextPlain)
	obs, err := c.Observe(ctx, "bwobs-dev", northbound.Req{Kind: northbound.KindObserve, Path: p.String(), ContentFormat: &text})
	if err != nil {
		t.Fatal(err)
	}
	if got := stringOf(obs.First().Node); got != first {
		t.Fatalf("first answer: %d bytes, want %d", len(got), len(first))
	}

	next := func(o *nbclient.Observation) *northbound.Resp {
		t.Helper()
		select {
		case r, ok := <-o.C():
			if !ok {
				t.Fatalf("observation ended: %v", o.Err())
			}
			if !r.Observe || r.Code != "CONTENT" {
				t.Fatalf("notification %+v", r)
			}
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		return nil
	}
	for i, n := range []int{3500, 4000, 40, 2048} {
		v := value(string(rune('a'+i))+" notified value ", n)
		reads := d.Count(simdevice.OpRead)
		if err := d.Set(p, node.StringValue(v)); err != nil {
			t.Fatal(err)
		}
		r := next(obs)
		if got := stringOf(r.Node); got != v {
			t.Fatalf("notification of %d bytes: got %d bytes %.40q", n, len(got), got)
		}
		// Blocks 1, 2, ... were fetched, not the first again.
		if got, want := d.Count(simdevice.OpRead)-reads, (n+block-1)/block-1; got != want {
			t.Fatalf("%d-byte notification: the device answered %d reads, want %d", n, got, want)
		}
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}

	// Observe-Composite: the later blocks come with FETCH and the same
	// paths. (A first answer sent block-wise: TestCompositeBlockwise.)
	if err := d.Set(p, node.StringValue("small")); err != nil {
		t.Fatal(err)
	}
	senml := uint16(codec.SenMLJSON)
	cobs, err := c.Observe(ctx, "bwobs-dev", northbound.Req{Kind: northbound.KindObserveComposite,
		Paths: []string{"/3/0/0", "/3/0/1"}, ContentFormat: &senml})
	if err != nil {
		t.Fatal(err)
	}
	if got := stringOf(nodeAt(cobs.First().Nodes, "/3/0/0")); got != "small" {
		t.Fatalf("composite first answer: %.40q", got)
	}
	v := value("composite value ", 3900)
	if err := d.Set(p, node.StringValue(v)); err != nil {
		t.Fatal(err)
	}
	r := next(cobs)
	if got := stringOf(nodeAt(r.Nodes, "/3/0/0")); got != v {
		t.Fatalf("composite notification: %d bytes %.40q", len(got), got)
	}
	if got := stringOf(nodeAt(r.Nodes, "/3/0/1")); got != "simdevice" {
		t.Fatalf("composite notification /3/0/1: %q", got)
	}
}

func stringOf(a *node.Any) string {
	if a == nil {
		return ""
	}
	r, ok := a.Node.(node.Resource)
	if !ok {
		return ""
	}
	s, _ := r.Value.AsString()
	return s
}

func nodeAt(nodes map[string]node.Any, p string) *node.Any {
	n, ok := nodes[p]
	if !ok {
		return nil
	}
	return &n
}
