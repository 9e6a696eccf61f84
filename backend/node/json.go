package node

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/lwm2mcluster/lwm2m/internal/strictjson"

	"github.com/lwm2mcluster/lwm2m/backend/model"
)

// ErrJSON is wrapped by the errors of Unmarshal and of the UnmarshalJSON
// methods.
var ErrJSON = errors.New("invalid node JSON")

// Marshal returns the JSON form of n. It fails if n is not valid (see
// Validate) or holds a float that is NaN or infinite.
func Marshal(n Node) ([]byte, error) {
	n = deref(n)
	if err := Validate(n); err != nil {
		return nil, err
	}
	var b []byte
	b, err := appendNode(b, n)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Unmarshal parses the JSON form of a node of any kind. The result is an
// Object, Instance, Resource or ResourceInstance value.
func Unmarshal(data []byte) (Node, error) {
	n, err := parseNode(data, 0)
	if err != nil {
		return nil, fmt.Errorf("node: %w: %w", ErrJSON, err)
	}
	return n, nil
}

// Any holds a node of any kind for embedding in JSON documents, such as the
// "node" member of a northbound response. A nil Node is written as null, and
// null is read as a nil Node.
type Any struct {
	Node Node
}

// MarshalJSON implements json.Marshaler.
func (a Any) MarshalJSON() ([]byte, error) {
	if deref(a.Node) == nil {
		return []byte("null"), nil
	}
	return Marshal(a.Node)
}

// UnmarshalJSON implements json.Unmarshaler.
func (a *Any) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		a.Node = nil
		return nil
	}
	n, err := Unmarshal(b)
	if err != nil {
		return err
	}
	a.Node = n
	return nil
}

// MarshalJSON implements json.Marshaler.
func (o Object) MarshalJSON() ([]byte, error) { return Marshal(o) }

// MarshalJSON implements json.Marshaler.
func (i Instance) MarshalJSON() ([]byte, error) { return Marshal(i) }

// MarshalJSON implements json.Marshaler.
func (r Resource) MarshalJSON() ([]byte, error) { return Marshal(r) }

// MarshalJSON implements json.Marshaler.
func (r ResourceInstance) MarshalJSON() ([]byte, error) { return Marshal(r) }

// UnmarshalJSON implements json.Unmarshaler. The kind must be "object".
func (o *Object) UnmarshalJSON(b []byte) error {
	n, err := unmarshalKind(b, KindObject)
	if err != nil {
		return err
	}
	*o = n.(Object)
	return nil
}

// UnmarshalJSON implements json.Unmarshaler. The kind must be "instance".
func (i *Instance) UnmarshalJSON(b []byte) error {
	n, err := unmarshalKind(b, KindInstance)
	if err != nil {
		return err
	}
	*i = n.(Instance)
	return nil
}

// UnmarshalJSON implements json.Unmarshaler. The kind must be
// "singleresource" or "multipleresource".
func (r *Resource) UnmarshalJSON(b []byte) error {
	n, err := unmarshalKind(b, KindSingleResource, KindMultipleResource)
	if err != nil {
		return err
	}
	*r = n.(Resource)
	return nil
}

// UnmarshalJSON implements json.Unmarshaler. The kind must be
// "resourceinstance".
func (r *ResourceInstance) UnmarshalJSON(b []byte) error {
	n, err := unmarshalKind(b, KindResourceInstance)
	if err != nil {
		return err
	}
	*r = n.(ResourceInstance)
	return nil
}

func unmarshalKind(b []byte, kinds ...Kind) (Node, error) {
	n, err := Unmarshal(b)
	if err != nil {
		return nil, err
	}
	for _, k := range kinds {
		if n.Kind() == k {
			return n, nil
		}
	}
	return nil, fmt.Errorf("node: %w: kind %q where %v expected", ErrJSON, n.Kind(), kinds[0])
}

// Encoding.

