package codec

import (
	"encoding/base64"
	"math"
	"math/big"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// Plain text (Core TS 1.1, 7.4.1), opaque (7.4.2) and CBOR (7.4.5): one
// value of a single resource or of a resource instance.
//
// Text: strings and core links as UTF-8; integers, unsigned integers and
// times (Unix seconds) in decimal; floats in decimal (exponent allowed);
// booleans "0" or "1"; opaque values in base64 (RFC 4648, padded); object
// links as "3:0".
//
// CBOR: text strings for strings, core links and object links ("3:0");
// integers; floats (integers are accepted too); true or false; byte strings
// for opaque values; and for times, tag 1 around an integer (what Leshan
// writes) or, when decoding, also an untagged integer, or tag 0 around an
// RFC 3339 string.

// valueType returns the type of the resource at path p (a resource or
// resource instance path), checking its multiplicity, or guess and false if
// the registry does not know it.
func valueType(format uint16, reg *model.Registry, p node.Path, guess model.ResourceType) (model.ResourceType, bool, error) {
	def, ok := resourceDef(reg, p.ObjectID(), p.ResourceID())
	if !ok {
		return guess, false, nil
	}
	if def.Type == model.TypeNone {
		return 0, true, mismatch(format, "resource %s is executable and has no value", p)
	}
	if p.Level() == node.LevelResource && def.Multiple {
		return 0, true, mismatch(format, "resource %s is multiple; %s carries one value", p, FormatName(format))
	}
	if p.Level() == node.LevelResourceInstance && !def.Multiple {
		return 0, true, mismatch(format, "resource %s is single in the model", p.Parent())
	}
	return def.Type, true, nil
}

func singleNode(p node.Path, v node.Value) node.Node {
	if p.Level() == node.LevelResource {
		return node.NewSingle(p.ResourceID(), v)
	}
	return node.NewResourceInstance(p.ResourceInstanceID(), v)
}

func decodeSingleValue(format uint16, payload []byte, p node.Path, reg *model.Registry) (node.Node, error) {
	if p.Level() != node.LevelResource && p.Level() != node.LevelResourceInstance {
		return nil, unsupported(format, "carries one resource value, not a %v", p.Level())
	}
	var v node.Value
	var err error
	switch format {
	case TextPlain:
		var t model.ResourceType
		if t, _, err = valueType(format, reg, p, model.TypeString); err != nil {
			return nil, err
		}
		v, err = parseText(t, payload)
	case Opaque:
		var t model.ResourceType
		if t, _, err = valueType(format, reg, p, model.TypeOpaque); err != nil {
			return nil, err
		}
		if t != model.TypeOpaque {
			return nil, mismatch(format, "resource %s has type %v, not opaque", p, t)
		}
		v = node.OpaqueValue(payload)
	case CBOR:
		v, err = decodeCBORValue(payload, p, reg)
	}
	if err != nil {
		return nil, err
	}
	return singleNode(p, v), nil
}

func parseText(t model.ResourceType, payload []byte) (node.Value, error) {
	if !utf8.Valid(payload) {
		return node.Value{}, malformed(TextPlain, "not valid UTF-8")
	}
	s := string(payload)
	switch t {
	case model.TypeString:
		return node.StringValue(s), nil
	case model.TypeCorelnk:
		return node.CoreLinkValue(s), nil
	case model.TypeInteger, model.TypeTime:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil || !isDecimalInt(s) {
			return node.Value{}, malformed(TextPlain, "%v value %q is not a 64-bit integer", t, s)
		}
		if t == model.TypeTime {
			return node.UnixValue(i), nil
		}
		return node.IntValue(i), nil
	case model.TypeUnsigned:
		u, err := strconv.ParseUint(s, 10, 64)
		if err != nil || !isDecimalInt(s) {
			return node.Value{}, malformed(TextPlain, "value %q is not an unsigned 64-bit integer", s)
		}
		return node.UintValue(u), nil
	case model.TypeFloat:
		if !isDecimalFloat(s) {
			return node.Value{}, malformed(TextPlain, "value %q is not a decimal number", s)
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return node.Value{}, malformed(TextPlain, "value %q out of range", s)
		}
		return node.FloatValue(f), nil
	case model.TypeBoolean:
		switch s {
		case "0":
			return node.BoolValue(false), nil
		case "1":
			return node.BoolValue(true), nil
		}
		return node.Value{}, malformed(TextPlain, "boolean value %q is not 0 or 1", s)
	case model.TypeOpaque:
		b, err := decodeBase64(s, base64.StdEncoding, base64.RawStdEncoding)
		if err != nil {
			return node.Value{}, malformed(TextPlain, "opaque value is not base64: %v", err)
		}
		return node.OpaqueValue(b), nil
	case model.TypeObjlnk:
		l, err := node.ParseObjLink(s)
		if err != nil {
			return node.Value{}, malformed(TextPlain, "%v", err)
		}
		return node.ObjLinkValue(l), nil
	}
	return node.Value{}, mismatch(TextPlain, "cannot decode a value of type %v", t)
}

// isDecimalInt reports whether s is an optional minus sign and digits
// (strconv also takes "+1" and underscores in some modes).
func isDecimalInt(s string) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isDecimalFloat reports whether s looks like a decimal number with an
// optional fraction and exponent, excluding the "NaN", "Inf" and hex forms
// strconv accepts.
func isDecimalFloat(s string) bool {
	if s == "" {
		return false
	}
	digits := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits = true
		case c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E':
		default:
			return false
		}
	}
	return digits
}

