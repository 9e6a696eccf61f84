package devmgmt

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
)

// ErrBlock wraps the failures of a block-wise transfer (RFC 7959) caused
// by the device: malformed Block2 options, blocks that do not follow each
// other, a representation that changed or grew beyond MaxResponse.
var ErrBlock = errors.New("devmgmt: bad block-wise transfer")

// ErrTooLarge is the ErrBlock of a representation sent block-wise that
// grows beyond MaxResponse bytes.
var ErrTooLarge = fmt.Errorf("%w: larger than %d bytes", ErrBlock, MaxResponse)

// Block is a Block2 option (RFC 7959 section 2.2): block number NUM, the
// M flag (more blocks follow) and the size exponent SZX (blocks of
// 16 << SZX bytes).
type Block struct {
	Num  uint32
	More bool
	SZX  uint8
}

// Size returns the block size in bytes.
func (b Block) Size() int { return 16 << b.SZX }

// maxBlockNum is the largest NUM of a 3-byte option.
const maxBlockNum = 1<<20 - 1

func (b Block) value() uint32 {
	v := b.Num<<4 | uint32(b.SZX)
	if b.More {
		v |= 8
	}
	return v
}

// ParseBlock decodes the value of a Block2 option. Values longer than 3
// bytes and SZX 7 (BERT, only for CoAP over reliable transports) are
// malformed.
func ParseBlock(v []byte) (Block, error) {
	if len(v) > 3 {
		return Block{}, fmt.Errorf("%w: %d-byte block option", ErrBlock, len(v))
	}
	var u uint32
	for _, c := range v {
		u = u<<8 | uint32(c)
	}
	b := Block{Num: u >> 4, More: u&8 != 0, SZX: uint8(u & 7)}
	if b.SZX == 7 {
		return Block{}, fmt.Errorf("%w: block size exponent 7 (BERT) over UDP", ErrBlock)
	}
	return b, nil
}

type heldBlock2Key struct{}

// HoldBlock2 takes the Block2 options out of m and keeps them in m's
// context, where Block2 finds them. go-coap's block-wise layer then lets m
// through as it is, instead of refusing a block it has no request in
// flight for (a notification of an observation made outside go-coap) or
// re-fetching a representation from its first block (the answer to a
// request for a later block). It must be called before go-coap's handler
// chain sees m.
func HoldBlock2(m *pool.Message) {
	var held [][]byte
	for _, o := range m.Options() {
		if o.ID == message.Block2 {
			held = append(held, bytes.Clone(o.Value))
		}
	}
	if held == nil {
		return
	}
	m.Remove(message.Block2)
	m.SetContext(context.WithValue(m.Context(), heldBlock2Key{}, held))
}

// Block2 returns the Block2 option of m, held by HoldBlock2 or among its
// options; ok is false when it has none. A repeated option is malformed.
func Block2(m *pool.Message) (b Block, ok bool, err error) {
	held, _ := m.Context().Value(heldBlock2Key{}).([][]byte)
	if held == nil {
		for _, o := range m.Options() {
			if o.ID == message.Block2 {
				held = append(held, o.Value)
			}
		}
	}
	switch len(held) {
	case 0:
		return Block{}, false, nil
	case 1:
		b, err := ParseBlock(held[0])
		return b, true, err
	}
	return Block{}, true, fmt.Errorf("%w: %d Block2 options", ErrBlock, len(held))
}

// Observed is what an observation reads: one path (Observe, a GET), or
// several (Observe-Composite, a FETCH with the paths in Format).
type Observed struct {
	Paths     []string
	Composite bool
	// Format is the content format asked for (Accept), and for a
	// composite observation that of the paths in the FETCH payload.
	Format uint16
}

