package simdevice

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

var allFormats = []uint16{codec.TextPlain, codec.Opaque, codec.CBOR, codec.SenMLJSON, codec.SenMLCBOR,
	codec.TLV, codec.LwM2MJSON}

func ctx5s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRegisterUpdateDeregister(t *testing.T) {
	s, d := setup(t)
	s.mu.Lock()
	q, payload := s.regQueries, s.regPayload
	s.mu.Unlock()
	for _, want := range []string{"ep=dev-TestRegisterUpdateDeregister", "lt=60", "lwm2m=1.1", "b=U"} {
		if !slices.Contains(q, want) {
			t.Errorf("register queries %v lack %q", q, want)
		}
	}
	for _, want := range []string{`</>;rt="oma.lwm2m";ct="112 110 11542 11543 60"`, "</1/0>", "</3/0>", "</3303/0>", "</3303/1>"} {
		if !strings.Contains(payload, want) {
			t.Errorf("register payload %q lacks %q", payload, want)
		}
	}
	if strings.Contains(payload, "</0") {
		t.Errorf("register payload %q lists the Security object", payload)
	}
	if d.RegistrationID() != testRegID {
		t.Fatalf("RegistrationID %q", d.RegistrationID())
	}
	if err := d.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	// A lifetime written by the server goes into the next Update.
	lt, _ := codec.Encode(codec.TextPlain, node.NewSingle(1, node.IntValue(120)), node.MustPath(1, 0, 1), d.Registry())
	if r := s.do(withBody(codes.PUT, "/1/0/1", int(codec.TextPlain), lt)); r.code != codes.Changed {
		t.Fatalf("write lifetime: %v", r.code)
	}
	if err := d.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	ups := s.updates
	s.mu.Unlock()
	if len(ups) != 2 || len(ups[0].queries) != 0 || !slices.Equal(ups[1].queries, []string{"lt=120"}) {
		t.Fatalf("updates %+v", ups)
	}
	if err := d.Deregister(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if d.RegistrationID() != "" {
		t.Fatal("still registered")
	}
	if err := d.Update(ctx5s(t)); err == nil {
		t.Fatal("update after deregister succeeded")
	}
}

func TestReadAllFormats(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	paths := []string{"/1/0", "/3", "/3/0", "/3/0/0", "/3/0/13", "/3/0/6", "/3/0/6/1", "/3303", "/3303/1", "/3303/1/5700", "/3303/0/5701"}
	for _, ps := range paths {
		p, _ := node.ParsePath(ps)
		want, _ := d.Node(p)
		for _, f := range allFormats {
			r := s.do(get(ps, int(f)))
			if lr := d.LastRequest(); lr.Op != OpRead || lr.Accept != int(f) || lr.Path != ps {
				t.Errorf("LastRequest %+v", lr)
			}
			single := p.Level() == node.LevelResourceInstance || (p.Level() == node.LevelResource && ps != "/3/0/6")
			if f == codec.TextPlain || f == codec.Opaque || f == codec.CBOR {
				if !single {
					if r.code != codes.NotAcceptable {
						t.Errorf("GET %s accept %d: %v, want 4.06", ps, f, r.code)
					}
					continue
				}
				if f == codec.Opaque && r.code == codes.NotAcceptable {
					continue // opaque carries opaque values only
				}
			}
			if r.code != codes.Content || r.cf != int(f) {
				t.Errorf("GET %s accept %d: %v cf %d", ps, f, r.code, r.cf)
				continue
			}
			got, err := codec.Decode(f, r.body, p, reg)
			if err != nil {
				t.Errorf("GET %s accept %d: decode: %v", ps, f, err)
				continue
			}
			if !node.Equal(got, want) {
				t.Errorf("GET %s accept %d: got %+v, want %+v", ps, f, got, want)
			}
		}
	}
	// Without Accept: TLV for instances, text for single resources.
	if r := s.do(get("/3/0", -1)); r.code != codes.Content || r.cf != int(codec.TLV) {
		t.Errorf("GET /3/0: %v cf %d", r.code, r.cf)
	}
	if r := s.do(get("/3/0/0", -1)); r.code != codes.Content || r.cf != int(codec.TextPlain) || string(r.body) != "lwm2mcluster" {
		t.Errorf("GET /3/0/0: %v cf %d %q", r.code, r.cf, r.body)
	}
	if lr := d.LastRequest(); lr.Accept != -1 || lr.ResponseFormat != int(codec.TextPlain) {
		t.Errorf("LastRequest %+v", lr)
	}
	if n := d.Count(OpRead); n < len(paths)*len(allFormats) {
		t.Errorf("Count(OpRead) = %d", n)
	}
}

func TestReadErrors(t *testing.T) {
	s, _ := setup(t)
	for _, c := range []struct {
		path   string
		accept int
		want   codes.Code
	}{
		{"/0", -1, codes.Unauthorized},
		{"/0/0", int(codec.TLV), codes.Unauthorized},
		{"/0/0/0", -1, codes.Unauthorized},
		{"/3/0", 50, codes.NotAcceptable}, // application/json
		{"/3/0", int(codec.TextPlain), codes.NotAcceptable},
		{"/4", -1, codes.NotFound},
		{"/3/1", -1, codes.NotFound},
		{"/3/0/99", -1, codes.NotFound},
		{"/3/0/6/7", -1, codes.NotFound},
		{"/3/0/4", -1, codes.MethodNotAllowed}, // executable
		{"/", -1, codes.MethodNotAllowed},
		{"/rd", -1, codes.NotFound},
		{"/3/x", -1, codes.NotFound},
		{"/65535", -1, codes.NotFound},
	} {
		if r := s.do(get(c.path, c.accept)); r.code != c.want {
			t.Errorf("GET %s accept %d: %v, want %v", c.path, c.accept, r.code, c.want)
		}
	}
}

func TestWriteAllFormats(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	p := node.MustPath(3, 0, 14)
	for i, f := range allFormats {
		v := node.StringValue(fmt.Sprintf("+0%d:00", i))
		if f == codec.Opaque {
			continue // a string resource has no opaque form
		}
		body, err := codec.Encode(f, node.NewSingle(14, v), p, reg)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.do(withBody(codes.PUT, "/3/0/14", int(f), body)); r.code != codes.Changed {
			t.Fatalf("PUT /3/0/14 cf %d: %v", f, r.code)
		}
		if got, _ := d.Value(p); !got.Equal(v) {
			t.Fatalf("cf %d: value %v, want %v", f, got, v)
		}
		if lr := d.LastRequest(); lr.Op != OpWrite || lr.ContentFormat != int(f) {
			t.Errorf("LastRequest %+v", lr)
		}
	}
	// Time resource.
	tv := node.UnixValue(1700000000)
	body, _ := codec.Encode(codec.CBOR, node.NewSingle(13, tv), node.MustPath(3, 0, 13), reg)
	if r := s.do(withBody(codes.PUT, "/3/0/13", int(codec.CBOR), body)); r.code != codes.Changed {
		t.Fatalf("PUT /3/0/13: %v", r.code)
	}
	if got, _ := d.Value(node.MustPath(3, 0, 13)); !got.Equal(tv) {
		t.Fatalf("current time %v", got)
	}
	// Instance replace and partial update in every format that carries
	// instances.
	ip := node.MustPath(3303, 0)
	for i, f := range []uint16{codec.TLV, codec.SenMLJSON, codec.SenMLCBOR, codec.LwM2MJSON} {
		app := fmt.Sprintf("app-%d", i)
		in := node.Instance{ID: 0, Resources: []node.Resource{node.NewSingle(TempAppType, node.StringValue(app))}}
		body, err := codec.Encode(f, in, ip, reg)
		if err != nil {
			t.Fatal(err)
		}
		code := codes.PUT
		if i%2 == 1 {
			code = codes.POST
		}
		if r := s.do(withBody(code, "/3303/0", int(f), body)); r.code != codes.Changed {
			t.Fatalf("%v /3303/0 cf %d: %v", code, f, r.code)
		}
		if got, _ := d.Value(node.MustPath(3303, 0, TempAppType)); !got.Equal(node.StringValue(app)) {
			t.Fatalf("app type %v", got)
		}
		// Read-only resources survive both.
		if _, ok := d.Value(node.MustPath(3303, 0, TempSensorValue)); !ok {
			t.Fatal("sensor value gone")
		}
	}
	// Errors.
	ro, _ := codec.Encode(codec.TextPlain, node.NewSingle(0, node.StringValue("x")), node.MustPath(3, 0, 0), reg)
	roIn, _ := codec.Encode(codec.TLV, node.Instance{ID: 0, Resources: []node.Resource{node.NewSingle(TempSensorValue, node.FloatValue(1))}}, ip, reg)
	for _, c := range []struct {
		code codes.Code
		path string
		cf   int
		body []byte
		want codes.Code
	}{
		{codes.PUT, "/3/0/0", int(codec.TextPlain), ro, codes.MethodNotAllowed},
		{codes.PUT, "/3303/0", int(codec.TLV), roIn, codes.MethodNotAllowed},
		{codes.PUT, "/3/0/14", int(codec.TLV), []byte{0xff, 0x01}, codes.BadRequest},
		{codes.PUT, "/3/0/14", int(codec.SenMLJSON), []byte("[{"), codes.BadRequest},
		{codes.PUT, "/3/0/13", int(codec.TextPlain), []byte("not a time"), codes.BadRequest},
		{codes.PUT, "/3/0/14", 50, []byte("{}"), codes.UnsupportedMediaType},
		{codes.PUT, "/3/0/14", -1, []byte("x"), codes.BadRequest},
		{codes.PUT, "/3", int(codec.TLV), roIn, codes.MethodNotAllowed},
		{codes.PUT, "/0/0/0", int(codec.TextPlain), []byte("x"), codes.Unauthorized},
		{codes.PUT, "/3/5/14", int(codec.TextPlain), []byte("x"), codes.NotFound},
		{codes.PUT, "/3/0/99", int(codec.TextPlain), []byte("x"), codes.NotFound},
		{codes.PUT, "/3/0/6/0", int(codec.TextPlain), []byte("1"), codes.MethodNotAllowed},
		{codes.PATCH, "/3/0/14", int(codec.TextPlain), []byte("x"), codes.MethodNotAllowed},
	} {
		if r := s.do(withBody(c.code, c.path, c.cf, c.body)); r.code != c.want {
			t.Errorf("%v %s cf %d: %v, want %v", c.code, c.path, c.cf, r.code, c.want)
		}
	}
}

func TestExecute(t *testing.T) {
	s, d := setup(t)
	if r := s.do(withBody(codes.POST, "/3/0/4", -1, nil)); r.code != codes.Changed {
		t.Fatalf("reboot: %v", r.code)
	}
	if r := s.do(withBody(codes.POST, "/3/0/4", int(codec.TextPlain), []byte("0='now'"))); r.code != codes.Changed {
		t.Fatalf("reboot with args: %v", r.code)
	}
	if got := d.Executions(node.MustPath(3, 0, 4)); !slices.Equal(got, []string{"", "0='now'"}) {
		t.Fatalf("executions %q", got)
	}
	if d.Count(OpExecute) != 2 {
		t.Fatalf("Count(OpExecute) = %d", d.Count(OpExecute))
	}
	// Reset min/max of a temperature sensor.
	if err := d.Set(node.MustPath(3303, 1, TempSensorValue), node.FloatValue(30)); err != nil {
		t.Fatal(err)
	}
	if err := d.Set(node.MustPath(3303, 1, TempSensorValue), node.FloatValue(25)); err != nil {
		t.Fatal(err)
	}
	if v, _ := d.Value(node.MustPath(3303, 1, TempMaxMeasured)); !v.Equal(node.FloatValue(30)) {
		t.Fatalf("max %v", v)
	}
	if r := s.do(withBody(codes.POST, "/3303/1/5605", -1, nil)); r.code != codes.Changed {
		t.Fatalf("reset min/max: %v", r.code)
	}
	if v, _ := d.Value(node.MustPath(3303, 1, TempMaxMeasured)); !v.Equal(node.FloatValue(25)) {
		t.Fatalf("max after reset %v", v)
	}
	// Registration Update Trigger sends an Update.
	if r := s.do(withBody(codes.POST, "/1/0/8", -1, nil)); r.code != codes.Changed {
		t.Fatalf("update trigger: %v", r.code)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.updates)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no update after trigger")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []struct {
		path string
		cf   int
		want codes.Code
	}{
		{"/3/0/0", -1, codes.MethodNotAllowed}, // not executable
		{"/3/7/4", -1, codes.NotFound},
		{"/3/0/4", int(codec.TLV), codes.BadRequest},
		{"/0/0/0", -1, codes.Unauthorized},
	} {
		if r := s.do(withBody(codes.POST, c.path, c.cf, nil)); r.code != c.want {
			t.Errorf("POST %s: %v, want %v", c.path, r.code, c.want)
		}
	}
}

