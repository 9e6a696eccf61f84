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
}

// Payload returns the datagram's bytes.
func (m *Msg) Payload() []byte { return m.Buf[m.Offset : m.Offset+m.N] }

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
