package codec

import (
	"encoding/binary"
	"math"
	"sort"
	"unicode/utf8"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// OMA LwM2M TLV (Core TS 1.1, 7.4.3). Each TLV starts with a type byte:
//
//	bits 7-6  identifier type: 00 object instance, 01 resource instance,
//	          10 multiple resource, 11 resource with value
//	bit 5     identifier length: 0 = 8 bits, 1 = 16 bits
//	bits 4-3  length type: 00 = length in bits 2-0, 01/10/11 = 8/16/24-bit
//	          length field
//	bits 2-0  length when bits 4-3 are 00
//
// then the identifier, the length field if any, and the value. Object
// instances contain resources (with value or multiple); multiple resources
// contain resource instances.

const (
	tlvObjectInstance   = 0
	tlvResourceInstance = 1
	tlvMultipleResource = 2
	tlvResource         = 3

	// maxTLVLength is the largest value a 24-bit length field can
	// describe.
	maxTLVLength = 1<<24 - 1
)

type tlvEntry struct {
	typ      byte
	id       uint16
	value    []byte     // resource and resource instance
	children []tlvEntry // object instance and multiple resource
}

// parseTLV parses a sequence of TLVs. Values alias b.
func parseTLV(b []byte, parent int) ([]tlvEntry, error) {
	var out []tlvEntry
	for len(b) > 0 {
		h := b[0]
		typ := h >> 6
		idLen := 1 + int(h>>5&1)
		lenLen := int(h >> 3 & 3)
		if len(b) < 1+idLen+lenLen {
			return nil, malformed(TLV, "truncated TLV header")
		}
		var id uint16
		if idLen == 1 {
			id = uint16(b[1])
		} else {
			id = binary.BigEndian.Uint16(b[1:3])
		}
		if id > node.MaxID {
			return nil, malformed(TLV, "identifier %d out of range", id)
		}
		n := int(h & 7)
		if lenLen > 0 {
			n = 0
			for _, c := range b[1+idLen : 1+idLen+lenLen] {
				n = n<<8 | int(c)
			}
		}
		b = b[1+idLen+lenLen:]
		if n > len(b) {
			return nil, malformed(TLV, "length %d beyond the end of the payload", n)
		}
		e := tlvEntry{typ: typ, id: id}
		val := b[:n]
		b = b[n:]
		switch typ {
		case tlvObjectInstance, tlvMultipleResource:
			// Object instances hold resources; multiple resources hold
			// resource instances. Nothing else nests, which bounds the
			// depth at 3.
			if typ == tlvObjectInstance && parent != -1 {
				return nil, malformed(TLV, "object instance TLV inside another TLV")
			}
			if typ == tlvMultipleResource && parent != -1 && parent != tlvObjectInstance {
				return nil, malformed(TLV, "multiple resource TLV inside a multiple resource TLV")
			}
			children, err := parseTLV(val, int(typ))
			if err != nil {
				return nil, err
			}
			for _, c := range children {
				if typ == tlvObjectInstance && c.typ != tlvResource && c.typ != tlvMultipleResource {
					return nil, malformed(TLV, "object instance %d holds a TLV of type %d", id, c.typ)
				}
				if typ == tlvMultipleResource && c.typ != tlvResourceInstance {
					return nil, malformed(TLV, "multiple resource %d holds a TLV of type %d", id, c.typ)
				}
			}
			e.children = children
		default:
			e.value = val
		}
		out = append(out, e)
	}
	return out, nil
}

func decodeTLV(payload []byte, path node.Path, reg *model.Registry) (node.Node, error) {
	entries, err := parseTLV(payload, -1)
	if err != nil {
		return nil, err
	}
	oid := path.ObjectID()
	allOf := func(es []tlvEntry, types ...byte) bool {
		for _, e := range es {
			ok := false
			for _, t := range types {
				ok = ok || e.typ == t
			}
			if !ok {
				return false
			}
		}
		return true
	}
	// unwrap removes an object instance TLV around the content of a
	// resource or resource instance path, which some clients send.
	unwrap := func(es []tlvEntry) ([]tlvEntry, error) {
		if len(es) == 1 && es[0].typ == tlvObjectInstance {
			if es[0].id != path.InstanceID() {
				return nil, mismatch(TLV, "object instance %d at path %s", es[0].id, path)
			}
			return es[0].children, nil
		}
		return es, nil
	}

	switch path.Level() {
	case node.LevelObject:
		obj := node.Object{ID: oid, Instances: []node.Instance{}}
		switch {
		case allOf(entries, tlvObjectInstance):
			seen := map[uint16]bool{}
			for _, e := range entries {
				if seen[e.id] {
					return nil, malformed(TLV, "duplicate object instance %d", e.id)
				}
				seen[e.id] = true
				in, err := tlvInstance(reg, oid, e.id, e.children)
				if err != nil {
					return nil, err
				}
				obj.Instances = append(obj.Instances, in)
			}
		case allOf(entries, tlvResource, tlvMultipleResource):
			// Resources without their object instance TLV: instance 0.
			in, err := tlvInstance(reg, oid, 0, entries)
			if err != nil {
				return nil, err
			}
			obj.Instances = append(obj.Instances, in)
		default:
			return nil, mismatch(TLV, "object %s holds resource instance TLVs", path)
		}
		sort.Slice(obj.Instances, func(i, j int) bool { return obj.Instances[i].ID < obj.Instances[j].ID })
		return obj, nil

	case node.LevelInstance:
		es, err := unwrap(entries)
		if err != nil {
			return nil, err
		}
		if !allOf(es, tlvResource, tlvMultipleResource) {
			return nil, mismatch(TLV, "object instance %s holds TLVs other than resources", path)
		}
		return tlvInstance(reg, oid, path.InstanceID(), es)

	case node.LevelResource:
		es, err := unwrap(entries)
		if err != nil {
			return nil, err
		}
		rid := path.ResourceID()
		def, known := resourceDef(reg, oid, rid)
		switch {
		case len(es) == 1 && (es[0].typ == tlvResource || es[0].typ == tlvMultipleResource):
			if es[0].id != rid {
				return nil, mismatch(TLV, "resource %d at path %s", es[0].id, path)
			}
			return tlvResourceNode(reg, oid, es[0])
		case allOf(es, tlvResourceInstance) && (len(es) > 0 || (known && def.Multiple)):
			// The resource instances of a multiple resource without the
			// multiple resource TLV around them.
			return tlvResourceNode(reg, oid, tlvEntry{typ: tlvMultipleResource, id: rid, children: es})
		}
		return nil, mismatch(TLV, "payload is not one resource %s", path)

	case node.LevelResourceInstance:
		es := entries
		if len(es) == 1 && es[0].typ == tlvMultipleResource {
			if es[0].id != path.ResourceID() {
				return nil, mismatch(TLV, "resource %d at path %s", es[0].id, path)
			}
			es = es[0].children
		}
		if len(es) != 1 || es[0].typ != tlvResourceInstance {
			return nil, mismatch(TLV, "payload is not one resource instance %s", path)
		}
		if es[0].id != path.ResourceInstanceID() {
			return nil, mismatch(TLV, "resource instance %d at path %s", es[0].id, path)
		}
		def, known := resourceDef(reg, oid, path.ResourceID())
		typ := model.TypeOpaque
		if known {
			if !def.Multiple {
				return nil, mismatch(TLV, "resource %s is single in the model", path.Parent())
			}
			typ = def.Type
		}
		v, err := tlvValue(typ, es[0].value)
		if err != nil {
			return nil, err
		}
		return node.ResourceInstance{ID: es[0].id, Type: typ, Value: v}, nil
	}
	return nil, unsupported(TLV, "cannot decode at %s", path)
}

func tlvInstance(reg *model.Registry, oid, iid uint16, es []tlvEntry) (node.Instance, error) {
	in := node.Instance{ID: iid, Resources: make([]node.Resource, 0, len(es))}
	seen := map[uint16]bool{}
	for _, e := range es {
		if seen[e.id] {
			return node.Instance{}, malformed(TLV, "duplicate resource %d in instance %d", e.id, iid)
		}
		seen[e.id] = true
		r, err := tlvResourceNode(reg, oid, e)
		if err != nil {
			return node.Instance{}, err
		}
		in.Resources = append(in.Resources, r)
	}
	sort.Slice(in.Resources, func(i, j int) bool { return in.Resources[i].ID < in.Resources[j].ID })
	return in, nil
}

// tlvResourceNode converts a resource or multiple resource TLV.
func tlvResourceNode(reg *model.Registry, oid uint16, e tlvEntry) (node.Resource, error) {
	def, known := resourceDef(reg, oid, e.id)
	multiple := e.typ == tlvMultipleResource
	typ := model.TypeOpaque
	if known {
		if def.Multiple != multiple {
			return node.Resource{}, mismatch(TLV, "resource /%d/x/%d: multiple is %v in the model", oid, e.id, def.Multiple)
		}
		if def.Type == model.TypeNone {
			return node.Resource{}, mismatch(TLV, "resource /%d/x/%d is executable and has no value", oid, e.id)
		}
		typ = def.Type
	}
	if !multiple {
		v, err := tlvValue(typ, e.value)
		if err != nil {
			return node.Resource{}, err
		}
		return node.Resource{ID: e.id, Type: typ, Value: v}, nil
	}
	r := node.Resource{ID: e.id, Type: typ, Multiple: true, Instances: make(map[uint16]node.Value, len(e.children))}
	for _, c := range e.children {
		if _, dup := r.Instances[c.id]; dup {
			return node.Resource{}, malformed(TLV, "duplicate resource instance %d in resource %d", c.id, e.id)
		}
		v, err := tlvValue(typ, c.value)
		if err != nil {
			return node.Resource{}, err
		}
		r.Instances[c.id] = v
	}
	return r, nil
}

// tlvValue decodes the value of a resource or resource instance TLV.
func tlvValue(t model.ResourceType, b []byte) (node.Value, error) {
	switch t {
	case model.TypeString, model.TypeCorelnk:
		if !utf8.Valid(b) {
			return node.Value{}, malformed(TLV, "%v value is not valid UTF-8", t)
		}
		if t == model.TypeCorelnk {
			return node.CoreLinkValue(string(b)), nil
		}
		return node.StringValue(string(b)), nil
	case model.TypeInteger, model.TypeTime:
		var i int64
		switch len(b) {
		case 1:
			i = int64(int8(b[0]))
		case 2:
			i = int64(int16(binary.BigEndian.Uint16(b)))
		case 4:
			i = int64(int32(binary.BigEndian.Uint32(b)))
		case 8:
			i = int64(binary.BigEndian.Uint64(b))
		default:
			return node.Value{}, malformed(TLV, "%v value of %d bytes", t, len(b))
		}
		if t == model.TypeTime {
			return node.UnixValue(i), nil
		}
		return node.IntValue(i), nil
	case model.TypeUnsigned:
		var u uint64
		switch len(b) {
		case 1:
			u = uint64(b[0])
		case 2:
			u = uint64(binary.BigEndian.Uint16(b))
		case 4:
			u = uint64(binary.BigEndian.Uint32(b))
		case 8:
			u = binary.BigEndian.Uint64(b)
		default:
			return node.Value{}, malformed(TLV, "unsigned integer value of %d bytes", len(b))
		}
		return node.UintValue(u), nil
	case model.TypeFloat:
		switch len(b) {
		case 4:
			return node.FloatValue(float64(math.Float32frombits(binary.BigEndian.Uint32(b)))), nil
		case 8:
			return node.FloatValue(math.Float64frombits(binary.BigEndian.Uint64(b))), nil
		}
		return node.Value{}, malformed(TLV, "float value of %d bytes", len(b))
	case model.TypeBoolean:
		if len(b) != 1 || b[0] > 1 {
			return node.Value{}, malformed(TLV, "invalid boolean value % x", b)
		}
		return node.BoolValue(b[0] == 1), nil
	case model.TypeOpaque:
		return node.OpaqueValue(b), nil
	case model.TypeObjlnk:
		if len(b) != 4 {
			return node.Value{}, malformed(TLV, "object link value of %d bytes", len(b))
		}
		return node.ObjLinkValue(node.ObjLink{
			ObjectID:   binary.BigEndian.Uint16(b),
			InstanceID: binary.BigEndian.Uint16(b[2:]),
		}), nil
	}
	return node.Value{}, mismatch(TLV, "cannot decode a value of type %v", t)
}

// Encoding.

func appendTLVHeader(b []byte, typ byte, id uint16, n int) []byte {
	h := typ << 6
	if id > 0xFF {
		h |= 1 << 5
	}
	var lenLen int
	switch {
	case n < 8:
		h |= byte(n)
	case n <= 0xFF:
		h |= 1 << 3
		lenLen = 1
	case n <= 0xFFFF:
		h |= 2 << 3
		lenLen = 2
	default:
		h |= 3 << 3
		lenLen = 3
	}
	b = append(b, h)
	if id > 0xFF {
		b = append(b, byte(id>>8))
	}
	b = append(b, byte(id))
	for i := lenLen - 1; i >= 0; i-- {
		b = append(b, byte(n>>(8*i)))
	}
	return b
}

func appendTLV(b []byte, typ byte, id uint16, value []byte) ([]byte, error) {
	if len(value) > maxTLVLength {
		return nil, mismatch(TLV, "value of %d bytes is too long for TLV", len(value))
	}
	b = appendTLVHeader(b, typ, id, len(value))
	return append(b, value...), nil
}

func tlvEncodeValue(v node.Value) []byte {
	switch x := v.Interface().(type) {
	case string:
		return []byte(x)
	case node.CoreLink:
		return []byte(x)
	case int64:
		return tlvInt(x)
	case uint64:
		switch {
		case x <= math.MaxUint8:
			return []byte{byte(x)}
		case x <= math.MaxUint16:
			return binary.BigEndian.AppendUint16(nil, uint16(x))
		case x <= math.MaxUint32:
			return binary.BigEndian.AppendUint32(nil, uint32(x))
		}
		return binary.BigEndian.AppendUint64(nil, x)
	case float64:
		if f32 := float32(x); float64(f32) == x {
			return binary.BigEndian.AppendUint32(nil, math.Float32bits(f32))
		}
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(x))
	case bool:
		if x {
			return []byte{1}
		}
		return []byte{0}
	case []byte:
		return x
	case node.ObjLink:
		b := binary.BigEndian.AppendUint16(nil, x.ObjectID)
		return binary.BigEndian.AppendUint16(b, x.InstanceID)
	}
	if t, ok := v.AsTime(); ok {
		return tlvInt(t.Unix())
	}
	return nil
}

