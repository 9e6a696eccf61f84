// Package codec encodes and decodes LwM2M payloads: it converts between the
// bytes of a CoAP message body in one of the LwM2M content formats and the
// nodes of package node.
//
// Supported formats and what they can carry:
//
//	TextPlain (0), Opaque (42), CBOR (60)  one single resource or resource instance
//	TLV (11542)                            object, object instance, resource, resource instance
//	LwM2MJSON (11543)                      the same, and timestamped values
//	SenMLJSON (110), SenMLCBOR (112)       the same, composite operations and timestamped values
//
// LinkFormat (40) is listed for completeness; Discover responses and
// registration payloads are parsed by package linkformat, not here.
//
// Most formats carry no type information (TLV, text, opaque, CBOR) or only
// part of it (SenML and LwM2M JSON tell numbers from strings, not integers
// from floats or times), so decoders take the type of each resource from a
// model.Registry. For a resource the registry does not know, decoders guess:
// TLV and opaque values become TypeOpaque, text becomes TypeString, and
// CBOR, SenML and LwM2M JSON values get the type their encoding suggests
// (an integer number is TypeInteger, a number with a fraction or exponent
// TypeFloat, "vs" TypeString, "vd" TypeOpaque and so on). Encoders check
// nodes against the registry and refuse values of the wrong type.
//
// Decoders never panic, do not allocate much more than the payload's size,
// and return errors wrapping ErrMalformed (payload not valid for the
// format), ErrMismatch (payload valid but not what the path or the registry
// expects) or ErrUnsupportedFormat.
//
// Times in SenML and LwM2M JSON follow RFC 8428: a record's time is its base
// time plus its time; values of 2^28 seconds or more are absolute Unix
// times, smaller values (including negative ones) are relative to the time
// of decoding.
package codec

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// LwM2M content formats (CoAP Content-Format option values).
const (
	TextPlain  uint16 = 0
	LinkFormat uint16 = 40
	Opaque     uint16 = 42
	CBOR       uint16 = 60
	SenMLJSON  uint16 = 110
	SenMLCBOR  uint16 = 112
	TLV        uint16 = 11542
	LwM2MJSON  uint16 = 11543
)

// FormatName returns a short name for a content format, for logs and
// errors, such as "tlv" or "senml+json".
func FormatName(format uint16) string {
	switch format {
	case TextPlain:
		return "text"
	case LinkFormat:
		return "link-format"
	case Opaque:
		return "opaque"
	case CBOR:
		return "cbor"
	case SenMLJSON:
		return "senml+json"
	case SenMLCBOR:
		return "senml+cbor"
	case TLV:
		return "tlv"
	case LwM2MJSON:
		return "lwm2m+json"
	}
	return fmt.Sprintf("content-format %d", format)
}

// Errors wrapped by the errors of this package.
var (
	// ErrUnsupportedFormat: the content format is unknown, or cannot
	// carry what was asked (for example an object instance in plain text).
	ErrUnsupportedFormat = errors.New("unsupported content format")
	// ErrMalformed: the payload is not valid in its content format.
	ErrMalformed = errors.New("malformed payload")
	// ErrMismatch: the payload or node does not fit the path or the
	// object model (wrong IDs, wrong type, a single resource where the
	// model has a multiple one, ...).
	ErrMismatch = errors.New("payload does not match path or model")
)

func malformed(format uint16, format2 string, args ...any) error {
	return fmt.Errorf("codec: %s: %w: %s", FormatName(format), ErrMalformed, fmt.Sprintf(format2, args...))
}

func mismatch(format uint16, format2 string, args ...any) error {
	return fmt.Errorf("codec: %s: %w: %s", FormatName(format), ErrMismatch, fmt.Sprintf(format2, args...))
}

func unsupported(format uint16, format2 string, args ...any) error {
	return fmt.Errorf("codec: %s: %w: %s", FormatName(format), ErrUnsupportedFormat, fmt.Sprintf(format2, args...))
}

