package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// testRegistry is the default registry plus test objects: 65 and 66 from
// the TLV examples of the LwM2M specification, and 9000 with one single and
// one multiple resource of every type.
func testRegistry(t testing.TB) *model.Registry {
	reg := model.Default()
	add := func(o *model.Object) {
		if err := reg.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	add(&model.Object{ID: 65, Multiple: false, Resources: map[uint16]model.Resource{
		0: {ID: 0, Operations: model.OpRead, Multiple: true, Type: model.TypeObjlnk},
		1: {ID: 1, Operations: model.OpRead, Type: model.TypeString},
		2: {ID: 2, Operations: model.OpRead, Type: model.TypeInteger},
	}})
	add(&model.Object{ID: 66, Multiple: true, Resources: map[uint16]model.Resource{
		0: {ID: 0, Operations: model.OpRead, Type: model.TypeString},
		1: {ID: 1, Operations: model.OpRead, Type: model.TypeString},
		2: {ID: 2, Operations: model.OpRead, Type: model.TypeObjlnk},
	}})
	res := map[uint16]model.Resource{}
	types := []model.ResourceType{model.TypeString, model.TypeInteger, model.TypeUnsigned, model.TypeFloat,
		model.TypeBoolean, model.TypeOpaque, model.TypeTime, model.TypeObjlnk, model.TypeCorelnk}
	for i, typ := range types {
		res[uint16(i)] = model.Resource{ID: uint16(i), Operations: model.OpReadWrite, Type: typ}
		res[uint16(100+i)] = model.Resource{ID: uint16(100 + i), Operations: model.OpReadWrite, Multiple: true, Type: typ}
	}
	res[50] = model.Resource{ID: 50, Operations: model.OpExecute, Type: model.TypeNone}
	add(&model.Object{ID: 9000, Multiple: true, Resources: res})
	return reg
}

func unhex(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The Device object instance of the TLV example in the LwM2M Core
// specification (1.0 6.4.3.1 / 1.1 7.4.3.2, Read on /3/0).
func specDevice() node.Instance {
	return node.Instance{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.StringValue("Open Mobile Alliance")),
		node.NewSingle(1, node.StringValue("Lightweight M2M Client")),
		node.NewSingle(2, node.StringValue("345000123")),
		node.NewSingle(3, node.StringValue("1.0")),
		node.NewMultiple(6, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(1), 1: node.IntValue(5)}),
		node.NewMultiple(7, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(3800), 1: node.IntValue(5000)}),
		node.NewMultiple(8, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(125), 1: node.IntValue(900)}),
		node.NewSingle(9, node.IntValue(100)),
		node.NewSingle(10, node.IntValue(15)),
		node.NewMultiple(11, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(0)}),
		node.NewSingle(13, node.UnixValue(1367491215)),
		node.NewSingle(14, node.StringValue("+02:00")),
		node.NewSingle(16, node.StringValue("U")),
	}}
}

const specDeviceTLV = `
C8 00 14 4F 70 65 6E 20 4D 6F 62 69 6C 65 20 41 6C 6C 69 61 6E 63 65
C8 01 16 4C 69 67 68 74 77 65 69 67 68 74 20 4D 32 4D 20 43 6C 69 65 6E 74
C8 02 09 33 34 35 30 30 30 31 32 33
C3 03 31 2E 30
86 06 41 00 01 41 01 05
88 07 08 42 00 0E D8 42 01 13 88
87 08 41 00 7D 42 01 03 84
C1 09 64
C1 0A 0F
83 0B 41 00 00
C4 0D 51 82 42 8F
C6 0E 2B 30 32 3A 30 30
C1 10 55`

