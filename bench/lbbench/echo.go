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

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
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

// maxDatagram is the largest datagram an echo worker receives whole.
const maxDatagram = 2048

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

// serve is one worker's loop: read a batch, build the replies, write them.
func (e *Echo) serve(c *net.UDPConn) {
	pc := ipv4.NewPacketConn(c)
	in := make([]ipv4.Message, e.batch)
	out := make([]ipv4.Message, e.batch)
	// Reply headers (and ping answers) are built in hdrs; the payload is
	// sent from the receive buffer it arrived in, as a second iovec.
	hdrs := make([][]byte, e.batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxDatagram)}
		out[i].Buffers = make([][]byte, 0, 2)
		hdrs[i] = make([]byte, 0, proxyv2.IPv6Len+peek.CoAPPingLen)
	}
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // for example ECONNREFUSED left by an ICMP error
		}
		k := 0
		for i := range n {
			b := in[i].Buffers[0][:in[i].N]
			bufs, ok := e.reply(out[k].Buffers[:0], hdrs[k][:0], b)
			if !ok {
				continue
			}
			out[k].Buffers = bufs
			out[k].Addr = in[i].Addr
			k++
		}
		e.received.Add(uint64(n))
		if dropped := n - k; dropped > 0 {
			e.dropped.Add(uint64(dropped))
		}
		for sent := 0; sent < k; {
			m, err := pc.WriteBatch(out[sent:k], 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// Drop the datagram that failed and go on with the rest.
				e.dropped.Add(1)
				m++
			} else {
				e.replied.Add(uint64(m))
			}
			sent += m
		}
	}
}

// reply appends to bufs the buffers of the reply to datagram b, using hdr
// for a header or a ping answer, and reports whether there is a reply.
func (e *Echo) reply(bufs [][]byte, hdr, b []byte) ([][]byte, bool) {
	if !e.proxyV2 {
		if mid, ok := peek.IsCoAPPing(b); ok {
			e.pings.Add(1)
			return append(bufs, peek.AppendCoAPReset(hdr, mid)), true
		}
		return append(bufs, b), true
	}
	h, payload, err := proxyv2.Parse(b)
	if err != nil {
		return bufs, false
	}
	switch h.Command {
	case proxyv2.Proxy:
		hdr = proxyv2.AppendHeader(hdr, proxyv2.Proxy, h.Dst, h.Src)
		return append(bufs, hdr, payload), true
	case proxyv2.Local:
		if mid, ok := peek.IsCoAPPing(payload); ok {
			e.pings.Add(1)
			hdr = proxyv2.AppendHeader(hdr, proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
			return append(bufs, peek.AppendCoAPReset(hdr, mid)), true
		}
	}
	return bufs, false
}
