package simdevice

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

func TestBlockSize(t *testing.T) {
	for in, want := range map[int]int{-1: 0, 0: 0, 1: 16, 16: 16, 17: 16, 100: 64, 1024: 1024, 5000: 1024} {
		if got := blockSize(in); got != want {
			t.Errorf("blockSize(%d) = %d, want %d", in, got, want)
		}
	}
	if szxOf(16) != blockwise.SZX16 || szxOf(64) != blockwise.SZX64 || szxOf(1024) != blockwise.SZX1024 {
		t.Fatal("szxOf")
	}
}

func block2Opt(t *testing.T, szx blockwise.SZX, num int64) message.Option {
	t.Helper()
	v, err := blockwise.EncodeBlockOption(szx, num, false)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	n, err := message.EncodeUint32(buf, v)
	if err != nil {
		t.Fatal(err)
	}
	return message.Option{ID: message.Block2, Value: buf[:n]}
}

// blockOf decodes the Block2 option of an answer.
func blockOf(t *testing.T, opts message.Options) (szx blockwise.SZX, num int64, more bool) {
	t.Helper()
	v, err := opts.GetUint32(message.Block2)
	if err != nil {
		t.Fatalf("no Block2: %v", err)
	}
	szx, num, more, err = blockwise.DecodeBlockOption(v)
	if err != nil {
		t.Fatal(err)
	}
	return szx, num, more
}

// fetchRest gets blocks 1, 2, ... of a representation whose first block
// is first, as a server does after a block-wise notification.
func fetchRest(t *testing.T, s *fakeServer, r req, first []byte, etag []byte) []byte {
	t.Helper()
	out := append([]byte(nil), first...)
	for num := int64(1); ; num++ {
		r.opts = []message.Option{block2Opt(t, blockwise.SZX64, num)}
		res := s.do(r)
		if res.code != codes.Content {
			t.Fatalf("block %d: %v", num, res.code)
		}
		szx, n, more := blockOf(t, res.opts)
		if szx != blockwise.SZX64 || n != num {
			t.Fatalf("asked block %d, got %d (szx %d)", num, n, szx)
		}
		if e, _ := res.opts.GetBytes(message.ETag); !bytes.Equal(e, etag) {
			t.Fatalf("block %d: etag %x, want %x", num, e, etag)
		}
		out = append(out, res.body...)
		if !more {
			return out
		}
		if len(res.body) != 64 {
			t.Fatalf("block %d of %d bytes", num, len(res.body))
		}
	}
}

