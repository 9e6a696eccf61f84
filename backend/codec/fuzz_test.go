package codec

import (
	"testing"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// fuzzPaths are the paths the fuzz targets decode at: known objects of
// several shapes, test object 9000 with every type, and an unknown object.
var fuzzPaths = []node.Path{
	node.MustPath(3),
	node.MustPath(3, 0),
	node.MustPath(3, 0, 0),
	node.MustPath(3, 0, 6),
	node.MustPath(3, 0, 6, 1),
	node.MustPath(3, 0, 13),
	node.MustPath(1, 0),
	node.MustPath(5, 0, 0),
	node.MustPath(6, 0, 0),
	node.MustPath(9000),
	node.MustPath(9000, 1),
	node.MustPath(9000, 1, 2),
	node.MustPath(9000, 1, 3),
	node.MustPath(9000, 1, 6),
	node.MustPath(9000, 1, 7),
	node.MustPath(9000, 1, 105, 0),
	node.MustPath(9999),
	node.MustPath(9999, 0),
	node.MustPath(9999, 0, 1),
	node.MustPath(9999, 0, 1, 2),
}

func pathIndex(p node.Path) uint8 {
	for i, q := range fuzzPaths {
		if q == p {
			return uint8(i)
		}
	}
	return 0
}

// roundTrip checks the property every fuzz target shares: if a payload
// decodes, the node is valid, encodes, and decodes back to an equal node.
func roundTrip(t *testing.T, reg *model.Registry, format uint16, idx uint8, data []byte) {
	p := fuzzPaths[int(idx)%len(fuzzPaths)]
	n, err := Decode(format, data, p, reg)
	if err != nil {
		return
	}
	if err := node.Validate(n); err != nil {
		t.Fatalf("decoded an invalid node: %v", err)
	}
	enc, err := Encode(format, n, p, reg)
	if err != nil {
		t.Fatalf("Encode of decoded %+v at %s: %v", n, p, err)
	}
	back, err := Decode(format, enc, p, reg)
	if err != nil {
		t.Fatalf("Decode(Encode) at %s of %q: %v", p, enc, err)
	}
	if !node.Equal(n, back) {
		t.Fatalf("round trip at %s changed %+v into %+v (%q)", p, n, back, enc)
	}
}

func seedEncoded(f *testing.F, format uint16) {
	reg := testRegistry(f)
	inst := allTypes()
	nodes := []struct {
		p node.Path
		n node.Node
	}{
		{node.MustPath(3, 0), specDevice()},
		{node.MustPath(9000, 1), inst},
		{node.MustPath(9000), node.Object{ID: 9000, Instances: []node.Instance{inst}}},
		{node.MustPath(3, 0, 6), specDevice().Resources[4]},
		{node.MustPath(3, 0, 6, 1), node.NewResourceInstance(1, node.IntValue(5))},
	}
	for _, r := range inst.Resources {
		if !r.Multiple {
			nodes = append(nodes, struct {
				p node.Path
				n node.Node
			}{node.MustPath(9000, 1, r.ID), r})
		}
	}
	for _, x := range nodes {
		b, err := Encode(format, x.n, x.p, reg)
		if err != nil {
			continue
		}
		f.Add(pathIndex(x.p), b)
	}
}

func FuzzDecodeTLV(f *testing.F) {
	seedEncoded(f, TLV)
	f.Add(pathIndex(node.MustPath(3, 0)), unhex(f, specDeviceTLV))
	f.Add(pathIndex(node.MustPath(3)), unhex(f, "08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F"))
	f.Add(pathIndex(node.MustPath(9999, 0)), unhex(f, "D8 00 000003 414243 E1 16DA 01"))
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		roundTrip(t, reg, TLV, idx, data)
	})
}

func FuzzDecodeText(f *testing.F) {
	seedEncoded(f, TextPlain)
	for _, s := range []string{"100", "-1.5e3", "AQIDBAU=", "3:0", "1", "hello"} {
		f.Add(uint8(0), []byte(s))
	}
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		roundTrip(t, reg, TextPlain, idx, data)
	})
}

