package instance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestBlockwise: payloads larger than a block cross in blocks (RFC 7959)
// both ways: a Register with a 6 KB link-format payload (Block1 from the
// device), a read of a 3 KB value (Block2 from the device) and a write of a
// 3 KB value (Block1 to the device), with a device that uses 256-byte
// blocks.
func TestBlockwise(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "bw"})

	big := strings.Repeat("0123456789abcdef", 192) // 3072 bytes
	var mu sync.Mutex
	var written string
	router := mux.NewRouter()
	_ = router.Handle("/3/0/0", mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		_ = w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader([]byte(big)))
	}))
	_ = router.Handle("/3/0/15", mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		if r.Code() != codes.PUT {
			_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, nil)
			return
		}
		b, err := r.ReadBody()
		if err != nil {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
			return
		}
		mu.Lock()
		written = string(b)
		mu.Unlock()
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	}))
	links := []string{`</>;rt="oma.lwm2m";ct="0 11542"`, "</1/0>", "</3/0>"}
	for i := 0; len(strings.Join(links, ",")) < 6000; i++ {
		links = append(links, fmt.Sprintf("</%d/%d>", 10000+i/10, i%10))
	}
	payload := strings.Join(links, ",")
	rawDevice(t, in, router, "bw-dev", payload, options.WithBlockwise(true, blockwise.SZX256, 10*time.Second))
	reg, err := in.Store().GetByEndpoint(ctx, "bw-dev")
	if err != nil || len(reg.ObjLinks) != len(links) {
		t.Fatalf("registration has %d links, want %d (%v)", len(reg.ObjLinks), len(links), err)
	}
	// Datagrams, counted at the server's socket, show the blocks.
	if n := in.coap.Stats().Received; n < uint64(len(payload)/256) {
		t.Fatalf("the %d-byte Register came in %d datagrams: not in 256-byte blocks", len(payload), n)
	}

	before := in.coap.Stats()
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	text := uint16(0)
	r, err := c.Do(ctx, "bw-dev", northbound.Req{Kind: northbound.KindRead, Path: "/3/0/0", ContentFormat: &text})
	if err != nil || r.Code != "CONTENT" {
		t.Fatalf("read: %v %+v", err, r)
	}
	res, ok := r.Node.Node.(node.Resource)
	if s, _ := res.Value.AsString(); !ok || s != big {
		t.Fatalf("read a %d-byte value, got %d bytes", len(big), len(s))
	}
	mid := in.coap.Stats()
	if n := mid.Received - before.Received; n < uint64(len(big)/256) {
		t.Fatalf("the %d-byte value came in %d datagrams: not in blocks", len(big), n)
	}
	w := node.NewSingle(15, node.StringValue(big))
	r, err = c.Do(ctx, "bw-dev", northbound.Req{Kind: northbound.KindWrite, Path: "/3/0/15", ContentFormat: &text, Node: &node.Any{Node: w}})
	if err != nil || r.Code != "CHANGED" {
		t.Fatalf("write: %v %+v", err, r)
	}
	if n := in.coap.Stats().Sent - mid.Sent; n < 3 {
		t.Fatalf("the %d-byte write went out in %d datagrams: not in blocks", len(big), n)
	}
	mu.Lock()
	defer mu.Unlock()
	if written != big {
		t.Fatalf("the device got %d bytes, want %d", len(written), len(big))
	}
}