func TestDiscoverAndWriteAttributes(t *testing.T) {
	s, d := setup(t)
	r := s.do(get("/3/0", int(codec.LinkFormat)))
	if r.code != codes.Content || r.cf != int(codec.LinkFormat) {
		t.Fatalf("discover: %v cf %d", r.code, r.cf)
	}
	body := string(r.body)
	for _, want := range []string{"</3/0>,", "</3/0/0>,", "</3/0/4>,", "</3/0/6>;dim=2,", "</3/0/11>;dim=1,", "</3/0/16>"} {
		if !strings.Contains(body, want) {
			t.Errorf("discover /3/0 = %q lacks %q", body, want)
		}
	}
	wa := func(path string, q ...string) codes.Code {
		return s.do(req{code: codes.PUT, path: path, accept: -1, cf: -1, observe: -1, queries: q}).code
	}
	if c := wa("/3/0/1", "pmin=10", "pmax=60"); c != codes.Changed {
		t.Fatalf("write attributes: %v", c)
	}
	if c := wa("/3/0", "gt=5.5"); c != codes.Changed {
		t.Fatalf("write attributes: %v", c)
	}
	if d.Count(OpWriteAttributes) != 2 {
		t.Fatalf("Count(OpWriteAttributes) = %d", d.Count(OpWriteAttributes))
	}
	if a := d.Attributes(node.MustPath(3, 0, 1)); !a.Has("pmin") || a.Pmin != 10 || a.Pmax != 60 {
		t.Fatalf("attributes %+v", a)
	}
	body = string(s.do(get("/3/0", int(codec.LinkFormat))).body)
	for _, want := range []string{"</3/0>;gt=5.5,", "</3/0/1>;pmin=10;pmax=60,"} {
		if !strings.Contains(body, want) {
			t.Errorf("discover /3/0 = %q lacks %q", body, want)
		}
	}
	body = string(s.do(get("/3", int(codec.LinkFormat))).body)
	if !strings.HasPrefix(body, "</3>,</3/0>;gt=5.5,</3/0/0>,") {
		t.Errorf("discover /3 = %q", body)
	}
	if body := string(s.do(get("/3/0/6", int(codec.LinkFormat))).body); body != "</3/0/6>;dim=2,</3/0/6/0>,</3/0/6/1>" {
		t.Errorf("discover /3/0/6 = %q", body)
	}
	// Removing an attribute.
	if c := wa("/3/0/1", "pmin"); c != codes.Changed {
		t.Fatalf("remove attribute: %v", c)
	}
	if body := string(s.do(get("/3/0/1", int(codec.LinkFormat))).body); body != "</3/0/1>;pmax=60" {
		t.Errorf("discover /3/0/1 = %q", body)
	}
	for _, c := range []struct {
		path string
		q    []string
		want codes.Code
	}{
		{"/3/0/1", []string{"foo=1"}, codes.BadRequest},
		{"/3/0/1", []string{"pmin=x"}, codes.BadRequest},
		{"/3/0/1", []string{"pmin=100", "pmax=10"}, codes.BadRequest},
		{"/3/9", []string{"pmin=1"}, codes.NotFound},
		{"/0/0", []string{"pmin=1"}, codes.Unauthorized},
	} {
		if got := wa(c.path, c.q...); got != c.want {
			t.Errorf("write attributes %s %v: %v, want %v", c.path, c.q, got, c.want)
		}
	}
	if r := s.do(get("/0", int(codec.LinkFormat))); r.code != codes.Unauthorized {
		t.Errorf("discover /0: %v", r.code)
	}
	if r := s.do(get("/9", int(codec.LinkFormat))); r.code != codes.NotFound {
		t.Errorf("discover /9: %v", r.code)
	}
}

