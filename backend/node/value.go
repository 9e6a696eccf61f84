package node

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
)

// ObjLink is the value of an Objlnk resource: a reference to an object
// instance. The LwM2M specification uses 65535:65535 as the null link, so
// both fields take the full uint16 range.
type ObjLink struct {
	ObjectID   uint16
	InstanceID uint16
}

// String returns the link in the "3:0" notation of the LwM2M JSON and text
// formats.
func (l ObjLink) String() string {
	return strconv.FormatUint(uint64(l.ObjectID), 10) + ":" + strconv.FormatUint(uint64(l.InstanceID), 10)
}

// ParseObjLink parses the "3:0" notation: two decimal numbers from 0 to
// 65535 separated by a colon.
func ParseObjLink(s string) (ObjLink, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return ObjLink{}, fmt.Errorf("node: invalid object link %q", s)
	}
	o, err1 := parseUint16(a)
	i, err2 := parseUint16(b)
	if err1 != nil || err2 != nil {
		return ObjLink{}, fmt.Errorf("node: invalid object link %q", s)
	}
	return ObjLink{o, i}, nil
}

func parseUint16(s string) (uint16, error) {
	if s == "" || len(s) > 5 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}

// CoreLink is the value of a Corelnk resource: a CoRE link-format document
// (RFC 6690) kept as text.
type CoreLink string

// Value is the value of a single resource or of a resource instance. Its
// type follows from how it was made: StringValue makes a TypeString value,
// IntValue a TypeInteger value, and so on. The zero Value is invalid and
// has type TypeNone.
//
// Values are immutable: OpaqueValue copies its argument, and AsOpaque's
// result must not be modified.
type Value struct {
	v any // string, int64, uint64, float64, bool, []byte, time.Time, ObjLink or CoreLink
}

// StringValue returns a TypeString value.
func StringValue(s string) Value { return Value{s} }

// IntValue returns a TypeInteger value.
func IntValue(i int64) Value { return Value{i} }

// UintValue returns a TypeUnsigned value.
func UintValue(u uint64) Value { return Value{u} }

// FloatValue returns a TypeFloat value.
func FloatValue(f float64) Value { return Value{f} }

// BoolValue returns a TypeBoolean value.
func BoolValue(b bool) Value { return Value{b} }

// OpaqueValue returns a TypeOpaque value holding a copy of b.
func OpaqueValue(b []byte) Value { return Value{append([]byte{}, b...)} }

// TimeValue returns a TypeTime value. LwM2M time has a resolution of one
// second, so t is truncated to whole seconds (towards the past) and
// converted to UTC.
func TimeValue(t time.Time) Value { return Value{time.Unix(t.Unix(), 0).UTC()} }

// UnixValue returns the TypeTime value for Unix time sec.
func UnixValue(sec int64) Value { return Value{time.Unix(sec, 0).UTC()} }

// ObjLinkValue returns a TypeObjlnk value.
func ObjLinkValue(l ObjLink) Value { return Value{l} }

// CoreLinkValue returns a TypeCorelnk value.
func CoreLinkValue(s string) Value { return Value{CoreLink(s)} }

// Type returns the value's resource type, or TypeNone for the zero Value.
func (v Value) Type() model.ResourceType {
	switch v.v.(type) {
	case string:
		return model.TypeString
	case int64:
		return model.TypeInteger
	case uint64:
		return model.TypeUnsigned
	case float64:
		return model.TypeFloat
	case bool:
		return model.TypeBoolean
	case []byte:
		return model.TypeOpaque
	case time.Time:
		return model.TypeTime
	case ObjLink:
		return model.TypeObjlnk
	case CoreLink:
		return model.TypeCorelnk
	}
	return model.TypeNone
}

// IsValid reports whether v holds a value, that is, whether it is not the
// zero Value.
func (v Value) IsValid() bool { return v.v != nil }

// Interface returns the Go value: a string, int64, uint64, float64, bool,
// []byte, time.Time, ObjLink or CoreLink, or nil for the zero Value.
func (v Value) Interface() any { return v.v }

// AsString returns the value of a TypeString value.
func (v Value) AsString() (string, bool) { s, ok := v.v.(string); return s, ok }

// AsInt returns the value of a TypeInteger value.
func (v Value) AsInt() (int64, bool) { i, ok := v.v.(int64); return i, ok }

// AsUint returns the value of a TypeUnsigned value.
func (v Value) AsUint() (uint64, bool) { u, ok := v.v.(uint64); return u, ok }

// AsFloat returns the value of a TypeFloat value.
func (v Value) AsFloat() (float64, bool) { f, ok := v.v.(float64); return f, ok }

// AsBool returns the value of a TypeBoolean value.
func (v Value) AsBool() (bool, bool) { b, ok := v.v.(bool); return b, ok }

// AsOpaque returns the bytes of a TypeOpaque value. They must not be
// modified.
func (v Value) AsOpaque() ([]byte, bool) { b, ok := v.v.([]byte); return b, ok }

// AsTime returns the time of a TypeTime value, in UTC.
func (v Value) AsTime() (time.Time, bool) { t, ok := v.v.(time.Time); return t, ok }

// AsObjLink returns the link of a TypeObjlnk value.
func (v Value) AsObjLink() (ObjLink, bool) { l, ok := v.v.(ObjLink); return l, ok }

// AsCoreLink returns the text of a TypeCorelnk value.
func (v Value) AsCoreLink() (string, bool) { s, ok := v.v.(CoreLink); return string(s), ok }

// Equal reports whether v and w have the same type and value. Floats are
// equal if they have the same bits, or are both NaN.
func (v Value) Equal(w Value) bool {
	switch a := v.v.(type) {
	case nil:
		return w.v == nil
	case []byte:
		b, ok := w.v.([]byte)
		return ok && bytes.Equal(a, b)
	case time.Time:
		b, ok := w.v.(time.Time)
		return ok && a.Equal(b)
	case float64:
		b, ok := w.v.(float64)
		return ok && (math.Float64bits(a) == math.Float64bits(b) || (math.IsNaN(a) && math.IsNaN(b)))
	}
	return v.v == w.v
}

// String returns a human-readable rendering of the value, for logs and
// errors. Opaque values are shown in hexadecimal and times in RFC 3339.
func (v Value) String() string {
	switch a := v.v.(type) {
	case nil:
		return "<invalid>"
	case string:
		return strconv.Quote(a)
	case CoreLink:
		return strconv.Quote(string(a))
	case []byte:
		return "0x" + hex.EncodeToString(a)
	case time.Time:
		return a.Format(time.RFC3339)
	case float64:
		return strconv.FormatFloat(a, 'g', -1, 64)
	}
	return fmt.Sprint(v.v)
}
