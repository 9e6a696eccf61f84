package instance

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// TestCompositeBlockwise: a Read-Composite, and the first answer of an
// Observe-Composite, that the device answers block-wise (RFC 7959, the
// answer to a FETCH: every later block is asked for with a FETCH carrying
// the same paths, RFC 8132) reach the northbound whole; the observation
// then goes on, its notifications published whole too. With the
// in-memory store and with Redis, with 256- and 512-byte blocks.
func TestCompositeBlockwise(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		for _, block := range []int{256, 512} {
			t.Run(fmt.Sprint(block), func(t *testing.T) { testCompositeBlockwise(t, "", block) })
		}
	})
	t.Run("redis", func(t *testing.T) {
		url := redistest.Start(t).URL
		for _, block := range []int{256, 512} {
			t.Run(fmt.Sprint(block), func(t *testing.T) { testCompositeBlockwise(t, url, block) })
		}
	})
}

func testCompositeBlockwise(t *testing.T, redisURL string, block int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ep := fmt.Sprintf("bwcomp-%d", block)
	in := startInstance(t, ctx, Options{InstanceID: ep, RedisURL: redisURL})

	d := simdevice.New(simdevice.Config{Endpoint: ep, Server: in.CoAPAddr().String(), Logger: quiet, BlockSize: block})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Register(ctx); err != nil {
		t.Fatal(err)
	}
	paths := []node.Path{node.MustPath(3, 0, 0), node.MustPath(3, 0, 1), node.MustPath(3, 0, 2), node.MustPath(3, 0, 3)}
	set := func(round string, size int) map[string]string {
		t.Helper()
		want := map[string]string{}
		for i, p := range paths {
			v := repeat(fmt.Sprintf("%s value %d of %s ", round, i, p), size)
			if err := d.Set(p, node.StringValue(v)); err != nil {
				t.Fatal(err)
			}
			want[p.String()] = v
		}
		return want
	}
	check := func(what string, r *northbound.Resp, want map[string]string) {
		t.Helper()
		if r.Code != "CONTENT" {
			t.Fatalf("%s: %s %q", what, r.Code, r.ErrorMessage)
		}
		for p, v := range want {
			if got := stringOf(nodeAt(r.Nodes, p)); got != v {
				t.Fatalf("%s: %s is %d bytes %.40q, want %d bytes", what, p, len(got), got, len(v))
			}
		}
	}
	strs := make([]string, len(paths))
	for i, p := range paths {
		strs[i] = p.String()
	}
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()

	// Read-Composite, in SenML CBOR (the default) and JSON: about 3 KB.
	senml := uint16(codec.SenMLJSON)
	for _, format := range []*uint16{nil, &senml} {
		want := set("read", 750)
		reads := d.Count(simdevice.OpReadComposite)
		r, err := c.Do(ctx, ep, northbound.Req{Kind: northbound.KindReadComposite, Paths: strs, ContentFormat: format})
		if err != nil {
			t.Fatal(err)
		}
		check("read-composite", r, want)
		// The device answered every block once: a 3 KB answer is more
		// than 5 blocks.
		if n := d.Count(simdevice.OpReadComposite) - reads; n < 3000/block {
			t.Fatalf("the device answered %d FETCHes: not block-wise", n)
		}
	}

	// Observe-Composite whose first answer is block-wise.
	want := set("first", 600)
	reads := d.Count(simdevice.OpReadComposite)
	obs, err := c.Observe(ctx, ep, northbound.Req{Kind: northbound.KindObserveComposite, Paths: strs, ContentFormat: &senml})
	if err != nil {
		t.Fatal(err)
	}
	check("observe-composite first answer", obs.First(), want)
	// The later blocks of the first answer: FETCHes without Observe.
	if n := d.Count(simdevice.OpReadComposite) - reads; n < 2400/block {
		t.Fatalf("the device answered %d FETCHes for later blocks: not block-wise", n)
	}
	next := func() *northbound.Resp {
		t.Helper()
		select {
		case r, ok := <-obs.C():
			if !ok {
				t.Fatalf("observation ended: %v", obs.Err())
			}
			if !r.Observe {
				t.Fatalf("notification %+v", r)
			}
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		return nil
	}
	// A small notification, then a block-wise one: the device notifies
	// on each change of an observed path, so drain to the last.
	for round, size := range []int{10, 800} {
		want := map[string]string{}
		for p, v := range set(fmt.Sprint("round ", round), size) {
			want[p] = v
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := next()
			if r.Code != "CONTENT" {
				t.Fatalf("notification: %s %q", r.Code, r.ErrorMessage)
			}
			if stringOf(nodeAt(r.Nodes, paths[len(paths)-1].String())) == want[paths[len(paths)-1].String()] {
				check("notification", r, want)
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no notification with the last values")
			}
		}
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
}

// repeat returns seed repeated to exactly n bytes.
func repeat(seed string, n int) string {
	b := make([]byte, 0, n+len(seed))
	for len(b) < n {
		b = append(b, seed...)
	}
	return string(b[:n])
}

// TestWriteCompositeBlockwise: a Write-Composite (iPATCH) whose payload is
// larger than a block goes to the device block-wise (Block1, RFC 7959
// section 2.5), which go-coap does for the server: the device, using
// 256-byte blocks, gets the whole payload.
func TestWriteCompositeBlockwise(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "bwwc"})

	var mu sync.Mutex
	var got []byte
	var method codes.Code
	router := mux.NewRouter()
	router.DefaultHandleFunc(func(w mux.ResponseWriter, r *mux.Message) {
		b, err := r.ReadBody()
		if err != nil {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
			return
		}
		mu.Lock()
		got, method = b, r.Code()
		mu.Unlock()
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	})
	rawDevice(t, in, router, "bwwc-dev", `</3/0>`, options.WithBlockwise(true, blockwise.SZX256, 10*time.Second))

	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	big := strings.Repeat("0123456789abcdef", 100) // 1600 bytes each
	nodes := map[string]node.Any{
		"/3/0/14": {Node: node.NewSingle(14, node.StringValue(big+"a"))},
		"/3/0/15": {Node: node.NewSingle(15, node.StringValue(big+"b"))},
	}
	before := in.coap.Stats()
	r, err := c.Do(ctx, "bwwc-dev", northbound.Req{Kind: northbound.KindWriteComposite, Nodes: nodes})
	if err != nil || r.Code != "CHANGED" {
		t.Fatalf("write-composite: %v %+v", err, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if method != codes.IPATCH {
		t.Fatalf("the device got %v", method)
	}
	if n := in.coap.Stats().Sent - before.Sent; n < uint64(len(got)/256) {
		t.Fatalf("the %d-byte payload went out in %d datagrams: not in 256-byte blocks", len(got), n)
	}
	written, err := codec.DecodeComposite(codec.SenMLCBOR, got, nil, model.Default())
	if err != nil {
		t.Fatalf("the device got %d bytes: %v", len(got), err)
	}
	for p, want := range nodes {
		path, _ := node.ParsePath(p)
		n, ok := written[path].(node.Resource)
		if s, _ := n.Value.AsString(); !ok || s != stringOf(&want) {
			t.Fatalf("%s: got %d bytes", p, len(s))
		}
	}
}
