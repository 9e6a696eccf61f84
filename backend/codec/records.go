package codec

import (
	"encoding/base64"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// SenML JSON, SenML CBOR and LwM2M JSON all describe a node as a list of
// records, each naming one resource or resource instance by its path and
// giving its value (and maybe a time). This file holds what the three
// share: resolving parsed records into paths and values, building nodes
// from them, and the other way round.

// maxRecords bounds the number of records in one payload.
const maxRecords = 1 << 16

type numKind uint8

const (
	numInt numKind = iota + 1
	numUint
	numFloat
)

// number is a numeric value as written: an integer (signed or beyond
// int64) or a float.
type number struct {
	kind numKind
	i    int64
	u    uint64
	f    float64
}

func (n number) float() float64 {
	switch n.kind {
	case numInt:
		return float64(n.i)
	case numUint:
		return float64(n.u)
	}
	return n.f
}

// value converts n to a value of type t: integers must be exact (a float
// with an integral value is accepted), floats may come from integers.
func (n number) value(format uint16, t model.ResourceType) (node.Value, error) {
	switch t {
	case model.TypeInteger, model.TypeTime:
		var i int64
		switch n.kind {
		case numInt:
			i = n.i
		case numUint:
			return node.Value{}, mismatch(format, "%d overflows a %v value", n.u, t)
		case numFloat:
			if n.f != math.Trunc(n.f) || n.f < -(1<<63) || n.f >= 1<<63 {
				return node.Value{}, mismatch(format, "%v is not a %v value", n.f, t)
			}
			i = int64(n.f)
		}
		if t == model.TypeTime {
			return node.UnixValue(i), nil
		}
		return node.IntValue(i), nil
	case model.TypeUnsigned:
		switch n.kind {
		case numInt:
			if n.i < 0 {
				return node.Value{}, mismatch(format, "%d is not an unsigned value", n.i)
			}
			return node.UintValue(uint64(n.i)), nil
		case numUint:
			return node.UintValue(n.u), nil
		}
		if n.f != math.Trunc(n.f) || n.f < 0 || n.f >= 1<<64 {
			return node.Value{}, mismatch(format, "%v is not an unsigned value", n.f)
		}
		return node.UintValue(uint64(n.f)), nil
	case model.TypeFloat:
		return node.FloatValue(n.float()), nil
	}
	return node.Value{}, mismatch(format, "a number is not a %v value", t)
}

type valKind uint8

const (
	valNone    valKind = iota
	valNum             // SenML "v", LwM2M JSON "v"
	valStr             // SenML "vs", LwM2M JSON "sv"
	valBool            // SenML "vb", LwM2M JSON "bv"
	valData            // SenML "vd"
	valObjLink         // SenML "vlo", LwM2M JSON "ov"
)

// rawRecord is a record as parsed, before base name and base time are
// applied.
type rawRecord struct {
	bn, n *string
	bt, t *float64
	kind  valKind
	num   number
	str   string
	b     bool
	data  []byte
}

// resolved is a record with its full path and time.
type resolved struct {
	path    node.Path
	hasTime bool
	time    float64
	kind    valKind
	num     number
	str     string
	b       bool
	data    []byte
}

func decodeRecords(format uint16, payload []byte, pathsOnly bool) ([]resolved, error) {
	var raws []rawRecord
	var err error
	switch format {
	case SenMLJSON:
		raws, err = parseSenMLJSON(payload)
	case SenMLCBOR:
		raws, err = parseSenMLCBOR(payload)
	case LwM2MJSON:
		raws, err = parseLwM2MJSON(payload)
	default:
		return nil, unsupported(format, "not a record format")
	}
	if err != nil {
		return nil, err
	}
	out := make([]resolved, 0, len(raws))
	var bn string
	var bt float64
	var hasBT bool
	for i, r := range raws {
		if r.bn != nil {
			bn = *r.bn
		}
		if r.bt != nil {
			bt, hasBT = *r.bt, true
		}
		name := bn
		if r.n != nil {
			name += *r.n
		}
		if len(name) > 1 && strings.HasSuffix(name, "/") {
			name = name[:len(name)-1]
		}
		p, err := node.ParsePath(name)
		if err != nil {
			return nil, malformed(format, "record %d: name %q is not an LwM2M path", i, name)
		}
		if !pathsOnly && r.kind == valNone {
			return nil, malformed(format, "record %d (%s) has no value", i, p)
		}
		if !pathsOnly && p.Level() != node.LevelResource && p.Level() != node.LevelResourceInstance {
			return nil, mismatch(format, "record %d names %s, not a resource or resource instance", i, p)
		}
		res := resolved{path: p, kind: r.kind, num: r.num, str: r.str, b: r.b, data: r.data, time: bt, hasTime: hasBT}
		if r.t != nil {
			res.time += *r.t
			res.hasTime = true
		}
		out = append(out, res)
	}
	return out, nil
}

// guessType returns the type a record's value suggests, for resources the
// registry does not know.
func guessType(r resolved) model.ResourceType {
	switch r.kind {
	case valNum:
		switch r.num.kind {
		case numInt:
			return model.TypeInteger
		case numUint:
			return model.TypeUnsigned
		}
		return model.TypeFloat
	case valStr:
		return model.TypeString
	case valBool:
		return model.TypeBoolean
	case valData:
		return model.TypeOpaque
	case valObjLink:
		return model.TypeObjlnk
	}
	return model.TypeNone
}

// recordValue converts a record's value to type t.
func recordValue(format uint16, t model.ResourceType, r resolved) (node.Value, error) {
	bad := func() (node.Value, error) {
		return node.Value{}, mismatch(format, "%s: value does not fit type %v", r.path, t)
	}
	switch r.kind {
	case valNum:
		v, err := r.num.value(format, t)
		if err != nil {
			return node.Value{}, mismatch(format, "%s: %v", r.path, err)
		}
		return v, nil
	case valStr:
		switch t {
		case model.TypeString:
			return node.StringValue(r.str), nil
		case model.TypeCorelnk:
			return node.CoreLinkValue(r.str), nil
		case model.TypeOpaque:
			if format == LwM2MJSON { // LwM2M JSON has no "vd": base64 in "sv"
				b, err := decodeBase64(r.str, base64.StdEncoding, base64.RawStdEncoding)
				if err != nil {
					return node.Value{}, malformed(format, "%s: opaque value is not base64", r.path)
				}
				return node.OpaqueValue(b), nil
			}
		}
	case valBool:
		if t == model.TypeBoolean {
			return node.BoolValue(r.b), nil
		}
	case valData:
		if t == model.TypeOpaque {
			return node.OpaqueValue(r.data), nil
		}
	case valObjLink:
		if t == model.TypeObjlnk {
			l, err := node.ParseObjLink(r.str)
			if err != nil {
				return node.Value{}, malformed(format, "%s: %v", r.path, err)
			}
			return node.ObjLinkValue(l), nil
		}
	}
	return bad()
}

// resAcc accumulates the values of one resource.
type resAcc struct {
	typ      model.ResourceType
	multiple bool
	single   node.Value
	has      bool
	values   map[uint16]node.Value
}

// buildNode builds the node at path p from records that must all be below
// p (or at p).
func buildNode(format uint16, reg *model.Registry, p node.Path, recs []resolved) (node.Node, error) {
	if p.Level() == node.LevelRoot {
		return nil, unsupported(format, "cannot decode a single node at the root path")
	}
	oid := p.ObjectID()
	instances := map[uint16]map[uint16]*resAcc{}
	seen := make(map[node.Path]bool, len(recs))
	for _, r := range recs {
		rp := r.path
		if !rp.HasPrefix(p) {
			return nil, mismatch(format, "record %s is not below %s", rp, p)
		}
		if seen[rp] {
			return nil, mismatch(format, "two records for %s", rp)
		}
		seen[rp] = true
		iid, rid := rp.InstanceID(), rp.ResourceID()
		isRI := rp.Level() == node.LevelResourceInstance
		def, known := resourceDef(reg, oid, rid)
		typ := guessType(r)
		multiple := isRI
		if known {
			if def.Type == model.TypeNone {
				return nil, mismatch(format, "resource %s is executable and has no value", rp)
			}
			if def.Multiple != isRI {
				if def.Multiple {
					return nil, mismatch(format, "record %s names multiple resource without instance", rp)
				}
				return nil, mismatch(format, "record %s names an instance of single resource", rp)
			}
			typ = def.Type
			multiple = def.Multiple
		}
		res := instances[iid]
		if res == nil {
			res = map[uint16]*resAcc{}
			instances[iid] = res
		}
		acc := res[rid]
		if acc == nil {
			acc = &resAcc{typ: typ, multiple: multiple}
			res[rid] = acc
		}
		if acc.multiple != multiple || (isRI && seen[rp.Parent()]) {
			return nil, mismatch(format, "resource %s named both with and without instance", rp)
		}
		if acc.typ != typ {
			return nil, mismatch(format, "resource instances of %s have different types", rp.Parent())
		}
		v, err := recordValue(format, typ, r)
		if err != nil {
			return nil, err
		}
		if isRI {
			if acc.values == nil {
				acc.values = map[uint16]node.Value{}
			}
			acc.values[rp.ResourceInstanceID()] = v
		} else {
			acc.single, acc.has = v, true
		}
	}

	toResource := func(rid uint16, acc *resAcc) node.Resource {
		if acc.multiple {
			return node.NewMultiple(rid, acc.typ, acc.values)
		}
		return node.Resource{ID: rid, Type: acc.typ, Value: acc.single}
	}
	toInstance := func(iid uint16) node.Instance {
		in := node.Instance{ID: iid, Resources: []node.Resource{}}
		for rid, acc := range instances[iid] {
			in.Resources = append(in.Resources, toResource(rid, acc))
		}
		sort.Slice(in.Resources, func(i, j int) bool { return in.Resources[i].ID < in.Resources[j].ID })
		return in
	}

	switch p.Level() {
	case node.LevelObject:
		obj := node.Object{ID: oid, Instances: []node.Instance{}}
		for iid := range instances {
			obj.Instances = append(obj.Instances, toInstance(iid))
		}
		sort.Slice(obj.Instances, func(i, j int) bool { return obj.Instances[i].ID < obj.Instances[j].ID })
		return obj, nil
	case node.LevelInstance:
		return toInstance(p.InstanceID()), nil
	case node.LevelResource:
		acc := instances[p.InstanceID()][p.ResourceID()]
		if acc == nil {
			def, known := resourceDef(reg, oid, p.ResourceID())
			if known && def.Multiple && def.Type != model.TypeNone {
				return node.NewMultiple(p.ResourceID(), def.Type, nil), nil
			}
			return nil, mismatch(format, "no value for %s", p)
		}
		return toResource(p.ResourceID(), acc), nil
	case node.LevelResourceInstance:
		acc := instances[p.InstanceID()][p.ResourceID()]
		if acc == nil {
			return nil, mismatch(format, "no value for %s", p)
		}
		v := acc.values[p.ResourceInstanceID()]
		return node.ResourceInstance{ID: p.ResourceInstanceID(), Type: acc.typ, Value: v}, nil
	}
	return nil, unsupported(format, "cannot decode at %s", p)
}

// buildComposite groups records by the requested paths, or by their own
// paths when requested is empty.
func buildComposite(format uint16, reg *model.Registry, requested []node.Path, recs []resolved) (map[node.Path]node.Node, error) {
	out := make(map[node.Path]node.Node)
	if len(requested) == 0 {
		for _, r := range recs {
			if _, dup := out[r.path]; dup {
				return nil, mismatch(format, "two records for %s", r.path)
			}
			n, err := buildNode(format, reg, r.path, []resolved{r})
			if err != nil {
				return nil, err
			}
			out[r.path] = n
		}
		return out, nil
	}
	groups := make(map[node.Path][]resolved, len(requested))
	for _, r := range recs {
		found := false
		for _, p := range requested {
			if r.path.HasPrefix(p) {
				groups[p] = append(groups[p], r)
				found = true
			}
		}
		if !found {
			return nil, mismatch(format, "record %s is below no requested path", r.path)
		}
	}
	for p, rs := range groups {
		if p.Level() == node.LevelRoot {
			// A request for the root gets one node per record path.
			sub, err := buildComposite(format, reg, nil, rs)
			if err != nil {
				return nil, err
			}
			for k, v := range sub {
				out[k] = v
			}
			continue
		}
		n, err := buildNode(format, reg, p, rs)
		if err != nil {
			return nil, err
		}
		out[p] = n
	}
	return out, nil
}

// Encoding.

// leaf is one value to write, at its full path.
type leaf struct {
	path  node.Path
	value node.Value
}

// nodeRecords lists the values of n, whose own path is np, in path order.
func nodeRecords(format uint16, np node.Path, n node.Node) ([]leaf, error) {
	var out []leaf
	addResource := func(ip node.Path, r node.Resource) error {
		rp, err := ip.Child(r.ID)
		if err != nil {
			return mismatch(format, "%v", err)
		}
		if !r.Multiple {
			out = append(out, leaf{rp, r.Value})
			return nil
		}
		ids := make([]int, 0, len(r.Instances))
		for id := range r.Instances {
			ids = append(ids, int(id))
		}
		sort.Ints(ids)
		for _, id := range ids {
			rip, err := rp.Child(uint16(id))
			if err != nil {
				return mismatch(format, "%v", err)
			}
			out = append(out, leaf{rip, r.Instances[uint16(id)]})
		}
		return nil
	}
	addInstance := func(ip node.Path, in node.Instance) error {
		rs := append([]node.Resource(nil), in.Resources...)
		sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
		for _, r := range rs {
			if err := addResource(ip, r); err != nil {
				return err
			}
		}
		return nil
	}
	switch n := deref(n).(type) {
	case node.Object:
		ins := append([]node.Instance(nil), n.Instances...)
		sort.Slice(ins, func(i, j int) bool { return ins[i].ID < ins[j].ID })
		for _, in := range ins {
			ip, err := np.Child(in.ID)
			if err != nil {
				return nil, mismatch(format, "%v", err)
			}
			if err := addInstance(ip, in); err != nil {
				return nil, err
			}
		}
	case node.Instance:
		if err := addInstance(np, n); err != nil {
			return nil, err
		}
	case node.Resource:
		if err := addResource(np.Parent(), n); err != nil {
			return nil, err
		}
	case node.ResourceInstance:
		out = append(out, leaf{np, n.Value})
	}
	return out, nil
}

// recordGroup is the values of one node, written with one base name (the
// request path) and one time.
type recordGroup struct {
	base node.Path
	time time.Time
	recs []leaf
}

// compositeGroups turns nodes keyed by path into record groups, in path
// order.
func compositeGroups(format uint16, nodes map[node.Path]node.Node, reg *model.Registry, t time.Time) ([]recordGroup, error) {
	paths := make([]node.Path, 0, len(nodes))
	for p := range nodes {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return paths[i].Compare(paths[j]) < 0 })
	groups := make([]recordGroup, 0, len(paths))
	for _, p := range paths {
		n := nodes[p]
		np, err := nodePath(format, p, n)
		if err != nil {
			return nil, err
		}
		if err := checkNode(format, reg, np, n); err != nil {
			return nil, err
		}
		recs, err := nodeRecords(format, np, n)
		if err != nil {
			return nil, err
		}
		groups = append(groups, recordGroup{base: p, time: t, recs: recs})
	}
	return groups, nil
}

