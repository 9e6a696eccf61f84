package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
)

// modelsDir holds the DDF files of the objects the simulated devices have
// beyond the core ones (3303 Temperature, 10250 a test object with an
// opaque resource).
var modelsDir, _ = filepath.Abs("testdata/models")

// nbMsg is one LESHAN_RESP message as an IoT backend reads it.
type nbMsg struct {
	Ticket string `json:"ticket"`
	Ack    bool   `json:"ack"`
	Err    *struct {
		ErrorMessage string `json:"errorMessage"`
	} `json:"err"`
	Resp map[string]json.RawMessage `json:"resp"`
	raw  string
}

func (m nbMsg) String() string { return m.raw }

// backendPeer is an IoT backend on the northbound API that uses nothing of
// ours: requests go out with `redis-cli PUBLISH`, answers come in through a
// `redis-cli SUBSCRIBE`.
type backendPeer struct {
	t       *testing.T
	addr    string
	sub     *subscriber
	pending map[string][]nbMsg // by ticket, read but not yet asked for
	sends   []string           // LESHAN_SEND payloads
}

func newBackendPeer(t *testing.T, redisAddr string) *backendPeer {
	return &backendPeer{t: t, addr: redisAddr, pending: map[string][]nbMsg{},
		sub: subscribe(t, redisAddr, "LESHAN_RESP", "LESHAN_SEND")}
}

func newTicket() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// publish runs redis-cli PUBLISH channel payload.
func (p *backendPeer) publish(channel, payload string) {
	p.t.Helper()
	host, port, _ := net.SplitHostPort(p.addr)
	out, err := exec.Command("redis-cli", "-h", host, "-p", port, "PUBLISH", channel, payload).CombinedOutput()
	if err != nil {
		p.t.Fatalf("redis-cli PUBLISH: %v: %s", err, out)
	}
}

// next returns the next message for ticket, waiting at most d; ok is false
// when none came.
func (p *backendPeer) next(ticket string, d time.Duration) (nbMsg, bool) {
	p.t.Helper()
	if q := p.pending[ticket]; len(q) > 0 {
		p.pending[ticket] = q[1:]
		return q[0], true
	}
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-p.sub.msgs:
			if !ok {
				p.t.Fatal("redis-cli SUBSCRIBE ended")
			}
			if m[0] == "LESHAN_SEND" {
				p.sends = append(p.sends, m[1])
				continue
			}
			var msg nbMsg
			if err := json.Unmarshal([]byte(m[1]), &msg); err != nil {
				p.t.Fatalf("LESHAN_RESP payload is not JSON: %q", m[1])
			}
			msg.raw = m[1]
			if msg.Ticket == ticket {
				return msg, true
			}
			p.pending[msg.Ticket] = append(p.pending[msg.Ticket], msg)
		case <-deadline:
			return nbMsg{}, false
		}
	}
}

// nextSend returns the next LESHAN_SEND payload.
func (p *backendPeer) nextSend(d time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for len(p.sends) == 0 && time.Now().Before(deadline) {
		p.next("\x00no-ticket", 50*time.Millisecond)
	}
	if len(p.sends) == 0 {
		p.t.Fatal("no LESHAN_SEND message")
	}
	s := p.sends[0]
	p.sends = p.sends[1:]
	return s
}

// call publishes a request on LESHAN_REQ and returns its resp after
// checking that exactly one ack came first.
func (p *backendPeer) call(ep, req string) (ticket string, resp map[string]json.RawMessage) {
	p.t.Helper()
	ticket = newTicket()
	p.publish("LESHAN_REQ", fmt.Sprintf(`{"ep":%q,"ticket":%q,"req":%s}`, ep, ticket, req))
	ack, ok := p.next(ticket, 10*time.Second)
	if !ok || !ack.Ack {
		p.t.Fatalf("request %s: want an ack first, got %v (%v)", req, ack, ok)
	}
	m, ok := p.next(ticket, 10*time.Second)
	if !ok || m.Resp == nil {
		p.t.Fatalf("request %s: want a resp after the ack, got %v (%v)", req, m, ok)
	}
	return ticket, m.Resp
}