func decodeBase64(s string, encs ...*base64.Encoding) ([]byte, error) {
	var err error
	for _, e := range encs {
		var b []byte
		if b, err = e.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, err
}

func formatText(v node.Value) ([]byte, error) {
	switch x := v.Interface().(type) {
	case string:
		return []byte(x), nil
	case node.CoreLink:
		return []byte(x), nil
	case int64:
		return strconv.AppendInt(nil, x, 10), nil
	case uint64:
		return strconv.AppendUint(nil, x, 10), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, mismatch(TextPlain, "float %v has no text form", x)
		}
		return strconv.AppendFloat(nil, x, 'g', -1, 64), nil
	case bool:
		if x {
			return []byte("1"), nil
		}
		return []byte("0"), nil
	case []byte:
		return base64.StdEncoding.AppendEncode(nil, x), nil
	case time.Time:
		return strconv.AppendInt(nil, x.Unix(), 10), nil
	case node.ObjLink:
		return []byte(x.String()), nil
	}
	return nil, mismatch(TextPlain, "invalid value")
}

func encodeSingleValue(format uint16, n node.Node, p node.Path) ([]byte, error) {
	var v node.Value
	switch n := deref(n).(type) {
	case node.Resource:
		if n.Multiple {
			return nil, unsupported(format, "carries one value, not multiple resource %s", p)
		}
		v = n.Value
	case node.ResourceInstance:
		v = n.Value
	default:
		return nil, unsupported(format, "carries one resource value, not a %v", n.Kind())
	}
	switch format {
	case TextPlain:
		return formatText(v)
	case Opaque:
		b, ok := v.AsOpaque()
		if !ok {
			return nil, mismatch(format, "value of type %v is not opaque", v.Type())
		}
		return append([]byte{}, b...), nil
	}
	return encodeCBORValue(v)
}

// CBOR.

var (
	cborSingleDec = mustDecMode(cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		IntDec:           cbor.IntDecConvertNone,
		BigIntDec:        cbor.BigIntDecodeValue,
		TimeTagToAny:     cbor.TimeTagToTime,
		UTF8:             cbor.UTF8RejectInvalid,
	})
	cborEnc = mustEncMode(cbor.EncOptions{
		ShortestFloat: cbor.ShortestFloat16,
		NaNConvert:    cbor.NaNConvert7e00,
		InfConvert:    cbor.InfConvertFloat16,
		BigIntConvert: cbor.BigIntConvertShortest,
	})
)

func mustDecMode(o cbor.DecOptions) cbor.DecMode {
	m, err := o.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}