// outRecord is a record ready to be written.
type outRecord struct {
	bn    string
	hasBN bool
	bt    int64
	hasBT bool
	name  string     // omitted when empty
	value node.Value // no value when invalid
}

// encodeRecords lays record groups out as records: each group's first
// record carries the group's base name and, when it changes, base time.
func encodeRecords(format uint16, groups []recordGroup) ([]byte, error) {
	var out []outRecord
	var curBT int64
	for _, g := range groups {
		bn := g.base.String()
		if g.base.Level() != node.LevelRoot {
			for _, l := range g.recs {
				if l.path != g.base {
					bn += "/"
					break
				}
			}
		}
		var bt int64
		if !g.time.IsZero() {
			bt = g.time.Unix()
		}
		for i, l := range g.recs {
			r := outRecord{value: l.value}
			full := l.path.String()
			if full != g.base.String() {
				r.name = strings.TrimPrefix(full, bn)
			}
			if i == 0 {
				r.bn, r.hasBN = bn, true
				if bt != curBT {
					r.bt, r.hasBT = bt, true
					curBT = bt
				}
			}
			out = append(out, r)
		}
	}
	return writeRecords(format, out)
}

func writeRecords(format uint16, recs []outRecord) ([]byte, error) {
	switch format {
	case SenMLJSON:
		return writeSenMLJSON(recs)
	case SenMLCBOR:
		return writeSenMLCBOR(recs)
	case LwM2MJSON:
		return writeLwM2MJSON(recs)
	}
	return nil, unsupported(format, "not a record format")
}