// tlvInt encodes i in the fewest of 1, 2, 4 or 8 bytes.
func tlvInt(i int64) []byte {
	switch {
	case i >= math.MinInt8 && i <= math.MaxInt8:
		return []byte{byte(i)}
	case i >= math.MinInt16 && i <= math.MaxInt16:
		return binary.BigEndian.AppendUint16(nil, uint16(i))
	case i >= math.MinInt32 && i <= math.MaxInt32:
		return binary.BigEndian.AppendUint32(nil, uint32(i))
	}
	return binary.BigEndian.AppendUint64(nil, uint64(i))
}

func tlvEncodeResource(b []byte, r node.Resource) ([]byte, error) {
	if !r.Multiple {
		return appendTLV(b, tlvResource, r.ID, tlvEncodeValue(r.Value))
	}
	ids := make([]int, 0, len(r.Instances))
	for id := range r.Instances {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var inner []byte
	var err error
	for _, id := range ids {
		if inner, err = appendTLV(inner, tlvResourceInstance, uint16(id), tlvEncodeValue(r.Instances[uint16(id)])); err != nil {
			return nil, err
		}
	}
	return appendTLV(b, tlvMultipleResource, r.ID, inner)
}

func tlvEncodeResources(b []byte, rs []node.Resource) ([]byte, error) {
	sorted := append([]node.Resource(nil), rs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	var err error
	for _, r := range sorted {
		if b, err = tlvEncodeResource(b, r); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func tlvEncodeInstance(b []byte, in node.Instance) ([]byte, error) {
	inner, err := tlvEncodeResources(nil, in.Resources)
	if err != nil {
		return nil, err
	}
	return appendTLV(b, tlvObjectInstance, in.ID, inner)
}

// encodeTLV encodes n, whose own path is np, for the request path.
func encodeTLV(n node.Node, path, np node.Path) ([]byte, error) {
	b := []byte{}
	var err error
	switch n := deref(n).(type) {
	case node.Object:
		sorted := append([]node.Instance(nil), n.Instances...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
		for _, in := range sorted {
			if b, err = tlvEncodeInstance(b, in); err != nil {
				return nil, err
			}
		}
		return b, nil
	case node.Instance:
		if path.Level() == node.LevelObject {
			// Create: the instance TLV carries the new instance's ID.
			return tlvEncodeInstance(b, n)
		}
		return tlvEncodeResources(b, n.Resources)
	case node.Resource:
		return tlvEncodeResource(b, n)
	case node.ResourceInstance:
		return appendTLV(b, tlvResourceInstance, n.ID, tlvEncodeValue(n.Value))
	}
	return nil, unsupported(TLV, "cannot encode %T at %s", n, np)
}
