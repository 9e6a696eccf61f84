package simdevice

import (
	"hash/fnv"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
)

// Block sizes the device uses (Config.BlockSize), RFC 7959 section 2.2.
const (
	minBlockSize = 16
	maxBlockSize = 1024
)

// blockSize normalizes Config.BlockSize: 0 (block-wise off) for n <= 0,
// else n rounded down to a power of two in [16, 1024].
func blockSize(n int) int {
	if n <= 0 {
		return 0
	}
	size := minBlockSize
	for size*2 <= n && size < maxBlockSize {
		size *= 2
	}
	return size
}

// szxOf returns the SZX of a normalized block size.
func szxOf(size int) blockwise.SZX {
	szx := blockwise.SZX16
	for s := minBlockSize; s < size; s *= 2 {
		szx++
	}
	return szx
}

// blockPart is the block of a representation the device sends.
type blockPart struct {
	payload []byte
	option  uint32 // the Block2 option value
	size2   uint32 // the representation's size
	etag    []byte
}

// block cuts the block asked for by a request (its Block2 option, if any)
// out of the representation body, with the device's block size. ok is
// false when body goes whole (block-wise off, no Block2 asked and body
// fits a block); bad is not nil when the request's Block2 is malformed or
// beyond the end of body (4.02 Bad Option, RFC 7959 section 2.2).
func (d *Device) block(r *pool.Message, body []byte) (part blockPart, ok bool, bad *response) {
	size := d.cfg.BlockSize
	if size == 0 {
		return blockPart{}, false, nil
	}
	szx := szxOf(size)
	var num int64
	if r != nil && r.HasOption(message.Block2) {
		v, err := r.GetOptionUint32(message.Block2)
		if err != nil {
			a := answer(codes.BadOption)
			return blockPart{}, false, &a
		}
		rszx, rnum, _, err := blockwise.DecodeBlockOption(v)
		if err != nil || rszx > blockwise.SZX1024 {
			a := answer(codes.BadOption)
			return blockPart{}, false, &a
		}
		if rszx < szx {
			// The server asks for smaller blocks: use its size.
			szx, size = rszx, int(rszx.Size())
			num = rnum
		} else {
			// Blocks of the device's (smaller) size, from the same offset
			// (RFC 7959 section 2.4).
			num = rnum * rszx.Size() / int64(size)
		}
	} else if len(body) <= size {
		return blockPart{}, false, nil
	}
	off := num * int64(size)
	if off > 0 && off >= int64(len(body)) {
		a := answer(codes.BadOption)
		return blockPart{}, false, &a
	}
	end := min(off+int64(size), int64(len(body)))
	more := end < int64(len(body))
	opt, err := blockwise.EncodeBlockOption(szx, num, more)
	if err != nil {
		a := answer(codes.BadOption)
		return blockPart{}, false, &a
	}
	return blockPart{payload: body[off:end], option: opt, size2: uint32(len(body)), etag: etagOf(body)}, true, nil
}

// etagOf returns the entity tag of a representation sent block-wise, so a
// server can tell that the value changed between two blocks.
func etagOf(body []byte) []byte {
	h := fnv.New64a()
	_, _ = h.Write(body)
	return h.Sum(nil)
}

// setBlock adds the options of a block to m.
func setBlock(m *pool.Message, part blockPart) {
	m.SetOptionUint32(message.Block2, part.option)
	m.SetOptionUint32(message.Size2, part.size2)
	m.SetOptionBytes(message.ETag, part.etag)
}
