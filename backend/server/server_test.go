package server

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

type fixture struct {
	srv    *Server
	store  *memstore.Store
	events northbound.Subscription
	addr   string
	reg    *prometheus.Registry
}

func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	st := memstore.New(200 * time.Millisecond)
	br := northbound.NewBroker()
	sub, err := br.Subscribe(context.Background(), northbound.ChannelRegNew, northbound.ChannelRegUp, northbound.ChannelRegDel)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.InstanceID, cfg.Store, cfg.Events, cfg.Registerer = "test-instance", st, br, reg
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := dgram.Listen("127.0.0.1:0", dgram.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.ServeCoAP(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done; br.Close() })
	return &fixture{srv: srv, store: st, events: sub, addr: l.Addr().String(), reg: reg}
}

func (f *fixture) dial(t *testing.T) *udpClient.Conn {
	t.Helper()
	cc, err := udp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (f *fixture) event(t *testing.T, channel string) []byte {
	t.Helper()
	select {
	case m := <-f.events.C():
		if m.Channel != channel {
			t.Fatalf("event on %s (%s), want %s", m.Channel, m.Payload, channel)
		}
		return m.Payload
	case <-time.After(5 * time.Second):
		t.Fatalf("no event on %s", channel)
	}
	return nil
}

func (f *fixture) noEvent(t *testing.T) {
	t.Helper()
	select {
	case m := <-f.events.C():
		t.Fatalf("unexpected event on %s: %s", m.Channel, m.Payload)
	case <-time.After(100 * time.Millisecond):
	}
}

func post(t *testing.T, cc *udpClient.Conn, path string, cf message.MediaType, payload string, queries ...string) *pool.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var opts []message.Option
	for _, q := range queries {
		opts = append(opts, message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	var body *bytes.Reader
	if payload != "" {
		body = bytes.NewReader([]byte(payload))
	}
	var resp *pool.Message
	var err error
	if body == nil {
		resp, err = cc.Post(ctx, path, cf, nil, opts...)
	} else {
		resp, err = cc.Post(ctx, path, cf, body, opts...)
	}
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return resp
}

func del(t *testing.T, cc *udpClient.Conn, path string) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.Delete(ctx, path)
	if err != nil {
		t.Fatalf("DELETE %s: %v", path, err)
	}
	return resp.Code()
}

const links = `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`

func register(t *testing.T, f *fixture, cc *udpClient.Conn, ep string) string {
	t.Helper()
	resp := post(t, cc, "/rd", message.AppLinkFormat, links, "ep="+ep, "lt=60", "lwm2m=1.1", "b=U")
	if resp.Code() != codes.Created {
		t.Fatalf("register: %v", resp.Code())
	}
	loc, err := resp.Options().LocationPath()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(loc, "/rd/") {
		t.Fatalf("Location-Path = %q", loc)
	}
	return strings.TrimPrefix(loc, "/rd/")
}

func TestRegistrationLifecycle(t *testing.T) {
	f := start(t, Config{})
	cc := f.dial(t)
	id := register(t, f, cc, "dev1")

	var reg registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegNew), &reg); err != nil {
		t.Fatal(err)
	}
	localPort := cc.LocalAddr().(interface{ String() string }).String()
	if reg.ID != id || reg.Endpoint != "dev1" || reg.Lifetime != 60 || reg.Version != "1.1" ||
		reg.Instance != "test-instance" || !strings.HasSuffix(localPort, ":"+itoa(reg.Port)) || len(reg.ObjLinks) != 4 || reg.Root != "/" {
		t.Fatalf("REG_NEW = %+v (client at %s)", reg, localPort)
	}
	if o, _ := f.store.Owner(context.Background(), "dev1"); o != "test-instance" {
		t.Fatalf("owner = %q", o)
	}

	resp := post(t, cc, "/rd/"+id, message.AppLinkFormat, "</3/0>,</5/0>", "lt=120")
	if resp.Code() != codes.Changed {
		t.Fatalf("update: %v", resp.Code())
	}
	var up registration.UpdateEvent
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegUp), &up); err != nil {
		t.Fatal(err)
	}
	if up.Update.ID != id || up.Update.Lifetime == nil || *up.Update.Lifetime != 120 || up.Updated.Lifetime != 120 || len(up.Updated.ObjLinks) != 2 {
		t.Fatalf("REG_UP = %+v", up)
	}
	// An update without payload keeps the object links.
	if resp := post(t, cc, "/rd/"+id, 0, ""); resp.Code() != codes.Changed {
		t.Fatalf("empty update: %v", resp.Code())
	}
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegUp), &up); err != nil || len(up.Updated.ObjLinks) != 2 {
		t.Fatalf("REG_UP after empty update = %+v, %v", up, err)
	}

	if c := del(t, cc, "/rd/"+id); c != codes.Deleted {
		t.Fatalf("deregister: %v", c)
	}
	var gone registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegDel), &gone); err != nil || gone.ID != id {
		t.Fatalf("REG_DEL = %+v, %v", gone, err)
	}
	if c := del(t, cc, "/rd/"+id); c != codes.NotFound {
		t.Fatalf("second deregister: %v, want 4.04", c)
	}
	f.noEvent(t)
	if got := testutil.ToFloat64(f.srv.m.registrations.WithLabelValues("register")); got != 1 {
		t.Fatalf("register counter = %v", got)
	}
}

func itoa(p uint16) string {
	b, _ := json.Marshal(p)
	return string(b)
}

