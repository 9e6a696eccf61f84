package secure

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/backend/dtlssession"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
)

// clientStore is a device's own session cache.
type clientStore struct {
	mu sync.Mutex
	m  map[string]dtls.Session
}

func (s *clientStore) Set(k []byte, v dtls.Session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[string(k)] = v
	return nil
}

func (s *clientStore) Get(k []byte) (dtls.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[string(k)], nil
}

func (s *clientStore) Del(k []byte) error { return nil }

// benchHandshakes measures complete DTLS-PSK handshakes (cookie exchange
// included) per second on one server, client and server on the same two
// cores. resume: every client resumes a session stored in the server's
// session store.
func benchHandshakes(b *testing.B, resume bool) {
	st := memstore.New(0)
	layer, err := New(Config{
		Keys:     func(context.Context, string) ([]byte, error) { return []byte("secret"), nil },
		Sessions: dtlssession.New(st, dtlssession.Options{}), Logger: quiet,
	})
	if err != nil {
		b.Fatal(err)
	}
	dl, err := dgram.Listen("127.0.0.1:0", dgram.Config{CIDLen: layer.CIDLen()})
	if err != nil {
		b.Fatal(err)
	}
	ln := layer.Listener(dl)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.AcceptWithContext(context.Background())
			if err != nil {
				return
			}
			go func() {
				_ = c.(*Conn).HandshakeContext(context.Background())
				// Keep the session a moment: the client may still be
				// retransmitting its last flight.
				time.AfterFunc(time.Second, func() { c.Close() })
			}()
		}
	}()
	cs := &clientStore{m: map[string]dtls.Session{}}
	handshake := func() error {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer pc.Close()
		cfg := &dtls.Config{
			PSK: func([]byte) ([]byte, error) { return []byte("secret"), nil }, PSKIdentityHint: []byte("dev"),
			CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
		}
		if resume {
			cfg.SessionStore = cs
		}
		c, err := dtls.Client(pc, dl.Addr(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.HandshakeContext(ctx)
	}
	if resume {
		if err := handshake(); err != nil { // the session to resume
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := handshake(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	b.StopTimer()
	// The server finishes a resumed handshake after the client does: wait
	// for its counters before checking what kind they were.
	want := b.N
	if resume {
		want++
	}
	deadline := time.Now().Add(5 * time.Second)
	for int(testutilCount(layer, "full")+testutilCount(layer, "resumed")) < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	full, resumed := int(testutilCount(layer, "full")), int(testutilCount(layer, "resumed"))
	// A server may still be waiting for a client's last flight when the
	// check runs; what must hold is that no resumption fell back to a full
	// handshake.
	if resume && (full != 1 || resumed < b.N*95/100) {
		b.Fatalf("%d full, %d resumed; want 1 full and %d resumed", full, resumed, b.N)
	}
	if !resume && full != b.N {
		b.Fatalf("%d full handshakes, want %d", full, b.N)
	}
}

func BenchmarkHandshakeFull(b *testing.B)    { benchHandshakes(b, false) }
func BenchmarkHandshakeResumed(b *testing.B) { benchHandshakes(b, true) }
