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
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
)

// fakeConn is a device session whose answers come from a function of the
// request.
type fakeConn struct {
	mu     sync.Mutex
	reqs   []*pool.Message
	answer func(req *pool.Message, resp *pool.Message)
}

func (c *fakeConn) AcquireMessage(ctx context.Context) *pool.Message { return pool.NewMessage(ctx) }
func (c *fakeConn) ReleaseMessage(*pool.Message)                     {}

func (c *fakeConn) Do(req *pool.Message) (*pool.Message, error) {
	kept := pool.NewMessage(req.Context())
	if err := req.Clone(kept); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.reqs = append(c.reqs, kept)
	c.mu.Unlock()
	resp := pool.NewMessage(req.Context())
	resp.SetToken(req.Token())
	c.answer(kept, resp)
	return resp, nil
}

func blockValue(num uint32, more bool, szx uint8) []byte {
	v := Block{Num: num, More: more, SZX: szx}.value()
	buf := make([]byte, 4)
	n, _ := message.EncodeUint32(buf, v)
	return buf[:n]
}

// serveBlocks answers requests for blocks of value, in blocks of the size
// asked for, with etag.
func serveBlocks(value string, etag []byte) func(req, resp *pool.Message) {
	return func(req, resp *pool.Message) {
		b, ok, err := Block2(req)
		if !ok || err != nil {
			resp.SetCode(codes.BadOption)
			return
		}
		off := int(b.Num) * b.Size()
		if off >= len(value) {
			resp.SetCode(codes.BadOption)
			return
		}
		end := min(off+b.Size(), len(value))
		resp.SetCode(codes.Content)
		resp.SetOptionBytes(message.Block2, blockValue(b.Num, end < len(value), b.SZX))
		if etag != nil {
			resp.SetOptionBytes(message.ETag, etag)
		}
		resp.SetBody(bytes.NewReader([]byte(value[off:end])))
	}
}

func TestParseBlock(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		want Block
		bad  bool
	}{
		{nil, Block{}, false},
		{[]byte{0x0e}, Block{Num: 0, More: true, SZX: 6}, false},
		{[]byte{0x1e}, Block{Num: 1, More: true, SZX: 6}, false},
		{[]byte{0x12, 0x34, 0x52}, Block{Num: 0x12345, SZX: 2}, false},
		{[]byte{0x0f}, Block{}, true},       // SZX 7: BERT
		{[]byte{1, 2, 3, 4}, Block{}, true}, // 4 bytes
		{bytes.Repeat([]byte{0xff}, 9), Block{}, true},
	} {
		got, err := ParseBlock(c.in)
		if (err != nil) != c.bad || (!c.bad && got != c.want) {
			t.Errorf("ParseBlock(%x) = %+v, %v", c.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrBlock) {
			t.Errorf("ParseBlock(%x): %v is not ErrBlock", c.in, err)
		}
	}
}

func TestHoldBlock2(t *testing.T) {
	m := pool.NewMessage(context.Background())
	m.SetCode(codes.Content)
	m.SetOptionBytes(message.Block2, blockValue(0, true, 1))
	m.SetObserve(3)
	HoldBlock2(m)
	if m.HasOption(message.Block2) {
		t.Fatal("Block2 still among the options")
	}
	if b, ok, err := Block2(m); !ok || err != nil || b != (Block{More: true, SZX: 1}) {
		t.Fatalf("held Block2: %+v %v %v", b, ok, err)
	}
	// Repeated options are malformed.
	m = pool.NewMessage(context.Background())
	m.AddOptionBytes(message.Block2, blockValue(0, true, 1))
	m.AddOptionBytes(message.Block2, blockValue(1, true, 1))
	HoldBlock2(m)
	if _, ok, err := Block2(m); !ok || !errors.Is(err, ErrBlock) {
		t.Fatalf("two Block2: %v %v", ok, err)
	}
	// No Block2: nothing held.
	m = pool.NewMessage(context.Background())
	HoldBlock2(m)
	if _, ok, _ := Block2(m); ok {
		t.Fatal("Block2 found in a message without one")
	}
}