func TestTLVSpecDevice(t *testing.T) {
	reg := model.Default()
	want := specDevice()
	payload := unhex(t, specDeviceTLV)

	got, err := Decode(TLV, payload, node.MustPath(3, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	if !node.Equal(got, want) {
		t.Fatalf("decoded %+v", got)
	}
	enc, err := Encode(TLV, want, node.MustPath(3, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, payload) {
		t.Fatalf("encoded\n%X\nwant\n%X", enc, payload)
	}

	// The same wrapped in its object instance TLV (spec example A of
	// "multiple object instance request").
	wrapped := append(unhex(t, "08 00 79"), payload...)
	got, err = Decode(TLV, wrapped, node.MustPath(3, 0), reg)
	if err != nil || !node.Equal(got, want) {
		t.Fatalf("wrapped: %v %+v", err, got)
	}
	obj, err := Decode(TLV, wrapped, node.MustPath(3), reg)
	if err != nil || !node.Equal(obj, node.Object{ID: 3, Instances: []node.Instance{want}}) {
		t.Fatalf("object: %v %+v", err, obj)
	}
	enc, err = Encode(TLV, obj, node.MustPath(3), reg)
	if err != nil || !bytes.Equal(enc, wrapped) {
		t.Fatalf("object encoded %X, %v", enc, err)
	}
	// A Create on /3 carries the instance TLV.
	enc, err = Encode(TLV, want, node.MustPath(3), reg)
	if err != nil || !bytes.Equal(enc, wrapped) {
		t.Fatalf("create encoded %X, %v", enc, err)
	}
}

func TestTLVSpecExamples(t *testing.T) {
	reg := testRegistry(t)
	acl := node.Object{ID: 2, Instances: []node.Instance{
		{ID: 0, Resources: []node.Resource{
			node.NewSingle(0, node.IntValue(1)),
			node.NewSingle(1, node.IntValue(0)),
			node.NewMultiple(2, model.TypeInteger, map[uint16]node.Value{127: node.IntValue(7)}),
			node.NewSingle(3, node.IntValue(127)),
		}},
		{ID: 2, Resources: []node.Resource{
			node.NewSingle(0, node.IntValue(3)),
			node.NewSingle(1, node.IntValue(0)),
			node.NewMultiple(2, model.TypeInteger, map[uint16]node.Value{127: node.IntValue(7), 310: node.IntValue(1)}),
			node.NewSingle(3, node.IntValue(127)),
		}},
	}}
	server := node.Object{ID: 1, Instances: []node.Instance{{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.IntValue(1)),
		node.NewSingle(1, node.IntValue(86400)),
		node.NewSingle(6, node.BoolValue(true)),
		node.NewSingle(7, node.StringValue("U")),
	}}}}
	obj65 := node.Instance{ID: 0, Resources: []node.Resource{
		node.NewMultiple(0, model.TypeObjlnk, map[uint16]node.Value{
			0: node.ObjLinkValue(node.ObjLink{ObjectID: 66, InstanceID: 0}),
			1: node.ObjLinkValue(node.ObjLink{ObjectID: 66, InstanceID: 1}),
		}),
		node.NewSingle(1, node.StringValue("8613800755500")),
		node.NewSingle(2, node.IntValue(0x12345678)),
	}}
	obj66 := node.Object{ID: 66, Instances: []node.Instance{
		{ID: 0, Resources: []node.Resource{
			node.NewSingle(0, node.StringValue("myService 1")),
			node.NewSingle(1, node.StringValue("Internet.15.234")),
			node.NewSingle(2, node.ObjLinkValue(node.ObjLink{ObjectID: 67, InstanceID: 0})),
		}},
		{ID: 1, Resources: []node.Resource{
			node.NewSingle(0, node.StringValue("myService 2")),
			node.NewSingle(1, node.StringValue("Internet.15.235")),
			node.NewSingle(2, node.ObjLinkValue(node.ObjLink{ObjectID: 65535, InstanceID: 65535})),
		}},
	}}
	tests := []struct {
		name string
		hex  string
		path node.Path
		want node.Node
	}{
		{"acl", "08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F", node.MustPath(2), acl},
		{"server", "08000FC10001C40100015180C10601C10755", node.MustPath(1), server},
		{"obj65", "88000C440000420000440100420001C8010D38363133383030373535353030C40212345678", node.MustPath(65, 0), obj65},
		{"obj66", "080026C8000B6D79536572766963652031C8010F496E7465726E65742E31352E323334C40200430000" +
			"080126C8000B6D79536572766963652032C8010F496E7465726E65742E31352E323335C402FFFFFFFF", node.MustPath(66), obj66},
		{"power sources", "8606 4100 01 4101 05", node.MustPath(3, 0, 6),
			node.NewMultiple(6, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(1), 1: node.IntValue(5)})},
		{"resource instance", "4101 05", node.MustPath(3, 0, 6, 1), node.NewResourceInstance(1, node.IntValue(5))},
		{"16-bit id and length", "E1 16DA 01", node.MustPath(9000, 0, 5850), nil},
	}
	for _, tt := range tests {
		payload := unhex(t, tt.hex)
		if tt.want == nil {
			// Unknown resource 5850 decodes as opaque.
			got, err := Decode(TLV, payload, tt.path, reg)
			if err != nil || !node.Equal(got, node.NewSingle(5850, node.OpaqueValue([]byte{1}))) {
				t.Errorf("%s: %v %+v", tt.name, err, got)
			}
			continue
		}
		got, err := Decode(TLV, payload, tt.path, reg)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !node.Equal(got, tt.want) {
			t.Errorf("%s: decoded %+v", tt.name, got)
		}
		enc, err := Encode(TLV, tt.want, tt.path, reg)
		if err != nil || !bytes.Equal(enc, payload) {
			t.Errorf("%s: encoded %X, %v; want %X", tt.name, enc, err, payload)
		}
	}

	// Resource instances without their multiple resource TLV.
	got, err := Decode(TLV, unhex(t, "4100 01 4101 05"), node.MustPath(3, 0, 6), reg)
	if err != nil || !node.Equal(got, tests[4].want) {
		t.Errorf("bare resource instances: %v %+v", err, got)
	}
	// An empty multiple resource.
	got, err = Decode(TLV, nil, node.MustPath(3, 0, 6), reg)
	if err != nil || !node.Equal(got, node.NewMultiple(6, model.TypeInteger, nil)) {
		t.Errorf("empty multiple resource: %v %+v", err, got)
	}
	// Resources without an instance TLV at an object path: instance 0.
	got, err = Decode(TLV, unhex(t, specDeviceTLV), node.MustPath(3), reg)
	if err != nil || !node.Equal(got, node.Object{ID: 3, Instances: []node.Instance{specDevice()}}) {
		t.Errorf("object without instance TLV: %v %+v", err, got)
	}
}

func TestTLVLengthsAndIntegers(t *testing.T) {
	reg := testRegistry(t)
	long := strings.Repeat("x", 300)
	huge := strings.Repeat("y", 70000)
	tests := []struct {
		v      node.Value
		header string // type byte, id, length
		value  string
	}{
		{node.IntValue(-1), "C1 01", "FF"},
		{node.IntValue(127), "C1 01", "7F"},
		{node.IntValue(128), "C2 01", "0080"},
		{node.IntValue(-32769), "C4 01", "FFFF7FFF"},
		{node.IntValue(math.MinInt64), "C8 01 08", "8000000000000000"},
		{node.UintValue(255), "C1 02", "FF"},
		{node.UintValue(math.MaxUint64), "C8 02 08", "FFFFFFFFFFFFFFFF"},
		{node.FloatValue(1.5), "C4 03", "3FC00000"},
		{node.FloatValue(0.1), "C8 03 08", "3FB999999999999A"},
		{node.BoolValue(false), "C1 04", "00"},
		{node.OpaqueValue(nil), "C0 05", ""},
		{node.UnixValue(-1), "C1 06", "FF"},
		{node.ObjLinkValue(node.ObjLink{ObjectID: 3, InstanceID: 0xFFFF}), "C4 07", "0003FFFF"},
		{node.StringValue(long), "D0 00 012C", hex.EncodeToString([]byte(long))},
		{node.StringValue(huge), "D8 00 011170", hex.EncodeToString([]byte(huge))},
	}
	for _, tt := range tests {
		rid := uint16(0)
		switch tt.v.Type() {
		case model.TypeInteger:
			rid = 1
		case model.TypeUnsigned:
			rid = 2
		case model.TypeFloat:
			rid = 3
		case model.TypeBoolean:
			rid = 4
		case model.TypeOpaque:
			rid = 5
		case model.TypeTime:
			rid = 6
		case model.TypeObjlnk:
			rid = 7
		}
		p := node.MustPath(9000, 0, rid)
		want := unhex(t, tt.header+tt.value)
		n := node.NewSingle(rid, tt.v)
		enc, err := Encode(TLV, n, p, reg)
		if err != nil {
			t.Errorf("%v: %v", tt.v, err)
			continue
		}
		if !bytes.Equal(enc, want) {
			t.Errorf("%v: encoded %.40X, want %.40X", tt.v, enc, want)
		}
		got, err := Decode(TLV, enc, p, reg)
		if err != nil || !node.Equal(got, n) {
			t.Errorf("%v: decoded %+v, %v", tt.v, got, err)
		}
	}
	// A 16-bit identifier.
	n := node.NewSingle(300, node.OpaqueValue([]byte{1, 2}))
	enc, err := Encode(TLV, n, node.MustPath(9999, 0, 300), reg)
	if err != nil || !bytes.Equal(enc, unhex(t, "E2 012C 0102")) {
		t.Errorf("16-bit id: %X %v", enc, err)
	}
	// Non-canonical but valid: a 16-bit id field holding a small id, and an
	// 8-bit length field holding a small length.
	got, err := Decode(TLV, unhex(t, "E9 0001 01 7F"), node.MustPath(9000, 0, 1), reg)
	if err != nil || !node.Equal(got, node.NewSingle(1, node.IntValue(127))) {
		t.Errorf("non-canonical: %v %+v", err, got)
	}
}

