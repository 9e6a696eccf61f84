// Package secure is an instance's DTLS layer: the pion/dtls configuration
// (PSK cipher suites with keys from the shared security store, Connection
// IDs that start with the instance's node id, cookies against spoofed
// ClientHellos, session resumption from the shared store) and a listener
// that wraps each datagram session of package dgram in a DTLS server
// connection for go-coap.
package secure

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
)

// DefaultCIDLen is the length of the Connection IDs an instance issues:
// two bytes of node id and six random bytes.
const DefaultCIDLen = 8

// Keys returns the PSK of an identity (an error when it has none).
type Keys func(ctx context.Context, identity string) ([]byte, error)

// Config configures the DTLS layer.
type Config struct {
	// Keys looks up PSKs by identity.
	Keys Keys
	// NodeID prefixes every Connection ID (big endian), so that a balancer
	// routes CID records to this instance.
	NodeID uint16
	// CIDLen is the Connection ID length (DefaultCIDLen when 0; at least 3).
	CIDLen int
	// Sessions stores sessions for resumption (shared by the cluster); nil
	// disables resumption.
	Sessions dtls.SessionStore
	// HandshakeTimeout bounds a handshake (default 30s).
	HandshakeTimeout time.Duration
	// KeyTimeout bounds a key look-up (default 2s).
	KeyTimeout time.Duration
	// MaxPendingHandshakes bounds the handshakes in progress (default
	// 4096); new sessions beyond it are closed at once and counted.
	MaxPendingHandshakes int
	Logger               *slog.Logger
	Registerer           prometheus.Registerer
}

// Layer is a configured DTLS layer.
type Layer struct {
	cfg     Config
	pending chan struct{} // a token per handshake in progress
	dcfg    *dtls.Config
	log     *slog.Logger
	m       *metrics
	tracker *resumeTracker
}

// New builds the DTLS layer.
func New(cfg Config) (*Layer, error) {
	if cfg.Keys == nil {
		return nil, errors.New("secure: a key look-up is required")
	}
	if cfg.CIDLen == 0 {
		cfg.CIDLen = DefaultCIDLen
	}
	if cfg.CIDLen < 3 || cfg.CIDLen > 32 {
		return nil, fmt.Errorf("secure: CID length %d out of range 3..32", cfg.CIDLen)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.KeyTimeout <= 0 {
		cfg.KeyTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPendingHandshakes <= 0 {
		cfg.MaxPendingHandshakes = 4096
	}
	l := &Layer{pending: make(chan struct{}, cfg.MaxPendingHandshakes), cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Registerer), tracker: &resumeTracker{hits: map[string]resumeHit{}}}
	var sessions dtls.SessionStore
	if cfg.Sessions != nil {
		sessions = &trackingStore{SessionStore: cfg.Sessions, t: l.tracker}
	}
	l.dcfg = &dtls.Config{
		PSK: func(identity []byte) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.KeyTimeout)
			defer cancel()
			key, err := cfg.Keys(ctx, string(identity))
			if err != nil {
				l.m.failures.WithLabelValues("unknown_identity").Inc()
				// The identity is logged, never the key.
				l.log.Info("DTLS handshake refused: unknown PSK identity", "identity", string(identity))
				return nil, fmt.Errorf("unknown PSK identity")
			}
			return key, nil
		},
		PSKIdentityHint: []byte("lwm2m"),
		CipherSuites: []dtls.CipherSuiteID{
			dtls.TLS_PSK_WITH_AES_128_CCM_8,
			dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
			dtls.TLS_PSK_WITH_AES_128_CCM,
			dtls.TLS_PSK_WITH_AES_128_CBC_SHA256,
		},
		ExtendedMasterSecret: dtls.RequestExtendedMasterSecret,
		// Cookies (HelloVerifyRequest) on: nothing beyond the ClientHello
		// is processed, and no key is looked up, for a source that cannot
		// receive. pion keeps a connection per source during the exchange;
		// MaxPendingHandshakes and HandshakeTimeout bound that state.
		InsecureSkipVerifyHello: false,
		ConnectionIDGenerator:   l.newCID,
		SessionStore:            sessions,
		FlightInterval:          time.Second,
	}
	return l, nil
}

// CIDLen returns the Connection ID length (for dgram.Config.CIDLen).
func (l *Layer) CIDLen() int { return l.cfg.CIDLen }

func (l *Layer) newCID() []byte {
	cid := make([]byte, l.cfg.CIDLen)
	binary.BigEndian.PutUint16(cid, l.cfg.NodeID)
	_, _ = rand.Read(cid[2:]) // crypto/rand.Read does not fail on Linux
	return cid
}