// Decode decodes a payload in the given content format as the node at path,
// as in the response to a Read of path or the body of a Write to it. The
// node returned has path's level: an Object for "/3", an Instance for
// "/3/0", a Resource for "/3/0/1" and a ResourceInstance for "/3/0/6/1".
// The root path is not supported; use DecodeComposite. reg may be nil.
func Decode(format uint16, payload []byte, path node.Path, reg *model.Registry) (node.Node, error) {
	if path.Level() == node.LevelRoot {
		return nil, unsupported(format, "cannot decode a single node at the root path")
	}
	switch format {
	case TextPlain, Opaque, CBOR:
		return decodeSingleValue(format, payload, path, reg)
	case TLV:
		return decodeTLV(payload, path, reg)
	case SenMLJSON, SenMLCBOR, LwM2MJSON:
		recs, err := decodeRecords(format, payload, false)
		if err != nil {
			return nil, err
		}
		return buildNode(format, reg, path, recs)
	}
	return nil, unsupported(format, "cannot decode nodes")
}

// Encode encodes node n as the payload for path in the given content
// format, as in the response to a Read of path or the body of a Write to
// it. n must have path's level and last ID, except that an Instance may be
// encoded at its object's path (the body of a Create). reg may be nil.
func Encode(format uint16, n node.Node, path node.Path, reg *model.Registry) ([]byte, error) {
	np, err := nodePath(format, path, n)
	if err != nil {
		return nil, err
	}
	if err := checkNode(format, reg, np, n); err != nil {
		return nil, err
	}
	switch format {
	case TextPlain, Opaque, CBOR:
		return encodeSingleValue(format, n, np)
	case TLV:
		return encodeTLV(n, path, np)
	case SenMLJSON, SenMLCBOR, LwM2MJSON:
		recs, err := nodeRecords(format, np, n)
		if err != nil {
			return nil, err
		}
		return encodeRecords(format, []recordGroup{{base: path, recs: recs}})
	}
	return nil, unsupported(format, "cannot encode nodes")
}

// DecodeComposite decodes the payload of a Read-Composite response, a
// Write-Composite request or a Send, in SenML JSON or SenML CBOR. With
// requested paths (the paths of the Read-Composite request), it returns one
// node per requested path that has values in the payload, at that path's
// level; a record outside every requested path is an error. With no
// requested paths (a Send), it returns one node per record, at the record's
// level: a Resource for "/3/0/1", a ResourceInstance for "/3/0/6/1".
//
// Timestamps, if any, are ignored, and two records for the same path are an
// error; use DecodeTimestamped for timestamped data.
func DecodeComposite(format uint16, payload []byte, requested []node.Path, reg *model.Registry) (map[node.Path]node.Node, error) {
	if format != SenMLJSON && format != SenMLCBOR {
		return nil, unsupported(format, "composite operations need SenML")
	}
	recs, err := decodeRecords(format, payload, false)
	if err != nil {
		return nil, err
	}
	return buildComposite(format, reg, requested, recs)
}

// EncodeComposite encodes nodes keyed by path, each as Encode would encode
// it at that path, into one SenML JSON or SenML CBOR pack: the payload of a
// Read-Composite response or of a Write-Composite or Send request. Paths
// are written in Path.Compare order.
func EncodeComposite(format uint16, nodes map[node.Path]node.Node, reg *model.Registry) ([]byte, error) {
	if format != SenMLJSON && format != SenMLCBOR {
		return nil, unsupported(format, "composite operations need SenML")
	}
	groups, err := compositeGroups(format, nodes, reg, time.Time{})
	if err != nil {
		return nil, err
	}
	return encodeRecords(format, groups)
}

// EncodePaths encodes the body of a Read-Composite or Observe-Composite
// request: a SenML JSON or SenML CBOR pack of records with a name and no
// value, such as [{"n":"/3/0/1"},{"n":"/1/0"}].
func EncodePaths(format uint16, paths []node.Path) ([]byte, error) {
	if format != SenMLJSON && format != SenMLCBOR {
		return nil, unsupported(format, "composite operations need SenML")
	}
	recs := make([]outRecord, len(paths))
	for i, p := range paths {
		recs[i] = outRecord{name: p.String()}
	}
	return writeRecords(format, recs)
}