func TestObserveNotifyCancel(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	p := node.MustPath(3303, 0, TempSensorValue)
	obs := get("/3303/0/5700", int(codec.SenMLCBOR))
	obs.observe = 0
	r := s.do(obs)
	if r.code != codes.Content || r.observe < 0 || r.cf != int(codec.SenMLCBOR) {
		t.Fatalf("observe: %v observe %d cf %d", r.code, r.observe, r.cf)
	}
	if d.Observations() != 1 || d.Count(OpObserve) != 1 {
		t.Fatalf("observations %d", d.Observations())
	}
	last := r.observe
	for _, v := range []float64{22.5, 23.5, -4} {
		if err := d.Set(p, node.FloatValue(v)); err != nil {
			t.Fatal(err)
		}
		n, ok := s.notification(3 * time.Second)
		if !ok {
			t.Fatalf("no notification for %v", v)
		}
		if n.token != string(r.token) || n.code != codes.Content || n.cf != int(codec.SenMLCBOR) || n.observe <= last {
			t.Fatalf("notification %+v (last seq %d)", n, last)
		}
		last = n.observe
		got, err := codec.Decode(codec.SenMLCBOR, n.body, p, reg)
		if err != nil {
			t.Fatal(err)
		}
		if !node.Equal(got, node.NewSingle(TempSensorValue, node.FloatValue(v))) {
			t.Fatalf("notified %+v, want %v", got, v)
		}
	}
	// An observation of the instance is notified too, in TLV by default.
	obsIn := get("/3303/0", -1)
	obsIn.observe = 0
	rin := s.do(obsIn)
	if rin.code != codes.Content || rin.cf != int(codec.TLV) {
		t.Fatalf("observe instance: %v cf %d", rin.code, rin.cf)
	}
	if err := d.Set(node.MustPath(3303, 0, TempUnits), node.StringValue("K")); err != nil {
		t.Fatal(err)
	}
	n, ok := s.notification(3 * time.Second)
	if !ok || n.token != string(rin.token) {
		t.Fatalf("instance notification %+v %v", n, ok)
	}
	if got, err := codec.Decode(codec.TLV, n.body, node.MustPath(3303, 0), reg); err != nil {
		t.Fatal(err)
	} else if r, _ := got.(node.Instance).Resource(TempUnits); !r.Value.Equal(node.StringValue("K")) {
		t.Fatalf("instance notification %+v", got)
	}
	s.noNotification(200 * time.Millisecond) // /3303/0/5700 did not change
	// Cancel with GET Observe=1 and the same token.
	cancelReq := get("/3303/0/5700", int(codec.SenMLCBOR))
	cancelReq.observe = 1
	cancelReq.token = r.token
	if rc := s.do(cancelReq); rc.code != codes.Content || rc.observe >= 0 {
		t.Fatalf("cancel: %v observe %d", rc.code, rc.observe)
	}
	if d.Observations() != 1 || d.Count(OpCancelObserve) != 1 {
		t.Fatalf("observations after cancel: %d", d.Observations())
	}
	if err := d.Set(p, node.FloatValue(99)); err != nil {
		t.Fatal(err)
	}
	n, ok = s.notification(3 * time.Second) // the instance observation only
	if !ok || n.token != string(rin.token) {
		t.Fatalf("notification %+v %v", n, ok)
	}
	s.noNotification(200 * time.Millisecond)
	// Bad observe requests do not create observations.
	bad := get("/3303/9/5700", -1)
	bad.observe = 0
	if r := s.do(bad); r.code != codes.NotFound {
		t.Fatalf("observe missing path: %v", r.code)
	}
	if d.Observations() != 1 {
		t.Fatalf("observations %d", d.Observations())
	}
	// Deleting the observed instance ends the observation with 4.04.
	if r := s.do(withBody(codes.DELETE, "/3303/0", -1, nil)); r.code != codes.Deleted {
		t.Fatalf("delete: %v", r.code)
	}
	n, ok = s.notification(3 * time.Second)
	if !ok || n.code != codes.NotFound || n.token != string(rin.token) {
		t.Fatalf("notification after delete %+v %v", n, ok)
	}
	if d.Observations() != 0 {
		t.Fatalf("observations %d", d.Observations())
	}
}

