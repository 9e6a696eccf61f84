package node

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
)

func TestParsePath(t *testing.T) {
	good := map[string]struct {
		level Level
		ids   []uint16
	}{
		"/":            {LevelRoot, nil},
		"/3":           {LevelObject, []uint16{3}},
		"/3/0":         {LevelInstance, []uint16{3, 0}},
		"/3/0/1":       {LevelResource, []uint16{3, 0, 1}},
		"/3/0/6/1":     {LevelResourceInstance, []uint16{3, 0, 6, 1}},
		"/65534/65534": {LevelInstance, []uint16{65534, 65534}},
	}
	for s, want := range good {
		p, err := ParsePath(s)
		if err != nil {
			t.Errorf("ParsePath(%q): %v", s, err)
			continue
		}
		if p.Level() != want.level || p.Len() != len(want.ids) || p.String() != s {
			t.Errorf("ParsePath(%q) = %v level %v", s, p, p.Level())
		}
		for i, id := range want.ids {
			if p.ID(i) != id {
				t.Errorf("ParsePath(%q).ID(%d) = %d", s, i, p.ID(i))
			}
		}
		if q := MustPath(want.ids...); q != p {
			t.Errorf("MustPath(%v) = %v, want %v", want.ids, q, p)
		}
	}
	bad := []string{"", "3/0", "//", "/3/", "/3//0", "/65535", "/70000", "/-1", "/+1", "/03", "/3/0/1/2/3",
		"/a", "/3/0/1 ", " /3", "/1e3", "/0x10", "/3/0/1/"}
	for _, s := range bad {
		if p, err := ParsePath(s); err == nil {
			t.Errorf("ParsePath(%q) = %v, want error", s, p)
		} else if !errors.Is(err, ErrInvalidPath) {
			t.Errorf("ParsePath(%q): error %v does not wrap ErrInvalidPath", s, err)
		}
	}
	if _, err := NewPath(1, 2, 3, 4, 5); err == nil {
		t.Error("NewPath with 5 IDs")
	}
	if _, err := NewPath(65535); err == nil {
		t.Error("NewPath(65535)")
	}
}