// DecodePaths decodes the body of a Read-Composite or Observe-Composite
// request (see EncodePaths). Records must not have values.
func DecodePaths(format uint16, payload []byte) ([]node.Path, error) {
	if format != SenMLJSON && format != SenMLCBOR {
		return nil, unsupported(format, "composite operations need SenML")
	}
	recs, err := decodeRecords(format, payload, true)
	if err != nil {
		return nil, err
	}
	out := make([]node.Path, len(recs))
	for i, r := range recs {
		if r.kind != valNone {
			return nil, malformed(format, "record %d of a path list has a value", i)
		}
		out[i] = r.path
	}
	return out, nil
}

// Timestamped is a set of nodes that share one timestamp. A zero Time means
// that the values had no timestamp.
type Timestamped struct {
	Time  time.Time
	Nodes map[node.Path]node.Node
}

// DecodeTimestamped decodes a payload that may carry values at several
// times: a notification of an observation (of path) or, with the root path,
// a Send request or a composite notification. It returns one Timestamped
// per distinct time, oldest first, with values without timestamp first.
// For a path other than the root, each Timestamped holds one node, at path,
// with the values of that time; for the root path, each holds one node per
// record path, as DecodeComposite without requested paths.
//
// SenML JSON, SenML CBOR and LwM2M JSON carry timestamps; a payload in any
// other format decodes, as with Decode, into one untimestamped entry.
func DecodeTimestamped(format uint16, payload []byte, path node.Path, reg *model.Registry) ([]Timestamped, error) {
	return decodeTimestamped(format, payload, path, reg, time.Now())
}

func decodeTimestamped(format uint16, payload []byte, path node.Path, reg *model.Registry, now time.Time) ([]Timestamped, error) {
	switch format {
	case SenMLJSON, SenMLCBOR, LwM2MJSON:
	default:
		n, err := Decode(format, payload, path, reg)
		if err != nil {
			return nil, err
		}
		return []Timestamped{{Nodes: map[node.Path]node.Node{path: n}}}, nil
	}
	if format == LwM2MJSON && path.Level() == node.LevelRoot {
		return nil, unsupported(format, "LwM2M JSON cannot carry composite data")
	}
	recs, err := decodeRecords(format, payload, false)
	if err != nil {
		return nil, err
	}
	type key struct {
		has bool
		t   float64
	}
	groups := make(map[key][]resolved)
	var keys []key
	for _, r := range recs {
		k := key{r.hasTime && r.time != 0, r.time}
		if !k.has {
			k.t = 0
		}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	toTime := func(k key) time.Time {
		if !k.has {
			return time.Time{}
		}
		if k.t < relativeLimit {
			return now.Add(time.Duration(k.t * float64(time.Second)))
		}
		sec := int64(k.t)
		return time.Unix(sec, int64((k.t-float64(sec))*1e9)).UTC()
	}
	out := make([]Timestamped, 0, len(keys))
	for _, k := range keys {
		ts := Timestamped{Time: toTime(k)}
		if path.Level() == node.LevelRoot {
			ts.Nodes, err = buildComposite(format, reg, nil, groups[k])
		} else {
			var n node.Node
			n, err = buildNode(format, reg, path, groups[k])
			ts.Nodes = map[node.Path]node.Node{path: n}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ts)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Time, out[j].Time
		if a.IsZero() || b.IsZero() {
			return a.IsZero() && !b.IsZero()
		}
		return a.Before(b)
	})
	return out, nil
}