func mustEncMode(o cbor.EncOptions) cbor.EncMode {
	m, err := o.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}

func decodeCBORValue(payload []byte, p node.Path, reg *model.Registry) (node.Value, error) {
	var x any
	if err := cborSingleDec.Unmarshal(payload, &x); err != nil {
		return node.Value{}, malformed(CBOR, "%v", err)
	}
	t, known, err := valueType(CBOR, reg, p, model.TypeNone)
	if err != nil {
		return node.Value{}, err
	}
	if !known {
		if t, err = guessCBORType(x); err != nil {
			return node.Value{}, err
		}
	}
	return cborToValue(CBOR, t, x)
}

func guessCBORType(x any) (model.ResourceType, error) {
	switch x := x.(type) {
	case string:
		return model.TypeString, nil
	case int64:
		return model.TypeInteger, nil
	case uint64:
		if x > math.MaxInt64 {
			return model.TypeUnsigned, nil
		}
		return model.TypeInteger, nil
	case float64:
		return model.TypeFloat, nil
	case bool:
		return model.TypeBoolean, nil
	case []byte:
		return model.TypeOpaque, nil
	case time.Time:
		return model.TypeTime, nil
	}
	return 0, mismatch(CBOR, "cannot guess the type of a CBOR %T", x)
}

// cborToValue converts a decoded CBOR item to a value of type t.
func cborToValue(format uint16, t model.ResourceType, x any) (node.Value, error) {
	bad := func() (node.Value, error) {
		return node.Value{}, mismatch(format, "CBOR %T is not a %v value", x, t)
	}
	switch t {
	case model.TypeString, model.TypeCorelnk, model.TypeObjlnk:
		s, ok := x.(string)
		if !ok {
			return bad()
		}
		switch t {
		case model.TypeString:
			return node.StringValue(s), nil
		case model.TypeCorelnk:
			return node.CoreLinkValue(s), nil
		}
		l, err := node.ParseObjLink(s)
		if err != nil {
			return node.Value{}, malformed(format, "%v", err)
		}
		return node.ObjLinkValue(l), nil
	case model.TypeInteger, model.TypeUnsigned, model.TypeFloat:
		n, ok := cborNumber(x)
		if !ok {
			return bad()
		}
		return n.value(format, t)
	case model.TypeTime:
		switch x := x.(type) {
		case time.Time:
			return node.TimeValue(x), nil
		}
		n, ok := cborNumber(x)
		if !ok || n.kind == numFloat {
			return bad()
		}
		return n.value(format, t)
	case model.TypeBoolean:
		b, ok := x.(bool)
		if !ok {
			return bad()
		}
		return node.BoolValue(b), nil
	case model.TypeOpaque:
		b, ok := x.([]byte)
		if !ok {
			return bad()
		}
		return node.OpaqueValue(b), nil
	}
	return bad()
}

// cborNumber converts a decoded CBOR integer or float.
func cborNumber(x any) (number, bool) {
	switch x := x.(type) {
	case int64:
		return number{kind: numInt, i: x}, true
	case uint64:
		if x <= math.MaxInt64 {
			return number{kind: numInt, i: int64(x)}, true
		}
		return number{kind: numUint, u: x}, true
	case float64:
		return number{kind: numFloat, f: x}, true
	case big.Int:
		if x.IsInt64() {
			return number{kind: numInt, i: x.Int64()}, true
		}
		if x.IsUint64() {
			return number{kind: numUint, u: x.Uint64()}, true
		}
	}
	return number{}, false
}

func encodeCBORValue(v node.Value) ([]byte, error) {
	var x any
	switch y := v.Interface().(type) {
	case node.CoreLink:
		x = string(y)
	case node.ObjLink:
		x = y.String()
	case time.Time:
		x = cbor.Tag{Number: 1, Content: y.Unix()}
	default:
		x = y
	}
	b, err := cborEnc.Marshal(x)
	if err != nil {
		return nil, mismatch(CBOR, "%v", err)
	}
	return b, nil
}