func TestPathMethods(t *testing.T) {
	p := MustPath(3, 0, 6)
	if p.ObjectID() != 3 || p.InstanceID() != 0 || p.ResourceID() != 6 || p.Last() != 6 {
		t.Errorf("accessors wrong for %v", p)
	}
	c, err := p.Child(1)
	if err != nil || c.String() != "/3/0/6/1" || c.ResourceInstanceID() != 1 {
		t.Errorf("Child = %v, %v", c, err)
	}
	if _, err := c.Child(0); err == nil {
		t.Error("child of a resource instance path")
	}
	if c.Parent() != p || Root.Parent() != Root || MustPath(3).Parent() != Root {
		t.Error("Parent wrong")
	}
	if !c.HasPrefix(p) || !c.HasPrefix(Root) || !p.HasPrefix(p) || p.HasPrefix(c) || MustPath(3, 1).HasPrefix(MustPath(3, 0)) {
		t.Error("HasPrefix wrong")
	}
	order := []Path{Root, MustPath(1), MustPath(1, 0), MustPath(1, 0, 5), MustPath(1, 1), MustPath(3)}
	for i := range order {
		for j := range order {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := order[i].Compare(order[j]); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	var q Path
	if err := json.Unmarshal([]byte(`"/3/0/1"`), &q); err != nil || q != MustPath(3, 0, 1) {
		t.Errorf("json path = %v, %v", q, err)
	}
	if err := json.Unmarshal([]byte(`"/3/x"`), &q); err == nil {
		t.Error("bad JSON path accepted")
	}
}

func TestValues(t *testing.T) {
	ts := time.Date(2013, 5, 2, 10, 40, 15, 999, time.FixedZone("X", 3600))
	tests := []struct {
		v   Value
		typ model.ResourceType
	}{
		{StringValue("x"), model.TypeString},
		{IntValue(-1), model.TypeInteger},
		{UintValue(1), model.TypeUnsigned},
		{FloatValue(1.5), model.TypeFloat},
		{BoolValue(true), model.TypeBoolean},
		{OpaqueValue([]byte{1}), model.TypeOpaque},
		{TimeValue(ts), model.TypeTime},
		{ObjLinkValue(ObjLink{3, 0}), model.TypeObjlnk},
		{CoreLinkValue("</3/0>"), model.TypeCorelnk},
		{Value{}, model.TypeNone},
	}
	for _, tt := range tests {
		if tt.v.Type() != tt.typ {
			t.Errorf("%v: type %v, want %v", tt.v, tt.v.Type(), tt.typ)
		}
		if !tt.v.Equal(tt.v) {
			t.Errorf("%v not equal to itself", tt.v)
		}
	}
	if got, _ := TimeValue(ts).AsTime(); got.Unix() != ts.Unix() || got.Nanosecond() != 0 || got.Location() != time.UTC {
		t.Errorf("TimeValue = %v", got)
	}
	if IntValue(1).Equal(UintValue(1)) || StringValue("a").Equal(CoreLinkValue("a")) {
		t.Error("values of different types are equal")
	}
	if !FloatValue(math.NaN()).Equal(FloatValue(math.NaN())) {
		t.Error("NaN != NaN")
	}
	b := []byte{1, 2}
	v := OpaqueValue(b)
	b[0] = 9
	if got, _ := v.AsOpaque(); got[0] != 1 {
		t.Error("OpaqueValue does not copy")
	}
	for _, s := range []string{"", "3", "3:", ":0", "3:0:1", "65536:0", "-1:0", "+1:0", "a:b"} {
		if _, err := ParseObjLink(s); err == nil {
			t.Errorf("ParseObjLink(%q) succeeded", s)
		}
	}
	if l, err := ParseObjLink("65535:65535"); err != nil || l != (ObjLink{65535, 65535}) || l.String() != "65535:65535" {
		t.Errorf("null link = %v, %v", l, err)
	}
}

// The seed's example response node.
func TestSeedJSON(t *testing.T) {
	const seed = `{"kind":"singleresource","id":1,"type":"string","value":"Lightweight M2M Client"}`
	n, err := Unmarshal([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	want := NewSingle(1, StringValue("Lightweight M2M Client"))
	if !Equal(n, want) {
		t.Fatalf("got %+v", n)
	}
	b, err := Marshal(n)
	if err != nil || string(b) != seed {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
}

func deviceInstance() Instance {
	return Instance{ID: 0, Resources: []Resource{
		NewSingle(0, StringValue("Open Mobile Alliance")),
		NewMultiple(6, model.TypeInteger, map[uint16]Value{0: IntValue(1), 1: IntValue(5)}),
		NewSingle(9, IntValue(100)),
		NewSingle(13, UnixValue(1367491215)),
		NewSingle(17, UintValue(math.MaxUint64)),
		NewSingle(18, OpaqueValue([]byte{0xde, 0xad})),
		NewSingle(19, FloatValue(-43.5723)),
		NewSingle(20, BoolValue(true)),
		NewSingle(22, ObjLinkValue(ObjLink{3, 1})),
		NewSingle(23, CoreLinkValue(`</3/0>;rt="x&y"`)),
	}}
}

func TestJSONGolden(t *testing.T) {
	tests := []struct {
		n    Node
		json string
	}{
		{NewMultiple(6, model.TypeInteger, map[uint16]Value{1: IntValue(5), 0: IntValue(1)}),
			`{"kind":"multipleresource","id":6,"type":"integer","values":{"0":1,"1":5}}`},
		{NewResourceInstance(0, IntValue(5)), `{"kind":"resourceinstance","id":0,"type":"integer","value":5}`},
		{Object{ID: 3, Instances: []Instance{{ID: 0, Resources: []Resource{NewSingle(1, StringValue("x"))}}}},
			`{"kind":"object","id":3,"instances":[{"kind":"instance","id":0,"resources":[{"kind":"singleresource","id":1,"type":"string","value":"x"}]}]}`},
		{NewSingle(1, OpaqueValue([]byte{0xAB, 0x01})), `{"kind":"singleresource","id":1,"type":"opaque","value":"ab01"}`},
		{NewSingle(13, UnixValue(1367491215)), `{"kind":"singleresource","id":13,"type":"time","value":1367491215}`},
		{NewSingle(22, ObjLinkValue(ObjLink{3, 0})), `{"kind":"singleresource","id":22,"type":"objlnk","value":"3:0"}`},
		{NewSingle(1, UintValue(math.MaxUint64)), `{"kind":"singleresource","id":1,"type":"unsigned_integer","value":18446744073709551615}`},
		{NewSingle(1, CoreLinkValue("</1>")), `{"kind":"singleresource","id":1,"type":"corelink","value":"</1>"}`},
		{NewSingle(1, FloatValue(2)), `{"kind":"singleresource","id":1,"type":"float","value":2}`},
		{NewSingle(1, FloatValue(1e300)), `{"kind":"singleresource","id":1,"type":"float","value":1e+300}`},
		{Instance{ID: 2, Resources: []Resource{}}, `{"kind":"instance","id":2,"resources":[]}`},
		{NewMultiple(7, model.TypeString, nil), `{"kind":"multipleresource","id":7,"type":"string","values":{}}`},
	}
	for _, tt := range tests {
		b, err := Marshal(tt.n)
		if err != nil {
			t.Errorf("%+v: %v", tt.n, err)
			continue
		}
		// encoding/json HTML-escapes what MarshalJSON returns; the result
		// must still read back the same.
		if jb, err := json.Marshal(tt.n); err != nil {
			t.Errorf("json.Marshal: %v", err)
		} else if n, err := Unmarshal(jb); err != nil || !Equal(n, tt.n) {
			t.Errorf("json.Marshal output %s reads back as %+v, %v", jb, n, err)
		}
		if string(b) != tt.json {
			t.Errorf("Marshal = %s\nwant      %s", b, tt.json)
		}
		n, err := Unmarshal([]byte(tt.json))
		if err != nil {
			t.Errorf("Unmarshal(%s): %v", tt.json, err)
			continue
		}
		if !Equal(n, tt.n) {
			t.Errorf("Unmarshal(%s) = %+v", tt.json, n)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := deviceInstance()
	obj := Object{ID: 3, Instances: []Instance{in}}
	for _, n := range []Node{in, obj, &obj, in.Resources[1]} {
		b, err := Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !Equal(back, n) {
			t.Fatalf("round trip of %s gave %+v", b, back)
		}
	}

	// Through the typed UnmarshalJSON methods and Any.
	b, _ := json.Marshal(in)
	var in2 Instance
	if err := json.Unmarshal(b, &in2); err != nil || !Equal(in2, in) {
		t.Fatalf("Instance.UnmarshalJSON: %v", err)
	}
	var o2 Object
	if err := json.Unmarshal(b, &o2); err == nil {
		t.Fatal("instance JSON accepted as object")
	}
	type envelope struct {
		Kind string `json:"kind"`
		Node Any    `json:"node"`
	}
	eb, err := json.Marshal(envelope{"read", Any{in}})
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	if err := json.Unmarshal(eb, &env); err != nil || !Equal(env.Node.Node, in) {
		t.Fatalf("envelope: %v %+v", err, env)
	}
	eb, _ = json.Marshal(envelope{Kind: "x"})
	if !strings.Contains(string(eb), `"node":null`) {
		t.Fatalf("nil Any = %s", eb)
	}
	if err := json.Unmarshal(eb, &env); err != nil || env.Node.Node != nil {
		t.Fatalf("null node: %v %+v", err, env.Node)
	}
}

func TestJSONErrors(t *testing.T) {
	bad := []string{
		``, `null`, `[]`, `{}`, `"x"`,
		`{"kind":"singleresource","id":1,"type":"string"}`,
		`{"kind":"singleresource","id":1,"value":"x"}`,
		`{"kind":"singleresource","type":"string","value":"x"}`,
		`{"kind":"singleresources","id":1,"type":"string","value":"x"}`,
		`{"kind":"singleresource","id":1,"type":"String","value":"x"}`,
		`{"kind":"singleresource","id":1,"type":"none","value":"x"}`,
		`{"kind":"singleresource","id":1,"type":"string","value":1}`,
		`{"kind":"singleresource","id":1,"type":"string","value":null}`,
		`{"kind":"singleresource","id":1,"type":"string","value":"x","extra":1}`,
		`{"kind":"singleresource","id":1,"type":"string","value":"x","values":{}}`,
		`{"kind":"singleresource","id":1,"id":2,"type":"string","value":"x"}`,
		`{"kind":"singleresource","id":65535,"type":"string","value":"x"}`,
		`{"kind":"singleresource","id":-1,"type":"string","value":"x"}`,
		`{"kind":"singleresource","id":1.0,"type":"string","value":"x"}`,
		`{"kind":"singleresource","id":"1","type":"string","value":"x"}`,
		`{"kind":"singleresource","id":1,"type":"integer","value":1.5}`,
		`{"kind":"singleresource","id":1,"type":"integer","value":9223372036854775808}`,
		`{"kind":"singleresource","id":1,"type":"integer","value":"1"}`,
		`{"kind":"singleresource","id":1,"type":"unsigned_integer","value":-1}`,
		`{"kind":"singleresource","id":1,"type":"float","value":1e999}`,
		`{"kind":"singleresource","id":1,"type":"float","value":"1"}`,
		`{"kind":"singleresource","id":1,"type":"boolean","value":1}`,
		`{"kind":"singleresource","id":1,"type":"opaque","value":"xyz"}`,
		`{"kind":"singleresource","id":1,"type":"opaque","value":"abc"}`,
		`{"kind":"singleresource","id":1,"type":"time","value":1.5}`,
		`{"kind":"singleresource","id":1,"type":"objlnk","value":"3"}`,
		`{"kind":"singleresource","id":1,"type":"objlnk","value":"3:70000"}`,
		`{"kind":"singleresource","id":1,"type":"string","value":"x"} {}`,
		`{"kind":"multipleresource","id":6,"type":"integer","values":{"0":1,"0":2}}`,
		`{"kind":"multipleresource","id":6,"type":"integer","values":{"a":1}}`,
		`{"kind":"multipleresource","id":6,"type":"integer","values":{"01":1}}`,
		`{"kind":"multipleresource","id":6,"type":"integer","values":[1]}`,
		`{"kind":"multipleresource","id":6,"type":"integer","value":1}`,
		`{"kind":"instance","id":0,"resources":[{"kind":"instance","id":0,"resources":[]}]}`,
		`{"kind":"instance","id":0,"resources":[{"kind":"singleresource","id":1,"type":"string","value":"x"},{"kind":"singleresource","id":1,"type":"string","value":"y"}]}`,
		`{"kind":"instance","id":0}`,
		`{"kind":"object","id":3,"instances":[{"kind":"instance","id":0,"resources":[]},{"kind":"instance","id":0,"resources":[]}]}`,
		`{"kind":"object","id":3,"instances":{}}`,
		`{"kind":"object","id":3,"resources":[]}`,
	}
	for _, s := range bad {
		n, err := Unmarshal([]byte(s))
		if err == nil {
			t.Errorf("Unmarshal(%s) = %+v, want error", s, n)
		} else if !errors.Is(err, ErrJSON) {
			t.Errorf("Unmarshal(%s): error %v does not wrap ErrJSON", s, err)
		}
	}
}

func TestValidateAndMarshalErrors(t *testing.T) {
	bad := []Node{
		nil,
		Resource{ID: 1, Type: model.TypeString}, // no value
		Resource{ID: 1, Type: model.TypeString, Value: IntValue(1)},          // wrong type
		Resource{ID: 1, Type: model.TypeNone, Value: StringValue("x")},       // none
		Resource{ID: 65535, Type: model.TypeString, Value: StringValue("x")}, // ID
		Resource{ID: 1, Type: model.TypeString, Value: StringValue("\xff")},  // UTF-8
		Resource{ID: 1, Type: model.TypeInteger, Multiple: true, Value: IntValue(1)},
		Resource{ID: 1, Type: model.TypeInteger, Instances: map[uint16]Value{0: IntValue(1)}},
		NewMultiple(1, model.TypeInteger, map[uint16]Value{65535: IntValue(1)}),
		NewMultiple(1, model.TypeInteger, map[uint16]Value{0: StringValue("x")}),
		Instance{Resources: []Resource{NewSingle(1, IntValue(1)), NewSingle(1, IntValue(2))}},
		Object{Instances: []Instance{{ID: 1}, {ID: 1}}},
		ResourceInstance{ID: 0, Type: model.TypeInteger},
		(*Object)(nil),
	}
	for _, n := range bad {
		if err := Validate(n); !errors.Is(err, ErrInvalidNode) {
			t.Errorf("Validate(%+v) = %v", n, err)
		}
		if _, err := Marshal(n); err == nil {
			t.Errorf("Marshal(%+v) succeeded", n)
		}
	}
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, err := Marshal(NewSingle(1, FloatValue(f))); err == nil {
			t.Errorf("Marshal(%v) succeeded", f)
		}
	}
}

func TestEqualAndSort(t *testing.T) {
	a := Instance{ID: 0, Resources: []Resource{NewSingle(2, IntValue(2)), NewSingle(1, IntValue(1))}}
	b := Instance{ID: 0, Resources: []Resource{NewSingle(1, IntValue(1)), NewSingle(2, IntValue(2))}}
	if !Equal(a, b) || !Equal(&a, b) {
		t.Error("order matters to Equal")
	}
	Sort(a)
	if a.Resources[0].ID != 1 {
		t.Error("Sort did not sort")
	}
	if Equal(a, Instance{ID: 0, Resources: []Resource{NewSingle(1, IntValue(1))}}) {
		t.Error("different lengths equal")
	}
	if Equal(NewSingle(1, IntValue(1)), NewResourceInstance(1, IntValue(1))) {
		t.Error("different kinds equal")
	}
	if Equal(nil, NewSingle(1, IntValue(1))) || !Equal(nil, nil) {
		t.Error("nil handling")
	}
}

func TestPathOf(t *testing.T) {
	r := NewSingle(1, IntValue(1))
	if p, err := PathOf(MustPath(3, 0), r); err != nil || p != MustPath(3, 0, 1) {
		t.Errorf("child: %v %v", p, err)
	}
	if p, err := PathOf(MustPath(3, 0, 1), r); err != nil || p != MustPath(3, 0, 1) {
		t.Errorf("self: %v %v", p, err)
	}
	if _, err := PathOf(MustPath(3, 0, 2), r); err == nil {
		t.Error("wrong ID accepted")
	}
	if _, err := PathOf(MustPath(3), r); err == nil {
		t.Error("wrong level accepted")
	}
}

func FuzzUnmarshal(f *testing.F) {
	seeds := []string{
		`{"kind":"singleresource","id":1,"type":"string","value":"Lightweight M2M Client"}`,
		`{"kind":"multipleresource","id":6,"type":"integer","values":{"0":1,"1":5}}`,
		`{"kind":"resourceinstance","id":0,"type":"integer","value":5}`,
		`{"kind":"object","id":3,"instances":[{"kind":"instance","id":0,"resources":[{"kind":"singleresource","id":1,"type":"float","value":1.5}]}]}`,
		`{"kind":"singleresource","id":1,"type":"opaque","value":"ab01"}`,
		`{"kind":"singleresource","id":1,"type":"time","value":-5}`,
		`{"kind":"singleresource","id":1,"type":"objlnk","value":"3:0"}`,
		`{"kind":"singleresource","id":1,"type":"unsigned_integer","value":18446744073709551615}`,
		`{"kind":"singleresource","id":1,"type":"boolean","value":false}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	b, _ := Marshal(deviceInstance())
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Unmarshal(data)
		if err != nil {
			return
		}
		if err := Validate(n); err != nil {
			t.Fatalf("Unmarshal returned an invalid node: %v", err)
		}
		out, err := Marshal(n)
		if err != nil {
			t.Fatalf("Marshal of decoded node: %v", err)
		}
		back, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("Unmarshal(%s): %v", out, err)
		}
		if !Equal(back, n) {
			t.Fatalf("round trip changed the node: %s", out)
		}
	})
}
