package simdevice

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/net/responsewriter"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/plgd-dev/go-coap/v3/udp/server"
)

// fakeServer is a minimal LwM2M server for the tests: it accepts
// registrations, updates, de-registrations and Send, records
// notifications, and lets the test send requests to the device.
type fakeServer struct {
	t    *testing.T
	srv  *server.Server
	addr string
	// stop stops the server and waits for it.
	stop     func()
	stopOnce sync.Once

	mu          sync.Mutex
	cc          *client.Conn // the device's connection, from its last registration or update
	regQueries  []string
	regPayload  string
	updates     []updateReq
	deregs      int
	sends       []sendReq
	resetTokens map[string]bool
	notifs      chan notification
}

type updateReq struct {
	queries []string
	from    string
}

type sendReq struct {
	cf   int
	body []byte
}

type notification struct {
	token   string
	code    codes.Code
	typ     message.Type
	observe int64 // -1: none
	cf      int
	body    []byte
	from    string
	opts    message.Options
}

const testRegID = "abc123"

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	l, err := coapnet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, addr: l.LocalAddr().String(), notifs: make(chan notification, 64),
		resetTokens: map[string]bool{}}
	s.srv = udp.NewServer(options.WithHandlerFunc(client.HandlerFunc(s.handle)),
		options.WithBlockwise(false, blockwise.SZX1024, 3*time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(l)
	}()
	s.stop = func() {
		s.stopOnce.Do(func() {
			s.srv.Stop()
			<-done
		})
	}
	t.Cleanup(s.stop)
	return s
}

func queries(r *pool.Message) []string {
	if !r.Options().HasOption(message.URIQuery) {
		return nil
	}
	q, _ := r.Options().Queries()
	return q
}

func (s *fakeServer) handle(w *responsewriter.ResponseWriter[*client.Conn], r *pool.Message) {
	if r.Code() >= codes.Created {
		// A notification (go-coap does not know the token: we sent the
		// Observe with Do).
		body, _ := r.ReadBody()
		n := notification{token: string(r.Token()), code: r.Code(), typ: r.Type(), observe: -1, cf: -1,
			body: body, from: w.Conn().RemoteAddr().String()}
		n.opts, _ = r.Options().Clone()
		if v, err := r.Options().Observe(); err == nil {
			n.observe = int64(v)
		}
		if v, err := r.Options().ContentFormat(); err == nil {
			n.cf = int(v)
		}
		s.mu.Lock()
		reset := s.resetTokens[n.token]
		s.mu.Unlock()
		if reset {
			rst := w.Conn().AcquireMessage(context.Background())
			rst.SetType(message.Reset)
			rst.SetCode(codes.Empty)
			rst.SetMessageID(r.MessageID())
			_ = w.Conn().WriteMessage(rst)
			w.Conn().ReleaseMessage(rst)
		}
		select {
		case s.notifs <- n:
		default:
			s.t.Errorf("notification channel full")
		}
		return
	}
	path, _ := r.Options().Path()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Code() == codes.POST && path == "/rd":
		body, _ := r.ReadBody()
		s.cc = w.Conn()
		s.regQueries = queries(r)
		s.regPayload = string(body)
		_ = w.SetResponse(codes.Created, message.TextPlain, nil,
			message.Option{ID: message.LocationPath, Value: []byte("rd")},
			message.Option{ID: message.LocationPath, Value: []byte(testRegID)})
	case r.Code() == codes.POST && path == "/rd/"+testRegID:
		s.cc = w.Conn()
		s.updates = append(s.updates, updateReq{queries: queries(r), from: w.Conn().RemoteAddr().String()})
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case r.Code() == codes.DELETE && path == "/rd/"+testRegID:
		s.deregs++
		_ = w.SetResponse(codes.Deleted, message.TextPlain, nil)
	case r.Code() == codes.POST && path == "/dp":
		body, _ := r.ReadBody()
		cf := -1
		if v, err := r.Options().ContentFormat(); err == nil {
			cf = int(v)
		}
		s.sends = append(s.sends, sendReq{cf: cf, body: body})
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	default:
		_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
	}
}

