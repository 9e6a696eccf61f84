package codec

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/strictjson"

	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// SenML JSON (RFC 8428, LwM2M Core TS 1.1 7.4.6) and LwM2M JSON (7.4.5).
//
// SenML JSON is an array of records with the labels bn, bt, n, t, v, vs, vb,
// vd (base64url without padding) and the LwM2M extension vlo (object link
// "3:0"). Labels this package does not use (bver, bu, u, ut) are ignored, as
// are unknown labels, except that labels ending in "_" (must-understand)
// and the sum and base value labels (s, bs, bv) are rejected.
//
// LwM2M JSON is an object {"bn":..., "bt":..., "e":[...]} whose entries
// have the labels n, t, v, sv (strings, core links, and opaque values in
// base64), bv (boolean) and ov (object link). It has no extension points;
// unknown labels are rejected.

func jsonString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", errors.New("not a string")
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

func jsonBool(raw json.RawMessage) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

func jsonNumber(raw json.RawMessage) (number, error) {
	s := string(raw)
	if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return number{}, errors.New("not a number")
	}
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return number{kind: numInt, i: i}, nil
		}
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return number{kind: numUint, u: u}, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return number{}, fmt.Errorf("number %s out of range", s)
	}
	return number{kind: numFloat, f: f}, nil
}

func jsonTime(raw json.RawMessage) (*float64, error) {
	n, err := jsonNumber(raw)
	if err != nil {
		return nil, err
	}
	f := n.float()
	return &f, nil
}

// setValue records the value of a record, refusing a second one.
func (r *rawRecord) setValue(k valKind) error {
	if r.kind != valNone {
		return errors.New("more than one value")
	}
	r.kind = k
	return nil
}

