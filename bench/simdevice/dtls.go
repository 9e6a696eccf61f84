package simdevice

import (
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/udp/client"
)

// DefaultHandshakeTimeout bounds a DTLS handshake when
// Config.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// DefaultCipherSuites are the PSK cipher suites a device offers when
// Config.CipherSuites is empty, in order of preference.
var DefaultCipherSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_PSK_WITH_AES_128_CCM_8,
	piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
}

// ErrHandshake wraps every failed DTLS handshake.
var ErrHandshake = errors.New("simdevice: DTLS handshake failed")

// SessionCache is an in-memory piondtls.SessionStore for the client side of
// DTLS sessions: a device keeps the session of its last full handshake in it
// and offers it for resumption (an abbreviated handshake) when it opens a
// new one. Devices prefix their keys with their PSK identity, so one cache
// can serve a whole fleet. Its methods are safe for concurrent use.
type SessionCache struct {
	mu sync.Mutex
	m  map[string]piondtls.Session
}

// NewSessionCache returns an empty SessionCache.
func NewSessionCache() *SessionCache {
	return &SessionCache{m: map[string]piondtls.Session{}}
}

// Set implements piondtls.SessionStore.
func (c *SessionCache) Set(key []byte, s piondtls.Session) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[string(key)] = s
	return nil
}

// Get implements piondtls.SessionStore: the zero Session and no error when
// there is none, as pion expects.
func (c *SessionCache) Get(key []byte) (piondtls.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[string(key)], nil
}

// Del implements piondtls.SessionStore.
func (c *SessionCache) Del(key []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, string(key))
	return nil
}

// Len returns the number of cached sessions.
func (c *SessionCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// handshakeSessions is the session store of one handshake: it prefixes the
// keys with the device's identity and remembers the session pion offered
// for resumption, to tell a resumed handshake from a full one.
type handshakeSessions struct {
	inner  piondtls.SessionStore
	prefix string

	mu      sync.Mutex
	offered []byte // id of the session the store handed out
}

func (s *handshakeSessions) key(k []byte) []byte { return append([]byte(s.prefix), k...) }

func (s *handshakeSessions) Set(k []byte, sess piondtls.Session) error {
	return s.inner.Set(s.key(k), sess)
}

func (s *handshakeSessions) Get(k []byte) (piondtls.Session, error) {
	sess, err := s.inner.Get(s.key(k))
	if err == nil && len(sess.ID) > 0 {
		s.mu.Lock()
		s.offered = bytes.Clone(sess.ID)
		s.mu.Unlock()
	}
	return sess, err
}

func (s *handshakeSessions) Del(k []byte) error { return s.inner.Del(s.key(k)) }

// resumed reports whether the handshake that produced id resumed the
// session the store handed out.
func (s *handshakeSessions) resumed(id []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.offered) > 0 && bytes.Equal(s.offered, id)
}

// secureSession is a device's DTLS session: the go-coap connection over
// the pion connection over a rebinding socket.
type secureSession struct {
	cc  *client.Conn
	dc  *piondtls.Conn
	rc  *rebindConn
	cid bool // the server gave a Connection ID: the session survives a new source port
}

// secure reports whether the device speaks DTLS.
func (d *Device) secure() bool { return d.cfg.PSK != nil }

// handshake opens a DTLS session over sock (which it owns from then on,
// also on failure) and wraps it in a go-coap client serving the device's
// handler.
func (d *Device) handshake(ctx context.Context, sock *net.UDPConn) (*secureSession, error) {
	raddr := sock.RemoteAddr()
	if raddr == nil {
		ua, err := net.ResolveUDPAddr("udp", d.cfg.Server)
		if err != nil {
			_ = sock.Close()
			return nil, fmt.Errorf("simdevice: resolve %s: %w", d.cfg.Server, err)
		}
		raddr = ua
	}
	rc := newRebindConn(sock, raddr)
	suites := d.cfg.CipherSuites
	if len(suites) == 0 {
		suites = DefaultCipherSuites
	}
	key := d.cfg.PSK
	opts := []piondtls.ClientOption{
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(d.cfg.PSKIdentity)),
		piondtls.WithCipherSuites(suites...),
	}
	var sessions *handshakeSessions
	if d.sessions != nil {
		sessions = &handshakeSessions{inner: d.sessions, prefix: d.cfg.PSKIdentity + "\x00"}
		opts = append(opts, piondtls.WithSessionStore(sessions))
	}
	if d.cfg.CID {
		opts = append(opts, piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()))
	}
	dc, err := piondtls.ClientWithOptions(rc, raddr, opts...)
	if err != nil {
		_ = rc.Close()
		d.countHandshake(false, false)
		return nil, fmt.Errorf("%w: %s: %w", ErrHandshake, d.cfg.Server, err)
	}
	timeout := d.cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	err = dc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		_ = dc.Close() // closes rc and the socket
		d.countHandshake(false, false)
		return nil, fmt.Errorf("%w: %s: %w", ErrHandshake, d.cfg.Server, err)
	}
	st, _ := dc.ConnectionState()
	resumed := sessions != nil && sessions.resumed(st.SessionID)
	d.countHandshake(true, resumed)
	s := &secureSession{dc: dc, rc: rc, cid: d.cfg.CID && hasRemoteCID(&st)}
	s.cc = coapdtls.Client(dc, d.clientOptions()...)
	d.log.Debug("simdevice DTLS session", "local", rc.LocalAddr(), "server", raddr,
		"resumed", resumed, "cid", s.cid, "suite", st.CipherSuiteID)
	return s, nil
}

