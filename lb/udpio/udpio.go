// Package udpio reads and writes batches of UDP datagrams with recvmmsg and
// sendmmsg, without allocating: headers, iovecs and socket addresses are
// preallocated per Conn, and peer addresses are decoded straight into
// netip.AddrPort.
//
// golang.org/x/net's ipv4.PacketConn.ReadBatch does the same system calls but
// allocates a *net.UDPAddr and its IP for every datagram received; on the
// balancer's per-datagram path that is measurable (see the package
// benchmarks), hence this package. It also opens SO_REUSEPORT sockets, one
// per worker.
//
// UDP segmentation offload (Linux 4.18) and UDP receive offload (Linux 5.0)
// are available per Conn ([Conn.EnableGSO], [Conn.EnableGRO]): with GSO,
// WriteBatch sends a run of equal-size datagrams to one destination as one
// "super-datagram" that crosses the network stack once and is cut into
// datagrams at the last moment (by the NIC, or in software); with GRO,
// ReadBatch may return several datagrams of one sender in one Msg (see
// Msg.Seg). The balancer's proxy mode sends every datagram of a worker to a
// backend over one 4-tuple, so both apply there.
//
// A Conn is used by one goroutine at a time for reading and one for writing.
package udpio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// Msg is one datagram slot. For reads, Buf's full capacity is offered to the
// kernel from Offset on; after a read, Buf[Offset:Offset+N] holds the
// datagram and Addr its source. For writes, Buf[Offset:Offset+N] is sent to
// Addr.
type Msg struct {
	Buf    []byte
	Offset int
	N      int
	Addr   netip.AddrPort
	// Seg is set by ReadBatch on a Conn with GRO enabled when the kernel
	// coalesced several datagrams of Addr into this one: Buf[Offset:
	// Offset+N] then holds datagrams of Seg bytes each, the last possibly
	// shorter. 0 means one datagram. Use Segment to walk them.
	Seg int
	// Trunc is set by FDReader.Read when the datagram was larger than the
	// buffer (the rest is lost).
	Trunc bool
}

// Payload returns the datagram's bytes (all of them, when Seg is set).
func (m *Msg) Payload() []byte { return m.Buf[m.Offset : m.Offset+m.N] }

// Segment returns the datagram that starts at byte off of the payload and
// where to look for the next one; ok is false past the end. Start with off
// 0 (an empty datagram is one empty segment):
//
//	for d, next, ok := m.Segment(0); ok; d, next, ok = m.Segment(next) { ... }
func (m *Msg) Segment(off int) (d []byte, next int, ok bool) {
	if off == 0 && m.N == 0 {
		return m.Buf[m.Offset:m.Offset], 1, true
	}
	if off >= m.N || off < 0 {
		return nil, off, false
	}
	end := m.N
	if m.Seg > 0 && off+m.Seg < end {
		end = off + m.Seg
	}
	return m.Buf[m.Offset+off : m.Offset+end], end, true
}

// ListenReusePort opens a UDP socket with SO_REUSEPORT on addr, so that
// several sockets (one per worker) share one address and the kernel spreads
// flows over them. network is "udp4" or "udp6".
func ListenReusePort(ctx context.Context, network, addr string, bufBytes int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setReusePort(fd) }); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("udpio: listen %s %s: %w", network, addr, err)
	}
	u, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("udpio: not a UDP socket")
	}
	if bufBytes > 0 {
		// Best effort: the kernel caps these at net.core.[rw]mem_max.
		_ = u.SetReadBuffer(bufBytes)
		_ = u.SetWriteBuffer(bufBytes)
	}
	return u, nil
}

// Network returns "udp4" for an IPv4 address and "udp6" otherwise.
func Network(a netip.AddrPort) string {
	if a.Addr().Is4() || a.Addr().Is4In6() {
		return "udp4"
	}
	return "udp6"
}