func TestTLVErrors(t *testing.T) {
	reg := testRegistry(t)
	p30 := node.MustPath(3, 0)
	tests := []struct {
		name string
		hex  string
		path node.Path
		err  error
	}{
		{"truncated header", "C8", p30, ErrMalformed},
		{"truncated id", "E0 01", p30, ErrMalformed},
		{"length beyond end", "C8 00 14 4F", p30, ErrMalformed},
		{"24-bit length beyond end", "D8 00 FFFFFF 00", p30, ErrMalformed},
		{"id 65535", "E1 FFFF 00", p30, ErrMalformed},
		{"instance in resource", "8803 02 0000", p30, ErrMalformed},
		{"multiple in multiple", "8803 02 8000", p30, ErrMalformed},
		{"resource in multiple", "8803 02 C000", p30, ErrMalformed},
		{"nested instance", "0800 02 0000", node.MustPath(3), ErrMalformed},
		{"duplicate resource", "C109 64 C109 64", p30, ErrMalformed},
		{"duplicate instance", "0000 0000", node.MustPath(3), ErrMalformed},
		{"duplicate resource instance", "86 06 4100 01 4100 05", p30, ErrMalformed},
		{"bad integer length", "C309 000064", p30, ErrMalformed},
		{"bad boolean", "C1 06 02", node.MustPath(1, 0), ErrMalformed},
		{"bad float length", "C2 03 0000", node.MustPath(9000, 0), ErrMalformed},
		{"bad objlnk length", "C3 07 000000", node.MustPath(9000, 0), ErrMalformed},
		{"bad utf-8", "C1 00 FF", p30, ErrMalformed},
		{"single as multiple", "8300 4100 41", p30, ErrMismatch},
		{"multiple as single", "C106 01", p30, ErrMismatch},
		{"executable", "C104 01", p30, ErrMismatch},
		{"wrong resource id", "C101 41", node.MustPath(3, 0, 0), ErrMismatch},
		{"wrong instance id", "0801 03 C10041", node.MustPath(3, 0), ErrMismatch},
		{"two resources at a resource path", "C10041 C10041", node.MustPath(3, 0, 0), ErrMismatch},
		{"empty single resource", "", node.MustPath(3, 0, 0), ErrMismatch},
		{"resource instance of single resource", "4100 41", node.MustPath(3, 0, 0, 0), ErrMismatch},
		{"resource instance id", "4101 41", node.MustPath(3, 0, 6, 0), ErrMismatch},
		{"resource instances in an object", "4100 41", node.MustPath(3), ErrMismatch},
	}
	for _, tt := range tests {
		_, err := Decode(TLV, unhex(t, tt.hex), tt.path, reg)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
	}
	if _, err := Decode(TLV, nil, node.Root, reg); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("root: %v", err)
	}
}

// The SenML JSON example of the LwM2M Core specification (1.1 7.4.7, Read
// on /3/0), with the device instance of the TLV example.
const specDeviceSenML = `[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},` +
	`{"n":"1","vs":"Lightweight M2M Client"},` +
	`{"n":"2","vs":"345000123"},` +
	`{"n":"3","vs":"1.0"},` +
	`{"n":"6/0","v":1},{"n":"6/1","v":5},` +
	`{"n":"7/0","v":3800},{"n":"7/1","v":5000},` +
	`{"n":"8/0","v":125},{"n":"8/1","v":900},` +
	`{"n":"9","v":100},{"n":"10","v":15},{"n":"11/0","v":0},` +
	`{"n":"13","v":1367491215},{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]`

// The LwM2M JSON example of the LwM2M Core specification (1.0 6.4.4,
// Read on /3/0).
const specDeviceLwM2MJSON = `{"bn":"/3/0/","e":[{"n":"0","sv":"Open Mobile Alliance"},` +
	`{"n":"1","sv":"Lightweight M2M Client"},` +
	`{"n":"2","sv":"345000123"},` +
	`{"n":"3","sv":"1.0"},` +
	`{"n":"6/0","v":1},{"n":"6/1","v":5},` +
	`{"n":"7/0","v":3800},{"n":"7/1","v":5000},` +
	`{"n":"8/0","v":125},{"n":"8/1","v":900},` +
	`{"n":"9","v":100},{"n":"10","v":15},{"n":"11/0","v":0},` +
	`{"n":"13","v":1367491215},{"n":"14","sv":"+02:00"},{"n":"16","sv":"U"}]}`

func TestJSONSpecDevice(t *testing.T) {
	reg := model.Default()
	want := specDevice()
	for _, tt := range []struct {
		format uint16
		doc    string
	}{{SenMLJSON, specDeviceSenML}, {LwM2MJSON, specDeviceLwM2MJSON}} {
		got, err := Decode(tt.format, []byte(tt.doc), node.MustPath(3, 0), reg)
		if err != nil || !node.Equal(got, want) {
			t.Errorf("%s: decoded %+v, %v", FormatName(tt.format), got, err)
		}
		enc, err := Encode(tt.format, want, node.MustPath(3, 0), reg)
		if err != nil || string(enc) != tt.doc {
			t.Errorf("%s: encoded\n%s, %v\nwant\n%s", FormatName(tt.format), enc, err, tt.doc)
		}
	}
	// Other spellings of the same names.
	for _, tt := range []struct {
		format uint16
		doc    string
	}{
		{SenMLJSON, strings.Replace(strings.Replace(specDeviceSenML, `"bn":"/3/0/",`, ``, 1), `"n":"`, `"n":"/3/0/`, -1)},
		{SenMLJSON, strings.Replace(strings.Replace(specDeviceSenML, `"bn":"/3/0/",`, ``, 1), `{"n":"`, `{"bn":"/3/","n":"0/`, -1)},
		{LwM2MJSON, strings.Replace(strings.Replace(specDeviceLwM2MJSON, `"bn":"/3/0/",`, `"bn":"/",`, 1), `"n":"`, `"n":"3/0/`, -1)},
		{LwM2MJSON, strings.Replace(strings.Replace(specDeviceLwM2MJSON, `"bn":"/3/0/",`, ``, 1), `"n":"`, `"n":"/3/0/`, -1)},
	} {
		got, err := Decode(tt.format, []byte(tt.doc), node.MustPath(3, 0), reg)
		if err != nil || !node.Equal(got, want) {
			t.Errorf("%s: %v", tt.doc, err)
		}
	}
}

