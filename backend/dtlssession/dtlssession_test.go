package dtlssession_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/lwm2mcluster/lwm2m/backend/dtlssession"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
)

// fullSession sets every field of dtls.Session.
func fullSession(t *testing.T) dtls.Session {
	s := dtls.Session{
		ID:                   []byte{1, 2, 3, 4},
		Secret:               bytes.Repeat([]byte{0xaa}, 48),
		Version:              1,
		IsClient:             true,
		CipherSuiteID:        dtls.TLS_PSK_WITH_AES_128_CCM_8,
		ExtendedMasterSecret: true,
		PeerCertificates:     [][]byte{{0x30, 0x01}, {0x30, 0x02}},
		IdentityHint:         []byte("hint"),
		PSKHash:              sha256.Sum256([]byte("key")),
	}
	v := reflect.ValueOf(s)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fixture leaves dtls.Session.%s zero: a new pion field? make sure the encoding keeps it",
				v.Type().Field(i).Name)
		}
	}
	return s
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestRoundTrip(t *testing.T) {
	ms := memstore.New(time.Second)
	s := dtlssession.New(ms, dtlssession.Options{Logger: quiet()})
	want := fullSession(t)
	if err := s.Set(want.ID, want); err != nil {
		t.Fatal(err)
	}
	// Another instance's store over the same shared state.
	other := dtlssession.New(ms, dtlssession.Options{Logger: quiet()})
	got, err := other.Get(want.ID)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
	}
	if st := other.Stats(); st != (dtlssession.Stats{Hits: 1}) {
		t.Fatalf("Stats = %+v", st)
	}
	if err := other.Del(want.ID); err != nil {
		t.Fatal(err)
	}
	got, err = s.Get(want.ID)
	if err != nil || !reflect.DeepEqual(got, dtls.Session{}) {
		t.Fatalf("Get after Del = %+v, %v; want a zero session and no error", got, err)
	}
	if err := s.Del([]byte("never")); err != nil {
		t.Fatalf("Del(missing) = %v", err)
	}
	if st := s.Stats(); st != (dtlssession.Stats{Misses: 1}) {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestTTL(t *testing.T) {
	ms := memstore.New(time.Second)
	s := dtlssession.New(ms, dtlssession.Options{TTL: 200 * time.Millisecond, Logger: quiet()})
	sess := fullSession(t)
	if err := s.Set(sess.ID, sess); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(sess.ID); got.ID == nil {
		t.Fatal("session gone before its TTL")
	}
	time.Sleep(400 * time.Millisecond)
	if got, err := s.Get(sess.ID); err != nil || got.ID != nil {
		t.Fatalf("Get after TTL = %+v, %v; want a zero session", got, err)
	}
	if st := s.Stats(); st.Hits != 1 || st.Misses != 1 || st.Errors != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

// brokenStore fails every call, or blocks until the context ends.
type brokenStore struct {
	block bool
	data  []byte // returned by Get when set
}

var errDown = errors.New("store down")

func (b *brokenStore) wait(ctx context.Context) error {
	if b.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return errDown
}

func (b *brokenStore) PutDTLSSession(ctx context.Context, _, _ []byte, _ time.Duration) error {
	return b.wait(ctx)
}

func (b *brokenStore) GetDTLSSession(ctx context.Context, _ []byte) ([]byte, error) {
	if b.data != nil {
		return b.data, nil
	}
	return nil, b.wait(ctx)
}

func (b *brokenStore) DeleteDTLSSession(ctx context.Context, _ []byte) error { return b.wait(ctx) }

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFailOpen(t *testing.T) {
	var logs logBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for _, block := range []bool{false, true} {
		s := dtlssession.New(&brokenStore{block: block}, dtlssession.Options{Timeout: 50 * time.Millisecond, Logger: log})
		sess := fullSession(t)
		start := time.Now()
		if err := s.Set(sess.ID, sess); err != nil {
			t.Fatalf("Set = %v; want nil (fail open)", err)
		}
		if got, err := s.Get(sess.ID); err != nil || got.ID != nil {
			t.Fatalf("Get = %+v, %v; want a zero session, nil", got, err)
		}
		if err := s.Del(sess.ID); err != nil {
			t.Fatalf("Del = %v; want nil", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("calls took %v despite the 50ms timeout", d)
		}
		if st := s.Stats(); st != (dtlssession.Stats{Misses: 1, Errors: 3}) {
			t.Fatalf("block=%v: Stats = %+v", block, st)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "DTLS session store failed"); n != 2 {
		t.Fatalf("%d failure logs, want one per store (rate limited):\n%s", n, out)
	}
	if strings.Contains(out, "aaaa") {
		t.Fatalf("secret in logs:\n%s", out)
	}
}

func TestCorruptSession(t *testing.T) {
	s := dtlssession.New(&brokenStore{data: []byte("{not json")}, dtlssession.Options{Logger: quiet()})
	if got, err := s.Get([]byte{1}); err != nil || got.ID != nil {
		t.Fatalf("Get(corrupt) = %+v, %v", got, err)
	}
	if st := s.Stats(); st != (dtlssession.Stats{Misses: 1, Errors: 1}) {
		t.Fatalf("Stats = %+v", st)
	}
}

// lastSession is a client-side session store that offers the latest
// session to any server, so that the client can resume, at a second
// server, the session it established with the first (pion keys client
// sessions by server address).
type lastSession struct {
	mu sync.Mutex
	s  dtls.Session
}

func (l *lastSession) Set(_ []byte, s dtls.Session) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = s
	return nil
}

func (l *lastSession) Get([]byte) (dtls.Session, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s, nil
}

func (l *lastSession) Del([]byte) error { return nil }

// TestResumeOnAnotherInstance does a full PSK handshake with one server
// and resumes the session with another that shares the store.
func TestResumeOnAnotherInstance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ms := memstore.New(time.Second)
	psk := func([]byte) ([]byte, error) { return []byte{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}, nil }
	suites := []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8}

	serve := func(ss *dtlssession.Store) (*net.UDPAddr, <-chan error) {
		ln, err := dtls.Listen("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &dtls.Config{
			PSK: psk, PSKIdentityHint: []byte("server"), CipherSuites: suites, SessionStore: ss,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			if err := c.(*dtls.Conn).HandshakeContext(ctx); err != nil {
				done <- err
				return
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err == nil {
				_, err = c.Write(buf[:n])
			}
			done <- err
		}()
		return ln.Addr().(*net.UDPAddr), done
	}
	client := &lastSession{}
	dial := func(addr *net.UDPAddr) {
		t.Helper()
		c, err := dtls.Dial("udp", addr, &dtls.Config{
			PSK: psk, PSKIdentityHint: []byte("dev1"), CipherSuites: suites, SessionStore: client,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.HandshakeContext(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("echo = %q, %v", buf[:n], err)
		}
	}

	a := dtlssession.New(ms, dtlssession.Options{Logger: quiet()})
	addrA, doneA := serve(a)
	dial(addrA)
	if err := <-doneA; err != nil {
		t.Fatalf("server A: %v", err)
	}
	client.mu.Lock()
	first := client.s
	client.mu.Unlock()
	if len(first.ID) == 0 {
		t.Fatal("client saved no session after the full handshake")
	}
	if data, err := ms.GetDTLSSession(ctx, first.ID); err != nil || len(data) == 0 {
		t.Fatalf("server A stored no session: %v", err)
	}

	b := dtlssession.New(ms, dtlssession.Options{Logger: quiet()})
	addrB, doneB := serve(b)
	dial(addrB)
	if err := <-doneB; err != nil {
		t.Fatalf("server B: %v", err)
	}
	if st := b.Stats(); st.Hits != 1 || st.Errors != 0 {
		t.Fatalf("server B Stats = %+v; want the session resumed from the shared store", st)
	}
	client.mu.Lock()
	second := client.s
	client.mu.Unlock()
	if !bytes.Equal(second.ID, first.ID) || !bytes.Equal(second.Secret, first.Secret) {
		t.Fatalf("client's session changed: the handshake with B was not a resumption")
	}
}
