package clicmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/clicmd"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient/nbtest"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

const (
	device3 = `{"kind":"instance","id":0,"resources":[` +
		`{"kind":"singleresource","id":0,"type":"string","value":"Open Mobile Alliance"},` +
		`{"kind":"multipleresource","id":6,"type":"integer","values":{"0":1,"1":5}},` +
		`{"kind":"singleresource","id":9,"type":"integer","value":95},` +
		`{"kind":"singleresource","id":13,"type":"time","value":1700000000}]}`
)

// fakeDevice answers as dev1 would, through a fake instance.
func fakeDevice(t *testing.T) nbtest.Handler {
	inst, err := node.Unmarshal([]byte(device3))
	if err != nil {
		t.Fatal(err)
	}
	in := inst.(node.Instance)
	res := func(id uint16) *node.Any { r, _ := in.Resource(id); return &node.Any{Node: r} }
	return func(r *northbound.Request) (*northbound.Resp, error) {
		q := r.Req
		switch q.Kind {
		case northbound.KindRead, northbound.KindObserve:
			switch q.Path {
			case "/3/0":
				return &northbound.Resp{Code: "CONTENT", Node: &node.Any{Node: inst}}, nil
			case "/3/0/0":
				return &northbound.Resp{Code: "CONTENT", Node: res(0)}, nil
			case "/3/0/9":
				return &northbound.Resp{Code: "CONTENT", Node: res(9)}, nil
			case "/3/0/6/1":
				return &northbound.Resp{Code: "CONTENT", Node: &node.Any{Node: node.NewResourceInstance(1, node.IntValue(5))}}, nil
			}
			return &northbound.Resp{Code: "NOT_FOUND", ErrorMessage: "no such resource"}, nil
		case northbound.KindReadComposite:
			nodes := map[string]node.Any{}
			for _, p := range q.Paths {
				switch p {
				case "/3/0/0":
					nodes[p] = *res(0)
				case "/3/0/9":
					nodes[p] = *res(9)
				}
			}
			return &northbound.Resp{Code: "CONTENT", Nodes: nodes}, nil
		case northbound.KindDiscover:
			return &northbound.Resp{Code: "CONTENT", ObjectLinks: []northbound.ObjectLink{
				{URL: "/3/0", Attributes: map[string]string{}},
				{URL: "/3/0/6", Attributes: map[string]string{"dim": "2"}},
				{URL: "/3/0/9", Attributes: map[string]string{"pmin": "10", "gt": "50"}},
			}}, nil
		case northbound.KindCreate:
			return &northbound.Resp{Code: "CREATED", Location: "/3303/1"}, nil
		case northbound.KindDelete:
			return &northbound.Resp{Code: "DELETED"}, nil
		case northbound.KindExecute:
			if q.Path == "/3/0/5" {
				return nil, errors.New("timeout: the device did not answer within 10000 ms")
			}
		}
		return &northbound.Resp{Code: "CHANGED"}, nil
	}
}

type devHarness struct {
	*harness
	bus  *northbound.Broker
	dev  *nbtest.Responder
	busN int // bus opens
}

func newDevHarness(t *testing.T) *devHarness {
	h := &devHarness{harness: newHarness(t), bus: northbound.NewBroker()}
	t.Cleanup(func() { _ = h.bus.Close() })
	h.env[clicmd.RedisEnv] = "redis://env/0"
	ctx := context.Background()
	if err := h.st.Announce(ctx, store.Member{ID: "inst-a", State: store.StateActive}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.st.SetOwner(ctx, "dev1", "inst-a"); err != nil {
		t.Fatal(err)
	}
	claims := nbtest.NewClaims()
	h.dev = nbtest.New(h.bus, "inst-a", claims, "dev1")
	h.dev.Handler = fakeDevice(t)
	h.dev.Start(t)
	other := nbtest.New(h.bus, "inst-b", claims)
	other.AnswerUnowned = true
	other.Start(t)
	return h
}

// syncBuffer is a bytes.Buffer safe for a reader and a writer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (h *devHarness) program(stdin string, out, errb interface {
	Write([]byte) (int, error)
}) *clicmd.Program {
	return &clicmd.Program{
		Stdin: strings.NewReader(stdin), Stdout: out, Stderr: errb,
		Open:   func(context.Context, string, string) (store.Store, error) { return h.st, nil },
		Getenv: func(k string) string { return h.env[k] },
		Now:    func() time.Time { return now },
		Bus: func(_ context.Context, s store.Store) (northbound.Bus, error) {
			if s != h.st {
				h.t.Error("bus opened on another store")
			}
			h.busN++
			return h.bus, nil
		},
		ClientOptions: nbclient.Options{AckTimeout: time.Second, DirectAckTimeout: 300 * time.Millisecond},
	}
}

