package devmgmt

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// holds records the tokens an Executor marks with HoldBlocks.
type holds struct {
	mu     sync.Mutex
	tokens []message.Token
	held   map[string]int
}

func (h *holds) add(tok message.Token) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		h.held = map[string]int{}
	}
	h.tokens = append(h.tokens, bytes.Clone(tok))
	h.held[string(tok)]++
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.held[string(tok)]--
	}
}

func (h *holds) has(tok message.Token) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[string(tok)] > 0
}

// compositeDevice answers a composite FETCH with the first 32-byte block
// of value (and Size2, ETag), and the requests for later blocks with
// next; every request must be held (HoldBlocks) while it is answered.
func compositeDevice(t *testing.T, h *holds, value string, next func(req, resp *pool.Message)) func(req, resp *pool.Message) {
	etag := []byte{7, 7}
	return func(req, resp *pool.Message) {
		if !h.has(req.Token()) {
			t.Errorf("request with token %x not held", req.Token())
		}
		if _, ok, _ := Block2(req); ok {
			next(req, resp)
			return
		}
		resp.SetCode(codes.Content)
		if obs, err := req.Observe(); err == nil && obs == 0 {
			resp.SetObserve(5)
		}
		resp.SetContentFormat(message.AppSenmlJSON)
		resp.SetOptionBytes(message.Block2, blockValue(0, true, 1))
		resp.SetOptionUint32(message.Size2, uint32(len(value)))
		resp.SetOptionBytes(message.ETag, etag)
		resp.SetBody(bytes.NewReader([]byte(value[:32])))
	}
}

