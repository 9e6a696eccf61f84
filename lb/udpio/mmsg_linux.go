//go:build linux && (amd64 || arm64)

package udpio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func setReusePort(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// mmsghdr is struct mmsghdr of <sys/socket.h>.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// Conn batches reads and writes on one UDP socket.
type Conn struct {
	pc    *net.UDPConn
	rc    syscall.RawConn
	inet6 bool

	rh    []mmsghdr
	riov  []unix.Iovec
	rname []unix.RawSockaddrInet6
	rms   []Msg
	rn    int
	rerr  error
	rfn   func(fd uintptr) bool

	wh    []mmsghdr
	wiov  []unix.Iovec
	wname []unix.RawSockaddrInet6
	wn    int
	werr  error
	wfn   func(fd uintptr) bool

	// Offload state (offload_linux.go).
	gro  bool
	rctl []byte // one control buffer of ctlSpace bytes per read slot
	gso  bool
	g    gsoState
}

// NewConn prepares batched I/O of up to batch datagrams per call on pc.
func NewConn(pc *net.UDPConn, batch int) (*Conn, error) {
	if batch <= 0 {
		return nil, errors.New("udpio: batch must be positive")
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpio: %w", err)
	}
	c := &Conn{
		pc: pc, rc: rc,
		rh: make([]mmsghdr, batch), riov: make([]unix.Iovec, batch), rname: make([]unix.RawSockaddrInet6, batch),
		wh: make([]mmsghdr, batch), wiov: make([]unix.Iovec, batch), wname: make([]unix.RawSockaddrInet6, batch),
	}
	la, _ := pc.LocalAddr().(*net.UDPAddr)
	c.inet6 = la == nil || la.IP.To4() == nil
	if err := rc.Control(func(fd uintptr) {
		d, derr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if derr == nil {
			c.inet6 = d == unix.AF_INET6
		}
	}); err != nil {
		return nil, fmt.Errorf("udpio: %w", err)
	}
	c.rfn = c.doRead
	c.wfn = c.doWrite
	return c, nil
}

// UDPConn returns the socket.
func (c *Conn) UDPConn() *net.UDPConn { return c.pc }

// ReadBatch waits for at least one datagram and reads up to len(ms) (at most
// the batch size). It returns how many slots were filled.
func (c *Conn) ReadBatch(ms []Msg) (int, error) {
	n := min(len(ms), len(c.rh))
	for i := 0; i < n; i++ {
		h, err := prepareRead(&c.rh[i], &c.riov[i], &ms[i])
		if err != nil {
			return 0, err
		}
		h.Name = (*byte)(unsafe.Pointer(&c.rname[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		if c.gro {
			h.Control = &c.rctl[i*ctlSpace]
			h.SetControllen(ctlSpace)
		}
	}
	c.rms, c.rn, c.rerr = ms[:n], 0, nil
	if err := c.rc.Read(c.rfn); err != nil {
		return 0, err
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	got := c.rn
	for i := 0; i < got; i++ {
		ms[i].N = int(c.rh[i].len)
		ms[i].Addr = decode(&c.rname[i])
		ms[i].Seg = 0
		if c.gro {
			c.groSegments(&ms[i], &c.rh[i].hdr, i)
		}
	}
	c.rms = nil
	return got, nil
}

// doRead and doWrite make raw system calls: with MSG_DONTWAIT they never
// block (EAGAIN parks the goroutine in Go's poller instead), so telling the
// scheduler about them would only cost time; see the package benchmarks.
// prepareRead points message header mh, with iovec iov, at m's buffer from
// m.Offset to its capacity, with no address or control buffer.
func prepareRead(mh *mmsghdr, iov *unix.Iovec, m *Msg) (*unix.Msghdr, error) {
	b := m.Buf[m.Offset:cap(m.Buf)]
	if len(b) == 0 {
		return nil, errors.New("udpio: empty read buffer")
	}
	iov.Base = &b[0]
	iov.SetLen(len(b))
	h := &mh.hdr
	h.Name, h.Namelen = nil, 0
	h.Iov = iov
	h.SetIovlen(1)
	h.Control, h.Controllen, h.Flags = nil, 0, 0
	return h, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rh[0])), uintptr(len(c.rms)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		c.rn = int(r)
		return true
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return c.doRead(fd)
	}
	c.rerr = fmt.Errorf("udpio: recvmmsg: %w", e)
	return true
}

// WriteBatch sends every message, in as few system calls as it can. It
// returns how many were sent. A datagram the kernel refuses for its
// destination (wrong address family, unreachable) is skipped and not
// counted; on any other error the rest are not sent.
//
// With GSO enabled (EnableGSO), each run of consecutive datagrams to one
// destination whose sizes are equal (the last may be shorter) goes out as
// one segmented send: callers that want the saving put datagrams for one
// destination next to each other.
func (c *Conn) WriteBatch(ms []Msg) (int, error) {
	if c.gso {
		return c.writeGSO(ms)
	}
	return c.writePlain(ms)
}

// writePlain is WriteBatch without segmentation offload: one datagram per
// message header.
func (c *Conn) writePlain(ms []Msg) (int, error) {
	done, skipped := 0, 0
	for done < len(ms) {
		sent := done
		n := min(len(ms)-sent, len(c.wh))
		for i := 0; i < n; i++ {
			m := &ms[sent+i]
			b := m.Buf[m.Offset : m.Offset+m.N]
			if len(b) > 0 {
				c.wiov[i].Base = &b[0]
			} else {
				c.wiov[i].Base = nil
			}
			c.wiov[i].SetLen(len(b))
			h := &c.wh[i].hdr
			h.Name = (*byte)(unsafe.Pointer(&c.wname[i]))
			h.Namelen = encode(&c.wname[i], m.Addr, c.inet6)
			h.Iov = &c.wiov[i]
			h.SetIovlen(1)
			h.Control, h.Controllen, h.Flags = nil, 0, 0
		}
		c.wn, c.werr = n, nil
		if err := c.rc.Write(c.wfn); err != nil {
			return sent, err
		}
		if c.werr != nil {
			// A datagram the kernel refused (for example an address of the
			// wrong family): skip it and go on with the rest.
			if refused(c.werr) {
				done++
				skipped++
				continue
			}
			return done - skipped, c.werr
		}
		done += c.wn
	}
	return done - skipped, nil
}

// refused reports whether a send error is about one datagram's destination,
// so that the datagram is skipped and the batch goes on.
func refused(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) ||
		errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EPERM)
}

func (c *Conn) doWrite(fd uintptr) bool {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.wh[0])), uintptr(c.wn), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		c.wn = int(r)
		if c.wn == 0 {
			return false
		}
		return true
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return c.doWrite(fd)
	}
	c.werr = fmt.Errorf("udpio: sendmmsg: %w", e)
	return true
}