func parseSenMLJSON(payload []byte) ([]rawRecord, error) {
	var recs []rawRecord
	err := strictjson.Elements(payload, func(raw json.RawMessage) error {
		if len(recs) == maxRecords {
			return fmt.Errorf("more than %d records", maxRecords)
		}
		var r rawRecord
		err := strictjson.Members(raw, func(name string, raw json.RawMessage) error {
			var err error
			switch name {
			case "bn", "n":
				var s string
				if s, err = jsonString(raw); err == nil {
					if name == "bn" {
						r.bn = &s
					} else {
						r.n = &s
					}
				}
			case "bt":
				r.bt, err = jsonTime(raw)
			case "t":
				r.t, err = jsonTime(raw)
			case "v":
				if err = r.setValue(valNum); err == nil {
					r.num, err = jsonNumber(raw)
				}
			case "vs":
				if err = r.setValue(valStr); err == nil {
					r.str, err = jsonString(raw)
				}
			case "vlo":
				if err = r.setValue(valObjLink); err == nil {
					r.str, err = jsonString(raw)
				}
			case "vb":
				if err = r.setValue(valBool); err == nil {
					r.b, err = jsonBool(raw)
				}
			case "vd":
				if err = r.setValue(valData); err == nil {
					var s string
					if s, err = jsonString(raw); err == nil {
						r.data, err = decodeBase64(s, base64.RawURLEncoding, base64.URLEncoding,
							base64.RawStdEncoding, base64.StdEncoding)
					}
				}
			case "s", "bs", "bv":
				err = errors.New("not supported by LwM2M")
			default:
				if strings.HasSuffix(name, "_") {
					err = errors.New("must-understand label not understood")
				}
			}
			if err != nil {
				return fmt.Errorf("record %d: %q: %w", len(recs), name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, malformed(SenMLJSON, "%v", err)
	}
	return recs, nil
}

func parseLwM2MJSON(payload []byte) ([]rawRecord, error) {
	var top rawRecord
	var entries json.RawMessage
	err := strictjson.Members(payload, func(name string, raw json.RawMessage) error {
		var err error
		switch name {
		case "bn":
			var s string
			if s, err = jsonString(raw); err == nil {
				top.bn = &s
			}
		case "bt":
			top.bt, err = jsonTime(raw)
		case "e":
			entries = raw
		default:
			err = errors.New("unknown member")
		}
		if err != nil {
			return fmt.Errorf("%q: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, malformed(LwM2MJSON, "%v", err)
	}
	if entries == nil {
		return nil, malformed(LwM2MJSON, `missing "e"`)
	}
	var recs []rawRecord
	err = strictjson.Elements(entries, func(raw json.RawMessage) error {
		if len(recs) == maxRecords {
			return fmt.Errorf("more than %d entries", maxRecords)
		}
		var r rawRecord
		if len(recs) == 0 {
			r.bn, r.bt = top.bn, top.bt
		}
		err := strictjson.Members(raw, func(name string, raw json.RawMessage) error {
			var err error
			switch name {
			case "n":
				var s string
				if s, err = jsonString(raw); err == nil {
					r.n = &s
				}
			case "t":
				r.t, err = jsonTime(raw)
			case "v":
				if err = r.setValue(valNum); err == nil {
					r.num, err = jsonNumber(raw)
				}
			case "sv":
				if err = r.setValue(valStr); err == nil {
					r.str, err = jsonString(raw)
				}
			case "ov":
				if err = r.setValue(valObjLink); err == nil {
					r.str, err = jsonString(raw)
				}
			case "bv":
				if err = r.setValue(valBool); err == nil {
					r.b, err = jsonBool(raw)
				}
			default:
				err = errors.New("unknown member")
			}
			if err != nil {
				return fmt.Errorf("entry %d: %q: %w", len(recs), name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, malformed(LwM2MJSON, "%v", err)
	}
	return recs, nil
}

// Writing.

// appendJSONString appends s as a JSON string without HTML escaping.
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // cannot fail for a string
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

// appendJSONFloat appends f so that it reads back as a float: always with a
// fraction or an exponent.
func appendJSONFloat(format uint16, b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, mismatch(format, "float %v has no JSON form", f)
	}
	start := len(b)
	b = strconv.AppendFloat(b, f, 'g', -1, 64)
	if !bytes.ContainsAny(b[start:], ".e") {
		b = append(b, ".0"...)
	}
	return b, nil
}

// appendJSONValue appends `,"label":value` for v. labels are the labels
// for string, boolean, opaque and object link values.
func appendJSONValue(format uint16, b []byte, v node.Value) ([]byte, error) {
	lwm2m := format == LwM2MJSON
	label := func(senml, lwm2mJSON string) []byte {
		if lwm2m {
			return append(b, `,"`+lwm2mJSON+`":`...)
		}
		return append(b, `,"`+senml+`":`...)
	}
	switch x := v.Interface().(type) {
	case string:
		return appendJSONString(label("vs", "sv"), x), nil
	case node.CoreLink:
		return appendJSONString(label("vs", "sv"), string(x)), nil
	case int64:
		return strconv.AppendInt(label("v", "v"), x, 10), nil
	case uint64:
		return strconv.AppendUint(label("v", "v"), x, 10), nil
	case float64:
		return appendJSONFloat(format, label("v", "v"), x)
	case bool:
		return strconv.AppendBool(label("vb", "bv"), x), nil
	case []byte:
		b = label("vd", "sv")
		b = append(b, '"')
		if lwm2m {
			b = base64.StdEncoding.AppendEncode(b, x)
		} else {
			b = base64.RawURLEncoding.AppendEncode(b, x)
		}
		return append(b, '"'), nil
	case time.Time:
		return strconv.AppendInt(label("v", "v"), x.Unix(), 10), nil
	case node.ObjLink:
		return appendJSONString(label("vlo", "ov"), x.String()), nil
	case nil:
		return b, nil
	}
	return nil, mismatch(format, "invalid value")
}

func writeSenMLJSON(recs []outRecord) ([]byte, error) {
	b := []byte{'['}
	var err error
	for i, r := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		mark := len(b)
		b = append(b, '{')
		if r.hasBN {
			b = append(b, `,"bn":`...)
			b = appendJSONString(b, r.bn)
		}
		if r.hasBT {
			b = append(b, `,"bt":`...)
			b = strconv.AppendInt(b, r.bt, 10)
		}
		if r.name != "" {
			b = append(b, `,"n":`...)
			b = appendJSONString(b, r.name)
		}
		if b, err = appendJSONValue(SenMLJSON, b, r.value); err != nil {
			return nil, err
		}
		// Every member was written with a leading comma; drop the first.
		if len(b) > mark+1 && b[mark+1] == ',' {
			b = append(b[:mark+1], b[mark+2:]...)
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

func writeLwM2MJSON(recs []outRecord) ([]byte, error) {
	b := []byte{'{'}
	if len(recs) > 0 && recs[0].hasBN {
		b = append(b, `"bn":`...)
		b = appendJSONString(b, recs[0].bn)
		b = append(b, ',')
	}
	b = append(b, `"e":[`...)
	var bt int64
	var err error
	for i, r := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		if r.hasBT {
			bt = r.bt
		}
		mark := len(b)
		b = append(b, '{')
		if r.name != "" {
			b = append(b, `,"n":`...)
			b = appendJSONString(b, r.name)
		}
		if b, err = appendJSONValue(LwM2MJSON, b, r.value); err != nil {
			return nil, err
		}
		if bt != 0 {
			b = append(b, `,"t":`...)
			b = strconv.AppendInt(b, bt, 10)
		}
		if len(b) > mark+1 && b[mark+1] == ',' {
			b = append(b[:mark+1], b[mark+2:]...)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...), nil
}