// TestCompositeBlockwise: the block-wise answer of a Read- or
// Observe-Composite is completed with FETCHes that repeat the paths and
// the Accept, without Observe, under a new token; both tokens are held
// while the exchange lasts. Failures are errors wrapping ErrBlock.
func TestCompositeBlockwise(t *testing.T) {
	reg := model.Default()
	long := strings.Repeat("composite value ", 20)
	value, err := codec.EncodeComposite(codec.SenMLJSON, map[node.Path]node.Node{
		node.MustPath(3, 0, 0): node.NewSingle(0, node.StringValue(long)),
		node.MustPath(3, 0, 1): node.NewSingle(1, node.StringValue("model")),
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"/3/0/0", "/3/0/1"}
	wantPayload, _ := codec.EncodePaths(codec.SenMLJSON, []node.Path{node.MustPath(3, 0, 0), node.MustPath(3, 0, 1)})
	senml := uint16(codec.SenMLJSON)

	for _, kind := range []string{northbound.KindReadComposite, northbound.KindObserveComposite} {
		t.Run(kind, func(t *testing.T) {
			h := &holds{}
			e := &Executor{Registry: reg, HoldBlocks: h.add}
			conn := &fakeConn{}
			conn.answer = compositeDevice(t, h, string(value), serveBlocks(string(value), []byte{7, 7}))
			var tok message.Token
			if kind == northbound.KindObserveComposite {
				tok = message.Token{1, 2, 3}
			}
			res, err := e.Do(context.Background(), Target{Conn: conn},
				&northbound.Req{Kind: kind, Paths: paths, ContentFormat: &senml}, tok)
			if err != nil {
				t.Fatal(err)
			}
			if res.Resp.Code != "CONTENT" {
				t.Fatalf("%+v", res.Resp)
			}
			if r, ok := res.Resp.Nodes["/3/0/0"].Node.(node.Resource); !ok {
				t.Fatalf("nodes %+v", res.Resp.Nodes)
			} else if s, _ := r.Value.AsString(); s != long {
				t.Fatalf("/3/0/0 = %q", s)
			}
			if res.Observed != (kind == northbound.KindObserveComposite) {
				t.Fatalf("observed %v", res.Observed)
			}
			if want := (len(value) + 31) / 32; len(conn.reqs) != want {
				t.Fatalf("%d requests, want %d", len(conn.reqs), want)
			}
			first := conn.reqs[0]
			if tok != nil && !bytes.Equal(first.Token(), tok) {
				t.Fatalf("first request token %x", first.Token())
			}
			for i, r := range conn.reqs[1:] {
				body, _ := r.ReadBody()
				accept, _ := r.Accept()
				cf, _ := r.ContentFormat()
				b, _, _ := Block2(r)
				if r.Code() != codes.FETCH || !bytes.Equal(body, wantPayload) || accept != message.AppSenmlJSON ||
					cf != message.AppSenmlJSON || r.HasOption(message.Observe) || b.Num != uint32(i+1) ||
					bytes.Equal(r.Token(), first.Token()) || !bytes.Equal(r.Token(), conn.reqs[1].Token()) {
					t.Fatalf("request for block %d: %v %q", i+1, r, body)
				}
			}
			if len(h.tokens) != 2 || !bytes.Equal(h.tokens[0], first.Token()) || !bytes.Equal(h.tokens[1], conn.reqs[1].Token()) {
				t.Fatalf("held tokens %x", h.tokens)
			}
			if h.has(h.tokens[0]) || h.has(h.tokens[1]) {
				t.Fatal("tokens still held after the exchange")
			}
		})
	}

	// Failures: errors, not a partial value.
	for _, c := range []struct {
		name   string
		answer func(req, resp *pool.Message)
		want   error
	}{
		{"4.00 to a later block", func(_, resp *pool.Message) { resp.SetCode(codes.BadRequest) }, ErrBlock},
		{"value changed", serveBlocks(string(value), []byte{8}), ErrBlock},
		{"first block not 0", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(1, true, 1))
			resp.SetBody(bytes.NewReader(value[32:64]))
		}, ErrBlock},
		{"Size2 beyond MaxResponse", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(0, true, 1))
			resp.SetOptionUint32(message.Size2, MaxResponse+1)
			resp.SetBody(bytes.NewReader(value[:32]))
		}, ErrTooLarge},
		{"short first block", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(0, true, 1))
			resp.SetBody(bytes.NewReader(value[:20]))
		}, ErrBlock},
		{"malformed Block2", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, []byte{0x0f})
			resp.SetBody(bytes.NewReader(value[:32]))
		}, ErrBlock},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &holds{}
			e := &Executor{Registry: reg, HoldBlocks: h.add}
			conn := &fakeConn{}
			switch c.name {
			case "4.00 to a later block", "value changed":
				conn.answer = compositeDevice(t, h, string(value), c.answer)
			default:
				conn.answer = c.answer
			}
			res, err := e.Do(context.Background(), Target{Conn: conn},
				&northbound.Req{Kind: northbound.KindReadComposite, Paths: paths, ContentFormat: &senml}, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("Do = %+v, %v; want %v", res, err, c.want)
			}
			if !strings.Contains(err.Error(), "readComposite") {
				t.Fatalf("error %q does not name the request", err)
			}
		})
	}

	// A single block (NUM 0 without M) is the whole answer.
	e := &Executor{Registry: reg}
	conn := &fakeConn{answer: func(_, resp *pool.Message) {
		resp.SetCode(codes.Content)
		resp.SetContentFormat(message.AppSenmlJSON)
		resp.SetOptionBytes(message.Block2, blockValue(0, false, 6))
		resp.SetBody(bytes.NewReader(value))
	}}
	res, err := e.Do(context.Background(), Target{Conn: conn},
		&northbound.Req{Kind: northbound.KindReadComposite, Paths: paths, ContentFormat: &senml}, nil)
	if err != nil || res.Resp.Code != "CONTENT" || len(res.Resp.Nodes) != 2 || len(conn.reqs) != 1 {
		t.Fatalf("single block: %+v %v, %d requests", res, err, len(conn.reqs))
	}
}