func (d *Device) countHandshake(ok, resumed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case !ok:
		d.hsFailed++
	case resumed:
		d.hsResumed++
	default:
		d.hsFull++
	}
}

// hasRemoteCID reports whether the server gave the client a Connection ID
// to send (pion keeps it unexported; its serialized state has it).
func hasRemoteCID(st *piondtls.State) bool {
	b, err := st.MarshalBinary()
	if err != nil {
		return false
	}
	var s struct{ RemoteConnectionID []byte }
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&s); err != nil {
		return false
	}
	return len(s.RemoteConnectionID) > 0
}

// Handshakes returns the number of DTLS handshakes the device completed:
// full ones and resumed (abbreviated) ones. A Rebind with a Connection ID
// does none.
func (d *Device) Handshakes() (full, resumed int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hsFull, d.hsResumed
}

// HandshakeFailures returns the number of DTLS handshakes that failed (a
// wrong key, a timeout, a refused identity).
func (d *Device) HandshakeFailures() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hsFailed
}

// CIDInUse reports whether the device's DTLS session has a Connection ID:
// then a Rebind keeps the session.
func (d *Device) CIDInUse() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sec != nil && d.sec.cid
}

// rebindConn is the net.PacketConn under a device's DTLS session: it reads
// and writes on a UDP socket that Rebind replaces, so that the session
// continues from a new source port, as behind a NAT that rebinds
// (internal/natsim does the same for tests, with sockets of its own; this
// one takes them from the device's Dial hook). Datagrams still in flight
// to the old port are lost, as the old NAT binding is gone.
type rebindConn struct {
	raddr net.Addr

	mu            sync.Mutex
	cur           *net.UDPConn
	connected     bool // cur is connected to raddr
	gen           int  // incremented by every rebind
	closed        bool
	readDeadline  time.Time
	writeDeadline time.Time
}

func newRebindConn(sock *net.UDPConn, raddr net.Addr) *rebindConn {
	return &rebindConn{raddr: raddr, cur: sock, connected: sock.RemoteAddr() != nil}
}

// rebind moves the conn to sock and closes the previous socket, which
// wakes a reader blocked on it. It closes sock if the conn is closed.
func (c *rebindConn) rebind(sock *net.UDPConn) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = sock.Close()
		return net.ErrClosed
	}
	if !c.readDeadline.IsZero() {
		_ = sock.SetReadDeadline(c.readDeadline)
	}
	if !c.writeDeadline.IsZero() {
		_ = sock.SetWriteDeadline(c.writeDeadline)
	}
	old := c.cur
	c.cur, c.connected = sock, sock.RemoteAddr() != nil
	c.gen++
	c.mu.Unlock()
	return old.Close()
}

func (c *rebindConn) current() (*net.UDPConn, bool, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.connected, c.gen
}

// moved reports whether the socket of generation gen was replaced.
func (c *rebindConn) moved(gen int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && c.gen != gen
}

// ReadFrom implements net.PacketConn: datagrams from the server only.
func (c *rebindConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		sock, connected, gen := c.current()
		var n int
		var from net.Addr
		var err error
		if connected {
			n, err = sock.Read(b)
			from = c.raddr
		} else {
			n, from, err = sock.ReadFrom(b)
		}
		if err != nil {
			if c.moved(gen) {
				continue // the socket was replaced under the reader
			}
			return n, c.raddr, err
		}
		if !connected && from.String() != c.raddr.String() {
			continue // not the server
		}
		return n, c.raddr, nil
	}
}

// WriteTo implements net.PacketConn: to the server, from the current
// socket.
func (c *rebindConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	for {
		sock, connected, gen := c.current()
		var n int
		var err error
		if connected {
			n, err = sock.Write(b)
		} else {
			n, err = sock.WriteTo(b, c.raddr)
		}
		if err != nil && c.moved(gen) {
			continue
		}
		return n, err
	}
}

// Close implements net.PacketConn.
func (c *rebindConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	sock := c.cur
	c.mu.Unlock()
	return sock.Close()
}

// LocalAddr implements net.PacketConn: the current socket's address.
func (c *rebindConn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.LocalAddr()
}

// SetDeadline implements net.PacketConn.
func (c *rebindConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn; it carries over to the
// sockets of later rebinds.
func (c *rebindConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.cur.SetReadDeadline(t)
}

// SetWriteDeadline implements net.PacketConn; it carries over to the
// sockets of later rebinds.
func (c *rebindConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeDeadline = t
	return c.cur.SetWriteDeadline(t)
}

var _ net.PacketConn = (*rebindConn)(nil)