func decode(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

func encode(sa *unix.RawSockaddrInet6, a netip.AddrPort, inet6 bool) uint32 {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], a.Port())
	if !inet6 && (a.Addr().Is4() || a.Addr().Is4In6()) {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Addr().Unmap().As4()}
		*(*[2]byte)(unsafe.Pointer(&sa4.Port)) = port
		return unix.SizeofSockaddrInet4
	}
	// On an IPv4 socket an IPv6 destination is refused by the kernel
	// (EAFNOSUPPORT) and WriteBatch skips it.
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.Addr().As16()}
	*(*[2]byte)(unsafe.Pointer(&sa.Port)) = port
	return unix.SizeofSockaddrInet6
}

// FDReader reads batches of datagrams from sockets that are not in Go's
// poller (connected, non-blocking descriptors, such as lwm2m-lb's nat-mode
// upstream sockets), without allocating. Source addresses are not read: a
// connected socket hears only its peer. It is used by one goroutine at a
// time.
type FDReader struct {
	h   []mmsghdr
	iov []unix.Iovec
}

// NewFDReader prepares reads of up to batch datagrams per call.
func NewFDReader(batch int) *FDReader {
	return &FDReader{h: make([]mmsghdr, batch), iov: make([]unix.Iovec, batch)}
}

// Read reads what fd has queued, up to len(ms) datagrams (at most the
// batch size), into ms[i].Buf from ms[i].Offset; it does not wait. It sets
// each N, and Trunc for a datagram larger than its buffer. With nothing
// queued it returns EAGAIN.
func (r *FDReader) Read(fd int, ms []Msg) (int, error) {
	n := min(len(ms), len(r.h))
	for i := 0; i < n; i++ {
		if _, err := prepareRead(&r.h[i], &r.iov[i], &ms[i]); err != nil {
			return 0, err
		}
	}
	for {
		// Never blocks (MSG_DONTWAIT): a raw system call, see doRead.
		got, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.h[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
		case unix.EINTR:
			continue
		default:
			return 0, e
		}
		for i := 0; i < int(got); i++ {
			ms[i].N = int(r.h[i].len)
			ms[i].Seg = 0
			ms[i].Trunc = r.h[i].hdr.Flags&unix.MSG_TRUNC != 0
		}
		return int(got), nil
	}
}