func TestSenMLCBORVector(t *testing.T) {
	reg := model.Default()
	// [{-2: "/3/0/", 0: "0", 3: "Open Mobile Alliance"}, {0: "9", 2: 100},
	//  {0: "6/0", 2: 1}]
	payload := unhex(t, `83
		A3 21 65 2F332F302F 00 61 30 03 74 4F70656E204D6F62696C6520416C6C69616E6365
		A2 00 61 39 02 18 64
		A2 00 63 362F30 02 01`)
	want := node.Instance{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.StringValue("Open Mobile Alliance")),
		node.NewMultiple(6, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(1)}),
		node.NewSingle(9, node.IntValue(100)),
	}}
	got, err := Decode(SenMLCBOR, payload, node.MustPath(3, 0), reg)
	if err != nil || !node.Equal(got, want) {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	enc, err := Encode(SenMLCBOR, want, node.MustPath(3, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	// Records come out in path order: 0, 6/0, 9.
	wantEnc := unhex(t, `83
		A3 21 65 2F332F302F 00 61 30 03 74 4F70656E204D6F62696C6520416C6C69616E6365
		A2 00 63 362F30 02 01
		A2 00 61 39 02 18 64`)
	if !bytes.Equal(enc, wantEnc) {
		t.Fatalf("encoded %X\nwant    %X", enc, wantEnc)
	}
}

func TestSingleValueFormats(t *testing.T) {
	reg := testRegistry(t)
	tests := []struct {
		format  uint16
		path    node.Path
		payload string
		want    node.Node
	}{
		{TextPlain, node.MustPath(3, 0, 0), "Open Mobile Alliance", node.NewSingle(0, node.StringValue("Open Mobile Alliance"))},
		{TextPlain, node.MustPath(3, 0, 9), "100", node.NewSingle(9, node.IntValue(100))},
		{TextPlain, node.MustPath(3, 0, 13), "1367491215", node.NewSingle(13, node.UnixValue(1367491215))},
		{TextPlain, node.MustPath(3, 0, 6, 1), "5", node.NewResourceInstance(1, node.IntValue(5))},
		{TextPlain, node.MustPath(1, 0, 6), "1", node.NewSingle(6, node.BoolValue(true))},
		{TextPlain, node.MustPath(5, 0, 0), "AQIDBAU=", node.NewSingle(0, node.OpaqueValue([]byte{1, 2, 3, 4, 5}))},
		{TextPlain, node.MustPath(6, 0, 0), "-43.5723", node.NewSingle(0, node.FloatValue(-43.5723))},
		{TextPlain, node.MustPath(9000, 0, 2), "18446744073709551615", node.NewSingle(2, node.UintValue(math.MaxUint64))},
		{TextPlain, node.MustPath(9000, 0, 7), "3:0", node.NewSingle(7, node.ObjLinkValue(node.ObjLink{ObjectID: 3}))},
		{TextPlain, node.MustPath(9000, 0, 8), "</3/0>", node.NewSingle(8, node.CoreLinkValue("</3/0>"))},
		{TextPlain, node.MustPath(9999, 0, 1), "x", node.NewSingle(1, node.StringValue("x"))},
		{Opaque, node.MustPath(5, 0, 0), "\x00\xff", node.NewSingle(0, node.OpaqueValue([]byte{0, 0xff}))},
		{Opaque, node.MustPath(9999, 0, 1), "", node.NewSingle(1, node.OpaqueValue(nil))},
		{CBOR, node.MustPath(3, 0, 0), "\x63abc", node.NewSingle(0, node.StringValue("abc"))},
		{CBOR, node.MustPath(3, 0, 9), "\x18\x64", node.NewSingle(9, node.IntValue(100))},
		{CBOR, node.MustPath(3, 0, 13), "\xc1\x1a\x51\x82\x42\x8f", node.NewSingle(13, node.UnixValue(1367491215))},
		{CBOR, node.MustPath(6, 0, 0), "\xfb" + string(binary.BigEndian.AppendUint64(nil, math.Float64bits(-43.5723))), node.NewSingle(0, node.FloatValue(-43.5723))},
		{CBOR, node.MustPath(6, 0, 2), "\xf9\x3e\x00", node.NewSingle(2, node.FloatValue(1.5))},
		{CBOR, node.MustPath(1, 0, 6), "\xf5", node.NewSingle(6, node.BoolValue(true))},
		{CBOR, node.MustPath(5, 0, 0), "\x42\x01\x02", node.NewSingle(0, node.OpaqueValue([]byte{1, 2}))},
		{CBOR, node.MustPath(9000, 0, 7), "\x63\x33\x3a\x30", node.NewSingle(7, node.ObjLinkValue(node.ObjLink{ObjectID: 3}))},
		{CBOR, node.MustPath(9000, 0, 2), "\x1b\xff\xff\xff\xff\xff\xff\xff\xff", node.NewSingle(2, node.UintValue(math.MaxUint64))},
		{CBOR, node.MustPath(3, 0, 6, 1), "\x05", node.NewResourceInstance(1, node.IntValue(5))},
	}
	for _, tt := range tests {
		got, err := Decode(tt.format, []byte(tt.payload), tt.path, reg)
		if err != nil || !node.Equal(got, tt.want) {
			t.Errorf("%s %s %q: decoded %+v, %v", FormatName(tt.format), tt.path, tt.payload, got, err)
			continue
		}
		enc, err := Encode(tt.format, tt.want, tt.path, reg)
		if err != nil || string(enc) != tt.payload {
			t.Errorf("%s %s: encoded %q, %v; want %q", FormatName(tt.format), tt.path, enc, err, tt.payload)
		}
	}

	// Decoding accepts more than the encoder writes.
	more := []struct {
		format  uint16
		path    node.Path
		payload string
		want    node.Node
	}{
		{TextPlain, node.MustPath(6, 0, 0), "1e2", node.NewSingle(0, node.FloatValue(100))},
		{TextPlain, node.MustPath(5, 0, 0), "AQIDBAU", node.NewSingle(0, node.OpaqueValue([]byte{1, 2, 3, 4, 5}))},
		{CBOR, node.MustPath(3, 0, 13), "\x1a\x51\x82\x42\x8f", node.NewSingle(13, node.UnixValue(1367491215))},
		{CBOR, node.MustPath(3, 0, 13), "\xc0\x74" + "2013-05-02T10:40:15Z", node.NewSingle(13, node.UnixValue(1367491215))},
		{CBOR, node.MustPath(6, 0, 0), "\x18\x64", node.NewSingle(0, node.FloatValue(100))},
		{CBOR, node.MustPath(9999, 0, 1), "\xf9\x3e\x00", node.NewSingle(1, node.FloatValue(1.5))},
		{CBOR, node.MustPath(9999, 0, 1), "\x20", node.NewSingle(1, node.IntValue(-1))},
		{CBOR, node.MustPath(9999, 0, 1), "\xc1\x00", node.NewSingle(1, node.UnixValue(0))},
	}
	for _, tt := range more {
		got, err := Decode(tt.format, []byte(tt.payload), tt.path, reg)
		if err != nil || !node.Equal(got, tt.want) {
			t.Errorf("%s %s %q: decoded %+v, %v", FormatName(tt.format), tt.path, tt.payload, got, err)
		}
	}
}

func TestSingleValueErrors(t *testing.T) {
	reg := testRegistry(t)
	tests := []struct {
		format  uint16
		path    node.Path
		payload string
		err     error
	}{
		{TextPlain, node.MustPath(3, 0), "x", ErrUnsupportedFormat},
		{TextPlain, node.MustPath(3), "x", ErrUnsupportedFormat},
		{TextPlain, node.MustPath(3, 0, 6), "1", ErrMismatch},
		{TextPlain, node.MustPath(3, 0, 4), "", ErrMismatch},
		{TextPlain, node.MustPath(3, 0, 0, 1), "x", ErrMismatch},
		{TextPlain, node.MustPath(3, 0, 9), "1.5", ErrMalformed},
		{TextPlain, node.MustPath(3, 0, 9), "+1", ErrMalformed},
		{TextPlain, node.MustPath(3, 0, 9), " 1", ErrMalformed},
		{TextPlain, node.MustPath(3, 0, 9), "9223372036854775808", ErrMalformed},
		{TextPlain, node.MustPath(6, 0, 0), "NaN", ErrMalformed},
		{TextPlain, node.MustPath(6, 0, 0), "Inf", ErrMalformed},
		{TextPlain, node.MustPath(6, 0, 0), "0x1p3", ErrMalformed},
		{TextPlain, node.MustPath(6, 0, 0), "1e999", ErrMalformed},
		{TextPlain, node.MustPath(1, 0, 6), "true", ErrMalformed},
		{TextPlain, node.MustPath(5, 0, 0), "!!", ErrMalformed},
		{TextPlain, node.MustPath(9000, 0, 7), "3", ErrMalformed},
		{TextPlain, node.MustPath(3, 0, 0), "\xff", ErrMalformed},
		{Opaque, node.MustPath(3, 0, 0), "x", ErrMismatch},
		{CBOR, node.MustPath(3, 0, 0), "", ErrMalformed},
		{CBOR, node.MustPath(3, 0, 0), "\x63ab", ErrMalformed},
		{CBOR, node.MustPath(3, 0, 0), "\x61a\x61b", ErrMalformed},
		{CBOR, node.MustPath(3, 0, 0), "\x01", ErrMismatch},
		{CBOR, node.MustPath(3, 0, 9), "\x61a", ErrMismatch},
		{CBOR, node.MustPath(3, 0, 9), "\xf9\x3e\x00", ErrMismatch},
		{CBOR, node.MustPath(3, 0, 9), "\x1b\xff\xff\xff\xff\xff\xff\xff\xff", ErrMismatch},
		{CBOR, node.MustPath(9000, 0, 2), "\x20", ErrMismatch},
		{CBOR, node.MustPath(9999, 0, 1), "\x81\x01", ErrMismatch},
		{CBOR, node.MustPath(9999, 0, 1), "\x81\x81\x81\x81\x81\x01", ErrMalformed},
	}
	for _, tt := range tests {
		_, err := Decode(tt.format, []byte(tt.payload), tt.path, reg)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s %s %q: err = %v, want %v", FormatName(tt.format), tt.path, tt.payload, err, tt.err)
		}
	}
	// Encoding.
	encErrs := []struct {
		format uint16
		n      node.Node
		path   node.Path
		err    error
	}{
		{TextPlain, specDevice(), node.MustPath(3, 0), ErrUnsupportedFormat},
		{CBOR, specDevice().Resources[4], node.MustPath(3, 0, 6), ErrUnsupportedFormat}, // multiple resource
		{Opaque, node.NewSingle(0, node.StringValue("x")), node.MustPath(3, 0, 0), ErrMismatch},
		{TextPlain, node.NewSingle(0, node.IntValue(1)), node.MustPath(3, 0, 0), ErrMismatch},      // type
		{TextPlain, node.NewSingle(1, node.StringValue("x")), node.MustPath(3, 0, 0), ErrMismatch}, // id
		{TextPlain, node.NewSingle(0, node.FloatValue(math.NaN())), node.MustPath(9000, 0, 0), ErrMismatch},
		{TLV, node.NewSingle(4, node.StringValue("x")), node.MustPath(3, 0, 4), ErrMismatch}, // executable
		{LinkFormat, node.NewSingle(0, node.StringValue("x")), node.MustPath(3, 0, 0), ErrUnsupportedFormat},
		{1234, node.NewSingle(0, node.StringValue("x")), node.MustPath(3, 0, 0), ErrUnsupportedFormat},
		{TLV, node.NewSingle(0, node.StringValue("\xff")), node.MustPath(3, 0, 0), node.ErrInvalidNode},
		{TLV, nil, node.MustPath(3, 0, 0), ErrMismatch},
	}
	for _, tt := range encErrs {
		_, err := Encode(tt.format, tt.n, tt.path, reg)
		if !errors.Is(err, tt.err) {
			t.Errorf("Encode %s %s: err = %v, want %v", FormatName(tt.format), tt.path, err, tt.err)
		}
	}
	if _, err := Decode(LinkFormat, []byte("</3/0>"), node.MustPath(3, 0), reg); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("link format: %v", err)
	}
}