func TestObservePmaxPmin(t *testing.T) {
	s, d := setup(t)
	wa := req{code: codes.PUT, path: "/3303/1/5700", accept: -1, cf: -1, observe: -1, queries: []string{"pmax=1"}}
	if r := s.do(wa); r.code != codes.Changed {
		t.Fatalf("write attributes: %v", r.code)
	}
	obs := get("/3303/1/5700", int(codec.TextPlain))
	obs.observe = 0
	r := s.do(obs)
	if r.code != codes.Content {
		t.Fatalf("observe: %v", r.code)
	}
	start := time.Now()
	n, ok := s.notification(3 * time.Second)
	if !ok || n.token != string(r.token) || string(n.body) != "19.25" {
		t.Fatalf("pmax notification %+v %v", n, ok)
	}
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Fatalf("pmax notification after %v", el)
	}
	// pmin=1 on the instance: two changes in a row give two notifications
	// a second apart, the second with the last value.
	wa = req{code: codes.PUT, path: "/3303/1", accept: -1, cf: -1, observe: -1, queries: []string{"pmin=1"}}
	if r := s.do(wa); r.code != codes.Changed {
		t.Fatalf("write attributes: %v", r.code)
	}
	time.Sleep(1100 * time.Millisecond) // let pmin since the last notification pass
	// Drain a pmax notification that may have fired meanwhile.
	for {
		if _, ok := s.notification(10 * time.Millisecond); !ok {
			break
		}
	}
	p := node.MustPath(3303, 1, TempSensorValue)
	_ = d.Set(p, node.FloatValue(1))
	n1, ok := s.notification(2 * time.Second)
	if !ok || string(n1.body) != "1" {
		t.Fatalf("first notification %+v %v", n1, ok)
	}
	t1 := time.Now()
	_ = d.Set(p, node.FloatValue(2))
	_ = d.Set(p, node.FloatValue(3))
	n2, ok := s.notification(3 * time.Second)
	if !ok || string(n2.body) != "3" {
		t.Fatalf("second notification %+v %v", n2, ok)
	}
	if el := time.Since(t1); el < 800*time.Millisecond {
		t.Fatalf("second notification %v after the first, pmin is 1 s", el)
	}
}