func TestReplacement(t *testing.T) {
	f := start(t, Config{})
	first := register(t, f, f.dial(t), "dup")
	f.event(t, northbound.ChannelRegNew)
	second := register(t, f, f.dial(t), "dup")
	var old registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegDel), &old); err != nil || old.ID != first {
		t.Fatalf("REG_DEL of the replaced registration = %+v, %v", old, err)
	}
	var reg registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegNew), &reg); err != nil || reg.ID != second {
		t.Fatalf("REG_NEW = %+v, %v", reg, err)
	}
	if resp := post(t, f.dial(t), "/rd/"+first, 0, ""); resp.Code() != codes.NotFound {
		t.Fatalf("update of the replaced registration: %v, want 4.04", resp.Code())
	}
}

func TestErrors(t *testing.T) {
	f := start(t, Config{MaxPayload: 256})
	cc := f.dial(t)
	ctx := context.Background()
	tests := []struct {
		name string
		do   func() codes.Code
		want codes.Code
	}{
		{"missing ep", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, links, "lt=5").Code() }, codes.BadRequest},
		{"bad lifetime", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, links, "ep=a", "lt=x").Code() }, codes.BadRequest},
		{"bad binding", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, links, "ep=a", "b=Z").Code() }, codes.BadRequest},
		{"bad version", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, links, "ep=a", "lwm2m=9.9").Code() }, codes.PreconditionFailed},
		{"malformed links", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, "</3/0", "ep=a").Code() }, codes.BadRequest},
		{"non-object link", func() codes.Code { return post(t, cc, "/rd", message.AppLinkFormat, "</a/b>", "ep=a").Code() }, codes.BadRequest},
		{"wrong content format", func() codes.Code { return post(t, cc, "/rd", message.AppJSON, `{}`, "ep=a").Code() }, codes.BadRequest},
		{"oversized", func() codes.Code {
			return post(t, cc, "/rd", message.AppLinkFormat, strings.Repeat("</3/0>,", 60)+"</3/1>", "ep=a").Code()
		}, codes.RequestEntityTooLarge},
		{"update unknown", func() codes.Code { return post(t, cc, "/rd/NoSuchReg1", 0, "").Code() }, codes.NotFound},
		{"update garbage id", func() codes.Code { return post(t, cc, "/rd/%00", 0, "").Code() }, codes.NotFound},
		{"delete unknown", func() codes.Code { return del(t, cc, "/rd/NoSuchReg1") }, codes.NotFound},
		{"unknown path", func() codes.Code { return post(t, cc, "/foo", 0, "").Code() }, codes.NotFound},
		{"GET /rd", func() codes.Code {
			resp, err := cc.Get(ctx, "/rd")
			if err != nil {
				t.Fatal(err)
			}
			return resp.Code()
		}, codes.NotFound},
		{"delete /rd", func() codes.Code { return del(t, cc, "/rd") }, codes.NotFound},
	}
	for _, tt := range tests {
		if got := tt.do(); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	f.noEvent(t)
	// The server still serves after all that.
	register(t, f, cc, "after-errors")
}

func TestExpiry(t *testing.T) {
	f := start(t, Config{SweepInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.srv.RunSweeper(ctx)
	cc := f.dial(t)
	resp := post(t, cc, "/rd", message.AppLinkFormat, links, "ep=short", "lt=1")
	if resp.Code() != codes.Created {
		t.Fatalf("register: %v", resp.Code())
	}
	f.event(t, northbound.ChannelRegNew)
	var gone registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegDel), &gone); err != nil || gone.Endpoint != "short" {
		t.Fatalf("REG_DEL on expiry = %+v, %v", gone, err)
	}
	if got := testutil.ToFloat64(f.srv.m.registrations.WithLabelValues("expire")); got != 1 {
		t.Fatalf("expire counter = %v", got)
	}
}

func TestAlternatePathUpdate(t *testing.T) {
	f := start(t, Config{})
	cc := f.dial(t)
	resp := post(t, cc, "/rd", message.AppLinkFormat, `</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>`, "ep=alt")
	if resp.Code() != codes.Created {
		t.Fatalf("register: %v", resp.Code())
	}
	loc, _ := resp.Options().LocationPath()
	var reg registration.Registration
	if err := json.Unmarshal(f.event(t, northbound.ChannelRegNew), &reg); err != nil || reg.Root != "/lwm2m" {
		t.Fatalf("REG_NEW root = %q, %v", reg.Root, err)
	}
	if resp := post(t, cc, loc, message.AppLinkFormat, "</lwm2m/3/0>,</lwm2m/5/0>"); resp.Code() != codes.Changed {
		t.Fatalf("update under the alternate path: %v", resp.Code())
	}
	if resp := post(t, cc, loc, message.AppLinkFormat, "</3/0>"); resp.Code() != codes.BadRequest {
		t.Fatalf("update outside the alternate path: %v, want 4.00", resp.Code())
	}
}

// TestPlainCoAPRefusedForSecuredEndpoint: an endpoint with security info
// may not register over plain CoAP (4.03); others may.
func TestPlainCoAPRefusedForSecuredEndpoint(t *testing.T) {
	f := start(t, Config{})
	if err := f.store.PutSecurity(context.Background(), store.SecurityInfo{Endpoint: "secured", Identity: "id", Key: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	cc := f.dial(t)
	if resp := post(t, cc, "/rd", message.AppLinkFormat, links, "ep=secured"); resp.Code() != codes.Forbidden {
		t.Fatalf("plain registration of a secured endpoint: %v, want 4.03", resp.Code())
	}
	f.noEvent(t)
	if got := testutil.ToFloat64(f.srv.m.refused.WithLabelValues("dtls_required")); got != 1 {
		t.Fatalf("refused counter = %v", got)
	}
	register(t, f, cc, "open")
}