func TestRecordFormatErrors(t *testing.T) {
	reg := testRegistry(t)
	p := node.MustPath(3, 0)
	tests := []struct {
		format  uint16
		path    node.Path
		payload string
		err     error
	}{
		{SenMLJSON, p, `{}`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/0","vs":"x"}] x`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/0","vs":"x","vs":"y"}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/0","vs":"x","v":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/0"}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/0","vs":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":"1"}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":1e999}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":1,"s":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":1,"x_":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9","vd":"!!"}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"3/0/9","v":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0/9/0/1","v":1}]`, ErrMalformed},
		{SenMLJSON, p, `[{"n":"/3/0","v":1}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/1/9","v":1}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":1},{"n":"/3/0/9","v":2}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/9","v":1.5}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/9","vs":"1"}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/6","v":1}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/9/0","v":1}]`, ErrMismatch},
		{SenMLJSON, p, `[{"n":"/3/0/4","v":1}]`, ErrMismatch},
		{SenMLJSON, node.MustPath(9999, 0), `[{"n":"/9999/0/1","v":1},{"n":"/9999/0/1/0","v":1}]`, ErrMismatch},
		{SenMLJSON, node.MustPath(9999, 0), `[{"n":"/9999/0/1/0","v":1},{"n":"/9999/0/1/1","vs":"x"}]`, ErrMismatch},
		{SenMLJSON, node.MustPath(3, 0, 0), `[]`, ErrMismatch},
		{SenMLJSON, node.Root, `[]`, ErrUnsupportedFormat},
		{LwM2MJSON, p, `[]`, ErrMalformed},
		{LwM2MJSON, p, `{}`, ErrMalformed},
		{LwM2MJSON, p, `{"e":[],"x":1}`, ErrMalformed},
		{LwM2MJSON, p, `{"e":[{"n":"/3/0/0","vs":"x"}]}`, ErrMalformed},
		{LwM2MJSON, p, `{"bn":"/3/0/","e":[{"n":"5","sv":"x"}]}`, ErrMismatch},
		{LwM2MJSON, node.MustPath(5, 0, 0), `{"bn":"/5/0/0","e":[{"sv":"!!"}]}`, ErrMalformed},
		{SenMLCBOR, p, "\xa0", ErrMalformed},
		{SenMLCBOR, p, "\x81\xa2\x00\x66/3/0/0\x00\x66/3/0/0", ErrMalformed},
		{SenMLCBOR, p, "\x81\xa2\x00\x66/3/0/0\x03\x01", ErrMalformed},
		{SenMLCBOR, p, "\x81\xa2\x00\x66/3/0/9\x05\x01", ErrMalformed},
		{SenMLCBOR, p, "\x81\xa2\x00\x66/3/0/9\x63x_y", ErrMalformed},
		{SenMLCBOR, p, "\x81\xa3\x00\x66/3/0/9\x02\x01\x03\x61x", ErrMalformed},
	}
	for _, tt := range tests {
		_, err := Decode(tt.format, []byte(tt.payload), tt.path, reg)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s %s %s: err = %v, want %v", FormatName(tt.format), tt.path, tt.payload, err, tt.err)
		}
	}
}

