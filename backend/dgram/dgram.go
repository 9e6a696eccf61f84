// Package dgram demultiplexes one UDP socket into one packet-oriented
// net.Conn per peer, the shape go-coap's session server (and pion/dtls)
// want: each Read returns one datagram from that peer, each Write sends one.
//
// The Listener owns the socket and its read loop; Accept yields a Conn the
// first time a peer sends a datagram. Closing a Conn forgets the peer (the
// next datagram opens a new session). Dial opens a session towards a peer
// that has not written first, for server-initiated requests.
//
// In PROXY mode (Config.ProxyProtocol) the socket faces a load balancer:
// every datagram must come from a trusted source and start with a PROXY
// protocol v2 header naming the real client (the session's peer) and the
// service address it was sent to (the session's local address); replies go
// back to the balancer behind a header naming the client. LOCAL-command CoAP
// pings (the balancer's health checks) are answered with a LOCAL reset at
// once, without opening a session. Anything else is dropped and counted.
//
// Queues are bounded: when a session's queue or the accept queue is full, or
// the session limit is reached, datagrams are dropped and counted, never
// buffered without limit.
package dgram

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// ErrClosed is returned by a closed Listener or Conn.
var ErrClosed = net.ErrClosed

// Config tunes a Listener.
type Config struct {
	// MaxSessions bounds concurrent peers (default 100000).
	MaxSessions int
	// QueueLen is each session's receive queue, in datagrams (default 64).
	QueueLen int
	// AcceptQueueLen is the queue of new sessions not yet accepted
	// (default 1024).
	AcceptQueueLen int
	// ProxyProtocol requires a PROXY v2 header on every datagram.
	ProxyProtocol bool
	// Trusted are the sources allowed to send PROXY headers (the
	// balancers). Required with ProxyProtocol.
	Trusted []netip.Prefix
}

func (c *Config) setDefaults() {
	if c.MaxSessions <= 0 {
		c.MaxSessions = 100000
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 64
	}
	if c.AcceptQueueLen <= 0 {
		c.AcceptQueueLen = 1024
	}
}

// Stats are the listener's counters.
type Stats struct {
	Received        uint64 // datagrams read from the socket
	Sent            uint64 // datagrams written
	Sessions        int64  // sessions open now
	DroppedQueue    uint64 // dropped: session queue full
	DroppedAccept   uint64 // dropped: accept queue full
	DroppedSessions uint64 // dropped: MaxSessions reached
	ReadErrors      uint64
	WriteErrors     uint64
	// PROXY mode only.
	DroppedUntrusted uint64 // dropped: source not a trusted balancer
	DroppedHeader    uint64 // dropped: missing or invalid PROXY v2 header
	HealthPings      uint64 // LOCAL pings answered
}

// Listener is a demultiplexing UDP listener.
type Listener struct {
	pc     *net.UDPConn
	cfg    Config
	accept chan *Conn
	done   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	sessions map[netip.AddrPort]*Conn
	closed   bool

	received, sent                               atomic.Uint64
	droppedQueue, droppedAccept, droppedSessions atomic.Uint64
	readErrors, writeErrors                      atomic.Uint64
	droppedUntrusted, droppedHeader              atomic.Uint64
	healthPings                                  atomic.Uint64
	open                                         atomic.Int64
	// lastVia is the balancer that sent the latest PROXY datagram, the
	// route for sessions the server opens itself (Dial).
	lastVia atomic.Pointer[via]
	bufs    sync.Pool
}

// via is how a PROXY-mode session is reached: through balancer lb, from
// service address vip.
type via struct {
	lb, vip netip.AddrPort
}

// Listen opens a UDP socket on addr ("host:port") and starts reading.
func Listen(addr string, cfg Config) (*Listener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dgram: resolve %q: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("dgram: listen on %s: %w", addr, err)
	}
	return New(pc, cfg)
}

// New starts a Listener on an open socket, which it then owns.
func New(pc *net.UDPConn, cfg Config) (*Listener, error) {
	cfg.setDefaults()
	if cfg.ProxyProtocol && len(cfg.Trusted) == 0 {
		pc.Close()
		return nil, errors.New("dgram: PROXY protocol needs at least one trusted balancer prefix")
	}
	l := &Listener{
		pc:       pc,
		cfg:      cfg,
		accept:   make(chan *Conn, cfg.AcceptQueueLen),
		done:     make(chan struct{}),
		sessions: map[netip.AddrPort]*Conn{},
	}
	l.bufs.New = func() any { b := make([]byte, 0, maxDatagram); return &b }
	l.wg.Add(1)
	go l.readLoop()
	return l, nil
}

