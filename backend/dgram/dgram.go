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
// For DTLS (Config.CIDLen > 0), a Conn is also a net.PacketConn for pion:
// ReadFrom reports each datagram's own source, and a datagram whose first
// record carries a Connection ID (RFC 9146, content type 25) is delivered
// to the session that issued that CID whatever its source. When pion, having
// authenticated such a record, writes to the new source, the session moves
// to that address (the peer-address update of RFC 9146 section 6). The CIDs
// a session issued are learnt from its outgoing ServerHello.
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
	// CIDLen is the length of the DTLS Connection IDs the sessions issue;
	// 0 disables routing by CID.
	CIDLen int
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
	// DTLS only.
	CIDRouted  uint64 // datagrams delivered by Connection ID
	CIDUnknown uint64 // CID records for no known session (delivered by address)
	Migrations uint64 // sessions that moved to a new peer address
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
	byCID    map[string]*Conn
	closed   bool

	received, sent                               atomic.Uint64
	droppedQueue, droppedAccept, droppedSessions atomic.Uint64
	readErrors, writeErrors                      atomic.Uint64
	droppedUntrusted, droppedHeader              atomic.Uint64
	healthPings                                  atomic.Uint64
	cidRouted, cidUnknown, migrations            atomic.Uint64

	open atomic.Int64
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
		byCID:    map[string]*Conn{},
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
		CIDRouted:   l.cidRouted.Load(), CIDUnknown: l.cidUnknown.Load(), Migrations: l.migrations.Load(),
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
	var c *Conn
	isNew := false
	if cid, ok := l.cid(p); ok {
		l.mu.Lock()
		c = l.byCID[string(cid)]
		l.mu.Unlock()
		if c != nil {
			l.cidRouted.Add(1)
		} else {
			l.cidUnknown.Add(1)
		}
	}
	if c == nil {
		c, isNew = l.session(from)
	}
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
	case c.in <- packet{b: p, from: from}:
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
		in:     make(chan packet, l.cfg.QueueLen),
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
	if l.sessions[c.Peer()] == c {
		delete(l.sessions, c.Peer())
	}
	for _, id := range c.cids {
		if l.byCID[id] == c {
			delete(l.byCID, id)
		}
	}
	l.open.Add(-1)
}

// cid returns the Connection ID of a datagram whose first record is a
// tls12_cid record.
func (l *Listener) cid(p []byte) ([]byte, bool) {
	n := l.cfg.CIDLen
	if n == 0 || len(p) < 11+n+2 || p[0] != 25 || p[1] != 0xfe {
		return nil, false
	}
	return p[11 : 11+n], true
}

// learnCID records the CID a session issued in its ServerHello.
func (l *Listener) learnCID(c *Conn, p []byte) {
	id, ok := serverHelloCID(p)
	if !ok || len(id) != l.cfg.CIDLen {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.isClosed() {
		return
	}
	l.byCID[string(id)] = c
	c.cids = append(c.cids, string(id))
}

// migrate moves a session to a new peer address.
func (l *Listener) migrate(c *Conn, to netip.AddrPort) {
	l.mu.Lock()
	old := c.Peer()
	if old == to || c.isClosed() {
		l.mu.Unlock()
		return
	}
	if l.sessions[old] == c {
		delete(l.sessions, old)
	}
	stale := l.sessions[to]
	l.sessions[to] = c
	c.setPeer(to)
	l.mu.Unlock()
	l.migrations.Add(1)
	if stale != nil && stale != c {
		// Another session held that address: the device behind it is gone
		// (the NAT gave its port to this one).
		stale.closeQuiet()
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
	pmu    sync.Mutex
	peer   netip.AddrPort
	raddr  *net.UDPAddr
	cids   []string // guarded by l.mu
	in     chan packet
	closed chan struct{}
	once   sync.Once
	rd     deadline
	via    atomic.Pointer[via] // PROXY mode
}

// packet is a queued datagram and its source.
type packet struct {
	b    []byte
	from netip.AddrPort
}

var (
	_ net.Conn       = (*Conn)(nil)
	_ net.PacketConn = (*Conn)(nil)
)

// Peer returns the peer's address.
func (c *Conn) Peer() netip.AddrPort {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.peer
}

func (c *Conn) setPeer(a netip.AddrPort) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.peer, c.raddr = a, net.UDPAddrFromAddrPort(a)
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	n, _, err := c.readPacket(b)
	return n, err
}

// ReadFrom implements net.PacketConn: one datagram and its own source,
// which differs from the session's peer when a CID record arrives from a
// new address.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.readPacket(b)
	if err != nil {
		return 0, nil, err
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if from == c.peer {
		return n, c.raddr, nil
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

func (c *Conn) readPacket(b []byte) (int, netip.AddrPort, error) {
	select {
	case <-c.closed:
		return 0, netip.AddrPort{}, ErrClosed
	case <-c.rd.wait():
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	default:
	}
	select {
	case p := <-c.in:
		return copy(b, p.b), p.from, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, ErrClosed
	case <-c.rd.wait():
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	}
}

// WriteTo implements net.PacketConn. Writing to an address other than the
// session's peer moves the session there: pion does that only after it
// authenticated a CID record from that address.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("dgram: WriteTo %T: not a UDP address", addr)
	}
	to := ua.AddrPort()
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	if to != c.Peer() {
		c.l.migrate(c, to)
	}
	return c.Write(b)
}

// Write implements net.Conn: one datagram to the peer.
func (c *Conn) Write(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, ErrClosed
	default:
	}
	if c.l.cfg.CIDLen > 0 && len(b) > 13 && b[0] == 22 {
		c.l.learnCID(c, b)
	}
	peer := c.Peer()
	if !c.l.cfg.ProxyProtocol {
		return c.l.write(b, peer)
	}
	v := c.via.Load()
	if v == nil {
		c.l.writeErrors.Add(1)
		return 0, fmt.Errorf("dgram: no balancer route to %s yet", peer)
	}
	bp := c.l.bufs.Get().(*[]byte)
	out := proxyv2.AppendHeader((*bp)[:0], proxyv2.Proxy, v.vip, peer)
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
	c.closeQuiet()
	return nil
}

func (c *Conn) closeQuiet() {
	c.once.Do(func() {
		close(c.closed)
		c.l.forget(c)
	})
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
func (c *Conn) RemoteAddr() net.Addr {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.raddr
}

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