// errOf publishes a request and returns the message of the one err it
// gets, checking that nothing else is answered.
func (p *backendPeer) errOf(ep, req string) string {
	p.t.Helper()
	ticket := newTicket()
	p.publish("LESHAN_REQ", fmt.Sprintf(`{"ep":%q,"ticket":%q,"req":%s}`, ep, ticket, req))
	m, ok := p.next(ticket, 10*time.Second)
	if !ok || m.Err == nil {
		p.t.Fatalf("request %s for %s: want an err, got %v (%v)", req, ep, m, ok)
	}
	if extra, ok := p.next(ticket, 1500*time.Millisecond); ok {
		p.t.Fatalf("request %s: a second answer: %v", req, extra)
	}
	return m.Err.ErrorMessage
}

func str(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s is not a JSON string", raw)
	}
	return s
}

func respNode(t *testing.T, resp map[string]json.RawMessage) node.Node {
	t.Helper()
	if c := str(t, resp["code"]); c != "CONTENT" {
		t.Fatalf("code %s, want CONTENT: %s", c, resp["errorMessage"])
	}
	n, err := node.Unmarshal(resp["node"])
	if err != nil {
		t.Fatalf("resp node %s: %v", resp["node"], err)
	}
	return n
}

// blobObject is the test object 10250 (see testdata/models/10250.xml).
func blobObject() *model.Object {
	return &model.Object{ID: 10250, Name: "Test Blob", Version: "1.1", Resources: map[uint16]model.Resource{
		0: {ID: 0, Name: "Data", Operations: model.OpReadWrite, Type: model.TypeOpaque},
		1: {ID: 1, Name: "Label", Operations: model.OpReadWrite, Type: model.TypeString},
	}}
}

// startDevice starts a simulated device (objects 0, 1, 3, 3303 and 10250)
// that registers with server.
func startDevice(t *testing.T, ctx context.Context, ep, server string) *simdevice.Device {
	t.Helper()
	reg := simdevice.Registry()
	if err := reg.Add(blobObject()); err != nil {
		t.Fatal(err)
	}
	objs := simdevice.DefaultObjects(ep, "coap://"+server, 300*time.Second, "U")
	objs = append(objs, node.Object{ID: 10250, Instances: []node.Instance{{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.OpaqueValue([]byte{0xde, 0xad, 0xbe, 0xef})),
		node.NewSingle(1, node.StringValue("blob")),
	}}}})
	d := simdevice.New(simdevice.Config{Endpoint: ep, Server: server, Lifetime: 300 * time.Second,
		Objects: objs, Registry: reg, Logger: quietLog()})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if _, err := d.Register(ctx); err != nil {
		t.Fatalf("%s: register: %v", ep, err)
	}
	return d
}