func TestRecordFormatsDecodeVariants(t *testing.T) {
	reg := testRegistry(t)
	p := node.MustPath(9000, 0)
	want := node.Instance{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.StringValue("s")),
		node.NewSingle(1, node.IntValue(10)),
		node.NewSingle(3, node.FloatValue(10)),
		node.NewSingle(5, node.OpaqueValue([]byte{0xfb, 0xff})),
		node.NewSingle(7, node.ObjLinkValue(node.ObjLink{ObjectID: 1, InstanceID: 2})),
	}}
	docs := []string{
		// Integers written as floats, floats as integers, padded base64url,
		// ignored labels.
		`[{"bver":10,"bn":"/9000/0/","bu":"x","n":"0","vs":"s","u":"m","ut":5,"zz":{"a":[1]}},{"n":"1","v":10.0},{"n":"3","v":10},` +
			`{"n":"5","vd":"-_8="},{"n":"7","vlo":"1:2"}]`,
		// Standard base64 and names in full.
		`[{"n":"/9000/0/0","vs":"s"},{"n":"/9000/0/1","v":1e1},{"n":"/9000/0/3","v":1E1},` +
			`{"n":"/9000/0/5","vd":"+/8"},{"n":"/9000/0/7","vlo":"1:2"}]`,
	}
	for _, doc := range docs {
		got, err := Decode(SenMLJSON, []byte(doc), p, reg)
		if err != nil || !node.Equal(got, want) {
			t.Errorf("%s: %+v, %v", doc, got, err)
		}
	}
	lw := `{"bn":"/9000/0/","e":[{"n":"0","sv":"s"},{"n":"1","v":10},{"n":"3","v":10},{"n":"5","sv":"+/8="},{"n":"7","ov":"1:2"}]}`
	if got, err := Decode(LwM2MJSON, []byte(lw), p, reg); err != nil || !node.Equal(got, want) {
		t.Errorf("lwm2m json: %+v, %v", got, err)
	}

	// Types guessed for unknown resources.
	guess := `[{"bn":"/9999/0/","n":"0","v":1},{"n":"1","v":1.0},{"n":"2","v":18446744073709551615},` +
		`{"n":"3","vs":"x"},{"n":"4","vb":true},{"n":"5","vd":"AQ"},{"n":"6","vlo":"3:0"},{"n":"7/0","v":-1}]`
	wantGuess := node.Instance{ID: 0, Resources: []node.Resource{
		node.NewSingle(0, node.IntValue(1)),
		node.NewSingle(1, node.FloatValue(1)),
		node.NewSingle(2, node.UintValue(math.MaxUint64)),
		node.NewSingle(3, node.StringValue("x")),
		node.NewSingle(4, node.BoolValue(true)),
		node.NewSingle(5, node.OpaqueValue([]byte{1})),
		node.NewSingle(6, node.ObjLinkValue(node.ObjLink{ObjectID: 3})),
		node.NewMultiple(7, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(-1)}),
	}}
	got, err := Decode(SenMLJSON, []byte(guess), node.MustPath(9999, 0), reg)
	if err != nil || !node.Equal(got, wantGuess) {
		t.Fatalf("guessed: %+v, %v", got, err)
	}
	enc, err := Encode(SenMLJSON, got, node.MustPath(9999, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(SenMLJSON, enc, node.MustPath(9999, 0), reg)
	if err != nil || !node.Equal(back, wantGuess) {
		t.Fatalf("guessed round trip: %s %+v, %v", enc, back, err)
	}
	if !strings.Contains(string(enc), `{"n":"1","v":1.0}`) {
		t.Errorf("float written without fraction: %s", enc)
	}

	// Every level of path.
	dev := specDevice()
	levels := []struct {
		path node.Path
		want node.Node
	}{
		{node.MustPath(3), node.Object{ID: 3, Instances: []node.Instance{dev}}},
		{node.MustPath(3, 0, 6), dev.Resources[4]},
		{node.MustPath(3, 0, 6, 1), node.NewResourceInstance(1, node.IntValue(5))},
		{node.MustPath(3, 0, 0), dev.Resources[0]},
	}
	for _, l := range levels {
		for _, format := range []uint16{SenMLJSON, SenMLCBOR, LwM2MJSON, TLV} {
			enc, err := Encode(format, l.want, l.path, reg)
			if err != nil {
				t.Errorf("%s %s: %v", FormatName(format), l.path, err)
				continue
			}
			got, err := Decode(format, enc, l.path, reg)
			if err != nil || !node.Equal(got, l.want) {
				t.Errorf("%s %s: %s decoded %+v, %v", FormatName(format), l.path, enc, got, err)
			}
		}
	}
	enc, _ = Encode(SenMLJSON, dev.Resources[0], node.MustPath(3, 0, 0), reg)
	if string(enc) != `[{"bn":"/3/0/0","vs":"Open Mobile Alliance"}]` {
		t.Errorf("single resource: %s", enc)
	}
	enc, _ = Encode(LwM2MJSON, dev.Resources[4], node.MustPath(3, 0, 6), reg)
	if string(enc) != `{"bn":"/3/0/6/","e":[{"n":"0","v":1},{"n":"1","v":5}]}` {
		t.Errorf("multiple resource: %s", enc)
	}
	// A multiple resource without values.
	got, err = Decode(SenMLJSON, []byte(`[]`), node.MustPath(3, 0, 6), reg)
	if err != nil || !node.Equal(got, node.NewMultiple(6, model.TypeInteger, nil)) {
		t.Errorf("empty: %+v %v", got, err)
	}
}

// allTypes is an instance of test object 9000 with a value of every type.
func allTypes() node.Instance {
	vals := []node.Value{
		node.StringValue("héllo \"<&>\""),
		node.IntValue(math.MinInt64),
		node.UintValue(math.MaxUint64),
		node.FloatValue(-1.25e-7),
		node.BoolValue(true),
		node.OpaqueValue([]byte{0, 1, 0xfe, 0xff}),
		node.UnixValue(1700000000),
		node.ObjLinkValue(node.ObjLink{ObjectID: 3, InstanceID: 0}),
		node.CoreLinkValue(`</3/0>;rt="oma.lwm2m",</1/0>`),
	}
	in := node.Instance{ID: 1}
	for i, v := range vals {
		in.Resources = append(in.Resources, node.NewSingle(uint16(i), v))
		in.Resources = append(in.Resources, node.NewMultiple(uint16(100+i), v.Type(),
			map[uint16]node.Value{0: v, 7: v, 300: v}))
	}
	return in
}

func TestRoundTripAllFormats(t *testing.T) {
	reg := testRegistry(t)
	inst := allTypes()
	dev := specDevice()
	devPlus := dev
	devPlus.Resources = append(append([]node.Resource(nil), dev.Resources...),
		node.NewMultiple(22, model.TypeObjlnk, map[uint16]node.Value{0: node.ObjLinkValue(node.ObjLink{ObjectID: 4})}))
	cases := []struct {
		path node.Path
		n    node.Node
	}{
		{node.MustPath(3, 0), devPlus},
		{node.MustPath(3), node.Object{ID: 3, Instances: []node.Instance{devPlus}}},
		{node.MustPath(9000, 1), inst},
		{node.MustPath(9000), node.Object{ID: 9000, Instances: []node.Instance{inst}}},
		{node.MustPath(9000), inst}, // create
		{node.MustPath(3, 0, 6), dev.Resources[4]},
		{node.MustPath(3, 0, 6, 1), node.NewResourceInstance(1, node.IntValue(5))},
	}
	for _, r := range inst.Resources {
		cases = append(cases, struct {
			path node.Path
			n    node.Node
		}{node.MustPath(9000, 1, r.ID), r})
		if r.Multiple {
			cases = append(cases, struct {
				path node.Path
				n    node.Node
			}{node.MustPath(9000, 1, r.ID, 300), node.NewResourceInstance(300, r.Instances[300])})
		}
	}
	for _, format := range []uint16{TextPlain, Opaque, CBOR, TLV, SenMLJSON, SenMLCBOR, LwM2MJSON} {
		for _, c := range cases {
			enc, err := Encode(format, c.n, c.path, reg)
			if err != nil {
				single := c.n.Kind() == node.KindSingleResource || c.n.Kind() == node.KindResourceInstance
				switch {
				case format == Opaque && errors.Is(err, ErrMismatch):
				case (format == TextPlain || format == Opaque || format == CBOR) && !single && errors.Is(err, ErrUnsupportedFormat):
				default:
					t.Errorf("%s %s: %v", FormatName(format), c.path, err)
				}
				continue
			}
			got, err := Decode(format, enc, c.path, reg)
			want := c.n
			if c.path.Level() == node.LevelObject && c.n.Kind() == node.KindInstance {
				want = node.Object{ID: c.path.ObjectID(), Instances: []node.Instance{c.n.(node.Instance)}}
			}
			if err != nil || !node.Equal(got, want) {
				t.Errorf("%s %s: %q decoded %+v, %v", FormatName(format), c.path, enc, got, err)
			}
		}
	}
}

func TestComposite(t *testing.T) {
	reg := testRegistry(t)
	dev := specDevice()
	nodes := map[node.Path]node.Node{
		node.MustPath(3, 0, 0):    dev.Resources[0],
		node.MustPath(3, 0, 6):    dev.Resources[4],
		node.MustPath(1, 0):       node.Instance{ID: 0, Resources: []node.Resource{node.NewSingle(1, node.IntValue(86400))}},
		node.MustPath(3, 0, 7, 1): node.NewResourceInstance(1, node.IntValue(5000)),
	}
	want := `[{"bn":"/1/0/","n":"1","v":86400},` +
		`{"bn":"/3/0/0","vs":"Open Mobile Alliance"},` +
		`{"bn":"/3/0/6/","n":"0","v":1},{"n":"1","v":5},` +
		`{"bn":"/3/0/7/1","v":5000}]`
	enc, err := EncodeComposite(SenMLJSON, nodes, reg)
	if err != nil || string(enc) != want {
		t.Fatalf("encoded %s, %v\nwant    %s", enc, err, want)
	}
	requested := []node.Path{node.MustPath(3, 0, 0), node.MustPath(3, 0, 6), node.MustPath(1, 0), node.MustPath(3, 0, 7, 1), node.MustPath(3, 0, 9)}
	for _, format := range []uint16{SenMLJSON, SenMLCBOR} {
		enc, err := EncodeComposite(format, nodes, reg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeComposite(format, enc, requested, reg)
		if err != nil {
			t.Fatalf("%s: %v", FormatName(format), err)
		}
		if len(got) != len(nodes) {
			t.Errorf("%s: %d nodes", FormatName(format), len(got))
		}
		for p, n := range nodes {
			if !node.Equal(got[p], n) {
				t.Errorf("%s: %s = %+v", FormatName(format), p, got[p])
			}
		}
		// Without requested paths (a Send): one node per record.
		flat, err := DecodeComposite(format, enc, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		if len(flat) != 5 || !node.Equal(flat[node.MustPath(3, 0, 6, 1)], node.NewResourceInstance(1, node.IntValue(5))) ||
			!node.Equal(flat[node.MustPath(1, 0, 1)], node.NewSingle(1, node.IntValue(86400))) {
			t.Errorf("%s: flat = %+v", FormatName(format), flat)
		}
		// Requesting the root.
		all, err := DecodeComposite(format, enc, []node.Path{node.Root}, reg)
		if err != nil || len(all) != 5 {
			t.Errorf("%s: root: %v %+v", FormatName(format), err, all)
		}
	}
	if _, err := DecodeComposite(SenMLJSON, enc, []node.Path{node.MustPath(3, 0, 0)}, reg); !errors.Is(err, ErrMismatch) {
		t.Errorf("record outside the requested paths: %v", err)
	}
	if _, err := DecodeComposite(TLV, nil, nil, reg); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("TLV composite: %v", err)
	}
	if _, err := EncodeComposite(LwM2MJSON, nodes, reg); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("LwM2M JSON composite: %v", err)
	}
}

func TestPaths(t *testing.T) {
	paths := []node.Path{node.MustPath(3, 0, 1), node.MustPath(1, 0), node.Root, node.MustPath(3, 0, 6, 1)}
	enc, err := EncodePaths(SenMLJSON, paths)
	if err != nil || string(enc) != `[{"n":"/3/0/1"},{"n":"/1/0"},{"n":"/"},{"n":"/3/0/6/1"}]` {
		t.Fatalf("%s %v", enc, err)
	}
	for _, format := range []uint16{SenMLJSON, SenMLCBOR} {
		enc, err := EncodePaths(format, paths)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodePaths(format, enc)
		if err != nil || len(got) != len(paths) {
			t.Fatalf("%s: %v %v", FormatName(format), got, err)
		}
		for i := range paths {
			if got[i] != paths[i] {
				t.Errorf("%s: path %d = %v", FormatName(format), i, got[i])
			}
		}
	}
	if got, err := DecodePaths(SenMLJSON, []byte(`[{"bn":"/3/0/","n":"1"},{"n":"2"}]`)); err != nil || got[1] != node.MustPath(3, 0, 2) {
		t.Errorf("base name: %v %v", got, err)
	}
	if _, err := DecodePaths(SenMLJSON, []byte(`[{"n":"/3/0/1","v":1}]`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("value in path list: %v", err)
	}
	if _, err := EncodePaths(TLV, paths); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("TLV paths: %v", err)
	}
}

func TestTimestamped(t *testing.T) {
	reg := testRegistry(t)
	now := time.Unix(1700000000, 0)
	// Notification of /3303/0/5700-like data: values of /9000/0/3 at three
	// times, relative to the base time; and /9000/0/0 at one of them.
	doc := `[{"bn":"/9000/0/","bt":1600000000,"n":"3","v":22.9,"t":-30},` +
		`{"n":"3","v":22.4,"t":-5},{"n":"0","vs":"a string","t":-5},{"n":"3","v":24.1,"t":-50}]`
	got, err := decodeTimestamped(SenMLJSON, []byte(doc), node.MustPath(9000, 0), reg, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d entries", len(got))
	}
	wantTimes := []int64{1600000000 - 50, 1600000000 - 30, 1600000000 - 5}
	wantVals := []float64{24.1, 22.9, 22.4}
	for i, ts := range got {
		if ts.Time.Unix() != wantTimes[i] {
			t.Errorf("entry %d at %v", i, ts.Time)
		}
		in := ts.Nodes[node.MustPath(9000, 0)].(node.Instance)
		r, _ := in.Resource(3)
		if f, _ := r.Value.AsFloat(); f != wantVals[i] {
			t.Errorf("entry %d: %v", i, r.Value)
		}
	}
	if in := got[2].Nodes[node.MustPath(9000, 0)].(node.Instance); len(in.Resources) != 2 {
		t.Errorf("latest entry has %d resources", len(in.Resources))
	}

	// The same through LwM2M JSON, and relative times.
	lw := `{"bn":"/9000/0/3","e":[{"v":22.9,"t":-30},{"v":22.4,"t":-5},{"v":24.1}]}`
	got, err = decodeTimestamped(LwM2MJSON, []byte(lw), node.MustPath(9000, 0, 3), reg, now)
	if err != nil || len(got) != 3 {
		t.Fatalf("%v %+v", err, got)
	}
	if !got[0].Time.IsZero() || !got[1].Time.Equal(now.Add(-30*time.Second)) || !got[2].Time.Equal(now.Add(-5*time.Second)) {
		t.Errorf("times %v %v %v", got[0].Time, got[1].Time, got[2].Time)
	}

	// Round trip of a Send with several times.
	send := []Timestamped{
		{Time: time.Unix(1700000100, 0), Nodes: map[node.Path]node.Node{
			node.MustPath(9000, 0, 3): node.NewSingle(3, node.FloatValue(1.5)),
			node.MustPath(3, 0, 9):    node.NewSingle(9, node.IntValue(80)),
		}},
		{Time: time.Unix(1700000000, 0), Nodes: map[node.Path]node.Node{
			node.MustPath(9000, 0, 3): node.NewSingle(3, node.FloatValue(1.25)),
		}},
		{Nodes: map[node.Path]node.Node{
			node.MustPath(3, 0, 6, 0): node.NewResourceInstance(0, node.IntValue(1)),
		}},
	}
	for _, format := range []uint16{SenMLJSON, SenMLCBOR} {
		enc, err := EncodeTimestamped(format, send, reg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeTimestamped(format, enc, node.Root, reg)
		if err != nil || len(got) != 3 {
			t.Fatalf("%s: %v %+v", FormatName(format), err, got)
		}
		order := []int{2, 1, 0} // untimestamped first, then oldest first
		for i, j := range order {
			if !got[i].Time.Equal(send[j].Time) || len(got[i].Nodes) != len(send[j].Nodes) {
				t.Errorf("%s: entry %d = %v, want %v", FormatName(format), i, got[i].Time, send[j].Time)
				continue
			}
			for p, n := range send[j].Nodes {
				if !node.Equal(got[i].Nodes[p], n) {
					t.Errorf("%s: entry %d %s = %+v", FormatName(format), i, p, got[i].Nodes[p])
				}
			}
		}
	}
	enc, _ := EncodeTimestamped(SenMLJSON, send[:2], reg)
	want := `[{"bn":"/9000/0/3","bt":1700000000,"v":1.25},` +
		`{"bn":"/3/0/9","bt":1700000100,"v":80},{"bn":"/9000/0/3","v":1.5}]`
	if string(enc) != want {
		t.Errorf("encoded %s\nwant    %s", enc, want)
	}

	// LwM2M JSON: one path only.
	one := []Timestamped{
		{Time: time.Unix(1700000000, 0), Nodes: map[node.Path]node.Node{node.MustPath(9000, 0, 3): node.NewSingle(3, node.FloatValue(2))}},
		{Time: time.Unix(1700000010, 0), Nodes: map[node.Path]node.Node{node.MustPath(9000, 0, 3): node.NewSingle(3, node.FloatValue(3))}},
	}
	enc, err = EncodeTimestamped(LwM2MJSON, one, reg)
	if err != nil || string(enc) != `{"bn":"/9000/0/3","e":[{"v":2.0,"t":1700000000},{"v":3.0,"t":1700000010}]}` {
		t.Errorf("lwm2m json: %s %v", enc, err)
	}
	back, err := DecodeTimestamped(LwM2MJSON, enc, node.MustPath(9000, 0, 3), reg)
	if err != nil || len(back) != 2 || !back[1].Time.Equal(one[1].Time) {
		t.Errorf("lwm2m json back: %v %+v", err, back)
	}
	if _, err := EncodeTimestamped(LwM2MJSON, send, reg); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("lwm2m json composite: %v", err)
	}
	if _, err := EncodeTimestamped(SenMLJSON, []Timestamped{{Time: time.Unix(1000, 0), Nodes: one[0].Nodes}}, reg); !errors.Is(err, ErrMismatch) {
		t.Errorf("relative time: %v", err)
	}
	// Formats without timestamps decode into one untimestamped entry.
	tl, err := DecodeTimestamped(TLV, unhex(t, "C109 64"), node.MustPath(3, 0, 9), reg)
	if err != nil || len(tl) != 1 || !tl[0].Time.IsZero() || !node.Equal(tl[0].Nodes[node.MustPath(3, 0, 9)], node.NewSingle(9, node.IntValue(100))) {
		t.Errorf("tlv: %v %+v", err, tl)
	}
}

func TestNilRegistry(t *testing.T) {
	// Without a registry, everything is guessed.
	got, err := Decode(TLV, unhex(t, specDeviceTLV), node.MustPath(3, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	in := got.(node.Instance)
	if r, _ := in.Resource(9); r.Type != model.TypeOpaque {
		t.Errorf("resource 9 = %+v", r)
	}
	if _, err := Encode(SenMLJSON, specDevice(), node.MustPath(3, 0), nil); err != nil {
		t.Error(err)
	}
}