func appendNode(b []byte, n Node) ([]byte, error) {
	b = append(b, `{"kind":"`...)
	b = append(b, n.Kind().String()...)
	b = append(b, `","id":`...)
	b = strconv.AppendUint(b, uint64(n.NodeID()), 10)
	var err error
	switch n := n.(type) {
	case Object:
		b = append(b, `,"instances":[`...)
		for i, in := range n.Instances {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendNode(b, in); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	case Instance:
		b = append(b, `,"resources":[`...)
		for i, r := range n.Resources {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendNode(b, r); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	case Resource:
		b = appendType(b, n.Type)
		if !n.Multiple {
			b = append(b, `,"value":`...)
			if b, err = appendValue(b, n.Value); err != nil {
				return nil, fmt.Errorf("node: resource %d: %w", n.ID, err)
			}
			break
		}
		ids := make([]int, 0, len(n.Instances))
		for id := range n.Instances {
			ids = append(ids, int(id))
		}
		sort.Ints(ids)
		b = append(b, `,"values":{`...)
		for i, id := range ids {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = strconv.AppendUint(b, uint64(id), 10)
			b = append(b, `":`...)
			if b, err = appendValue(b, n.Instances[uint16(id)]); err != nil {
				return nil, fmt.Errorf("node: resource %d instance %d: %w", n.ID, id, err)
			}
		}
		b = append(b, '}')
	case ResourceInstance:
		b = appendType(b, n.Type)
		b = append(b, `,"value":`...)
		if b, err = appendValue(b, n.Value); err != nil {
			return nil, fmt.Errorf("node: resource instance %d: %w", n.ID, err)
		}
	}
	return append(b, '}'), nil
}

func appendType(b []byte, t model.ResourceType) []byte {
	b = append(b, `,"type":"`...)
	b = append(b, t.String()...)
	return append(b, '"')
}

func appendValue(b []byte, v Value) ([]byte, error) {
	switch x := v.v.(type) {
	case string:
		return appendString(b, x), nil
	case CoreLink:
		return appendString(b, string(x)), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case uint64:
		return strconv.AppendUint(b, x, 10), nil
	case float64:
		if !isFinite(x) {
			return nil, fmt.Errorf("float %v has no JSON form", x)
		}
		return strconv.AppendFloat(b, x, 'g', -1, 64), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case []byte:
		b = append(b, '"')
		b = hex.AppendEncode(b, x)
		return append(b, '"'), nil
	default:
		switch v.Type() {
		case model.TypeTime:
			t, _ := v.AsTime()
			return strconv.AppendInt(b, t.Unix(), 10), nil
		case model.TypeObjlnk:
			l, _ := v.AsObjLink()
			return appendString(b, l.String()), nil
		}
	}
	return nil, errors.New("invalid value")
}

// appendString appends s as a JSON string, without the HTML escaping of
// encoding/json (core links are full of '<' and '>').
func appendString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // cannot fail for a string
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

// Decoding.

type rawNode struct {
	kind, id, typ, value, values, resources, instances json.RawMessage
}

func parseNode(data []byte, depth int) (Node, error) {
	if depth > 2 {
		return nil, errors.New("nodes nested too deep")
	}
	var r rawNode
	err := strictjson.Members(data, func(name string, raw json.RawMessage) error {
		switch name {
		case "kind":
			r.kind = raw
		case "id":
			r.id = raw
		case "type":
			r.typ = raw
		case "value":
			r.value = raw
		case "values":
			r.values = raw
		case "resources":
			r.resources = raw
		case "instances":
			r.instances = raw
		default:
			return fmt.Errorf("unknown member %q", name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if r.kind == nil {
		return nil, errors.New(`missing "kind"`)
	}
	var kind string
	if err := json.Unmarshal(r.kind, &kind); err != nil {
		return nil, errors.New(`"kind" is not a string`)
	}
	if r.id == nil {
		return nil, errors.New(`missing "id"`)
	}
	id, err := parseJSONID(r.id)
	if err != nil {
		return nil, fmt.Errorf(`"id": %w`, err)
	}
	allowed := func(ok ...bool) error {
		names := []string{"type", "value", "values", "resources", "instances"}
		present := []bool{r.typ != nil, r.value != nil, r.values != nil, r.resources != nil, r.instances != nil}
		for i := range names {
			if present[i] != ok[i] {
				if present[i] {
					return fmt.Errorf("member %q not allowed in a %s", names[i], kind)
				}
				return fmt.Errorf("missing %q in a %s", names[i], kind)
			}
		}
		return nil
	}
	switch kind {
	case "object":
		if err := allowed(false, false, false, false, true); err != nil {
			return nil, err
		}
		o := Object{ID: id, Instances: []Instance{}}
		seen := map[uint16]bool{}
		err := strictjson.Elements(r.instances, func(raw json.RawMessage) error {
			n, err := parseNode(raw, depth+1)
			if err != nil {
				return err
			}
			in, ok := n.(Instance)
			if !ok {
				return fmt.Errorf("object %d: %s among instances", id, n.Kind())
			}
			if seen[in.ID] {
				return fmt.Errorf("object %d: duplicate instance %d", id, in.ID)
			}
			seen[in.ID] = true
			o.Instances = append(o.Instances, in)
			return nil
		})
		if err != nil {
			return nil, err
		}
		return o, nil
	case "instance":
		if err := allowed(false, false, false, true, false); err != nil {
			return nil, err
		}
		in := Instance{ID: id, Resources: []Resource{}}
		seen := map[uint16]bool{}
		err := strictjson.Elements(r.resources, func(raw json.RawMessage) error {
			n, err := parseNode(raw, depth+1)
			if err != nil {
				return err
			}
			res, ok := n.(Resource)
			if !ok {
				return fmt.Errorf("instance %d: %s among resources", id, n.Kind())
			}
			if seen[res.ID] {
				return fmt.Errorf("instance %d: duplicate resource %d", id, res.ID)
			}
			seen[res.ID] = true
			in.Resources = append(in.Resources, res)
			return nil
		})
		if err != nil {
			return nil, err
		}
		return in, nil
	case "singleresource", "resourceinstance":
		if err := allowed(true, true, false, false, false); err != nil {
			return nil, err
		}
		t, err := parseJSONType(r.typ)
		if err != nil {
			return nil, err
		}
		v, err := parseJSONValue(t, r.value)
		if err != nil {
			return nil, fmt.Errorf("%s %d: %w", kind, id, err)
		}
		if kind == "singleresource" {
			return Resource{ID: id, Type: t, Value: v}, nil
		}
		return ResourceInstance{ID: id, Type: t, Value: v}, nil
	case "multipleresource":
		if err := allowed(true, false, true, false, false); err != nil {
			return nil, err
		}
		t, err := parseJSONType(r.typ)
		if err != nil {
			return nil, err
		}
		res := Resource{ID: id, Type: t, Multiple: true, Instances: map[uint16]Value{}}
		err = strictjson.Members(r.values, func(name string, raw json.RawMessage) error {
			iid, err := parseID(name)
			if err != nil {
				return fmt.Errorf("multipleresource %d: instance %q: %w", id, name, err)
			}
			v, err := parseJSONValue(t, raw)
			if err != nil {
				return fmt.Errorf("multipleresource %d instance %d: %w", id, iid, err)
			}
			res.Instances[iid] = v
			return nil
		})
		if err != nil {
			return nil, err
		}
		return res, nil
	}
	return nil, fmt.Errorf("unknown kind %q", kind)
}

func parseJSONID(raw json.RawMessage) (uint16, error) {
	s := string(bytes.TrimSpace(raw))
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n > MaxID {
		return 0, fmt.Errorf("invalid ID %s", s)
	}
	return uint16(n), nil
}

func parseJSONType(raw json.RawMessage) (model.ResourceType, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, errors.New(`"type" is not a string`)
	}
	t, err := model.ParseResourceType(s)
	if err != nil {
		return 0, fmt.Errorf("unknown type %q", s)
	}
	if t == model.TypeNone {
		return 0, errors.New(`type "none" has no values`)
	}
	return t, nil
}

func isJSONNumber(s string) bool {
	return s != "" && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))
}

// parseJSONValue parses raw as a value of type t.
func parseJSONValue(t model.ResourceType, raw json.RawMessage) (Value, error) {
	s := string(bytes.TrimSpace(raw))
	str := func() (string, error) {
		if s == "" || s[0] != '"' {
			return "", fmt.Errorf("%v value %s is not a JSON string", t, s)
		}
		var out string
		err := json.Unmarshal(raw, &out)
		return out, err
	}
	switch t {
	case model.TypeString:
		x, err := str()
		return StringValue(x), err
	case model.TypeCorelnk:
		x, err := str()
		return CoreLinkValue(x), err
	case model.TypeInteger, model.TypeTime:
		if !isJSONNumber(s) {
			return Value{}, fmt.Errorf("%v value %s is not a number", t, s)
		}
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return Value{}, fmt.Errorf("%v value %s is not a 64-bit integer", t, s)
		}
		if t == model.TypeTime {
			return UnixValue(i), nil
		}
		return IntValue(i), nil
	case model.TypeUnsigned:
		if !isJSONNumber(s) {
			return Value{}, fmt.Errorf("%v value %s is not a number", t, s)
		}
		u, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return Value{}, fmt.Errorf("%v value %s is not an unsigned 64-bit integer", t, s)
		}
		return UintValue(u), nil
	case model.TypeFloat:
		if !isJSONNumber(s) {
			return Value{}, fmt.Errorf("%v value %s is not a number", t, s)
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return Value{}, fmt.Errorf("%v value %s out of range", t, s)
		}
		return FloatValue(f), nil
	case model.TypeBoolean:
		switch s {
		case "true":
			return BoolValue(true), nil
		case "false":
			return BoolValue(false), nil
		}
		return Value{}, fmt.Errorf("%v value %s is not true or false", t, s)
	case model.TypeOpaque:
		x, err := str()
		if err != nil {
			return Value{}, err
		}
		b, err := hex.DecodeString(x)
		if err != nil {
			return Value{}, fmt.Errorf("opaque value is not hexadecimal: %w", err)
		}
		return Value{b}, nil
	case model.TypeObjlnk:
		x, err := str()
		if err != nil {
			return Value{}, err
		}
		l, err := ParseObjLink(x)
		if err != nil {
			return Value{}, err
		}
		return ObjLinkValue(l), nil
	}
	return Value{}, fmt.Errorf("unsupported type %v", t)
}