func TestRemainingBlocks(t *testing.T) {
	e := &Executor{Registry: nil}
	value := strings.Repeat("0123456789abcdef", 6) + "tail" // 100 bytes: blocks of 32
	etag := []byte{1, 2, 3, 4}
	reg := &registration.Registration{Root: "/lwm2m"}
	first := Block{Num: 0, More: true, SZX: 1}
	tok := message.Token{9, 9}

	conn := &fakeConn{answer: serveBlocks(value, etag)}
	got, err := e.RemainingBlocks(context.Background(), Target{Conn: conn, Reg: reg},
		Observed{Paths: []string{"/3/0/0"}, Format: codec.TextPlain}, tok, first, []byte(value[:32]), etag)
	if err != nil || string(got) != value {
		t.Fatalf("RemainingBlocks = %q, %v", got, err)
	}
	if len(conn.reqs) != 3 {
		t.Fatalf("%d requests, want blocks 1 to 3", len(conn.reqs))
	}
	for i, r := range conn.reqs {
		p, _ := r.Path()
		b, _, _ := Block2(r)
		accept, _ := r.Accept()
		if r.Code() != codes.GET || p != "/lwm2m/3/0/0" || b.Num != uint32(i+1) || b.SZX != 1 || b.More ||
			r.HasOption(message.Observe) || accept != message.TextPlain || !bytes.Equal(r.Token(), tok) {
			t.Fatalf("request %d: %v", i, r)
		}
	}

	// Composite: FETCH of the paths; the device picks smaller blocks.
	smaller := func(req, resp *pool.Message) {
		b, _, _ := Block2(req)
		off := int(b.Num) * b.Size()
		num := uint32(off / 16)
		end := min(off+16, len(value))
		resp.SetCode(codes.Content)
		resp.SetOptionBytes(message.Block2, blockValue(num, end < len(value), 0))
		resp.SetBody(bytes.NewReader([]byte(value[off:end])))
	}
	conn = &fakeConn{answer: smaller}
	got, err = e.RemainingBlocks(context.Background(), Target{Conn: conn},
		Observed{Paths: []string{"/3/0/0", "/3/0/1"}, Composite: true, Format: codec.SenMLJSON}, tok, first, []byte(value[:32]), nil)
	if err != nil || string(got) != value {
		t.Fatalf("composite RemainingBlocks = %q, %v", got, err)
	}
	want, _ := codec.EncodePaths(codec.SenMLJSON, []node.Path{node.MustPath(3, 0, 0), node.MustPath(3, 0, 1)})
	for _, r := range conn.reqs {
		body, _ := r.ReadBody()
		cf, _ := r.ContentFormat()
		if r.Code() != codes.FETCH || r.HasOption(message.URIPath) || !bytes.Equal(body, want) || cf != message.AppSenmlJSON {
			t.Fatalf("composite request %v %q", r, body)
		}
	}
	if b, _, _ := Block2(conn.reqs[1]); b.Num != 3 || b.SZX != 0 { // offset 48 in 16-byte blocks
		t.Fatalf("second composite request asks %+v", b)
	}

	// Failures.
	endless := func(req, resp *pool.Message) {
		b, _, _ := Block2(req)
		resp.SetCode(codes.Content)
		resp.SetOptionBytes(message.Block2, blockValue(b.Num, true, b.SZX))
		resp.SetBody(bytes.NewReader(make([]byte, b.Size())))
	}
	big := Block{Num: 0, More: true, SZX: 6}
	for _, c := range []struct {
		name   string
		answer func(req, resp *pool.Message)
		first  Block
		body   []byte
		etag   []byte
		want   error
	}{
		{"not the first block", serveBlocks(value, nil), Block{Num: 1, More: true, SZX: 1}, []byte(value[32:64]), nil, ErrBlock},
		{"short first block", serveBlocks(value, nil), first, []byte(value[:31]), nil, ErrBlock},
		{"value changed", serveBlocks(value, []byte{5}), first, []byte(value[:32]), etag, ErrBlock},
		{"error code", func(_, resp *pool.Message) { resp.SetCode(codes.NotFound) }, first, []byte(value[:32]), nil, ErrBlock},
		{"no Block2", func(_, resp *pool.Message) { resp.SetCode(codes.Content) }, first, []byte(value[:32]), nil, ErrBlock},
		{"wrong block", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(2, false, 1))
		}, first, []byte(value[:32]), nil, ErrBlock},
		{"larger blocks", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(0, false, 2))
		}, first, []byte(value[:32]), nil, ErrBlock},
		{"short middle block", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, blockValue(1, true, 1))
			resp.SetBody(bytes.NewReader([]byte("short")))
		}, first, []byte(value[:32]), nil, ErrBlock},
		{"malformed Block2", func(_, resp *pool.Message) {
			resp.SetCode(codes.Content)
			resp.SetOptionBytes(message.Block2, []byte{1, 2, 3, 4})
		}, first, []byte(value[:32]), nil, ErrBlock},
		{"endless", endless, big, make([]byte, 1024), nil, ErrTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := &fakeConn{answer: c.answer}
			got, err := e.RemainingBlocks(context.Background(), Target{Conn: conn},
				Observed{Paths: []string{"/3/0/0"}, Format: codec.TextPlain}, tok, c.first, c.body, c.etag)
			if !errors.Is(err, c.want) {
				t.Fatalf("RemainingBlocks = %d bytes, %v; want %v", len(got), err, c.want)
			}
		})
	}
}

// FuzzRemainingBlocks: whatever a device answers to the requests for later
// blocks, RemainingBlocks ends without panicking, with at most MaxResponse
// bytes.
func FuzzRemainingBlocks(f *testing.F) {
	f.Add([]byte{0x16}, []byte("0123456789abcdef"), uint8(codes.Content), []byte{0x0e}, 64)
	f.Add([]byte{0x1e}, []byte("x"), uint8(codes.Content), []byte{0x0e}, 1024)
	f.Add([]byte{1, 2, 3, 4}, []byte(nil), uint8(codes.Content), []byte{0x0f}, 0)
	f.Add([]byte{}, []byte("x"), uint8(codes.NotFound), []byte{0x08}, 16)
	f.Fuzz(func(t *testing.T, answerBlock, answerBody []byte, code uint8, firstBlock []byte, firstLen int) {
		first, err := ParseBlock(firstBlock)
		if err != nil {
			return
		}
		if firstLen < 0 || firstLen > 2048 {
			return
		}
		conn := &fakeConn{answer: func(_, resp *pool.Message) {
			resp.SetCode(codes.Code(code))
			resp.SetOptionBytes(message.Block2, answerBlock)
			resp.SetBody(bytes.NewReader(answerBody))
		}}
		e := &Executor{}
		got, err := e.RemainingBlocks(context.Background(), Target{Conn: conn},
			Observed{Paths: []string{"/3/0/0"}}, message.Token{1}, first, make([]byte, firstLen), nil)
		if err == nil && len(got) > MaxResponse {
			t.Fatalf("%d bytes", len(got))
		}
		if err != nil && !errors.Is(err, ErrBlock) {
			t.Fatalf("error %v is not ErrBlock", err)
		}
	})
}