func (s *fakeServer) conn() *client.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cc == nil {
		s.t.Fatal("device not registered")
	}
	return s.cc
}

// req describes a request from the server to the device.
type req struct {
	code    codes.Code
	path    string
	accept  int // -1: none
	cf      int // -1: none
	body    []byte
	observe int // -1: none
	token   message.Token
	queries []string
	opts    []message.Option // more options
}

func get(path string, accept int) req {
	return req{code: codes.GET, path: path, accept: accept, cf: -1, observe: -1}
}

func withBody(code codes.Code, path string, cf int, body []byte) req {
	return req{code: code, path: path, accept: -1, cf: cf, body: body, observe: -1}
}

// result is the device's answer.
type result struct {
	code     codes.Code
	cf       int
	body     []byte
	observe  int64
	location string
	token    message.Token
	opts     message.Options
}

func (s *fakeServer) do(r req) result {
	s.t.Helper()
	cc := s.conn()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := cc.AcquireMessage(ctx)
	defer cc.ReleaseMessage(m)
	m.SetCode(r.code)
	if r.path != "" && r.path != "/" {
		if err := m.SetPath(r.path); err != nil {
			s.t.Fatal(err)
		}
	}
	tok := r.token
	if tok == nil {
		var err error
		if tok, err = message.GetToken(); err != nil {
			s.t.Fatal(err)
		}
	}
	m.SetToken(tok)
	if r.accept >= 0 {
		m.SetAccept(message.MediaType(r.accept))
	}
	if r.observe >= 0 {
		m.SetObserve(uint32(r.observe))
	}
	for _, q := range r.queries {
		m.AddQuery(q)
	}
	if r.cf >= 0 {
		m.SetContentFormat(message.MediaType(r.cf))
	}
	if r.body != nil {
		m.SetBody(bytes.NewReader(r.body))
	}
	for _, o := range r.opts {
		m.AddOptionBytes(o.ID, o.Value)
	}
	resp, err := cc.Do(m)
	if err != nil {
		s.t.Fatalf("%v %s: %v", r.code, r.path, err)
	}
	defer cc.ReleaseMessage(resp)
	res := result{code: resp.Code(), cf: -1, observe: -1, token: tok}
	res.opts, _ = resp.Options().Clone()
	if v, err := resp.Options().ContentFormat(); err == nil {
		res.cf = int(v)
	}
	if v, err := resp.Options().Observe(); err == nil {
		res.observe = int64(v)
	}
	if loc, err := resp.Options().LocationPath(); err == nil {
		res.location = loc
	}
	if b := resp.Body(); b != nil {
		if _, err := b.Seek(0, io.SeekStart); err == nil {
			res.body, _ = io.ReadAll(b)
		}
	}
	return res
}

// notification waits for the next notification.
func (s *fakeServer) notification(timeout time.Duration) (notification, bool) {
	select {
	case n := <-s.notifs:
		return n, true
	case <-time.After(timeout):
		return notification{}, false
	}
}

// noNotification fails if a notification arrives within d.
func (s *fakeServer) noNotification(d time.Duration) {
	s.t.Helper()
	if n, ok := s.notification(d); ok {
		s.t.Fatalf("unexpected notification %+v", n)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// setup starts a fake server and a registered device.
func setup(t *testing.T, mod ...func(*Config)) (*fakeServer, *Device) {
	t.Helper()
	s := newFakeServer(t)
	cfg := Config{Endpoint: "dev-" + t.Name(), Server: s.addr, Lifetime: time.Minute, Logger: testLogger(t),
		ACKTimeout: 500 * time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	d := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	id, err := d.Register(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if id != testRegID {
		t.Fatalf("regID %q", id)
	}
	return s, d
}
