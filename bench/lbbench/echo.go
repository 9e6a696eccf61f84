package lbbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
	"github.com/lwm2mcluster/lwm2m/lb/udpio"
)

// Echo defaults.
const (
	// DefaultEchoBatch is the number of datagrams an echo worker reads and
	// writes per system call.
	DefaultEchoBatch = 64
	// DefaultSocketBuffer is the receive and send buffer size asked for
	// each socket; the kernel caps it at net.core.rmem_max / wmem_max.
	DefaultSocketBuffer = 4 << 20
)

// maxDatagram is the largest read: with receive offload, one read can hold
// 64 KiB of coalesced datagrams.
const maxDatagram = 65535

// EchoConfig configures an [Echo].
type EchoConfig struct {
	// Addr is the listen address; the default "127.0.0.1:0" picks a free
	// port.
	Addr string
	// Workers is the number of sockets (all bound to the same address with
	// SO_REUSEPORT), each served by its own goroutine; the default is
	// GOMAXPROCS. The kernel spreads senders over them by their address.
	Workers int
	// Batch is the number of datagrams read and written per system call;
	// the default is DefaultEchoBatch.
	Batch int
	// ProxyV2 makes the echo behave like a backend behind lwm2m-lb in
	// proxy mode: every datagram must start with a PROXY v2 header, and the
	// reply to the sender carries a PROXY header whose source is the
	// original destination and whose destination is the original source,
	// followed by the payload. A LOCAL datagram carrying a CoAP ping is
	// answered with a LOCAL header and a CoAP reset (a health check);
	// anything else is dropped. Unlike lwm2m-server, the echo accepts
	// PROXY headers from any sender.
	//
	// Without ProxyV2 a datagram is echoed as it is, except that a CoAP
	// ping is answered with a CoAP reset.
	ProxyV2 bool
}

// EchoStats are an [Echo]'s counters.
type EchoStats struct {
	// Received counts the datagrams received.
	Received uint64 `json:"received"`
	// Replied counts the datagrams sent back, health-check answers
	// included.
	Replied uint64 `json:"replied"`
	// Pings counts the CoAP pings answered (health checks).
	Pings uint64 `json:"pings"`
	// Dropped counts the datagrams neither echoed nor answered: a
	// malformed or missing PROXY header in ProxyV2 mode, a LOCAL datagram
	// that is not a ping, or a failed send.
	Dropped uint64 `json:"dropped"`
}

// Echo is a UDP echo backend serving on one address with one SO_REUSEPORT
// socket per worker. It is safe for concurrent use.
type Echo struct {
	addr    netip.AddrPort
	proxyV2 bool
	batch   int
	conns   []*net.UDPConn
	wg      sync.WaitGroup

	received, replied, pings, dropped atomic.Uint64
}

// StartEcho binds the echo's sockets and starts serving. Close stops it.
func StartEcho(cfg EchoConfig) (*Echo, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultEchoBatch
	}
	e := &Echo{proxyV2: cfg.ProxyV2, batch: cfg.Batch}
	lc := net.ListenConfig{Control: reusePort}
	addr := cfg.Addr
	for i := range cfg.Workers {
		pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			e.closeConns()
			return nil, fmt.Errorf("echo: listening on %s (socket %d): %w", addr, i+1, err)
		}
		c := pc.(*net.UDPConn)
		// Best effort: a small buffer only means more drops under load.
		_ = c.SetReadBuffer(DefaultSocketBuffer)
		_ = c.SetWriteBuffer(DefaultSocketBuffer)
		e.conns = append(e.conns, c)
		if i == 0 {
			e.addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
			addr = e.addr.String()
		}
	}
	for _, c := range e.conns {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.serve(c)
		}()
	}
	return e, nil
}

// reusePort is a net.ListenConfig Control function setting SO_REUSEPORT.
func reusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}

// Addr returns the address the echo listens on.
func (e *Echo) Addr() netip.AddrPort { return e.addr }

// Stats returns a snapshot of the echo's counters.
func (e *Echo) Stats() EchoStats {
	return EchoStats{
		Received: e.received.Load(),
		Replied:  e.replied.Load(),
		Pings:    e.pings.Load(),
		Dropped:  e.dropped.Load(),
	}
}

// Close closes the echo's sockets and waits for its workers to return.
func (e *Echo) Close() error {
	err := e.closeConns()
	e.wg.Wait()
	return err
}

func (e *Echo) closeConns() error {
	var errs []error
	for _, c := range e.conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// serve is one worker's loop: read a batch, answer each datagram in place,
// write the answers. The socket uses UDP segmentation and receive offload
// where the kernel has them: behind lwm2m-lb in proxy mode, the balancer's
// datagrams arrive coalesced and the answers, all to the balancer, leave
// the same way, as they would from an lwm2m-server with offload.
func (e *Echo) serve(c *net.UDPConn) {
	conn, err := udpio.NewConn(c, e.batch)
	if err != nil {
		return
	}
	_ = conn.EnableGSO() // best effort: without it, one datagram per send
	_ = conn.EnableGRO()
	in := make([]udpio.Msg, e.batch)
	for i := range in {
		in[i].Buf = make([]byte, maxDatagram)
	}
	out := make([]udpio.Msg, 0, e.batch)
	for {
		n, err := conn.ReadBatch(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // for example ECONNREFUSED left by an ICMP error
		}
		out = out[:0]
		received := 0
		for i := range n {
			m := &in[i]
			for off := 0; ; {
				d, next, ok := m.Segment(off)
				if !ok {
					break
				}
				received++
				if k := e.reply(d); k >= 0 {
					out = append(out, udpio.Msg{Buf: m.Buf, Offset: m.Offset + off, N: k, Addr: m.Addr})
				}
				off = next
			}
		}
		e.received.Add(uint64(received))
		if dropped := received - len(out); dropped > 0 {
			e.dropped.Add(uint64(dropped))
		}
		sent, err := conn.WriteBatch(out)
		e.replied.Add(uint64(sent))
		if lost := len(out) - sent; lost > 0 {
			e.dropped.Add(uint64(lost))
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// reply turns datagram b, in place, into its answer and returns the
// answer's length, or -1 when there is none. An answer is never longer than
// the datagram: a PROXY header with source and destination swapped has the
// same length, and a CoAP reset the length of the ping it answers.
func (e *Echo) reply(b []byte) int {
	if !e.proxyV2 {
		if mid, ok := peek.IsCoAPPing(b); ok {
			e.pings.Add(1)
			return len(peek.AppendCoAPReset(b[:0], mid))
		}
		return len(b)
	}
	h, payload, err := proxyv2.Parse(b)
	if err != nil {
		return -1
	}
	hl := len(b) - len(payload)
	switch h.Command {
	case proxyv2.Proxy:
		if len(proxyv2.AppendHeader(b[:0], proxyv2.Proxy, h.Dst, h.Src)) != hl {
			return -1
		}
		return len(b)
	case proxyv2.Local:
		if mid, ok := peek.IsCoAPPing(payload); ok {
			e.pings.Add(1)
			hdr := proxyv2.AppendHeader(b[:0], proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
			return len(peek.AppendCoAPReset(hdr, mid))
		}
	}
	return -1
}
