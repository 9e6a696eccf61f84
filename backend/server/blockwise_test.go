package server

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lwm2mcluster/lwm2m/backend/devmgmt"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// rawDevice speaks CoAP on a bare UDP socket, so a test controls every
// option of what it sends (malformed ones included) and sees the server's
// ACKs as they are.
type rawDevice struct {
	t    *testing.T
	conn *net.UDPConn
	mid  uint16
	acks chan message.Message

	mu    sync.Mutex
	serve func(req message.Message) message.Message
	reqs  []message.Message
}

func dialRaw(t *testing.T, addr string) *rawDevice {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	d := &rawDevice{t: t, conn: conn, mid: 100, acks: make(chan message.Message, 16)}
	done := make(chan struct{})
	go d.loop(done)
	t.Cleanup(func() { _ = conn.Close(); <-done })
	return d
}

func (d *rawDevice) loop(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 64*1024)
	for {
		n, err := d.conn.Read(buf)
		if err != nil {
			return
		}
		m := message.Message{Options: make(message.Options, 0, 16)}
		if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err != nil {
			d.t.Errorf("decode %x: %v", buf[:n], err)
			continue
		}
		m.Payload = slices.Clone(m.Payload)
		m.Token = slices.Clone(m.Token)
		m.Options, _ = m.Options.Clone()
		switch {
		case m.Type == message.Acknowledgement || m.Type == message.Reset:
			d.acks <- m
		case m.Code >= codes.GET && m.Code < 32:
			d.mu.Lock()
			d.reqs = append(d.reqs, m)
			serve := d.serve
			d.mu.Unlock()
			if serve == nil {
				continue // no answer
			}
			resp := serve(m)
			resp.Type, resp.MessageID, resp.Token = message.Acknowledgement, m.MessageID, m.Token
			d.write(resp)
		}
	}
}

func (d *rawDevice) write(m message.Message) {
	d.t.Helper()
	sort.SliceStable(m.Options, func(i, j int) bool { return m.Options[i].ID < m.Options[j].ID })
	buf := make([]byte, 64*1024)
	n, err := coder.DefaultCoder.Encode(m, buf)
	if err != nil {
		d.t.Errorf("encode %v: %v", m, err)
		return
	}
	if _, err := d.conn.Write(buf[:n]); err != nil {
		d.t.Errorf("write: %v", err)
	}
}

// send sends a confirmable message and returns the server's ACK.
func (d *rawDevice) send(m message.Message) message.Message {
	d.t.Helper()
	d.mid++
	m.Type, m.MessageID = message.Confirmable, int32(d.mid)
	d.write(m)
	select {
	case a := <-d.acks:
		if a.MessageID != m.MessageID {
			d.t.Fatalf("ACK of message %d, want %d", a.MessageID, m.MessageID)
		}
		return a
	case <-time.After(5 * time.Second):
		d.t.Fatalf("no ACK for %v", m.Code)
	}
	return message.Message{}
}

func (d *rawDevice) setServe(f func(req message.Message) message.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.serve, d.reqs = f, nil
}

func (d *rawDevice) requests() []message.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.reqs)
}

func opt(id message.OptionID, v []byte) message.Option { return message.Option{ID: id, Value: v} }

func uintOpt(id message.OptionID, v uint32) message.Option {
	buf := make([]byte, 4)
	n, _ := message.EncodeUint32(buf, v)
	return message.Option{ID: id, Value: buf[:n]}
}

func block2(num uint32, more bool, szx uint8) message.Option {
	v := num<<4 | uint32(szx)
	if more {
		v |= 8
	}
	return uintOpt(message.Block2, v)
}

// blocksOf answers GETs for blocks of value (16-byte blocks), with etag
// when it is not nil.
func blocksOf(value string, etag []byte) func(req message.Message) message.Message {
	return func(req message.Message) message.Message {
		v, err := req.Options.GetBytes(message.Block2)
		if err != nil {
			return message.Message{Code: codes.BadOption}
		}
		b, err := devmgmt.ParseBlock(v)
		off := int(b.Num) * b.Size()
		if err != nil || off >= len(value) {
			return message.Message{Code: codes.BadOption}
		}
		end := min(off+b.Size(), len(value))
		opts := message.Options{uintOpt(message.ContentFormat, 0), block2(b.Num, end < len(value), b.SZX)}
		if etag != nil {
			opts = append(opts, opt(message.ETag, etag))
		}
		return message.Message{Code: codes.Content, Options: opts, Payload: []byte(value[off:end])}
	}
}