// Addr returns the socket's local address.
func (l *Listener) Addr() net.Addr { return l.pc.LocalAddr() }

// Stats returns a snapshot of the counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Received: l.received.Load(), Sent: l.sent.Load(), Sessions: l.open.Load(),
		DroppedQueue: l.droppedQueue.Load(), DroppedAccept: l.droppedAccept.Load(),
		DroppedSessions: l.droppedSessions.Load(),
		ReadErrors:      l.readErrors.Load(), WriteErrors: l.writeErrors.Load(),
		DroppedUntrusted: l.droppedUntrusted.Load(), DroppedHeader: l.droppedHeader.Load(),
		HealthPings: l.healthPings.Load(),
	}
}

const maxDatagram = 65535

func (l *Listener) readLoop() {
	defer l.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := l.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.readErrors.Add(1)
			// Transient errors (ICMP port unreachable surfaces as
			// ECONNREFUSED on some kernels) must not stop the loop.
			continue
		}
		l.received.Add(1)
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if l.cfg.ProxyProtocol {
			l.unwrap(from, buf[:n])
			continue
		}
		p := make([]byte, n)
		copy(p, buf[:n])
		l.deliver(from, p, nil)
	}
}

func (l *Listener) trusted(a netip.Addr) bool {
	for _, p := range l.cfg.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// unwrap handles a datagram in PROXY mode.
func (l *Listener) unwrap(from netip.AddrPort, b []byte) {
	if !l.trusted(from.Addr()) {
		l.droppedUntrusted.Add(1)
		return
	}
	h, payload, err := proxyv2.Parse(b)
	if err != nil {
		l.droppedHeader.Add(1)
		return
	}
	if h.Command == proxyv2.Local {
		mid, ok := peek.IsCoAPPing(payload)
		if !ok {
			l.droppedHeader.Add(1)
			return
		}
		var out [proxyv2.LocalLen + peek.CoAPPingLen]byte
		reply := proxyv2.AppendHeader(out[:0], proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
		reply = peek.AppendCoAPReset(reply, mid)
		l.healthPings.Add(1)
		_, _ = l.write(reply, from)
		return
	}
	src := netip.AddrPortFrom(h.Src.Addr().Unmap(), h.Src.Port())
	dst := netip.AddrPortFrom(h.Dst.Addr().Unmap(), h.Dst.Port())
	v := &via{lb: from, vip: dst}
	if cur := l.lastVia.Load(); cur == nil || *cur != *v {
		l.lastVia.Store(v)
	}
	p := make([]byte, len(payload))
	copy(p, payload)
	l.deliver(src, p, v)
}

// deliver queues a datagram to its peer's session, opening one if needed.
// v is the balancer route of a PROXY-mode datagram.
func (l *Listener) deliver(from netip.AddrPort, p []byte, v *via) {
	c, isNew := l.session(from)
	if c == nil {
		return
	}
	if v != nil {
		// The session follows the newest route (balancer fail-over, or a
		// device reaching another service address).
		if cur := c.via.Load(); cur == nil || *cur != *v {
			c.via.Store(v)
		}
	}
	select {
	case c.in <- p:
	default:
		l.droppedQueue.Add(1)
	}
	if isNew {
		select {
		case l.accept <- c:
		default:
			l.droppedAccept.Add(1)
			c.Close()
		}
	}
}

// session returns the peer's session, creating it if there is none. isNew
// tells the caller to hand it to Accept. It returns nil when the listener
// is closed or full.
func (l *Listener) session(peer netip.AddrPort) (c *Conn, isNew bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false
	}
	if c := l.sessions[peer]; c != nil {
		return c, false
	}
	if len(l.sessions) >= l.cfg.MaxSessions {
		l.droppedSessions.Add(1)
		return nil, false
	}
	c = &Conn{
		l:      l,
		peer:   peer,
		raddr:  net.UDPAddrFromAddrPort(peer),
		in:     make(chan []byte, l.cfg.QueueLen),
		closed: make(chan struct{}),
	}
	c.rd.init()
	l.sessions[peer] = c
	l.open.Add(1)
	return c, true
}

// Dial returns the session for peer, opening (and queueing for Accept) a new
// one when there is none, so the server can send the first message.
func (l *Listener) Dial(peer netip.AddrPort) (*Conn, error) {
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	c, isNew := l.session(peer)
	if c == nil {
		return nil, fmt.Errorf("dgram: cannot open session to %s: listener closed or full", peer)
	}
	if l.cfg.ProxyProtocol && c.via.Load() == nil {
		c.via.Store(l.lastVia.Load())
	}
	if isNew {
		select {
		case l.accept <- c:
		case <-l.done:
			c.Close()
			return nil, ErrClosed
		}
	}
	return c, nil
}

// Lookup returns the open session of a peer, or nil.
func (l *Listener) Lookup(peer netip.AddrPort) *Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sessions[peer]
}

