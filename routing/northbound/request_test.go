package northbound_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

const seedTicket = "8c90592249c74a9b8a2da5754145dcc0"

// reqJSON wraps a "req" member into a LESHAN_REQ document.
func reqJSON(req string) string {
	return `{"ep":"myEndpoint","ticket":"` + seedTicket + `","req":` + req + `}`
}

const (
	nodeManufacturer = `{"kind":"singleresource","id":0,"type":"string","value":"Open Mobile Alliance"}`
	nodeTime         = `{"kind":"singleresource","id":13,"type":"time","value":1700000000}`
	nodeRI           = `{"kind":"resourceinstance","id":1,"type":"integer","value":5}`
	nodeInstance0    = `{"kind":"instance","id":0,"resources":[` + nodeTime + `]}`
	nodeInstance1    = `{"kind":"instance","id":1,"resources":[{"kind":"singleresource","id":5700,"type":"float","value":21.5}]}`
	nodeObject       = `{"kind":"object","id":3,"instances":[` + nodeInstance0 + `]}`
)

func u16(v uint16) *uint16 { return &v }
func u32(v uint32) *uint32 { return &v }
func i64(v int64) *int64   { return &v }
func f64(v float64) *float64 {
	return &v
}

func mustNode(t *testing.T, s string) *node.Any {
	t.Helper()
	n, err := node.Unmarshal([]byte(s))
	if err != nil {
		t.Fatalf("node %s: %v", s, err)
	}
	return &node.Any{Node: n}
}

// sameReq compares two parsed requests by their JSON form (nodes have no
// comparable Go form).
func sameReq(t *testing.T, got, want *northbound.Request) bool {
	t.Helper()
	a, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(a, b)
}

func TestParseRequestValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want northbound.Req // Kind is filled from the case when empty
	}{
		{"seed example, legacy text format", reqJSON(`{"kind":"read","path":"/3/0/1","contentFormat":1541}`),
			northbound.Req{Kind: "read", Path: "/3/0/1", ContentFormat: u16(0)}},
		{"read object", reqJSON(`{"kind":"read","path":"/3"}`), northbound.Req{Kind: "read", Path: "/3"}},
		{"read resource instance, tlv", reqJSON(`{"kind":"read","path":"/3/0/6/1","contentFormat":11542}`),
			northbound.Req{Kind: "read", Path: "/3/0/6/1", ContentFormat: u16(11542)}},
		{"read, timeout", reqJSON(`{"kind":"read","path":"/3/0","timeout":1}`),
			northbound.Req{Kind: "read", Path: "/3/0", Timeout: i64(1)}},
		{"read, max timeout", reqJSON(`{"kind":"read","path":"/3/0","timeout":86400000}`),
			northbound.Req{Kind: "read", Path: "/3/0", Timeout: i64(northbound.MaxTimeoutMs)}},
		{"discover", reqJSON(`{"kind":"discover","path":"/3/0"}`), northbound.Req{Kind: "discover", Path: "/3/0"}},
		{"observe", reqJSON(`{"kind":"observe","path":"/3303/0/5700","contentFormat":112}`),
			northbound.Req{Kind: "observe", Path: "/3303/0/5700", ContentFormat: u16(112)}},
		{"delete", reqJSON(`{"kind":"delete","path":"/3303/1"}`), northbound.Req{Kind: "delete", Path: "/3303/1"}},
		{"execute", reqJSON(`{"kind":"execute","path":"/3/0/4"}`), northbound.Req{Kind: "execute", Path: "/3/0/4"}},
		{"execute, arguments", reqJSON(`{"kind":"execute","path":"/5/0/2","arguments":"0='abc',1,2=''"}`),
			northbound.Req{Kind: "execute", Path: "/5/0/2", Arguments: "0='abc',1,2=''"}},
		{"write resource, default mode", reqJSON(`{"kind":"write","path":"/3/0/13","node":` + nodeTime + `}`),
			northbound.Req{Kind: "write", Path: "/3/0/13", Mode: "replace", Node: mustNode(t, nodeTime)}},
		{"write instance, update, legacy tlv", reqJSON(`{"kind":"write","path":"/3/0","mode":"update","contentFormat":1542,"node":` + nodeInstance0 + `}`),
			northbound.Req{Kind: "write", Path: "/3/0", Mode: "update", ContentFormat: u16(11542), Node: mustNode(t, nodeInstance0)}},
		{"write resource instance, legacy json", reqJSON(`{"kind":"write","path":"/3/0/6/1","mode":"replace","contentFormat":1543,"node":` + nodeRI + `}`),
			northbound.Req{Kind: "write", Path: "/3/0/6/1", Mode: "replace", ContentFormat: u16(11543), Node: mustNode(t, nodeRI)}},
		{"create on object", reqJSON(`{"kind":"create","path":"/3303","node":` + nodeInstance1 + `}`),
			northbound.Req{Kind: "create", Path: "/3303", Node: mustNode(t, nodeInstance1)}},
		{"create on instance, legacy opaque", reqJSON(`{"kind":"create","path":"/3303/1","contentFormat":1544,"node":` + nodeInstance1 + `}`),
			northbound.Req{Kind: "create", Path: "/3303/1", ContentFormat: u16(42), Node: mustNode(t, nodeInstance1)}},
		{"writeAttributes", reqJSON(`{"kind":"writeAttributes","path":"/3303/0/5700","attributes":{"pmin":10,"pmax":60,"gt":30.5,"lt":-5,"st":0.5,"epmin":1,"epmax":2}}`),
			northbound.Req{Kind: "writeAttributes", Path: "/3303/0/5700", Attributes: &northbound.Attributes{
				Pmin: u32(10), Pmax: u32(60), Gt: f64(30.5), Lt: f64(-5), St: f64(0.5), Epmin: u32(1), Epmax: u32(2)}}},
		{"writeAttributes, unset only", reqJSON(`{"kind":"writeAttributes","path":"/3","attributes":{"unset":["pmin","st"]}}`),
			northbound.Req{Kind: "writeAttributes", Path: "/3", Attributes: &northbound.Attributes{Unset: []string{"pmin", "st"}}}},
		{"writeAttributes, pmin equals pmax", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"pmin":5,"pmax":5}}`),
			northbound.Req{Kind: "writeAttributes", Path: "/3/0", Attributes: &northbound.Attributes{Pmin: u32(5), Pmax: u32(5)}}},
		{"cancelObserve by path", reqJSON(`{"kind":"cancelObserve","path":"/3303/0/5700"}`),
			northbound.Req{Kind: "cancelObserve", Path: "/3303/0/5700"}},
		{"cancelObserve by ticket", reqJSON(`{"kind":"cancelObserve","observeTicket":"abc-123"}`),
			northbound.Req{Kind: "cancelObserve", ObserveTicket: "abc-123"}},
		{"readComposite", reqJSON(`{"kind":"readComposite","paths":["/3/0/0","/3303","/1/0/1"],"contentFormat":110}`),
			northbound.Req{Kind: "readComposite", Paths: []string{"/3/0/0", "/3303", "/1/0/1"}, ContentFormat: u16(110)}},
		{"readComposite, root", reqJSON(`{"kind":"readComposite","paths":["/"]}`),
			northbound.Req{Kind: "readComposite", Paths: []string{"/"}}},
		{"observeComposite", reqJSON(`{"kind":"observeComposite","paths":["/3303/0/5700","/3/0/9"]}`),
			northbound.Req{Kind: "observeComposite", Paths: []string{"/3303/0/5700", "/3/0/9"}}},
		{"writeComposite", reqJSON(`{"kind":"writeComposite","contentFormat":112,"nodes":{"/3/0/13":` + nodeTime + `,"/3/0/6/1":` + nodeRI + `}}`),
			northbound.Req{Kind: "writeComposite", ContentFormat: u16(112), Nodes: map[string]node.Any{
				"/3/0/13": *mustNode(t, nodeTime), "/3/0/6/1": *mustNode(t, nodeRI)}}},
		{"unknown members ignored (top level)", `{"ep":"e","ticket":"t","x":{"y":[1]},"req":{"kind":"read","path":"/3"}}`,
			northbound.Req{Kind: "read", Path: "/3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := northbound.ParseRequest([]byte(tc.in))
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			var top struct {
				Ep     string `json:"ep"`
				Ticket string `json:"ticket"`
			}
			_ = json.Unmarshal([]byte(tc.in), &top)
			want := &northbound.Request{Endpoint: top.Ep, Ticket: top.Ticket, Req: tc.want}
			if !sameReq(t, got, want) {
				a, _ := json.Marshal(got)
				b, _ := json.Marshal(want)
				t.Fatalf("got  %s\nwant %s", a, b)
			}
			if tc.want.Timeout == nil && got.Req.TimeoutMs() != northbound.DefaultTimeoutMs {
				t.Fatalf("TimeoutMs = %d", got.Req.TimeoutMs())
			}
			if tc.want.Timeout != nil && got.Req.TimeoutMs() != *tc.want.Timeout {
				t.Fatalf("TimeoutMs = %d", got.Req.TimeoutMs())
			}
			// A parsed request marshals to a document that parses to itself.
			b, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			again, err := northbound.ParseRequest(b)
			if err != nil || !sameReq(t, again, got) {
				t.Fatalf("round trip of %s: %+v, %v", b, again, err)
			}
		})
	}
}

func TestParseRequestInvalid(t *testing.T) {
	long := strings.Repeat("a", northbound.MaxTicketLen+1)
	manyPaths := `["/3"` + strings.Repeat(`,"/3"`, northbound.MaxPaths) + `]`
	for _, tc := range []struct {
		name   string
		in     string
		msg    string // in the error
		ticket string // expected RequestError.Ticket
	}{
		// Documents.
		{"empty", ``, "not a valid request object", ""},
		{"not JSON", `hello`, "not a valid request object", ""},
		{"array", `[1,2]`, "not a valid request object", ""},
		{"null", `null`, "not a valid request object", ""},
		{"truncated", `{"ep":"e","ticket":"t1","req":{"kind":"read"`, "not a valid request object", "t1"},
		{"trailing data", `{"ep":"e","ticket":"t1","req":{"kind":"read","path":"/3"}} x`, "not a valid request object", "t1"},
		{"duplicate member", `{"ep":"e","ticket":"t1","ep":"f","req":{"kind":"read","path":"/3"}}`, "not a valid request object", "t1"},
		{"ep not a string, ticket after", `{"ep":5,"ticket":"t1","req":{"kind":"read","path":"/3"}}`, "not a valid request object", "t1"},
		{"ticket not a string", `{"ep":"e","ticket":5,"req":{"kind":"read","path":"/3"}}`, "not a valid request object", ""},
		{"bad JSON in req, ticket first", `{"ticket":"t1","ep":"e","req":{"kind":}}`, "not a valid request object", "t1"},
		{"bad JSON, invalid ticket not carried", `{"ticket":"a b","ep":"e","req":{"kind":}}`, "not a valid request object", ""},
		{"bad JSON, long ticket not carried", `{"ticket":"` + long + `","ep":"e","req":{"kind":}}`, "not a valid request object", ""},
		// Ticket.
		{"missing ticket", `{"ep":"e","req":{"kind":"read","path":"/3"}}`, `missing "ticket"`, ""},
		{"empty ticket", `{"ep":"e","ticket":"","req":{"kind":"read","path":"/3"}}`, `missing "ticket"`, ""},
		{"null ticket", `{"ep":"e","ticket":null,"req":{"kind":"read","path":"/3"}}`, `missing "ticket"`, ""},
		{"ticket with space", `{"ep":"e","ticket":"a b","req":{"kind":"read","path":"/3"}}`, "invalid ticket", ""},
		{"ticket with control", `{"ep":"e","ticket":"a\u0001","req":{"kind":"read","path":"/3"}}`, "invalid ticket", ""},
		{"ticket not ASCII", `{"ep":"e","ticket":"é","req":{"kind":"read","path":"/3"}}`, "invalid ticket", ""},
		{"ticket too long", `{"ep":"e","ticket":"` + long + `","req":{"kind":"read","path":"/3"}}`, "invalid ticket", ""},
		// Endpoint and req.
		{"missing ep", `{"ticket":"t1","req":{"kind":"read","path":"/3"}}`, `missing "ep"`, "t1"},
		{"empty ep", `{"ticket":"t1","ep":"","req":{"kind":"read","path":"/3"}}`, `missing "ep"`, "t1"},
		{"ep too long", `{"ticket":"t1","ep":"` + strings.Repeat("e", northbound.MaxEndpointLen+1) + `","req":{"kind":"read","path":"/3"}}`, "invalid endpoint name", "t1"},
		{"missing req", `{"ticket":"t1","ep":"e"}`, `missing "req"`, "t1"},
		{"null req", `{"ticket":"t1","ep":"e","req":null}`, `missing "req"`, "t1"},
		{"req not an object", `{"ticket":"t1","ep":"e","req":"read"}`, `invalid "req"`, "t1"},
		{"unknown req member", reqJSON(`{"kind":"read","path":"/3","bogus":1}`), `invalid "req"`, seedTicket},
		{"path not a string", reqJSON(`{"kind":"read","path":3}`), `invalid "req"`, seedTicket},
		{"bad node JSON", reqJSON(`{"kind":"write","path":"/3/0/13","node":{"kind":"singleresource","id":13,"type":"time","value":"x"}}`), `invalid "req"`, seedTicket},
		// Kind.
		{"missing kind", reqJSON(`{"path":"/3"}`), `missing "kind"`, seedTicket},
		{"unknown kind", reqJSON(`{"kind":"reboot","path":"/3"}`), `unknown kind "reboot"`, seedTicket},
		// Timeout and content format.
		{"timeout zero", reqJSON(`{"kind":"read","path":"/3","timeout":0}`), "timeout must be between 1 and 86400000 ms", seedTicket},
		{"timeout negative", reqJSON(`{"kind":"read","path":"/3","timeout":-1}`), "timeout must be", seedTicket},
		{"timeout too big", reqJSON(`{"kind":"read","path":"/3","timeout":86400001}`), "timeout must be", seedTicket},
		{"timeout fraction", reqJSON(`{"kind":"read","path":"/3","timeout":1.5}`), `invalid "req"`, seedTicket},
		{"content format too big", reqJSON(`{"kind":"read","path":"/3","contentFormat":65536}`), `invalid "req"`, seedTicket},
		// Paths.
		{"read missing path", reqJSON(`{"kind":"read"}`), `missing "path"`, seedTicket},
		{"read root", reqJSON(`{"kind":"read","path":"/"}`), "a read needs at least a object path", seedTicket},
		{"read trailing slash", reqJSON(`{"kind":"read","path":"/3/"}`), `path "/3/"`, seedTicket},
		{"read leading zero", reqJSON(`{"kind":"read","path":"/03"}`), `path "/03"`, seedTicket},
		{"read id too big", reqJSON(`{"kind":"read","path":"/65535"}`), `path "/65535"`, seedTicket},
		{"read too deep", reqJSON(`{"kind":"read","path":"/3/0/6/1/2"}`), `path "/3/0/6/1/2"`, seedTicket},
		{"read no slash", reqJSON(`{"kind":"read","path":"3/0"}`), `path "3/0"`, seedTicket},
		{"discover root", reqJSON(`{"kind":"discover","path":"/"}`), "needs at least", seedTicket},
		{"observe missing path", reqJSON(`{"kind":"observe"}`), `missing "path"`, seedTicket},
		{"delete object", reqJSON(`{"kind":"delete","path":"/3303"}`), "a delete needs at least a object instance path", seedTicket},
		{"execute instance", reqJSON(`{"kind":"execute","path":"/3/0"}`), "needs at least a resource path", seedTicket},
		{"execute resource instance", reqJSON(`{"kind":"execute","path":"/3/0/4/0"}`), "execute needs a resource path", seedTicket},
		// Execute arguments.
		{"arguments name not a digit", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"a='x'"}`), "the name must be one digit", seedTicket},
		{"arguments name two digits", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"12"}`), "the name must be one digit", seedTicket},
		{"arguments empty item", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"0,"}`), "the name must be one digit", seedTicket},
		{"arguments unquoted", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"0=x"}`), "must be quoted", seedTicket},
		{"arguments half quoted", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"0='x"}`), "must be quoted", seedTicket},
		{"arguments inner quote", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"0='a'b'"}`), "must be quoted", seedTicket},
		{"arguments too long", reqJSON(`{"kind":"execute","path":"/3/0/4","arguments":"0='` + strings.Repeat("x", 1024) + `'"}`), "too long", seedTicket},
		// Write.
		{"write object", reqJSON(`{"kind":"write","path":"/3","node":` + nodeObject + `}`), "needs at least a object instance path", seedTicket},
		{"write missing node", reqJSON(`{"kind":"write","path":"/3/0/13"}`), `missing "node"`, seedTicket},
		{"write null node", reqJSON(`{"kind":"write","path":"/3/0/13","node":null}`), `missing "node"`, seedTicket},
		{"write bad mode", reqJSON(`{"kind":"write","path":"/3/0/13","mode":"patch","node":` + nodeTime + `}`), `mode must be "replace" or "update"`, seedTicket},
		{"write kind mismatch", reqJSON(`{"kind":"write","path":"/3/0","node":` + nodeTime + `}`), "a singleresource node does not fit a object instance path", seedTicket},
		{"write kind mismatch deeper", reqJSON(`{"kind":"write","path":"/3/0/13","node":` + nodeInstance0 + `}`), "does not fit", seedTicket},
		{"write resource instance with resource", reqJSON(`{"kind":"write","path":"/3/0/6/1","node":` + nodeTime + `}`), "does not fit", seedTicket},
		{"write id mismatch", reqJSON(`{"kind":"write","path":"/3/0/14","node":` + nodeTime + `}`), "id 13 does not match the path", seedTicket},
		{"write instance id mismatch", reqJSON(`{"kind":"write","path":"/3/1","node":` + nodeInstance0 + `}`), "id 0 does not match the path", seedTicket},
		// Create.
		{"create missing node", reqJSON(`{"kind":"create","path":"/3303"}`), `missing "node"`, seedTicket},
		{"create resource node", reqJSON(`{"kind":"create","path":"/3303","node":` + nodeTime + `}`), `create needs an "instance" node`, seedTicket},
		{"create object node", reqJSON(`{"kind":"create","path":"/3303","node":` + nodeObject + `}`), `create needs an "instance" node`, seedTicket},
		{"create on resource", reqJSON(`{"kind":"create","path":"/3303/0/1","node":` + nodeInstance1 + `}`), "create needs an object or object instance path", seedTicket},
		{"create on root", reqJSON(`{"kind":"create","path":"/","node":` + nodeInstance1 + `}`), "needs at least", seedTicket},
		// Attributes.
		{"writeAttributes missing", reqJSON(`{"kind":"writeAttributes","path":"/3/0"}`), `missing "attributes"`, seedTicket},
		{"writeAttributes empty", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{}}`), "no attributes to write", seedTicket},
		{"writeAttributes unknown", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"dim":1}}`), `invalid "req"`, seedTicket},
		{"writeAttributes unknown unset", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"unset":["dim"]}}`), `unknown attribute "dim" in unset`, seedTicket},
		{"writeAttributes negative st", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"st":-1}}`), "st must not be negative", seedTicket},
		{"writeAttributes pmax below pmin", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"pmin":10,"pmax":5}}`), "pmax must not be below pmin", seedTicket},
		{"writeAttributes epmax below epmin", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"epmin":10,"epmax":5}}`), "epmax must not be below epmin", seedTicket},
		{"writeAttributes negative pmin", reqJSON(`{"kind":"writeAttributes","path":"/3/0","attributes":{"pmin":-1}}`), `invalid "req"`, seedTicket},
		{"writeAttributes root", reqJSON(`{"kind":"writeAttributes","path":"/","attributes":{"pmin":1}}`), "needs at least", seedTicket},
		// cancelObserve.
		{"cancelObserve nothing", reqJSON(`{"kind":"cancelObserve"}`), `cancelObserve needs "path" or "observeTicket"`, seedTicket},
		{"cancelObserve bad ticket", reqJSON(`{"kind":"cancelObserve","observeTicket":"a b"}`), "invalid observeTicket", seedTicket},
		{"cancelObserve bad path", reqJSON(`{"kind":"cancelObserve","path":"/x"}`), `path "/x"`, seedTicket},
		// Composite.
		{"readComposite no paths", reqJSON(`{"kind":"readComposite"}`), `missing "paths"`, seedTicket},
		{"readComposite empty paths", reqJSON(`{"kind":"readComposite","paths":[]}`), `missing "paths"`, seedTicket},
		{"readComposite bad path", reqJSON(`{"kind":"readComposite","paths":["/3","/a"]}`), `path "/a"`, seedTicket},
		{"readComposite too many", reqJSON(`{"kind":"readComposite","paths":` + manyPaths + `}`), "more than 256 paths", seedTicket},
		{"observeComposite no paths", reqJSON(`{"kind":"observeComposite","path":"/3"}`), `missing "paths"`, seedTicket},
		{"writeComposite no nodes", reqJSON(`{"kind":"writeComposite"}`), `missing "nodes"`, seedTicket},
		{"writeComposite instance path", reqJSON(`{"kind":"writeComposite","nodes":{"/3/0":` + nodeInstance0 + `}}`), "needs resource or resource instance paths", seedTicket},
		{"writeComposite bad path", reqJSON(`{"kind":"writeComposite","nodes":{"/3/0/x":` + nodeTime + `}}`), `path "/3/0/x"`, seedTicket},
		{"writeComposite null node", reqJSON(`{"kind":"writeComposite","nodes":{"/3/0/13":null}}`), "missing node", seedTicket},
		{"writeComposite id mismatch", reqJSON(`{"kind":"writeComposite","nodes":{"/3/0/12":` + nodeTime + `}}`), "does not match the path", seedTicket},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := northbound.ParseRequest([]byte(tc.in))
			if err == nil {
				b, _ := json.Marshal(got)
				t.Fatalf("accepted: %s", b)
			}
			if got != nil {
				t.Fatalf("non-nil request with error %v", err)
			}
			if !errors.Is(err, northbound.ErrBadRequest) {
				t.Fatalf("%v does not wrap ErrBadRequest", err)
			}
			if !strings.HasPrefix(err.Error(), "bad request: ") || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q, want it to contain %q", err, tc.msg)
			}
			var re *northbound.RequestError
			if !errors.As(err, &re) {
				t.Fatalf("%T is not a *RequestError", err)
			}
			if re.Ticket != tc.ticket {
				t.Fatalf("RequestError.Ticket = %q, want %q", re.Ticket, tc.ticket)
			}
		})
	}
}

func TestRequestErrorEndpoint(t *testing.T) {
	_, err := northbound.ParseRequest([]byte(reqJSON(`{"kind":"read"}`)))
	var re *northbound.RequestError
	if !errors.As(err, &re) || re.Endpoint != "myEndpoint" || re.Ticket != seedTicket || errors.Unwrap(re) == nil {
		t.Fatalf("%#v", err)
	}
}

func TestKinds(t *testing.T) {
	k := northbound.Kinds()
	if len(k) != 12 || k[0] != northbound.KindRead || k[11] != northbound.KindObserveComposite {
		t.Fatalf("Kinds() = %v", k)
	}
	k[0] = "x"
	if northbound.Kinds()[0] != northbound.KindRead {
		t.Fatal("Kinds returns its internal slice")
	}
	// Every kind is known to ParseRequest: its error is about members,
	// not "unknown kind".
	for _, kind := range northbound.Kinds() {
		_, err := northbound.ParseRequest([]byte(reqJSON(`{"kind":"` + kind + `"}`)))
		if err == nil || strings.Contains(err.Error(), "unknown kind") {
			t.Errorf("%s: %v", kind, err)
		}
	}
}

func TestNormalizeFormat(t *testing.T) {
	for in, want := range map[uint16]uint16{1541: 0, 1542: 11542, 1543: 11543, 1544: 42, 0: 0, 40: 40, 110: 110, 112: 112, 11542: 11542, 1545: 1545} {
		if got := northbound.NormalizeFormat(in); got != want {
			t.Errorf("NormalizeFormat(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestAttributesQuery(t *testing.T) {
	a := northbound.Attributes{Pmin: u32(10), Pmax: u32(60), Gt: f64(30.5), Lt: f64(-5), St: f64(1e-7),
		Epmin: u32(1), Epmax: u32(2), Unset: []string{"st", "gt"}}
	want := []string{"pmin=10", "pmax=60", "gt=30.5", "lt=-5", "st=1e-7", "epmin=1", "epmax=2", "gt", "st"}
	if got := a.Query(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Query = %q, want %q", got, want)
	}
	if a.Unset[0] != "st" {
		t.Fatal("Query sorted the caller's Unset")
	}
	if got := (&northbound.Attributes{}).Query(); len(got) != 0 {
		t.Fatalf("empty Query = %q", got)
	}
}

// compact removes insignificant white space from a JSON document.
func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("compact %s: %v", s, err)
	}
	return b.String()
}

// The seed's examples (leshan-cluster-wiki, Request/Response), with quoted
// member names and without trailing commas.
const (
	seedRequest = `{
  "ep":"myEndpoint",
  "ticket":"8c90592249c74a9b8a2da5754145dcc0",
  "req":{
    "kind":"read",
    "path":"/3/0/1",
    "contentFormat":1541
  }
}`
	seedAck = `{
  "ticket":"8c90592249c74a9b8a2da5754145dcc0",
  "ack":true
}`
	seedErr = `{
  "ticket":"8c90592249c74a9b8a2da5754145dcc0",
  "err":{
    "errorMessage":"an error message"
  }
}`
	seedResp = `{
  "ticket":"8c90592249c74a9b8a2da5754145dcc0",
  "resp":{
    "kind": "read",
    "code": "CONTENT",
    "node": {
        "kind":"singleresource",
        "id":1,
        "type": "string",
        "value": "Lightweight M2M Client"
    }
  }
}`
	seedRespError = `{
  "ticket":"8c90592249c74a9b8a2da5754145dcc0",
  "resp":{
    "kind": "read",
    "code": "NOT_FOUND",
    "errorMessage":"a custom CoAP error message"
  }
}`
)

func TestSeedRequest(t *testing.T) {
	r, err := northbound.ParseRequest([]byte(seedRequest))
	if err != nil {
		t.Fatal(err)
	}
	if r.Endpoint != "myEndpoint" || r.Ticket != seedTicket || r.Req.Kind != northbound.KindRead ||
		r.Req.Path != "/3/0/1" || r.Req.ContentFormat == nil || *r.Req.ContentFormat != 0 {
		t.Fatalf("%+v", r)
	}
	b, _ := json.Marshal(r)
	want := `{"ep":"myEndpoint","ticket":"8c90592249c74a9b8a2da5754145dcc0","req":{"kind":"read","path":"/3/0/1","contentFormat":0}}`
	if string(b) != want {
		t.Fatalf("marshal = %s\nwant      %s", b, want)
	}
}

// TestSeedResponses checks that the seed's LESHAN_RESP examples parse and
// that the Go values marshal back to exactly the seed's JSON.
func TestSeedResponses(t *testing.T) {
	manufacturer := node.NewSingle(1, node.StringValue("Lightweight M2M Client"))
	for _, tc := range []struct {
		name string
		seed string
		want northbound.Response
	}{
		{"ack", seedAck, northbound.Response{Ticket: seedTicket, Ack: true}},
		{"err", seedErr, northbound.Response{Ticket: seedTicket, Err: &northbound.ErrorMsg{ErrorMessage: "an error message"}}},
		{"resp", seedResp, northbound.Response{Ticket: seedTicket, Resp: &northbound.Resp{Kind: "read", Code: "CONTENT", Node: &node.Any{Node: manufacturer}}}},
		{"resp with device error", seedRespError, northbound.Response{Ticket: seedTicket, Resp: &northbound.Resp{Kind: "read", Code: "NOT_FOUND", ErrorMessage: "a custom CoAP error message"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != compact(t, tc.seed) {
				t.Fatalf("marshal = %s\nseed      %s", b, compact(t, tc.seed))
			}
			got, err := northbound.ParseResponse([]byte(tc.seed))
			if err != nil {
				t.Fatal(err)
			}
			b2, err := json.Marshal(got)
			if err != nil || string(b2) != string(b) {
				t.Fatalf("parse+marshal = %s (%v)", b2, err)
			}
			if tc.want.Resp != nil && tc.want.Resp.Node != nil && !node.Equal(got.Resp.Node.Node, tc.want.Resp.Node.Node) {
				t.Fatalf("node = %v", got.Resp.Node.Node)
			}
		})
	}
}

// TestResponseShapes round-trips the resp shapes the cluster adds to the
// seed's: composite nodes, discover links, create location, notifications.
func TestResponseShapes(t *testing.T) {
	for _, s := range []string{
		`{"ticket":"t","resp":{"kind":"readComposite","code":"CONTENT","nodes":{"/3/0/0":` + nodeManufacturer + `,"/3/0/13":` + nodeTime + `}}}`,
		`{"ticket":"t","resp":{"kind":"discover","code":"CONTENT","objectLinks":[{"url":"/3/0","at":{}},{"url":"/3/0/6","at":{"dim":"2"}}]}}`,
		`{"ticket":"t","resp":{"kind":"create","code":"CREATED","location":"/3303/1"}}`,
		`{"ticket":"t","resp":{"kind":"write","code":"CHANGED"}}`,
		`{"ticket":"t","resp":{"kind":"execute","code":"METHOD_NOT_ALLOWED","errorMessage":"not executable"}}`,
		`{"ticket":"t","resp":{"kind":"observe","code":"CONTENT","node":` + nodeTime + `}}`,
		`{"ticket":"t","resp":{"kind":"observe","code":"CONTENT","node":` + nodeTime + `,"observe":true,"timestamp":1700000000123}}`,
		`{"ticket":"t","resp":{"kind":"observeComposite","code":"CONTENT","nodes":{"/3/0/13":` + nodeTime + `},"observe":true}}`,
		`{"ticket":"t","resp":{"kind":"read","code":"CONTENT","node":` + nodeObject + `}}`,
		`{"ticket":"t","err":{"errorMessage":"endpoint \"dev1\" is not registered"}}`,
		`{"ticket":"t","err":{"errorMessage":""}}`,
	} {
		r, err := northbound.ParseResponse([]byte(s))
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		b, err := json.Marshal(r)
		if err != nil || string(b) != s {
			t.Fatalf("round trip\n got %s (%v)\nwant %s", b, err, s)
		}
	}
}

func TestParseResponseInvalid(t *testing.T) {
	for _, s := range []string{
		``, `x`, `[]`, `null`, `{}`,
		`{"ticket":"t"}`,
		`{"ticket":"","ack":true}`,
		`{"ack":true}`,
		`{"ticket":"t","ack":false}`,
		`{"ticket":"t","err":null}`,
		`{"ticket":"t","resp":null}`,
		`{"ticket":"t","ack":true,"err":{"errorMessage":"x"}}`,
		`{"ticket":"t","ack":true,"resp":{"kind":"read","code":"CONTENT"}}`,
		`{"ticket":"t","err":{"errorMessage":"x"},"resp":{"kind":"read","code":"CONTENT"}}`,
		`{"ticket":5,"ack":true}`,
		`{"ticket":"t","ack":"yes"}`,
		`{"ticket":"t","resp":{"kind":"read","code":"CONTENT","node":{"kind":"bogus"}}}`,
		`{"ticket":"t","resp":{"kind":"read","code":"CONTENT","node":{"kind":"singleresource","id":1,"type":"integer","value":"x"}}}`,
		`{"ticket":"t","ack":true} {}`,
	} {
		if r, err := northbound.ParseResponse([]byte(s)); err == nil {
			t.Errorf("%s: accepted as %+v", s, r)
		} else if !strings.HasPrefix(err.Error(), "northbound: response") {
			t.Errorf("%s: error %q", s, err)
		}
	}
}