// EncodeTimestamped encodes timestamped nodes in SenML JSON or SenML CBOR
// (the payload of a Send or of a composite notification), or in LwM2M JSON
// when every node is at one path (the notification of an observation of
// that path). Times must be zero (no timestamp) or at least 2^28 seconds
// after the Unix epoch (1978-07-04), as RFC 8428 requires of absolute
// times; they are written in whole seconds.
func EncodeTimestamped(format uint16, data []Timestamped, reg *model.Registry) ([]byte, error) {
	if format != SenMLJSON && format != SenMLCBOR && format != LwM2MJSON {
		return nil, unsupported(format, "cannot carry timestamps")
	}
	sorted := append([]Timestamped(nil), data...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i].Time, sorted[j].Time
		if a.IsZero() || b.IsZero() {
			return a.IsZero() && !b.IsZero()
		}
		return a.Before(b)
	})
	var groups []recordGroup
	for _, ts := range sorted {
		if !ts.Time.IsZero() && ts.Time.Unix() < relativeLimit {
			return nil, mismatch(format, "time %v is before 2^28 seconds", ts.Time)
		}
		g, err := compositeGroups(format, ts.Nodes, reg, ts.Time)
		if err != nil {
			return nil, err
		}
		groups = append(groups, g...)
	}
	if format == LwM2MJSON {
		if len(groups) == 0 {
			return nil, unsupported(format, "no nodes to encode")
		}
		for _, g := range groups[1:] {
			if g.base != groups[0].base {
				return nil, unsupported(format, "LwM2M JSON cannot carry nodes of several paths (%s and %s)", groups[0].base, g.base)
			}
		}
	}
	return encodeRecords(format, groups)
}

// relativeLimit is 2^28: SenML times below it are relative (RFC 8428
// section 4.5.3).
const relativeLimit = 1 << 28

// nodePath returns the path of n when encoded at path.
func nodePath(format uint16, path node.Path, n node.Node) (node.Path, error) {
	if n == nil {
		return node.Path{}, mismatch(format, "nil node")
	}
	if err := node.Validate(n); err != nil {
		return node.Path{}, fmt.Errorf("codec: %s: %w", FormatName(format), err)
	}
	lvl := n.Kind().Level()
	if path.Level() == lvl && path.Last() == n.NodeID() {
		return path, nil
	}
	if n.Kind() == node.KindInstance && path.Level() == node.LevelObject {
		return path.Child(n.NodeID())
	}
	return node.Path{}, mismatch(format, "%v %d cannot be encoded at %s", n.Kind(), n.NodeID(), path)
}

// resourceDef returns the model of resource rid of object oid.
func resourceDef(reg *model.Registry, oid, rid uint16) (model.Resource, bool) {
	r, ok := reg.Resource(oid, rid)
	if !ok {
		return model.Resource{}, false
	}
	return *r, true
}

// checkNode checks n, at path p, against the registry: types and
// multiplicity of known resources.
func checkNode(format uint16, reg *model.Registry, p node.Path, n node.Node) error {
	checkRes := func(oid uint16, r node.Resource) error {
		def, ok := resourceDef(reg, oid, r.ID)
		if !ok {
			return nil
		}
		if def.Type == model.TypeNone {
			return mismatch(format, "resource /%d/x/%d is executable and has no value", oid, r.ID)
		}
		if def.Multiple != r.Multiple {
			return mismatch(format, "resource /%d/x/%d: multiple is %v in the model", oid, r.ID, def.Multiple)
		}
		if def.Type != r.Type {
			return mismatch(format, "resource /%d/x/%d has type %v, not %v", oid, r.ID, def.Type, r.Type)
		}
		return nil
	}
	switch n := deref(n).(type) {
	case node.Object:
		for _, in := range n.Instances {
			for _, r := range in.Resources {
				if err := checkRes(p.ObjectID(), r); err != nil {
					return err
				}
			}
		}
	case node.Instance:
		for _, r := range n.Resources {
			if err := checkRes(p.ObjectID(), r); err != nil {
				return err
			}
		}
	case node.Resource:
		return checkRes(p.ObjectID(), n)
	case node.ResourceInstance:
		def, ok := resourceDef(reg, p.ObjectID(), p.ResourceID())
		if !ok {
			return nil
		}
		if !def.Multiple {
			return mismatch(format, "resource %s is single in the model", p.Parent())
		}
		if def.Type != n.Type {
			return mismatch(format, "resource %s has type %v, not %v", p.Parent(), def.Type, n.Type)
		}
	}
	return nil
}

// deref turns a pointer to a node into the node.
func deref(n node.Node) node.Node {
	switch p := n.(type) {
	case *node.Object:
		return *p
	case *node.Instance:
		return *p
	case *node.Resource:
		return *p
	case *node.ResourceInstance:
		return *p
	}
	return n
}