// Listener wraps a dgram listener: every accepted session is a DTLS server
// connection.
func (l *Layer) Listener(dl *dgram.Listener) *Listener {
	return &Listener{layer: l, dl: dl}
}

// Listener yields DTLS connections for go-coap's session server.
type Listener struct {
	layer *Layer
	dl    *dgram.Listener
}

// AcceptWithContext implements go-coap's Listener.
func (ln *Listener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	for {
		c, err := ln.dl.AcceptWithContext(ctx)
		if err != nil {
			return nil, err
		}
		dc := c.(*dgram.Conn)
		select {
		case ln.layer.pending <- struct{}{}:
		default:
			ln.layer.m.failures.WithLabelValues("too_many_pending").Inc()
			_ = dc.Close()
			continue
		}
		conn, err := dtls.Server(dc, dc.RemoteAddr(), ln.layer.dcfg)
		if err != nil {
			<-ln.layer.pending
			ln.layer.m.failures.WithLabelValues("setup").Inc()
			_ = dc.Close()
			continue
		}
		return &Conn{Conn: conn, layer: ln.layer, raw: dc}, nil
	}
}

// Close implements go-coap's Listener.
func (ln *Listener) Close() error { return ln.dl.Close() }

// Conn is a DTLS server connection that records its handshake's outcome.
type Conn struct {
	*dtls.Conn
	layer *Layer
	raw   *dgram.Conn
	once  sync.Once
	err   error
}

// HandshakeContext runs the handshake once and counts it: full, resumed or
// failed.
func (c *Conn) HandshakeContext(ctx context.Context) error {
	c.once.Do(func() {
		hctx, cancel := context.WithTimeout(ctx, c.layer.cfg.HandshakeTimeout)
		defer cancel()
		start := time.Now()
		c.err = c.Conn.HandshakeContext(hctx)
		<-c.layer.pending
		if c.err != nil {
			reason := "handshake"
			if errors.Is(c.err, context.DeadlineExceeded) {
				reason = "timeout"
			}
			c.layer.m.failures.WithLabelValues(reason).Inc()
			c.layer.log.Debug("DTLS handshake failed", "peer", c.raw.Peer().String(), "err", c.err)
			return
		}
		kind := "full"
		if st, ok := c.Conn.ConnectionState(); ok && c.layer.tracker.resumed(st.SessionID) {
			kind = "resumed"
		}
		c.layer.m.handshakes.WithLabelValues(kind).Inc()
		c.layer.m.duration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	})
	return c.err
}

// PSKIdentity returns the identity the peer authenticated with.
func (c *Conn) PSKIdentity() (string, bool) {
	st, ok := c.Conn.ConnectionState()
	if !ok || len(st.IdentityHint) == 0 {
		return "", false
	}
	return string(st.IdentityHint), true
}

// resumeTracker remembers the session ids the store handed out, so that a
// finished handshake can tell whether it resumed one.
type resumeTracker struct {
	mu   sync.Mutex
	hits map[string]resumeHit
}

// resumeHit counts the look-ups of one session id not yet matched to a
// finished handshake (a session can be resumed by several handshakes at
// once).
type resumeHit struct {
	n    int
	last time.Time
}

func (t *resumeTracker) hit(id []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if len(t.hits) > 10000 {
		for k, h := range t.hits {
			if now.Sub(h.last) > time.Minute {
				delete(t.hits, k)
			}
		}
	}
	h := t.hits[string(id)]
	t.hits[string(id)] = resumeHit{n: h.n + 1, last: now}
}

func (t *resumeTracker) resumed(id []byte) bool {
	if len(id) == 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	h, ok := t.hits[string(id)]
	if !ok {
		return false
	}
	if h.n <= 1 {
		delete(t.hits, string(id))
	} else {
		h.n--
		t.hits[string(id)] = h
	}
	return true
}

// trackingStore notes successful session look-ups.
type trackingStore struct {
	dtls.SessionStore
	t *resumeTracker
}

func (s *trackingStore) Get(key []byte) (dtls.Session, error) {
	sess, err := s.SessionStore.Get(key)
	if err == nil && len(sess.ID) > 0 {
		s.t.hit(key)
	}
	return sess, err
}

type metrics struct {
	handshakes *prometheus.CounterVec
	failures   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_dtls_handshakes_total",
			Help: "Completed DTLS handshakes, by kind (full, resumed).",
		}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_dtls_handshake_failures_total",
			Help: "Failed DTLS handshakes, by reason (unknown_identity, handshake, timeout, setup, too_many_pending).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lwm2m_dtls_handshake_seconds",
			Help:    "DTLS handshake duration, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.handshakes, m.failures, m.duration)
	}
	return m
}