func TestObserveReset(t *testing.T) {
	s, d := setup(t)
	obs := get("/3/0/13", -1)
	obs.observe = 0
	r := s.do(obs)
	if r.code != codes.Content {
		t.Fatalf("observe: %v", r.code)
	}
	s.mu.Lock()
	s.resetTokens[string(r.token)] = true
	s.mu.Unlock()
	if err := d.Set(node.MustPath(3, 0, 13), node.UnixValue(1800000000)); err != nil {
		t.Fatal(err)
	}
	if n, ok := s.notification(3 * time.Second); !ok || string(n.body) != "1800000000" {
		t.Fatalf("notification %+v %v", n, ok)
	}
	deadline := time.Now().Add(3 * time.Second)
	for d.Observations() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("observation not cancelled by reset")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d.Count(OpReset) != 1 {
		t.Fatalf("Count(OpReset) = %d", d.Count(OpReset))
	}
	_ = d.Set(node.MustPath(3, 0, 13), node.UnixValue(1800000001))
	s.noNotification(200 * time.Millisecond)
}

func TestCreateDelete(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	// Observe the object: creations are notified.
	obs := get("/3303", int(codec.SenMLJSON))
	obs.observe = 0
	ro := s.do(obs)
	if ro.code != codes.Content {
		t.Fatalf("observe /3303: %v", ro.code)
	}
	for i, f := range []uint16{codec.TLV, codec.SenMLJSON, codec.SenMLCBOR, codec.LwM2MJSON} {
		id := uint16(5 + i)
		in := node.Instance{ID: id, Resources: []node.Resource{
			node.NewSingle(TempSensorValue, node.FloatValue(float64(i))),
			node.NewSingle(TempUnits, node.StringValue("Cel")),
		}}
		body, err := codec.Encode(f, in, node.MustPath(3303), reg)
		if err != nil {
			t.Fatal(err)
		}
		r := s.do(withBody(codes.POST, "/3303", int(f), body))
		if r.code != codes.Created || r.location != fmt.Sprintf("/3303/%d", id) {
			t.Fatalf("create cf %d: %v location %q", f, r.code, r.location)
		}
		got, ok := d.Node(node.MustPath(3303, id))
		if !ok || !node.Equal(got, in) {
			t.Fatalf("created %+v", got)
		}
		if n, ok := s.notification(3 * time.Second); !ok || n.token != string(ro.token) {
			t.Fatalf("notification of create %+v %v", n, ok)
		}
	}
	if d.Count(OpCreate) != 4 {
		t.Fatalf("Count(OpCreate) = %d", d.Count(OpCreate))
	}
	// TLV with the resources only: the device picks the instance ID.
	body, _ := codec.Encode(codec.TLV, node.Instance{ID: 2, Resources: []node.Resource{
		node.NewSingle(TempSensorValue, node.FloatValue(7))}}, node.MustPath(3303, 2), reg)
	if r := s.do(withBody(codes.POST, "/3303", int(codec.TLV), body)); r.code != codes.Created || r.location != "/3303/2" {
		t.Fatalf("create without ID: %v %q", r.code, r.location)
	}
	s.notification(time.Second)
	// Errors.
	dup, _ := codec.Encode(codec.TLV, node.Instance{ID: 1, Resources: []node.Resource{
		node.NewSingle(TempSensorValue, node.FloatValue(7))}}, node.MustPath(3303), reg)
	dev, _ := codec.Encode(codec.TLV, node.Instance{ID: 1, Resources: []node.Resource{
		node.NewSingle(0, node.StringValue("x"))}}, node.MustPath(3), reg)
	for _, c := range []struct {
		path string
		cf   int
		body []byte
		want codes.Code
	}{
		{"/3303", int(codec.TLV), dup, codes.BadRequest}, // instance exists
		{"/3", int(codec.TLV), dev, codes.BadRequest},    // single-instance object
		{"/3303", int(codec.TLV), []byte{1}, codes.BadRequest},
		{"/3303", -1, dup, codes.BadRequest},
		{"/9", int(codec.TLV), dup, codes.NotFound},
		{"/0", int(codec.TLV), dup, codes.Unauthorized},
	} {
		if r := s.do(withBody(codes.POST, c.path, c.cf, c.body)); r.code != c.want {
			t.Errorf("create %s: %v, want %v", c.path, r.code, c.want)
		}
	}
	// Delete.
	if r := s.do(withBody(codes.DELETE, "/3303/5", -1, nil)); r.code != codes.Deleted {
		t.Fatalf("delete: %v", r.code)
	}
	if _, ok := d.Node(node.MustPath(3303, 5)); ok {
		t.Fatal("instance still there")
	}
	if n, ok := s.notification(3 * time.Second); !ok || n.code != codes.Content {
		t.Fatalf("notification of delete %+v %v", n, ok)
	}
	for _, c := range []struct {
		path string
		want codes.Code
	}{
		{"/3303/5", codes.NotFound},
		{"/3/0", codes.MethodNotAllowed},
		{"/3303", codes.MethodNotAllowed},
		{"/0/0", codes.Unauthorized},
		{"/", codes.MethodNotAllowed},
	} {
		if r := s.do(withBody(codes.DELETE, c.path, -1, nil)); r.code != c.want {
			t.Errorf("delete %s: %v, want %v", c.path, r.code, c.want)
		}
	}
	if d.Count(OpDelete) != 6 {
		t.Fatalf("Count(OpDelete) = %d", d.Count(OpDelete))
	}
}