// RemainingBlocks gets the rest of a representation whose first block
// (first, the payload of block 0 described by b) came in a notification
// (RFC 7959 section 2.6): it repeats the observation's request without
// Observe (GET of the path, or FETCH of the paths for a composite one)
// with Block2 NUM 1, 2, ... until a block without M, and returns the whole
// representation. Every request carries token, so the caller can tell
// their answers apart (see HoldBlock2). When etag is not nil every block
// must carry it: a different one means the value changed meanwhile. ctx
// bounds the whole exchange; the result is at most MaxResponse bytes.
// Errors wrap ErrBlock, ErrDevice or ctx's error.
func (e *Executor) RemainingBlocks(ctx context.Context, t Target, obs Observed, token message.Token,
	b Block, first, etag []byte) ([]byte, error) {
	if b.Num != 0 || !b.More {
		return nil, fmt.Errorf("%w: block %d (more: %v) does not start a transfer", ErrBlock, b.Num, b.More)
	}
	if len(first) != b.Size() {
		return nil, fmt.Errorf("%w: first block of %d bytes, want %d", ErrBlock, len(first), b.Size())
	}
	code, path := codes.GET, ""
	var payload []byte
	switch {
	case obs.Composite:
		p, err := encodePathList(obs.Format, obs.Paths)
		if err != nil {
			return nil, err
		}
		code, path, payload = codes.FETCH, "/", p
	case len(obs.Paths) == 1:
		path = obs.Paths[0]
	default:
		return nil, fmt.Errorf("devmgmt: an observation of %d paths is not composite", len(obs.Paths))
	}
	out := append(make([]byte, 0, 4*len(first)), first...)
	for next := b; next.More; {
		next.Num = uint32(len(out) / next.Size())
		if next.Num > maxBlockNum {
			return nil, fmt.Errorf("%w: more than %d blocks", ErrBlock, maxBlockNum)
		}
		ask := Block{Num: next.Num, SZX: next.SZX}
		resp, body, err := e.roundTrip(ctx, t, token, code, path, &obs.Format, func(m *pool.Message) {
			m.SetOptionUint32(message.Block2, ask.value())
			if payload != nil {
				m.SetContentFormat(message.MediaType(obs.Format))
				m.SetBody(bytes.NewReader(payload))
			}
		})
		if err != nil {
			return nil, err
		}
		got, ok, berr := Block2(resp)
		rcode := resp.Code()
		rtag, tagErr := resp.ETag()
		changed := etag != nil && (tagErr != nil || !bytes.Equal(rtag, etag))
		t.Conn.ReleaseMessage(resp)
		switch {
		case rcode != codes.Content:
			return nil, fmt.Errorf("%w: the device answered %s to block %d", ErrBlock, rcode, ask.Num)
		case berr != nil:
			return nil, berr
		case !ok:
			return nil, fmt.Errorf("%w: no Block2 in the answer to block %d", ErrBlock, ask.Num)
		case changed:
			return nil, fmt.Errorf("%w: the value changed during the transfer (ETag)", ErrBlock)
		case got.SZX > ask.SZX || int(got.Num)*got.Size() != len(out):
			// A device may answer with smaller blocks, from the same
			// offset (RFC 7959 section 2.4), never larger ones.
			return nil, fmt.Errorf("%w: asked block %d of %d bytes, got block %d of %d bytes",
				ErrBlock, ask.Num, ask.Size(), got.Num, got.Size())
		case got.More && len(body) != got.Size():
			return nil, fmt.Errorf("%w: block %d of %d bytes, want %d", ErrBlock, got.Num, len(body), got.Size())
		case len(body) > got.Size():
			return nil, fmt.Errorf("%w: last block %d of %d bytes, more than %d", ErrBlock, got.Num, len(body), got.Size())
		case len(out)+len(body) > MaxResponse:
			return nil, ErrTooLarge
		}
		out = append(out, body...)
		next = got
	}
	return out, nil
}

// completeAnswer returns the whole payload of resp, the answer to the
// request for obs, whose own payload is body: body itself, unless resp
// carries the first block of a block-wise transfer (a Block2 option held
// by HoldBlock2, NUM 0 with M set). The later blocks are then asked for
// with RemainingBlocks, under a new token marked with HoldBlocks (the
// observation's token stays the notifications'), and ctx bounds them.
// Errors wrap ErrBlock, ErrDevice or ctx's error.
func (e *Executor) completeAnswer(ctx context.Context, t Target, resp *pool.Message, body []byte, obs Observed) ([]byte, error) {
	b, ok, err := Block2(resp)
	switch {
	case !ok:
		return body, nil
	case err != nil:
		return nil, err
	case b.Num != 0:
		return nil, fmt.Errorf("%w: an answer with block %d, not the first", ErrBlock, b.Num)
	case !b.More:
		if len(body) > b.Size() {
			return nil, fmt.Errorf("%w: single block of %d bytes, more than %d", ErrBlock, len(body), b.Size())
		}
		return body, nil
	}
	if size, err := resp.GetOptionUint32(message.Size2); err == nil && size > MaxResponse {
		return nil, fmt.Errorf("%w (Size2 %d)", ErrTooLarge, size)
	}
	var etag []byte
	if tag, err := resp.ETag(); err == nil {
		etag = bytes.Clone(tag)
	}
	token, err := message.GetToken()
	if err != nil {
		return nil, fmt.Errorf("devmgmt: token: %w", err)
	}
	defer e.hold(token)()
	return e.RemainingBlocks(ctx, t, obs, token, b, body, etag)
}