// TestBlockwiseNotification: a notification sent block-wise is
// acknowledged at once (an empty ACK, not go-coap's 4.08), completed with
// GETs of Block2 NUM 1, 2, ... under the device's root path and published
// whole; a malformed or oversized one is dropped with a metric, nothing
// published.
func TestBlockwiseNotification(t *testing.T) {
	f := start(t, Config{NotificationTimeout: 500 * time.Millisecond})
	sub, err := f.srv.cfg.Events.(*northbound.Broker).Subscribe(context.Background(), northbound.ChannelResp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	d := dialRaw(t, f.addr)
	ack := d.send(message.Message{Code: codes.POST, Options: message.Options{
		opt(message.URIPath, []byte("rd")), uintOpt(message.ContentFormat, uint32(message.AppLinkFormat)),
		opt(message.URIQuery, []byte("ep=bw")), opt(message.URIQuery, []byte("lwm2m=1.1")),
	}, Payload: []byte(`</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>`)})
	if ack.Code != codes.Created {
		t.Fatalf("register: %v", ack.Code)
	}
	ctx := context.Background()
	reg, err := f.store.GetByEndpoint(ctx, "bw")
	if err != nil || reg.Root != "/lwm2m" {
		t.Fatalf("registration %+v %v", reg, err)
	}
	token := message.Token{0xb1, 0x0c}
	if err := f.store.AddObservation(ctx, &store.Observation{Token: token, Endpoint: "bw", RegID: reg.ID,
		Paths: []string{"/3/0/0"}, ContentFormat: 0, Ticket: "tk-bw", Instance: "test-instance"}); err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("0123456789abcdef", 3) + "end" // 51 bytes: 4 blocks of 16
	seq := uint32(1)
	notify := func(t *testing.T, opts ...message.Option) message.Message {
		t.Helper()
		seq++
		all := append(message.Options{uintOpt(message.Observe, seq), uintOpt(message.ContentFormat, 0)}, opts...)
		a := d.send(message.Message{Code: codes.Content, Token: token, Options: all, Payload: []byte(value[:16])})
		if a.Type != message.Acknowledgement || a.Code != codes.Empty {
			t.Fatalf("notification answered %v %v, want an empty ACK", a.Type, a.Code)
		}
		return a
	}
	published := func(t *testing.T) *northbound.Response {
		t.Helper()
		select {
		case m := <-sub.C():
			var r northbound.Response
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				t.Fatal(err)
			}
			return &r
		case <-time.After(5 * time.Second):
			t.Fatal("nothing published")
		}
		return nil
	}
	counter := func(event string) float64 {
		return testutil.ToFloat64(f.srv.m.observations.WithLabelValues(event))
	}
	waitCounter := func(t *testing.T, event string, want float64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for counter(event) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v, want %v", event, counter(event), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// A good one.
	etag := []byte{0xe1}
	d.setServe(blocksOf(value, etag))
	notify(t, block2(0, true, 0), opt(message.ETag, etag), uintOpt(message.Size2, uint32(len(value))))
	r := published(t)
	if r.Ticket != "tk-bw" || r.Resp == nil || r.Resp.Code != "CONTENT" || !r.Resp.Observe || r.Resp.Node == nil {
		t.Fatalf("published %+v", r)
	}
	if got := stringOfAny(r.Resp.Node); got != value {
		t.Fatalf("published %q, want %q", got, value)
	}
	reqs := d.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests for blocks, want 3", len(reqs))
	}
	for i, q := range reqs {
		p, _ := q.Options.Path()
		accept, _ := q.Options.Accept()
		b, _ := q.Options.GetUint32(message.Block2)
		if q.Code != codes.GET || p != "/lwm2m/3/0/0" || q.Options.HasOption(message.Observe) ||
			accept != message.TextPlain || b != uint32(i+1)<<4 || slices.Equal(q.Token, token) {
			t.Fatalf("request %d: %v", i, q)
		}
	}

	// Malformed or oversized: dropped, counted, still acknowledged.
	d.setServe(blocksOf(value, etag))
	for _, c := range []struct {
		name  string
		opts  []message.Option
		event string
		serve func(message.Message) message.Message
	}{
		{"4-byte Block2", []message.Option{opt(message.Block2, []byte{0, 0, 0, 0x0e})}, "blockwise-invalid", nil},
		{"BERT", []message.Option{opt(message.Block2, []byte{0x0f})}, "blockwise-invalid", nil},
		{"two Block2", []message.Option{block2(0, true, 0), block2(1, true, 0)}, "blockwise-invalid", nil},
		{"not the first block", []message.Option{block2(2, true, 0)}, "blockwise-invalid", nil},
		{"short first block", []message.Option{block2(0, true, 1)}, "blockwise-invalid", nil},
		{"Size2 too large", []message.Option{block2(0, true, 0), uintOpt(message.Size2, devmgmt.MaxResponse+1)}, "blockwise-too-large", nil},
		{"value changed", []message.Option{block2(0, true, 0), opt(message.ETag, []byte{0xe0})}, "blockwise-failed", nil},
		{"no answer", []message.Option{block2(0, true, 0)}, "blockwise-failed",
			func(message.Message) message.Message { return message.Message{} }},
		// 16-byte blocks without end: the time bound (NotificationTimeout)
		// comes before the size bound (devmgmt.MaxResponse), which
		// devmgmt's tests check.
		{"endless", []message.Option{block2(0, true, 0)}, "blockwise-failed", func(q message.Message) message.Message {
			b, _ := q.Options.GetUint32(message.Block2)
			return message.Message{Code: codes.Content, Options: message.Options{uintOpt(message.Block2, b|8)},
				Payload: make([]byte, 16)}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			switch {
			case c.name == "no answer":
				d.setServe(nil)
			case c.serve != nil:
				d.setServe(c.serve)
			default:
				d.setServe(blocksOf(value, etag))
			}
			before := counter(c.event)
			notify(t, c.opts...)
			waitCounter(t, c.event, before+1)
			select {
			case m := <-sub.C():
				t.Fatalf("published %s", m.Payload)
			case <-time.After(50 * time.Millisecond):
			}
		})
	}

	// A whole notification supersedes one being completed.
	d.setServe(nil) // blocks never come
	before := counter("blockwise-superseded")
	notify(t, block2(0, true, 0))
	seq++
	d.send(message.Message{Code: codes.Content, Token: token, Payload: []byte("whole"),
		Options: message.Options{uintOpt(message.Observe, seq), uintOpt(message.ContentFormat, 0)}})
	if r := published(t); stringOfAny(r.Resp.Node) != "whole" {
		t.Fatalf("published %+v", r.Resp)
	}
	waitCounter(t, "blockwise-superseded", before+1)
}

func stringOfAny(a *node.Any) string {
	if a == nil {
		return ""
	}
	r, ok := a.Node.(node.Resource)
	if !ok {
		return ""
	}
	s, _ := r.Value.AsString()
	return s
}