func (h *devHarness) run(stdin string, args ...string) result {
	h.t.Helper()
	var out, errb bytes.Buffer
	code := h.program(stdin, &out, &errb).Run(context.Background(), args)
	return result{code, out.String(), errb.String()}
}

func (h *devHarness) ok(args ...string) string {
	h.t.Helper()
	r := h.run("", args...)
	if r.code != 0 || r.stderr != "" {
		h.t.Fatalf("%v: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

func (h *devHarness) fail(msg string, args ...string) {
	h.t.Helper()
	r := h.run("", args...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "lwm2m-cli: ") ||
		strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, msg) {
		h.t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line with %q", args, r.code, r.stdout, r.stderr, msg)
	}
}

// lastReq returns the latest request dev1's instance received.
func (h *devHarness) lastReq() *northbound.Request {
	h.t.Helper()
	l := h.dev.Received()
	if len(l) == 0 {
		h.t.Fatal("no request received")
	}
	return l[len(l)-1].Request
}

func reqJSON(t *testing.T, r *northbound.Request) string {
	b, err := json.Marshal(r.Req)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDeviceRead(t *testing.T) {
	h := newDevHarness(t)
	if out := h.ok("read", "dev1", "/3/0/0"); out != "/3/0/0 = \"Open Mobile Alliance\"\n" {
		t.Fatalf("read = %q", out)
	}
	if got := h.dev.Received(); len(got) != 1 || got[0].Channel != "LESHAN_REQ:inst-a" {
		t.Fatalf("received %+v", got)
	}
	if got := reqJSON(t, h.lastReq()); got != `{"kind":"read","path":"/3/0/0","timeout":10000}` {
		t.Fatalf("request = %s", got)
	}
	out := h.ok("read", "dev1", "/3/0", "--format", "tlv", "--timeout", "3s")
	want := "/3/0/0 = \"Open Mobile Alliance\"\n/3/0/6/0 = 1\n/3/0/6/1 = 5\n/3/0/9 = 95\n/3/0/13 = 2023-11-14T22:13:20Z\n"
	if out != want {
		t.Fatalf("read /3/0 =\n%s\nwant\n%s", out, want)
	}
	if got := reqJSON(t, h.lastReq()); got != `{"kind":"read","path":"/3/0","contentFormat":11542,"timeout":3000}` {
		t.Fatalf("request = %s", got)
	}
	if out := h.ok("read", "dev1", "/3/0/6/1", "--format", "112"); out != "/3/0/6/1 = 5\n" {
		t.Fatalf("read /3/0/6/1 = %q", out)
	}
	for name, f := range map[string]uint16{"text": 0, "opaque": 42, "cbor": 60, "senml-json": 110, "senml+cbor": 112,
		"lwm2m-json": 11543, "link": 40, "1541": 0, "TLV": 11542} {
		h.ok("read", "dev1", "/3/0/9", "--format", name)
		if cf := h.lastReq().Req.ContentFormat; cf == nil || *cf != f {
			t.Fatalf("--format %s: %v", name, cf)
		}
	}
	// --json prints the resp as sent.
	out = h.ok("--json", "read", "dev1", "/3/0/0")
	if want := "{\n  \"kind\": \"read\",\n  \"code\": \"CONTENT\",\n  \"node\": {\n    \"kind\": \"singleresource\",\n    \"id\": 0,\n" +
		"    \"type\": \"string\",\n    \"value\": \"Open Mobile Alliance\"\n  }\n}\n"; out != want {
		t.Fatalf("read --json =\n%s\nwant\n%s", out, want)
	}
	if h.busN != 1+1+1+9+1 {
		t.Fatalf("bus opened %d times", h.busN)
	}
}

func TestDeviceCommands(t *testing.T) {
	h := newDevHarness(t)
	for _, tc := range []struct {
		args    []string
		out     string
		request string
	}{
		{[]string{"write", "dev1", "/3/0/13", "1700000000", "--type", "time"}, "CHANGED\n",
			`{"kind":"write","path":"/3/0/13","node":{"kind":"singleresource","id":13,"type":"time","value":1700000000},"mode":"replace","timeout":10000}`},
		{[]string{"write", "dev1", "/3/0/13", "2023-11-14T22:13:20Z", "--type", "time", "--mode", "update", "--format", "senml-cbor"}, "CHANGED\n",
			`{"kind":"write","path":"/3/0/13","contentFormat":112,"node":{"kind":"singleresource","id":13,"type":"time","value":1700000000},"mode":"update","timeout":10000}`},
		{[]string{"write", "dev1", "/1/0/7", "UQ"}, "CHANGED\n",
			`{"kind":"write","path":"/1/0/7","node":{"kind":"singleresource","id":7,"type":"string","value":"UQ"},"mode":"replace","timeout":10000}`},
		{[]string{"write", "--type", "float", "dev1", "/3303/0/5700", "--", "-4.5"}, "CHANGED\n",
			`{"kind":"write","path":"/3303/0/5700","node":{"kind":"singleresource","id":5700,"type":"float","value":-4.5},"mode":"replace","timeout":10000}`},
		{[]string{"write", "dev1", "/3/0/6/1", "7", "--type", "integer"}, "CHANGED\n",
			`{"kind":"write","path":"/3/0/6/1","node":{"kind":"resourceinstance","id":1,"type":"integer","value":7},"mode":"replace","timeout":10000}`},
		{[]string{"write", "dev1", "/5/0/0", "0xCAFE", "--type", "opaque"}, "CHANGED\n",
			`{"kind":"write","path":"/5/0/0","node":{"kind":"singleresource","id":0,"type":"opaque","value":"cafe"},"mode":"replace","timeout":10000}`},
		{[]string{"write", "dev1", "/3/0", "--mode", "update", "--node", device3}, "CHANGED\n",
			`{"kind":"write","path":"/3/0","node":` + device3 + `,"mode":"update","timeout":10000}`},
		{[]string{"execute", "dev1", "/3/0/4"}, "CHANGED\n", `{"kind":"execute","path":"/3/0/4","timeout":10000}`},
		{[]string{"execute", "dev1", "/5/0/2", "--args", "0='x',1"}, "CHANGED\n",
			`{"kind":"execute","path":"/5/0/2","arguments":"0='x',1","timeout":10000}`},
		{[]string{"discover", "dev1", "/3/0"}, "</3/0>\n</3/0/6>;dim=2\n</3/0/9>;gt=50;pmin=10\n", `{"kind":"discover","path":"/3/0","timeout":10000}`},
		{[]string{"create", "dev1", "/3303", "--node", `{"kind":"instance","id":1,"resources":[{"kind":"singleresource","id":5700,"type":"float","value":21.5}]}`},
			"CREATED /3303/1\n",
			`{"kind":"create","path":"/3303","node":{"kind":"instance","id":1,"resources":[{"kind":"singleresource","id":5700,"type":"float","value":21.5}]},"timeout":10000}`},
		{[]string{"delete", "dev1", "/3303/1", "--timeout", "1500ms"}, "DELETED\n", `{"kind":"delete","path":"/3303/1","timeout":1500}`},
		{[]string{"write-attributes", "dev1", "/3/0/9", "--pmin", "10", "--pmax", "60", "--gt", "50", "--lt", "-5", "--st", "0.5", "--unset", "epmin,epmax"},
			"CHANGED\n",
			`{"kind":"writeAttributes","path":"/3/0/9","attributes":{"pmin":10,"pmax":60,"gt":50,"lt":-5,"st":0.5,"unset":["epmin","epmax"]},"timeout":10000}`},
		{[]string{"read-composite", "dev1", "/3/0/9", "/3/0/0", "--format", "senml-json"}, "/3/0/0 = \"Open Mobile Alliance\"\n/3/0/9 = 95\n",
			`{"kind":"readComposite","paths":["/3/0/9","/3/0/0"],"contentFormat":110,"timeout":10000}`},
	} {
		out := h.ok(tc.args...)
		if out != tc.out {
			t.Errorf("%v: output %q, want %q", tc.args, out, tc.out)
		}
		if got := reqJSON(t, h.lastReq()); got != tc.request {
			t.Errorf("%v: request\n%s\nwant\n%s", tc.args, got, tc.request)
		}
	}
	// --node from standard input.
	r := h.run(device3, "write", "dev1", "/3/0", "--node", "-")
	if r.code != 0 || reqJSON(t, h.lastReq()) != `{"kind":"write","path":"/3/0","node":`+device3+`,"mode":"replace","timeout":10000}` {
		t.Fatalf("--node -: %+v %s", r, reqJSON(t, h.lastReq()))
	}
	// --json of a resp without node.
	if out := h.ok("create", "dev1", "/3303", "--json", "--node", `{"kind":"instance","id":1,"resources":[]}`); out != "{\n  \"kind\": \"create\",\n  \"code\": \"CREATED\",\n  \"location\": \"/3303/1\"\n}\n" {
		t.Fatalf("create --json = %q", out)
	}
}

func TestDeviceErrors(t *testing.T) {
	h := newDevHarness(t)
	for _, tc := range []struct {
		msg  string
		args []string
	}{
		{`server error: endpoint "dev9" is not registered`, []string{"read", "dev9", "/3/0/0"}},
		{"device answered NOT_FOUND: no such resource", []string{"read", "dev1", "/4/0"}},
		{"server error: timeout: the device did not answer within 10000 ms", []string{"execute", "dev1", "/3/0/5"}},
		{"device answered NOT_FOUND", []string{"observe", "dev1", "/9/0"}},
	} {
		h.fail(tc.msg, tc.args...)
	}
	// --json prints the device's error resp, and fails.
	r := h.run("", "read", "dev1", "/4/0", "--json")
	if r.code != 1 || !strings.Contains(r.stdout, `"code": "NOT_FOUND"`) || !strings.Contains(r.stderr, "device answered NOT_FOUND") {
		t.Fatalf("read --json of an error: %+v", r)
	}
	n := len(h.dev.Received())
	h.busN = 0
	// Usage errors are found before anything is sent.
	for _, tc := range []struct {
		msg  string
		args []string
	}{
		{"missing arguments: want EP PATH", []string{"read", "dev1"}},
		{`unexpected argument "x"`, []string{"read", "dev1", "/3", "x"}},
		{`path "/3/x"`, []string{"read", "dev1", "/3/x"}},
		{"a read needs at least a object path", []string{"read", "dev1", "/"}},
		{`unknown content format "xml"`, []string{"read", "dev1", "/3", "--format", "xml"}},
		{"missing arguments: want EP PATH VALUE", []string{"write", "dev1", "/3/0/1"}},
		{`value "abc" is not a valid integer`, []string{"write", "dev1", "/3/0/9", "abc", "--type", "integer"}},
		{`value "1.5" is not a valid integer`, []string{"write", "dev1", "/3/0/9", "1.5", "--type", "integer"}},
		{`--type "int"`, []string{"write", "dev1", "/3/0/9", "1", "--type", "int"}},
		{"a value needs a resource or resource instance path", []string{"write", "dev1", "/3/0", "1"}},
		{`mode must be "replace" or "update"`, []string{"write", "dev1", "/3/0/9", "1", "--type", "integer", "--mode", "patch"}},
		{"flag provided but not defined: -5", []string{"write", "dev1", "/3/0/9", "-5", "--type", "integer"}},
		{"--node: node: invalid node JSON", []string{"write", "dev1", "/3/0", "--node", "{"}},
		{"does not fit", []string{"write", "dev1", "/3/0", "--node", `{"kind":"singleresource","id":0,"type":"string","value":"x"}`}},
		{"--node is required", []string{"create", "dev1", "/3303"}},
		{`create needs an "instance" node`, []string{"create", "dev1", "/3303", "--node", `{"kind":"singleresource","id":0,"type":"string","value":"x"}`}},
		{"the value must be quoted", []string{"execute", "dev1", "/3/0/4", "--args", "0=x"}},
		{"execute needs a resource path", []string{"execute", "dev1", "/3/0/4/1"}},
		{"no attributes to write", []string{"write-attributes", "dev1", "/3/0/9"}},
		{"pmax must not be below pmin", []string{"write-attributes", "dev1", "/3/0/9", "--pmin", "10", "--pmax", "5"}},
		{`invalid value "-1" for flag -pmin`, []string{"write-attributes", "dev1", "/3/0/9", "--pmin", "-1"}},
		{`unknown attribute "dim"`, []string{"write-attributes", "dev1", "/3/0/9", "--unset", "dim"}},
		{"missing arguments: want EP PATH...", []string{"read-composite", "dev1"}},
		{"missing arguments: want EP PATH...", []string{"observe", "dev1"}},
		{"a delete needs at least a object instance path", []string{"delete", "dev1", "/3303"}},
		{"empty endpoint name", []string{"read", "", "/3"}},
		{"timeout must be between", []string{"read", "dev1", "/3", "--timeout", "48h"}},
	} {
		h.fail(tc.msg, tc.args...)
	}
	if len(h.dev.Received()) != n || h.busN != 0 {
		t.Fatalf("bad input sent requests (%d) or opened the bus (%d)", len(h.dev.Received())-n, h.busN)
	}
}

func TestDeviceNoInstance(t *testing.T) {
	h := newDevHarness(t)
	h.dev.Stop()
	// The owner is a member but gone, and inst-b answers for it after
	// the direct-ack wait; with no instance at all, no ack.
	h.fail(`server error: endpoint "dev1" is not registered`, "read", "dev1", "/3/0/0")
	h2 := newHarness(t)
	h2.env[clicmd.RedisEnv] = "redis://env/0"
	var out, errb bytes.Buffer
	p := &clicmd.Program{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return h2.env[k] },
		Open:          func(context.Context, string, string) (store.Store, error) { return memstore.New(time.Second), nil },
		Bus:           func(context.Context, store.Store) (northbound.Bus, error) { return northbound.NewBroker(), nil },
		ClientOptions: nbclient.Options{AckTimeout: 200 * time.Millisecond}}
	if code := p.Run(context.Background(), []string{"read", "dev1", "/3"}); code != 1 || !strings.Contains(errb.String(), "no instance acknowledged the request") {
		t.Fatalf("no instance: %d %q", code, errb.String())
	}
	// The default bus opener needs a Redis store.
	p.Bus = nil
	errb.Reset()
	if code := p.Run(context.Background(), []string{"read", "dev1", "/3"}); code != 1 || !strings.Contains(errb.String(), "has no Redis connection") {
		t.Fatalf("memstore bus: %d %q", code, errb.String())
	}
}

func TestDeviceObserve(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		h := newDevHarness(t)
		var out, errb syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int)
		args := []string{"observe", "dev1", "/3/0/9"}
		if asJSON {
			args = append(args, "--json")
		}
		go func() { done <- h.program("", &out, &errb).Run(ctx, args) }()
		tickets := h.dev.WaitObservations(t, 1)
		for i, v := range []int64{96, 97} {
			n := node.NewSingle(9, node.IntValue(v))
			if err := h.dev.Notify(context.Background(), tickets[0], northbound.Resp{Code: "CONTENT", Node: &node.Any{Node: n},
				Timestamp: time.Date(2026, 3, 1, 12, 0, i, 0, time.UTC).UnixMilli()}); err != nil {
				t.Fatal(err)
			}
		}
		want := "/3/0/9 = 95\n/3/0/9 = 96  (at 2026-03-01T12:00:00Z)\n/3/0/9 = 97  (at 2026-03-01T12:00:01Z)\n"
		if asJSON {
			want = `{"kind":"observe","code":"CONTENT","node":{"kind":"singleresource","id":9,"type":"integer","value":95}}` + "\n" +
				`{"kind":"observe","code":"CONTENT","node":{"kind":"singleresource","id":9,"type":"integer","value":96},"observe":true,"timestamp":1772366400000}` + "\n" +
				`{"kind":"observe","code":"CONTENT","node":{"kind":"singleresource","id":9,"type":"integer","value":97},"observe":true,"timestamp":1772366401000}` + "\n"
		}
		deadline := time.Now().Add(10 * time.Second)
		for out.String() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := out.String(); got != want {
			t.Fatalf("observe output =\n%s\nwant\n%s", got, want)
		}
		cancel() // Ctrl-C
		if code := <-done; code != 0 || errb.String() != "" {
			t.Fatalf("observe exit %d, stderr %q", code, errb.String())
		}
		h.dev.WaitObservations(t, 0)
		last := h.lastReq()
		if last.Req.Kind != "cancelObserve" || last.Req.ObserveTicket != tickets[0] {
			t.Fatalf("last request %+v", last)
		}
	}
}

// TestDeviceRedis runs read and write through the default bus opener, on
// a real Redis store.
func TestDeviceRedis(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	st, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "cli:"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Announce(ctx, store.Member{ID: "inst-a", State: store.StateActive}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.SetOwner(ctx, "dev1", "inst-a"); err != nil {
		t.Fatal(err)
	}
	dev := nbtest.New(northbound.NewRedisBus(st.Client()), "inst-a", nil, "dev1")
	dev.Handler = fakeDevice(t)
	dev.Start(t)
	var out, errb bytes.Buffer
	p := &clicmd.Program{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	if code := p.Run(ctx, []string{"--redis", srv.URL, "--key-prefix", "cli:", "read", "dev1", "/3/0/0"}); code != 0 ||
		out.String() != "/3/0/0 = \"Open Mobile Alliance\"\n" {
		t.Fatalf("read: %d %q %q", code, out.String(), errb.String())
	}
	if got := dev.Received(); len(got) != 1 || got[0].Channel != "LESHAN_REQ:inst-a" {
		t.Fatalf("received %+v", got)
	}
}
