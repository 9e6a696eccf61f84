//go:build linux && (amd64 || arm64)

package udpio

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// ctlSpace is the control buffer of one read slot; UDP_GRO needs
	// CMSG_SPACE(sizeof(int)) = 24 bytes.
	ctlSpace = 64
	// gsoCtlSpace is CMSG_SPACE(sizeof(uint16)), the UDP_SEGMENT option.
	gsoCtlSpace = 24
	// maxGSOSegments is the most datagrams one segmented send carries
	// (UDP_MAX_SEGMENTS was 64 before Linux 6.9).
	maxGSOSegments = 64
	// maxGSOBytes keeps a segmented send under the 64 KiB IP datagram.
	maxGSOBytes = 65000
	// maxGSOSegment is the largest datagram coalesced: the kernel refuses
	// a segment size above the route's MTU, and CoAP datagrams are at most
	// 1152 bytes of payload (RFC 7252 section 4.6). Larger datagrams go
	// out one by one.
	maxGSOSegment = 1400
)

// gsoState is WriteBatch's scratch space with GSO on.
type gsoState struct {
	iov []unix.Iovec // maxGSOSegments per message header
	ctl []byte       // gsoCtlSpace per message header
	cnt []int        // datagrams per message header
	// maxSeg is the largest datagram coalesced: maxGSOSegment, lowered
	// when the kernel refuses a run as above the path MTU.
	maxSeg int
}

// EnableGRO asks the kernel to coalesce datagrams from one sender into one
// read (UDP_GRO, Linux 5.0); ReadBatch then reports them with Msg.Seg. Read
// buffers should hold 65535 bytes: a coalesced read that does not fit is
// cut to the datagrams that do. Call it before the first ReadBatch.
func (c *Conn) EnableGRO() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return fmt.Errorf("udpio: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("udpio: UDP_GRO: %w", serr)
	}
	c.rctl = make([]byte, len(c.rh)*ctlSpace)
	c.gro = true
	return nil
}

// EnableGSO makes WriteBatch send runs of equal-size datagrams to one
// destination as one segmented send (UDP_SEGMENT, Linux 4.18). It fails
// when the kernel does not offer it. Call it before the first WriteBatch.
func (c *Conn) EnableGSO() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		_, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	}); err != nil {
		return fmt.Errorf("udpio: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("udpio: UDP_SEGMENT: %w", serr)
	}
	n := len(c.wh)
	c.g = gsoState{
		iov:    make([]unix.Iovec, n*maxGSOSegments),
		ctl:    make([]byte, n*gsoCtlSpace),
		cnt:    make([]int, n),
		maxSeg: maxGSOSegment,
	}
	c.gso = true
	return nil
}

// GSO reports whether WriteBatch segments (it stops when the kernel
// refuses a segmented send to a device that cannot do it).
func (c *Conn) GSO() bool { return c.gso }

// groSegments sets m.Seg from read slot i's UDP_GRO control message.
func (c *Conn) groSegments(m *Msg, h *unix.Msghdr, i int) {
	b := c.rctl[i*ctlSpace : i*ctlSpace+min(int(h.Controllen), ctlSpace)]
	for len(b) >= unix.SizeofCmsghdr {
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(ch.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return
		}
		if ch.Level == unix.IPPROTO_UDP && ch.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			seg := int(*(*int32)(unsafe.Pointer(&b[unix.CmsgLen(0)])))
			if seg > 0 && seg < m.N {
				m.Seg = seg
				if h.Flags&unix.MSG_TRUNC != 0 {
					// The buffer was too small: keep the whole datagrams.
					m.N -= m.N % seg
				}
			}
			return
		}
		b = b[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(b)):]
	}
}

// writeGSO is WriteBatch with segmentation offload.
func (c *Conn) writeGSO(ms []Msg) (int, error) {
	done, skipped := 0, 0
	for done < len(ms) {
		nh, iv := 0, 0
		for i := done; i < len(ms) && nh < len(c.wh); {
			m := &ms[i]
			cnt := c.run(ms[i:])
			for k := range cnt {
				d := &ms[i+k]
				b := d.Buf[d.Offset : d.Offset+d.N]
				if len(b) > 0 {
					c.g.iov[iv+k].Base = &b[0]
				} else {
					c.g.iov[iv+k].Base = nil
				}
				c.g.iov[iv+k].SetLen(len(b))
			}
			h := &c.wh[nh].hdr
			h.Name = (*byte)(unsafe.Pointer(&c.wname[nh]))
			h.Namelen = encode(&c.wname[nh], m.Addr, c.inet6)
			h.Iov = &c.g.iov[iv]
			h.SetIovlen(cnt)
			h.Control, h.Controllen, h.Flags = nil, 0, 0
			if cnt > 1 {
				ctl := c.g.ctl[nh*gsoCtlSpace : (nh+1)*gsoCtlSpace]
				ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
				ch.Level, ch.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
				ch.SetLen(unix.CmsgLen(2))
				*(*uint16)(unsafe.Pointer(&ctl[unix.CmsgLen(0)])) = uint16(m.N)
				h.Control = &ctl[0]
				h.SetControllen(gsoCtlSpace)
			}
			c.g.cnt[nh] = cnt
			nh++
			iv += cnt
			i += cnt
		}
		c.wn, c.werr = nh, nil
		if err := c.rc.Write(c.wfn); err != nil {
			return done - skipped, err
		}
		if c.werr == nil {
			for k := range c.wn {
				done += c.g.cnt[k]
			}
			continue
		}
		// The first message header of this call failed.
		cnt := c.g.cnt[0]
		if cnt > 1 && (errors.Is(c.werr, unix.EIO) || errors.Is(c.werr, unix.EINVAL) || errors.Is(c.werr, unix.EMSGSIZE)) {
			// The route cannot take this segmented send. EIO: the device
			// has no checksum offload, so never again. EMSGSIZE (EINVAL
			// on older kernels): a segment above the path MTU, so no more
			// runs of datagrams this large. Send these one by one (the
			// kernel fragments what does not fit).
			if errors.Is(c.werr, unix.EIO) {
				c.gso = false
			} else {
				c.g.maxSeg = min(c.g.maxSeg, ms[done].N-1)
			}
			n, err := c.writePlain(ms[done : done+cnt])
			skipped += cnt - n
			done += cnt
			if err != nil {
				return done - skipped, err
			}
			if !c.gso {
				n, err := c.writePlain(ms[done:])
				return done + n - skipped, err
			}
			continue
		}
		if refused(c.werr) {
			done += cnt
			skipped += cnt
			continue
		}
		return done - skipped, c.werr
	}
	return done - skipped, nil
}

// run returns how many datagrams from the start of ms go out in one
// segmented send: those to ms[0]'s destination, all of ms[0]'s size but the
// last, which may be shorter.
func (c *Conn) run(ms []Msg) int {
	size := ms[0].N
	if size == 0 || size > c.g.maxSeg {
		return 1
	}
	cnt, total := 1, size
	for cnt < len(ms) && cnt < maxGSOSegments {
		d := &ms[cnt]
		if d.Addr != ms[0].Addr || d.N == 0 || d.N > size || total+d.N > maxGSOBytes {
			break
		}
		cnt++
		total += d.N
		if d.N < size {
			break
		}
	}
	return cnt
}
