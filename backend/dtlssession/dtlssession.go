// Package dtlssession shares pion/dtls session resumption state across the
// cluster: a dtls.SessionStore over store.DTLSSessions, so a device whose
// traffic moves to another instance can resume its DTLS session there
// (abbreviated handshake) instead of doing a full one.
//
// Resumption is an optimisation, so the store fails open: when the shared
// store cannot be reached (or is slower than the per-call timeout), Get
// reports no session, and Set and Del report success, and the failure is
// counted in Stats().Errors and logged (at most once per LogInterval).
// pion would otherwise abort the handshake with an internal_error alert.
//
// Sessions are encoded as JSON of dtls.Session, every field included (the
// master secret among them): the shared store must be protected like the
// PSKs it also holds.
package dtlssession

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Defaults of Options.
const (
	DefaultTTL         = 24 * time.Hour
	DefaultTimeout     = 500 * time.Millisecond
	DefaultLogInterval = 10 * time.Second
)

// Options configure a Store. Zero fields take the defaults.
type Options struct {
	// TTL is how long a session can be resumed after its full handshake.
	TTL time.Duration
	// Timeout bounds each call to the shared store.
	Timeout time.Duration
	// Logger receives store failures; nil means slog.Default().
	Logger *slog.Logger
	// LogInterval is the least time between two failure logs.
	LogInterval time.Duration
}

// Stats counts the Store's outcomes since it was made.
type Stats struct {
	// Hits and Misses count Get calls that found a session or did not
	// (a session that fails to decode counts as a miss and an error).
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// Errors counts failed store calls and undecodable sessions, of Get,
	// Set and Del.
	Errors uint64 `json:"errors"`
}

// Store is a dtls.SessionStore on a store.DTLSSessions. It is safe for
// concurrent use.
type Store struct {
	s       store.DTLSSessions
	ttl     time.Duration
	timeout time.Duration
	log     *slog.Logger
	logIvl  time.Duration

	hits, misses, errs atomic.Uint64
	lastLog            atomic.Int64 // unix ns of the latest failure log
}

var _ dtls.SessionStore = (*Store)(nil)

// New returns a Store keeping sessions in s.
func New(s store.DTLSSessions, o Options) *Store {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LogInterval <= 0 {
		o.LogInterval = DefaultLogInterval
	}
	return &Store{s: s, ttl: o.TTL, timeout: o.Timeout, log: o.Logger, logIvl: o.LogInterval}
}

// Stats returns the counters.
func (s *Store) Stats() Stats {
	return Stats{Hits: s.hits.Load(), Misses: s.misses.Load(), Errors: s.errs.Load()}
}

func (s *Store) fail(op string, key []byte, err error) {
	s.errs.Add(1)
	now := time.Now().UnixNano()
	last := s.lastLog.Load()
	if now-last < int64(s.logIvl) || !s.lastLog.CompareAndSwap(last, now) {
		return
	}
	// A session id is not secret (it travels in the clear in ClientHello);
	// the session itself is never logged.
	s.log.Warn("DTLS session store failed; falling back to full handshakes",
		"op", op, "session", shortHex(key), "err", err, "errors", s.errs.Load())
}

func shortHex(b []byte) string {
	if len(b) > 8 {
		return hex.EncodeToString(b[:8]) + "…"
	}
	return hex.EncodeToString(b)
}

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// Set implements dtls.SessionStore.
func (s *Store) Set(key []byte, sess dtls.Session) error {
	data, err := json.Marshal(&sess)
	if err != nil {
		s.fail("set", key, err)
		return nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.s.PutDTLSSession(ctx, key, data, s.ttl); err != nil {
		s.fail("set", key, err)
	}
	return nil
}

// Get implements dtls.SessionStore. A missing, expired or unreadable
// session is reported as pion expects: a zero Session and a nil error.
func (s *Store) Get(key []byte) (dtls.Session, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	data, err := s.s.GetDTLSSession(ctx, key)
	if err != nil {
		s.misses.Add(1)
		if !errors.Is(err, store.ErrNotFound) {
			s.fail("get", key, err)
		}
		return dtls.Session{}, nil
	}
	var sess dtls.Session
	if err := json.Unmarshal(data, &sess); err != nil {
		s.misses.Add(1)
		s.fail("get", key, err)
		return dtls.Session{}, nil
	}
	s.hits.Add(1)
	return sess, nil
}

// Del implements dtls.SessionStore.
func (s *Store) Del(key []byte) error {
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.s.DeleteDTLSSession(ctx, key); err != nil {
		s.fail("del", key, err)
	}
	return nil
}