func TestComposite(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	paths := []node.Path{node.MustPath(3, 0, 0), node.MustPath(3303, 1, TempSensorValue), node.MustPath(1, 0)}
	for _, f := range []uint16{codec.SenMLJSON, codec.SenMLCBOR} {
		for _, accept := range []int{-1, int(codec.SenMLJSON), int(codec.SenMLCBOR)} {
			body, err := codec.EncodePaths(f, paths)
			if err != nil {
				t.Fatal(err)
			}
			rq := withBody(codes.FETCH, "/", int(f), body)
			rq.accept = accept
			r := s.do(rq)
			want := int(f)
			if accept >= 0 {
				want = accept
			}
			if r.code != codes.Content || r.cf != want {
				t.Fatalf("read-composite cf %d accept %d: %v cf %d", f, accept, r.code, r.cf)
			}
			got, err := codec.DecodeComposite(uint16(r.cf), r.body, paths, reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range paths {
				want, _ := d.Node(p)
				if !node.Equal(got[p], want) {
					t.Fatalf("read-composite %s: %+v, want %+v", p, got[p], want)
				}
			}
		}
	}
	// Observe-Composite.
	body, _ := codec.EncodePaths(codec.SenMLJSON, paths[:2])
	ob := withBody(codes.FETCH, "/", int(codec.SenMLJSON), body)
	ob.observe = 0
	r := s.do(ob)
	if r.code != codes.Content || r.observe < 0 {
		t.Fatalf("observe-composite: %v %d", r.code, r.observe)
	}
	if d.Count(OpObserveComposite) != 1 || d.Observations() != 1 {
		t.Fatal("observe-composite not recorded")
	}
	if err := d.Set(node.MustPath(3303, 1, TempSensorValue), node.FloatValue(42)); err != nil {
		t.Fatal(err)
	}
	n, ok := s.notification(3 * time.Second)
	if !ok || n.token != string(r.token) || n.cf != int(codec.SenMLJSON) {
		t.Fatalf("composite notification %+v %v", n, ok)
	}
	got, err := codec.DecodeComposite(codec.SenMLJSON, n.body, paths[:2], reg)
	if err != nil {
		t.Fatal(err)
	}
	if !node.Equal(got[paths[1]], node.NewSingle(TempSensorValue, node.FloatValue(42))) || got[paths[0]] == nil {
		t.Fatalf("composite notification %+v", got)
	}
	// Cancel.
	cancelReq := withBody(codes.FETCH, "/", int(codec.SenMLJSON), body)
	cancelReq.observe = 1
	cancelReq.token = r.token
	if rc := s.do(cancelReq); rc.code != codes.Content || d.Observations() != 0 {
		t.Fatalf("cancel composite: %v, %d observations", rc.code, d.Observations())
	}
	// Write-Composite.
	nodes := map[node.Path]node.Node{
		node.MustPath(3, 0, 14):             node.NewSingle(14, node.StringValue("+02:00")),
		node.MustPath(3303, 0, TempAppType): node.NewSingle(TempAppType, node.StringValue("fridge")),
		node.MustPath(3303, 1, TempAppType): node.NewSingle(TempAppType, node.StringValue("oven")),
		node.MustPath(1, 0, 1):              node.NewSingle(1, node.IntValue(3600)),
		node.MustPath(3, 0, 15):             node.NewSingle(15, node.StringValue("Europe/Paris")),
	}
	for _, f := range []uint16{codec.SenMLJSON, codec.SenMLCBOR} {
		body, err := codec.EncodeComposite(f, nodes, reg)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.do(withBody(codes.IPATCH, "/", int(f), body)); r.code != codes.Changed {
			t.Fatalf("write-composite cf %d: %v", f, r.code)
		}
		for p, n := range nodes {
			if got, _ := d.Node(p); !node.Equal(got, n) {
				t.Fatalf("write-composite %s: %+v", p, got)
			}
		}
	}
	// Errors: a read-only resource makes the whole write fail.
	bad := map[node.Path]node.Node{
		node.MustPath(3, 0, 14): node.NewSingle(14, node.StringValue("+05:00")),
		node.MustPath(3, 0, 0):  node.NewSingle(0, node.StringValue("evil")),
	}
	bb, _ := codec.EncodeComposite(codec.SenMLJSON, bad, reg)
	if r := s.do(withBody(codes.IPATCH, "/", int(codec.SenMLJSON), bb)); r.code != codes.MethodNotAllowed {
		t.Fatalf("write-composite read-only: %v", r.code)
	}
	if v, _ := d.Value(node.MustPath(3, 0, 14)); !v.Equal(node.StringValue("+02:00")) {
		t.Fatalf("partial write-composite applied: %v", v)
	}
	sec, _ := codec.EncodePaths(codec.SenMLJSON, []node.Path{node.MustPath(0, 0)})
	missing, _ := codec.EncodePaths(codec.SenMLJSON, []node.Path{node.MustPath(9, 0)})
	for _, c := range []struct {
		code   codes.Code
		path   string
		cf     int
		accept int
		body   []byte
		want   codes.Code
	}{
		{codes.FETCH, "/", int(codec.SenMLJSON), -1, sec, codes.Unauthorized},
		{codes.FETCH, "/", int(codec.SenMLJSON), -1, missing, codes.NotFound},
		{codes.FETCH, "/", int(codec.SenMLJSON), int(codec.TLV), body, codes.NotAcceptable},
		{codes.FETCH, "/", int(codec.TLV), -1, body, codes.UnsupportedMediaType},
		{codes.FETCH, "/", int(codec.SenMLJSON), -1, []byte("[{]"), codes.BadRequest},
		{codes.FETCH, "/3", int(codec.SenMLJSON), -1, body, codes.MethodNotAllowed},
		{codes.IPATCH, "/", int(codec.SenMLJSON), -1, []byte("{"), codes.BadRequest},
		{codes.IPATCH, "/", int(codec.TLV), -1, []byte{0}, codes.UnsupportedMediaType},
	} {
		rq := withBody(c.code, c.path, c.cf, c.body)
		rq.accept = c.accept
		if r := s.do(rq); r.code != c.want {
			t.Errorf("%v %s cf %d accept %d: %v, want %v", c.code, c.path, c.cf, c.accept, r.code, c.want)
		}
	}
}

func TestSend(t *testing.T) {
	s, d := setup(t)
	reg := d.Registry()
	nodes := map[node.Path]node.Node{
		node.MustPath(3303, 0, TempSensorValue): node.NewSingle(TempSensorValue, node.FloatValue(12.5)),
		node.MustPath(3, 0, 6, 1):               node.NewResourceInstance(1, node.IntValue(5)),
	}
	for _, f := range []uint16{codec.SenMLJSON, codec.SenMLCBOR} {
		if err := d.Send(ctx5s(t), nodes, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SendPaths(ctx5s(t), codec.SenMLCBOR, node.MustPath(3, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := d.SendPaths(ctx5s(t), codec.SenMLCBOR, node.MustPath(3, 9)); err == nil {
		t.Fatal("send of a missing path succeeded")
	}
	if err := d.Send(ctx5s(t), nodes, codec.TLV); err == nil {
		t.Fatal("send in TLV succeeded")
	}
	s.mu.Lock()
	sends := s.sends
	s.mu.Unlock()
	if len(sends) != 3 {
		t.Fatalf("%d sends", len(sends))
	}
	for i, sr := range sends[:2] {
		got, err := codec.DecodeComposite(uint16(sr.cf), sr.body, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		for p, n := range nodes {
			if !node.Equal(got[p], n) {
				t.Fatalf("send %d %s: %+v", i, p, got[p])
			}
		}
	}
}

func TestRebind(t *testing.T) {
	s, d := setup(t)
	obs := get("/3303/0/5700", int(codec.TextPlain))
	obs.observe = 0
	r := s.do(obs)
	if r.code != codes.Content {
		t.Fatalf("observe: %v", r.code)
	}
	before := d.LocalAddr().String()
	if err := d.Rebind(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	after := d.LocalAddr().String()
	if before == after {
		t.Fatalf("same local address %s after rebind", after)
	}
	if err := d.Set(node.MustPath(3303, 0, TempSensorValue), node.FloatValue(1.5)); err != nil {
		t.Fatal(err)
	}
	n, ok := s.notification(3 * time.Second)
	if !ok || n.token != string(r.token) || string(n.body) != "1.5" || n.from != after {
		t.Fatalf("notification after rebind %+v %v (device now %s)", n, ok, after)
	}
	if d.RegistrationID() != testRegID || d.Observations() != 1 {
		t.Fatal("registration or observation lost")
	}
	if err := d.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	from := s.updates[len(s.updates)-1].from
	s.mu.Unlock()
	if from != after {
		t.Fatalf("update from %s, want %s", from, after)
	}
	// The server reaches the device at its new address.
	if r := s.do(get("/3/0/0", -1)); r.code != codes.Content {
		t.Fatalf("read after rebind: %v", r.code)
	}
}

// TestBadInput sends garbage in every operation: the device answers 4.xx
// and keeps working.
func TestBadInput(t *testing.T) {
	s, d := setup(t)
	rng := rand.New(rand.NewSource(1))
	formats := append([]int{-1, 40, 50, 65535}, func() []int {
		var fs []int
		for _, f := range allFormats {
			fs = append(fs, int(f))
		}
		return fs
	}()...)
	paths := []string{"/", "/3", "/3/0", "/3/0/14", "/3/0/6", "/3/0/6/0", "/3303", "/3303/0", "/1/0", "/0/0", "/9/9/9/9", "/3/0/4"}
	codesList := []codes.Code{codes.GET, codes.PUT, codes.POST, codes.DELETE, codes.FETCH, codes.IPATCH}
	for i := 0; i < 600; i++ {
		body := make([]byte, rng.Intn(40))
		rng.Read(body)
		if rng.Intn(4) == 0 {
			body = []byte(`[{"n":"/3/0/14","vs":"x"},{"bn":"/3303/0/","n":"5700","v":"notanumber"}]`)[:rng.Intn(60)]
		}
		rq := withBody(codesList[rng.Intn(len(codesList))], paths[rng.Intn(len(paths))], formats[rng.Intn(len(formats))], body)
		if rng.Intn(3) == 0 {
			rq.accept = formats[rng.Intn(len(formats))]
		}
		if rng.Intn(5) == 0 {
			rq.observe = rng.Intn(2)
		}
		if rng.Intn(5) == 0 {
			rq.queries = []string{"pmin=" + string(body[:min(len(body), 3)])}
		}
		r := s.do(rq)
		if r.code >= codes.InternalServerError {
			t.Fatalf("%v %s cf %d accept %d body %x: %v", rq.code, rq.path, rq.cf, rq.accept, rq.body, r.code)
		}
	}
	if r := s.do(get("/3/0/0", -1)); r.code != codes.Content || string(r.body) != "lwm2mcluster" {
		t.Fatalf("device broken: %v %q", r.code, r.body)
	}
	// Values the device holds still encode in every format.
	for _, f := range []uint16{codec.TLV, codec.SenMLJSON, codec.SenMLCBOR, codec.LwM2MJSON} {
		for _, p := range []string{"/1", "/3", "/3303"} {
			if r := s.do(get(p, int(f))); r.code != codes.Content {
				t.Fatalf("GET %s accept %d after fuzzing: %v", p, f, r.code)
			}
		}
	}
	_ = d
}

func TestSetErrors(t *testing.T) {
	d := New(Config{Endpoint: "x", Server: "127.0.0.1:1"})
	defer d.Close()
	for _, c := range []struct {
		p node.Path
		v node.Value
	}{
		{node.MustPath(3303, 0, TempSensorValue), node.StringValue("hot")}, // wrong type
		{node.MustPath(3303, 7, TempSensorValue), node.FloatValue(1)},      // no instance
		{node.MustPath(3, 0, 6), node.IntValue(1)},                         // multiple resource
		{node.MustPath(3, 0), node.IntValue(1)},                            // not a resource
		{node.MustPath(3, 0, 6, 1), node.Value{}},                          // invalid value
	} {
		if err := d.Set(c.p, c.v); err == nil {
			t.Errorf("Set(%s, %v) succeeded", c.p, c.v)
		}
	}
	if err := d.Set(node.MustPath(3, 0, 6, 3), node.IntValue(2)); err != nil {
		t.Fatal(err)
	}
	if v, ok := d.Value(node.MustPath(3, 0, 6, 3)); !ok || !v.Equal(node.IntValue(2)) {
		t.Fatalf("value %v", v)
	}
	if err := d.Update(context.Background()); err == nil {
		t.Fatal("Update before Start succeeded")
	}
	if _, err := d.Register(context.Background()); err == nil {
		t.Fatal("Register before Start succeeded")
	}
}

// TestNoGoroutineLeak starts, registers, observes and closes devices and
// checks that their goroutines end.
func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	s := newFakeServer(t)
	for i := 0; i < 20; i++ {
		d := New(Config{Endpoint: fmt.Sprintf("leak-%d", i), Server: s.addr, Logger: testLogger(t),
			Registry: model.Default()})
		ctx, cancel := context.WithCancel(context.Background())
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Register(ctx5s(t)); err != nil {
			t.Fatal(err)
		}
		// The context given to Start closes the device.
		cancel()
		deadline := time.Now().Add(2 * time.Second)
		for {
			if _, err := d.conn(); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("device not closed by its context")
			}
			time.Sleep(5 * time.Millisecond)
		}
		_ = d.Close()
	}
	s.stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRunUpdates(t *testing.T) {
	s, d := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.RunUpdates(ctx, 50*time.Millisecond) }()
	deadline := time.Now().Add(3 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.updates)
		s.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d periodic updates", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("RunUpdates: %v", err)
	}
}

func TestCustomConnAndDial(t *testing.T) {
	var dials atomic.Int32
	var conn0 *net.UDPConn
	s, d := setup(t, func(c *Config) {
		raddr, err := net.ResolveUDPAddr("udp", c.Server)
		if err != nil {
			t.Fatal(err)
		}
		if conn0, err = net.DialUDP("udp", nil, raddr); err != nil {
			t.Fatal(err)
		}
		c.Conn = conn0
		c.Dial = func(ctx context.Context, server string) (*net.UDPConn, error) {
			dials.Add(1)
			raddr, err := net.ResolveUDPAddr("udp", server)
			if err != nil {
				return nil, err
			}
			return net.DialUDP("udp", nil, raddr)
		}
	})
	if got := d.LocalAddr().String(); got != conn0.LocalAddr().String() {
		t.Fatalf("device on %s, not on the given socket %s", got, conn0.LocalAddr())
	}
	if dials.Load() != 0 {
		t.Fatal("Dial used although Conn was given")
	}
	if err := d.Rebind(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if dials.Load() != 1 {
		t.Fatalf("%d dials", dials.Load())
	}
	if err := d.Update(ctx5s(t)); err != nil {
		t.Fatal(err)
	}
	if r := s.do(get("/3/0/2", -1)); r.code != codes.Content || string(r.body) != "SN-dev-TestCustomConnAndDial" {
		t.Fatalf("read: %v %q", r.code, r.body)
	}
}