func FuzzDecodeOpaque(f *testing.F) {
	seedEncoded(f, Opaque)
	f.Add(pathIndex(node.MustPath(5, 0, 0)), []byte{0, 1, 2})
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		roundTrip(t, reg, Opaque, idx, data)
	})
}

func FuzzDecodeCBOR(f *testing.F) {
	seedEncoded(f, CBOR)
	for _, s := range []string{"\xc1\x1a\x51\x82\x42\x8f", "\xf9\x3e\x00", "\xc2\x41\x01", "\xc0\x74" + "2013-05-02T10:40:15Z", "\x9f\x01\xff"} {
		f.Add(uint8(0), []byte(s))
	}
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		roundTrip(t, reg, CBOR, idx, data)
	})
}

// recordFuzz adds the composite, path-list and timestamped decoders of the
// SenML formats to the round trip.
func recordFuzz(t *testing.T, reg *model.Registry, format uint16, idx uint8, data []byte) {
	roundTrip(t, reg, format, idx, data)
	if format == LwM2MJSON {
		_, _ = DecodeTimestamped(format, data, fuzzPaths[int(idx)%len(fuzzPaths)], reg)
		return
	}
	_, _ = DecodePaths(format, data)
	_, _ = DecodeTimestamped(format, data, node.Root, reg)
	nodes, err := DecodeComposite(format, data, nil, reg)
	if err != nil {
		return
	}
	enc, err := EncodeComposite(format, nodes, reg)
	if err != nil {
		t.Fatalf("EncodeComposite of decoded nodes: %v", err)
	}
	back, err := DecodeComposite(format, enc, nil, reg)
	if err != nil {
		t.Fatalf("DecodeComposite(EncodeComposite) of %q: %v", enc, err)
	}
	if len(back) != len(nodes) {
		t.Fatalf("composite round trip: %d nodes, want %d", len(back), len(nodes))
	}
	for p, n := range nodes {
		if !node.Equal(n, back[p]) {
			t.Fatalf("composite round trip changed %s: %+v into %+v", p, n, back[p])
		}
	}
}

func FuzzDecodeSenMLJSON(f *testing.F) {
	seedEncoded(f, SenMLJSON)
	f.Add(pathIndex(node.MustPath(3, 0)), []byte(specDeviceSenML))
	f.Add(pathIndex(node.MustPath(9000, 1)), []byte(`[{"bn":"/9000/1/","bt":1600000000,"n":"3","v":22.9,"t":-30},{"n":"3","v":22.4,"t":-5}]`))
	f.Add(uint8(0), []byte(`[{"n":"/3/0/1"},{"n":"/1/0"}]`))
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		recordFuzz(t, reg, SenMLJSON, idx, data)
	})
}

func FuzzDecodeSenMLCBOR(f *testing.F) {
	seedEncoded(f, SenMLCBOR)
	f.Add(pathIndex(node.MustPath(3, 0)), unhex(f, `83
		A3 21 65 2F332F302F 00 61 30 03 74 4F70656E204D6F62696C6520416C6C69616E6365
		A2 00 61 39 02 18 64
		A2 00 63 362F30 02 01`))
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		recordFuzz(t, reg, SenMLCBOR, idx, data)
	})
}

func FuzzDecodeLwM2MJSON(f *testing.F) {
	seedEncoded(f, LwM2MJSON)
	f.Add(pathIndex(node.MustPath(3, 0)), []byte(specDeviceLwM2MJSON))
	f.Add(pathIndex(node.MustPath(9000, 1, 3)), []byte(`{"bn":"/9000/1/3","bt":1600000000,"e":[{"v":22.9,"t":-30},{"v":22.4,"t":-5}]}`))
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		recordFuzz(t, reg, LwM2MJSON, idx, data)
	})
}

func TestTLVEmptyInstance(t *testing.T) {
	reg := testRegistry(t)
	obj := node.Object{ID: 9000, Instances: []node.Instance{{ID: 2, Resources: []node.Resource{}}, allTypes()}}
	enc, err := Encode(TLV, obj, node.MustPath(9000), reg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(TLV, enc, node.MustPath(9000), reg)
	if err != nil || !node.Equal(got, obj) {
		t.Fatalf("%v %+v", err, got)
	}
}