// TestNorthboundOperations: every operation and every content format,
// requested by a raw redis-cli publisher and answered on LESHAN_RESP, round
// trips to a simulated LwM2M device registered with one of two instances.
func TestNorthboundOperations(t *testing.T) {
	need(t, "redis-cli", "redis-server")
	rds := redistest.Start(t)
	a := startServer(t, "nb-a", rds.URL, "--models", modelsDir)
	startServer(t, "nb-b", rds.URL, "--models", modelsDir)
	peer := newBackendPeer(t, rds.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dev := startDevice(t, ctx, "nb-dev", a.coap)

	// Read: an instance in every format that carries one, a single
	// resource in the rest; the device sees the Accept asked for.
	manufacturer, _ := dev.Value(node.MustPath(3, 0, 0))
	for _, f := range []int{11542, 110, 112, 11543} {
		_, resp := peer.call("nb-dev", fmt.Sprintf(`{"kind":"read","path":"/3/0","contentFormat":%d}`, f))
		inst, ok := respNode(t, resp).(node.Instance)
		if !ok {
			t.Fatalf("format %d: read /3/0 gave %s", f, resp["node"])
		}
		r, _ := inst.Resource(0)
		if !r.Value.Equal(manufacturer) {
			t.Fatalf("format %d: /3/0/0 = %v, want %v", f, r.Value, manufacturer)
		}
		if got := dev.LastRequest().Accept; got != f {
			t.Fatalf("format %d: the device was asked for %d", f, got)
		}
	}
	for _, f := range []int{0, 60, 110, 112, 11542, 11543, 1541} {
		_, resp := peer.call("nb-dev", fmt.Sprintf(`{"kind":"read","path":"/3/0/0","contentFormat":%d}`, f))
		r, ok := respNode(t, resp).(node.Resource)
		if !ok || !r.Value.Equal(manufacturer) {
			t.Fatalf("format %d: read /3/0/0 gave %s", f, resp["node"])
		}
	}
	_, resp := peer.call("nb-dev", `{"kind":"read","path":"/10250/0/0","contentFormat":42}`)
	if r := respNode(t, resp).(node.Resource); !r.Value.Equal(node.OpaqueValue([]byte{0xde, 0xad, 0xbe, 0xef})) {
		t.Fatalf("opaque read: %s", resp["node"])
	}
	// The seed's example: a read without a format gets one the device
	// announced; a multiple resource reads as one.
	_, resp = peer.call("nb-dev", `{"kind":"read","path":"/3/0/6"}`)
	if r := respNode(t, resp).(node.Resource); !r.Multiple || len(r.Instances) == 0 {
		t.Fatalf("read /3/0/6: %s", resp["node"])
	}
	_, resp = peer.call("nb-dev", `{"kind":"read","path":"/3303"}`)
	if o := respNode(t, resp).(node.Object); len(o.Instances) != 2 {
		t.Fatalf("read /3303: %s", resp["node"])
	}
	// A device error code is a resp with errorMessage.
	_, resp = peer.call("nb-dev", `{"kind":"read","path":"/3/0/9999"}`)
	if c := str(t, resp["code"]); c != "NOT_FOUND" || resp["errorMessage"] == nil {
		t.Fatalf("read of a missing resource: %v", resp)
	}

	// Write, replace and partial update, in several formats.
	for i, f := range []int{0, 60, 110, 112, 11542, 11543} {
		label := fmt.Sprintf("label-%d", i)
		_, resp := peer.call("nb-dev", fmt.Sprintf(`{"kind":"write","path":"/10250/0/1","contentFormat":%d,"node":{"kind":"singleresource","id":1,"type":"string","value":%q}}`, f, label))
		if c := str(t, resp["code"]); c != "CHANGED" {
			t.Fatalf("write format %d: %s %s", f, c, resp["errorMessage"])
		}
		if v, _ := dev.Value(node.MustPath(10250, 0, 1)); !v.Equal(node.StringValue(label)) {
			t.Fatalf("write format %d: device has %v", f, v)
		}
	}
	_, resp = peer.call("nb-dev", `{"kind":"write","path":"/10250/0/0","contentFormat":42,"node":{"kind":"singleresource","id":0,"type":"opaque","value":"0102"}}`)
	if v, _ := dev.Value(node.MustPath(10250, 0, 0)); str(t, resp["code"]) != "CHANGED" || !v.Equal(node.OpaqueValue([]byte{1, 2})) {
		t.Fatalf("opaque write: %v, device has %v", resp, v)
	}
	_, resp = peer.call("nb-dev", `{"kind":"write","path":"/3/0/13","node":{"kind":"singleresource","id":13,"type":"time","value":1700000000}}`)
	if v, _ := dev.Value(node.MustPath(3, 0, 13)); str(t, resp["code"]) != "CHANGED" || !v.Equal(node.UnixValue(1700000000)) {
		t.Fatalf("time write: %v, device has %v", resp, v)
	}
	_, resp = peer.call("nb-dev", `{"kind":"write","path":"/3303/0","mode":"update","contentFormat":11542,"node":{"kind":"instance","id":0,"resources":[{"kind":"singleresource","id":5750,"type":"string","value":"boiler"}]}}`)
	if v, _ := dev.Value(node.MustPath(3303, 0, 5750)); str(t, resp["code"]) != "CHANGED" || !v.Equal(node.StringValue("boiler")) {
		t.Fatalf("partial update: %v, device has %v", resp, v)
	}
	if _, ok := dev.Value(node.MustPath(3303, 0, 5700)); !ok {
		t.Fatal("partial update removed other resources")
	}

	// Execute with arguments.
	_, resp = peer.call("nb-dev", `{"kind":"execute","path":"/3/0/4","arguments":"0='now',1"}`)
	if ex := dev.Executions(node.MustPath(3, 0, 4)); str(t, resp["code"]) != "CHANGED" || len(ex) != 1 || ex[0] != "0='now',1" {
		t.Fatalf("execute: %v, device saw %q", resp, ex)
	}

	// Write-Attributes, then Discover shows them.
	_, resp = peer.call("nb-dev", `{"kind":"writeAttributes","path":"/3303/0/5700","attributes":{"pmin":1,"pmax":60,"st":0.5}}`)
	if c := str(t, resp["code"]); c != "CHANGED" {
		t.Fatalf("writeAttributes: %v", resp)
	}
	_, resp = peer.call("nb-dev", `{"kind":"discover","path":"/3303/0"}`)
	var links []struct {
		URL string            `json:"url"`
		At  map[string]string `json:"at"`
	}
	if err := json.Unmarshal(resp["objectLinks"], &links); err != nil || len(links) < 2 {
		t.Fatalf("discover: %v", resp)
	}
	found := false
	for _, l := range links {
		if l.URL == "/3303/0/5700" && l.At["pmin"] == "1" && l.At["pmax"] == "60" {
			found = true
		}
	}
	if !found {
		t.Fatalf("discover does not show the attributes: %s", resp["objectLinks"])
	}

	// Create and Delete.
	_, resp = peer.call("nb-dev", `{"kind":"create","path":"/3303","contentFormat":110,"node":{"kind":"instance","id":7,"resources":[{"kind":"singleresource","id":5700,"type":"float","value":21.5}]}}`)
	if c, loc := str(t, resp["code"]), str(t, resp["location"]); c != "CREATED" || loc != "/3303/7" {
		t.Fatalf("create: %v", resp)
	}
	if v, _ := dev.Value(node.MustPath(3303, 7, 5700)); !v.Equal(node.FloatValue(21.5)) {
		t.Fatalf("created instance has %v", v)
	}
	_, resp = peer.call("nb-dev", `{"kind":"delete","path":"/3303/7"}`)
	if _, ok := dev.Node(node.MustPath(3303, 7)); str(t, resp["code"]) != "DELETED" || ok {
		t.Fatalf("delete: %v", resp)
	}

	// Composite operations.
	for _, f := range []int{110, 112} {
		_, resp = peer.call("nb-dev", fmt.Sprintf(`{"kind":"readComposite","paths":["/3/0/0","/3303/0/5700"],"contentFormat":%d}`, f))
		var nodes map[string]json.RawMessage
		if err := json.Unmarshal(resp["nodes"], &nodes); err != nil || len(nodes) != 2 || nodes["/3/0/0"] == nil {
			t.Fatalf("readComposite %d: %v", f, resp)
		}
		_, resp = peer.call("nb-dev", fmt.Sprintf(`{"kind":"writeComposite","contentFormat":%d,"nodes":{"/10250/0/1":{"kind":"singleresource","id":1,"type":"string","value":"c%d"},"/3303/1/5750":{"kind":"singleresource","id":5750,"type":"string","value":"c%d"}}}`, f, f, f))
		want := node.StringValue(fmt.Sprintf("c%d", f))
		v1, _ := dev.Value(node.MustPath(10250, 0, 1))
		v2, _ := dev.Value(node.MustPath(3303, 1, 5750))
		if str(t, resp["code"]) != "CHANGED" || !v1.Equal(want) || !v2.Equal(want) {
			t.Fatalf("writeComposite %d: %v; device has %v, %v", f, resp, v1, v2)
		}
	}

	// Observe: the first value, then a resp per notification with the
	// observe's ticket, until cancelObserve (by ticket).
	obsTicket, resp := peer.call("nb-dev", `{"kind":"observe","path":"/3303/0/5700","contentFormat":112}`)
	respNode(t, resp)
	for _, v := range []float64{30.25, 31.5} {
		if err := dev.Set(node.MustPath(3303, 0, 5700), node.FloatValue(v)); err != nil {
			t.Fatal(err)
		}
		m, ok := peer.next(obsTicket, 10*time.Second)
		if !ok || m.Resp == nil || string(m.Resp["observe"]) != "true" {
			t.Fatalf("notification of %v: %v", v, m)
		}
		if r := respNode(t, m.Resp).(node.Resource); !r.Value.Equal(node.FloatValue(v)) {
			t.Fatalf("notification carries %v, want %v", r.Value, v)
		}
	}
	compTicket, resp := peer.call("nb-dev", `{"kind":"observeComposite","paths":["/3303/1/5700","/3/0/0"],"contentFormat":110}`)
	if resp["nodes"] == nil {
		t.Fatalf("observeComposite: %v", resp)
	}
	if err := dev.Set(node.MustPath(3303, 1, 5700), node.FloatValue(5)); err != nil {
		t.Fatal(err)
	}
	if m, ok := peer.next(compTicket, 10*time.Second); !ok || m.Resp == nil || m.Resp["nodes"] == nil {
		t.Fatalf("composite notification: %v", m)
	}
	_, resp = peer.call("nb-dev", fmt.Sprintf(`{"kind":"cancelObserve","observeTicket":%q}`, obsTicket))
	if c := str(t, resp["code"]); c != "DELETED" {
		t.Fatalf("cancelObserve: %v", resp)
	}
	if err := dev.Set(node.MustPath(3303, 0, 5700), node.FloatValue(40)); err != nil {
		t.Fatal(err)
	}
	if m, ok := peer.next(obsTicket, 1500*time.Millisecond); ok {
		t.Fatalf("notification after cancel: %v", m)
	}

	// Send: the device pushes values, the backend reads them on LESHAN_SEND.
	if err := dev.SendPaths(ctx, 112, node.MustPath(3303, 0, 5700), node.MustPath(3, 0, 0)); err != nil {
		t.Fatalf("send: %v", err)
	}
	var send struct {
		Ep       string                     `json:"ep"`
		Instance string                     `json:"instance"`
		Nodes    map[string]json.RawMessage `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(peer.nextSend(10*time.Second)), &send); err != nil || send.Ep != "nb-dev" || send.Instance != "nb-a" || len(send.Nodes) != 2 {
		t.Fatalf("LESHAN_SEND: %+v %v", send, err)
	}

	// lwm2m-cli, the Go client as a command, against the same cluster.
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(binDir, "lwm2m-cli"), append([]string{"--redis", rds.URL}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("lwm2m-cli %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := cli("read", "nb-dev", "/3/0/0", "--format", "text"); !strings.Contains(out, manufacturer.String()) {
		t.Fatalf("lwm2m-cli read: %q, want %q in it", out, manufacturer.String())
	}
	if out := cli("--json", "write", "nb-dev", "/10250/0/1", "from-cli"); !strings.Contains(out, `"CHANGED"`) {
		t.Fatalf("lwm2m-cli write: %q", out)
	}
	if v, _ := dev.Value(node.MustPath(10250, 0, 1)); !v.Equal(node.StringValue("from-cli")) {
		t.Fatalf("after lwm2m-cli write the device has %v", v)
	}
	if out := cli("list"); !strings.Contains(out, "nb-dev") || !strings.Contains(out, "nb-a") {
		t.Fatalf("lwm2m-cli list: %q", out)
	}

	// Bad requests with a ticket get one err; an unregistered endpoint
	// one err; de-registration ends the composite observation.
	if msg := peer.errOf("nb-dev", `{"kind":"read","path":"/3/x"}`); !strings.Contains(msg, "path") {
		t.Fatalf("bad path: %q", msg)
	}
	if msg := peer.errOf("nb-dev", `{"kind":"teleport","path":"/3/0"}`); !strings.Contains(msg, "unknown kind") {
		t.Fatalf("unknown kind: %q", msg)
	}
	if msg := peer.errOf("nobody", `{"kind":"read","path":"/3/0"}`); !strings.Contains(msg, "not registered") {
		t.Fatalf("unregistered: %q", msg)
	}
	if err := dev.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if n := metricValue(t, a.admin, `lwm2m_observations_total{event="deregistered"}`); n != 1 {
		t.Fatalf("observations ended with the registration: %d, want 1", n)
	}
	if msg := peer.errOf("nb-dev", `{"kind":"read","path":"/3/0"}`); !strings.Contains(msg, "not registered") {
		t.Fatalf("after de-registration: %q", msg)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestNorthboundFailover: two instances behind lwm2m-lb share one Redis. A
// request gets exactly one ack and one resp; with the owner killed, exactly
// one err; after the device's next update reaches the survivor, requests
// work again and the observation set up through the dead owner keeps
// publishing with its ticket; cancel stops it, de-registration ends the
// others.
func TestNorthboundFailover(t *testing.T) {
	need(t, "redis-cli", "redis-server")
	rds := redistest.Start(t)
	args := []string{"--models", modelsDir, "--proxy-protocol", "--trusted-proxy", "127.0.0.0/8",
		"--heartbeat", "200ms", "--member-ttl", "1s"}
	servers := map[string]*lwm2mServer{
		"fo-1": startServer(t, "fo-1", rds.URL, args...),
		"fo-2": startServer(t, "fo-2", rds.URL, args...),
	}
	lb := startLB(t, "--discover", rds.URL, "--mode", "proxy")
	lb.waitUp(t, 2)
	regs := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP")
	peer := newBackendPeer(t, rds.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dev := startDevice(t, ctx, "fo-dev", lb.vip)
	_, payload := regs.next(t, 5*time.Second)
	owner := decodeReg(t, payload).Instance
	if servers[owner] == nil {
		t.Fatalf("REG_NEW names owner %q", owner)
	}

	// Exactly one ack and one resp, although both instances read LESHAN_REQ.
	ticket, resp := peer.call("fo-dev", `{"kind":"read","path":"/3/0/0","contentFormat":0}`)
	respNode(t, resp)
	if m, ok := peer.next(ticket, time.Second); ok {
		t.Fatalf("a second answer to one request: %v", m)
	}
	obsTicket, resp := peer.call("fo-dev", `{"kind":"observe","path":"/3303/0/5700"}`)
	respNode(t, resp)
	secondObs, _ := peer.call("fo-dev", `{"kind":"observe","path":"/3303/1/5700"}`)

	// The owner dies: exactly one err, from the survivor.
	servers[owner].Kill()
	<-servers[owner].done
	msg := peer.errOf("fo-dev", `{"kind":"read","path":"/3/0/0"}`)
	if !strings.Contains(msg, owner) {
		t.Fatalf("err with the owner dead: %q, want it to name %s", msg, owner)
	}
	lb.waitBackends(t, "the dead backend down", func(bs []backendStatus) bool {
		for _, b := range bs {
			if b.State == "up" && b.Addr == servers[owner].coap {
				return false
			}
		}
		return true
	})

	// The device's next update reaches the survivor, which owns it now.
	if err := dev.Update(ctx); err != nil {
		t.Fatalf("update after failover: %v", err)
	}
	ch, payload := regs.next(t, 5*time.Second)
	var up struct {
		Updated regEvent `json:"regUpdated"`
	}
	if err := json.Unmarshal([]byte(payload), &up); ch != "LESHAN_REG_UP" || err != nil {
		t.Fatalf("after the update: %s %s", ch, payload)
	}
	newOwner := up.Updated.Instance
	if newOwner == owner || servers[newOwner] == nil {
		t.Fatalf("after the update the owner is %q", newOwner)
	}
	_, resp = peer.call("fo-dev", `{"kind":"read","path":"/3/0/0","contentFormat":0}`)
	respNode(t, resp)

	// The observation survives the owner change.
	if err := dev.Set(node.MustPath(3303, 0, 5700), node.FloatValue(-3.5)); err != nil {
		t.Fatal(err)
	}
	m, ok := peer.next(obsTicket, 10*time.Second)
	if !ok || m.Resp == nil {
		t.Fatalf("no notification with the observe's ticket after failover: %v", m)
	}
	if r := respNode(t, m.Resp).(node.Resource); !r.Value.Equal(node.FloatValue(-3.5)) {
		t.Fatalf("notification carries %v", r.Value)
	}

	// cancelObserve by path stops it.
	_, resp = peer.call("fo-dev", `{"kind":"cancelObserve","path":"/3303/0/5700"}`)
	if c := str(t, resp["code"]); c != "DELETED" {
		t.Fatalf("cancelObserve: %v", resp)
	}
	if err := dev.Set(node.MustPath(3303, 0, 5700), node.FloatValue(99)); err != nil {
		t.Fatal(err)
	}
	if m, ok := peer.next(obsTicket, 1500*time.Millisecond); ok {
		t.Fatalf("notification after cancel: %v", m)
	}

	// De-registration ends the remaining observation.
	if err := dev.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if n := metricValue(t, servers[newOwner].admin, `lwm2m_observations_total{event="deregistered"}`); n != 1 {
		t.Fatalf("observations ended by the de-registration: %d, want 1", n)
	}
	_ = dev.Set(node.MustPath(3303, 1, 5700), node.FloatValue(1))
	if m, ok := peer.next(secondObs, 1500*time.Millisecond); ok {
		t.Fatalf("notification after de-registration: %v", m)
	}
}