// AcceptWithContext waits for a new session.
func (l *Listener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Accept waits for a new session.
func (l *Listener) Accept() (net.Conn, error) {
	return l.AcceptWithContext(context.Background())
}

// Close closes the socket and every session.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	sessions := make([]*Conn, 0, len(l.sessions))
	for _, c := range l.sessions {
		sessions = append(sessions, c)
	}
	l.mu.Unlock()
	err := l.pc.Close()
	for _, c := range sessions {
		c.Close()
	}
	l.wg.Wait()
	return err
}

func (l *Listener) forget(c *Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[c.peer] == c {
		delete(l.sessions, c.peer)
		l.open.Add(-1)
	}
}

func (l *Listener) write(p []byte, to netip.AddrPort) (int, error) {
	n, err := l.pc.WriteToUDPAddrPort(p, to)
	if err != nil {
		l.writeErrors.Add(1)
		return n, err
	}
	l.sent.Add(1)
	return n, nil
}

// Conn is one peer's session. Read returns one datagram per call (excess
// bytes of a datagram larger than the buffer are discarded, as with UDP).
type Conn struct {
	l      *Listener
	peer   netip.AddrPort
	raddr  *net.UDPAddr
	in     chan []byte
	closed chan struct{}
	once   sync.Once
	rd     deadline
	via    atomic.Pointer[via] // PROXY mode
}

var _ net.Conn = (*Conn)(nil)

// Peer returns the peer's address.
func (c *Conn) Peer() netip.AddrPort { return c.peer }

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, ErrClosed
	case <-c.rd.wait():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	select {
	case p := <-c.in:
		return copy(b, p), nil
	case <-c.closed:
		return 0, ErrClosed
	case <-c.rd.wait():
		return 0, os.ErrDeadlineExceeded
	}
}

// Write implements net.Conn: one datagram to the peer.
func (c *Conn) Write(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, ErrClosed
	default:
	}
	if !c.l.cfg.ProxyProtocol {
		return c.l.write(b, c.peer)
	}
	v := c.via.Load()
	if v == nil {
		c.l.writeErrors.Add(1)
		return 0, fmt.Errorf("dgram: no balancer route to %s yet", c.peer)
	}
	bp := c.l.bufs.Get().(*[]byte)
	out := proxyv2.AppendHeader((*bp)[:0], proxyv2.Proxy, v.vip, c.peer)
	out = append(out, b...)
	_, err := c.l.write(out, v.lb)
	*bp = out
	c.l.bufs.Put(bp)
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close implements net.Conn: the listener forgets the peer.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.l.forget(c)
	})
	return nil
}

// LocalAddr implements net.Conn: the socket's address, or in PROXY mode
// the service address the peer sent to.
func (c *Conn) LocalAddr() net.Addr {
	if v := c.via.Load(); v != nil {
		return net.UDPAddrFromAddrPort(v.vip)
	}
	return c.l.pc.LocalAddr()
}

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline implements net.Conn (writes never block, so only the read
// deadline matters).
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error { c.rd.set(t); return nil }

// SetWriteDeadline implements net.Conn; UDP writes do not block.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// deadline is a settable deadline whose wait channel closes when it passes
// (the same construction as net.Pipe's).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // wait for the timer callback to finish
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		ch := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