// TestBlockwise: with a block size, answers and notifications larger than
// a block go block-wise (RFC 7959): the first block, then the blocks the
// server asks for with Block2, from the current value.
func TestBlockwise(t *testing.T) {
	s, d := setup(t, func(c *Config) { c.BlockSize = 100 }) // 64-byte blocks
	p := node.MustPath(3, 0, 0)
	big := strings.Repeat("0123456789", 30) // 300 bytes: 5 blocks
	if err := d.Set(p, node.StringValue(big)); err != nil {
		t.Fatal(err)
	}
	// A small value goes whole.
	if r := s.do(get("/3/0/1", int(codec.TextPlain))); r.code != codes.Content || r.opts.HasOption(message.Block2) {
		t.Fatalf("small read: %v, Block2 %v", r.code, r.opts.HasOption(message.Block2))
	}
	// A read without Block2 gets the first block.
	r := s.do(get("/3/0/0", int(codec.TextPlain)))
	if r.code != codes.Content || len(r.body) != 64 {
		t.Fatalf("read: %v, %d bytes", r.code, len(r.body))
	}
	if szx, num, more := blockOf(t, r.opts); szx != blockwise.SZX64 || num != 0 || !more {
		t.Fatalf("first block: szx %d num %d more %v", szx, num, more)
	}
	if size, err := r.opts.GetUint32(message.Size2); err != nil || size != 300 {
		t.Fatalf("Size2 %d %v", size, err)
	}
	etag, _ := r.opts.GetBytes(message.ETag)
	if got := fetchRest(t, s, get("/3/0/0", int(codec.TextPlain)), r.body, etag); string(got) != big {
		t.Fatalf("read %q", got)
	}
	// Smaller blocks asked by the server; a block beyond the end.
	small := get("/3/0/0", int(codec.TextPlain))
	small.opts = []message.Option{block2Opt(t, blockwise.SZX16, 2)}
	if r := s.do(small); r.code != codes.Content || string(r.body) != big[32:48] {
		t.Fatalf("16-byte block 2: %v %q", r.code, r.body)
	} else if szx, num, more := blockOf(t, r.opts); szx != blockwise.SZX16 || num != 2 || !more {
		t.Fatalf("16-byte block 2: szx %d num %d more %v", szx, num, more)
	}
	beyond := get("/3/0/0", int(codec.TextPlain))
	beyond.opts = []message.Option{block2Opt(t, blockwise.SZX64, 5)}
	if r := s.do(beyond); r.code != codes.BadOption {
		t.Fatalf("block beyond the end: %v", r.code)
	}

	// Observe: the first answer and the notifications carry the first block.
	obs := get("/3/0/0", int(codec.TextPlain))
	obs.observe = 0
	r = s.do(obs)
	if r.code != codes.Content || r.observe < 0 || len(r.body) != 64 {
		t.Fatalf("observe: %v observe %d, %d bytes", r.code, r.observe, len(r.body))
	}
	next := strings.Repeat("abcdefghij", 25) // 250 bytes
	if err := d.Set(p, node.StringValue(next)); err != nil {
		t.Fatal(err)
	}
	n, ok := s.notification(3 * time.Second)
	if !ok || n.token != string(r.token) || n.observe <= r.observe || len(n.body) != 64 {
		t.Fatalf("notification %+v %v", n, ok)
	}
	if szx, num, more := blockOf(t, n.opts); szx != blockwise.SZX64 || num != 0 || !more {
		t.Fatalf("notification block: szx %d num %d more %v", szx, num, more)
	}
	etag, _ = n.opts.GetBytes(message.ETag)
	if got := fetchRest(t, s, get("/3/0/0", int(codec.TextPlain)), n.body, etag); string(got) != next {
		t.Fatalf("notified %q", got)
	}

	// Composite: FETCH with the same body and Block2.
	paths, err := codec.EncodePaths(codec.SenMLJSON, []node.Path{p, node.MustPath(3, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fetch := withBody(codes.FETCH, "/", int(codec.SenMLJSON), paths)
	fetch.accept = int(codec.SenMLJSON)
	r = s.do(fetch)
	if r.code != codes.Content || len(r.body) != 64 {
		t.Fatalf("fetch: %v, %d bytes", r.code, len(r.body))
	}
	etag, _ = r.opts.GetBytes(message.ETag)
	all := fetchRest(t, s, fetch, r.body, etag)
	nodes, err := codec.DecodeComposite(codec.SenMLJSON, all, nil, d.Registry())
	if err != nil {
		t.Fatalf("composite in blocks: %v (%q)", err, all)
	}
	if res, ok := nodes[p].(node.Resource); !ok || !res.Value.Equal(node.StringValue(next)) {
		t.Fatalf("composite %+v", nodes)
	}
	// A request for a later block of a FETCH answer without the paths (as
	// go-coap's block-wise layer sends it) is refused: RFC 8132 wants
	// the payload in every block request.
	bare := withBody(codes.FETCH, "/", int(codec.SenMLJSON), nil)
	bare.accept = int(codec.SenMLJSON)
	bare.opts = []message.Option{block2Opt(t, blockwise.SZX64, 1)}
	if r := s.do(bare); r.code != codes.BadRequest {
		t.Fatalf("FETCH of block 1 without the paths: %v", r.code)
	}
	// Observe-Composite: the first answer carries the first block too.
	ofetch := fetch
	ofetch.observe = 0
	r = s.do(ofetch)
	if r.code != codes.Content || r.observe < 0 || len(r.body) != 64 {
		t.Fatalf("observe-composite: %v observe %d, %d bytes", r.code, r.observe, len(r.body))
	}
	etag, _ = r.opts.GetBytes(message.ETag)
	if got := fetchRest(t, s, fetch, r.body, etag); !bytes.Equal(got, all) {
		t.Fatalf("observe-composite in blocks: %q", got)
	}
}
