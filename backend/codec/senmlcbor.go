package codec

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// SenML CBOR (RFC 8428 section 6, LwM2M Core TS 1.1 7.4.7): an array of
// maps with integer labels bn -2, bt -3, n 0, v 2, vs 3, vb 4, t 6, vd 8
// (a byte string), and the text label "vlo" for object links. As in SenML
// JSON, bver -1, bu -4, u 1 and ut 7 are ignored, bv -5, bs -6 and s 5 are
// rejected, and other labels are ignored unless they are text ending in
// "_".

var cborRecordsDec = mustDecMode(cbor.DecOptions{
	DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	MaxNestedLevels:  8,
	MaxArrayElements: maxRecords,
	MaxMapPairs:      64,
	IntDec:           cbor.IntDecConvertNone,
	BigIntDec:        cbor.BigIntDecodeValue,
	TimeTagToAny:     cbor.TimeTagToTime,
	UTF8:             cbor.UTF8RejectInvalid,
})

// SenML CBOR labels.
const (
	lblBaseVersion = -1
	lblBaseName    = -2
	lblBaseTime    = -3
	lblBaseUnit    = -4
	lblBaseValue   = -5
	lblBaseSum     = -6
	lblName        = 0
	lblUnit        = 1
	lblValue       = 2
	lblStringValue = 3
	lblBoolValue   = 4
	lblSum         = 5
	lblTime        = 6
	lblUpdateTime  = 7
	lblDataValue   = 8
	lblObjLink     = "vlo"
)

func cborLabel(k any) (int64, string, bool) {
	switch k := k.(type) {
	case int64:
		return k, "", true
	case uint64:
		if k <= 1<<62 {
			return int64(k), "", true
		}
	case string:
		return 0, k, false
	}
	return 1 << 62, "", true // an integer label nobody uses
}

func parseSenMLCBOR(payload []byte) ([]rawRecord, error) {
	var items []map[any]any
	if err := cborRecordsDec.Unmarshal(payload, &items); err != nil {
		return nil, malformed(SenMLCBOR, "%v", err)
	}
	recs := make([]rawRecord, 0, len(items))
	for i, m := range items {
		var r rawRecord
		for k, v := range m {
			label, text, isInt := cborLabel(k)
			if err := r.setCBOR(label, text, isInt, v); err != nil {
				name := text
				if isInt {
					name = fmt.Sprint(label)
				}
				return nil, malformed(SenMLCBOR, "record %d: label %s: %v", i, name, err)
			}
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func (r *rawRecord) setCBOR(label int64, text string, isInt bool, v any) error {
	str := func() (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", errors.New("not a text string")
		}
		return s, nil
	}
	num := func() (number, error) {
		n, ok := cborNumber(v)
		if !ok {
			return number{}, errors.New("not a number")
		}
		return n, nil
	}
	tm := func() (*float64, error) {
		if t, ok := v.(time.Time); ok { // tag 1 around a time
			f := float64(t.UnixNano()) / 1e9
			return &f, nil
		}
		n, err := num()
		if err != nil {
			return nil, err
		}
		f := n.float()
		return &f, nil
	}
	var err error
	if !isInt {
		switch {
		case text == lblObjLink:
			if err = r.setValue(valObjLink); err == nil {
				r.str, err = str()
			}
		case strings.HasSuffix(text, "_"):
			err = errors.New("must-understand label not understood")
		}
		return err
	}
	switch label {
	case lblBaseName, lblName:
		var s string
		if s, err = str(); err == nil {
			if label == lblBaseName {
				r.bn = &s
			} else {
				r.n = &s
			}
		}
	case lblBaseTime:
		r.bt, err = tm()
	case lblTime:
		r.t, err = tm()
	case lblValue:
		if err = r.setValue(valNum); err == nil {
			r.num, err = num()
		}
	case lblStringValue:
		if err = r.setValue(valStr); err == nil {
			r.str, err = str()
		}
	case lblBoolValue:
		if err = r.setValue(valBool); err == nil {
			b, ok := v.(bool)
			if !ok {
				err = errors.New("not a boolean")
			}
			r.b = b
		}
	case lblDataValue:
		if err = r.setValue(valData); err == nil {
			b, ok := v.([]byte)
			if !ok {
				err = errors.New("not a byte string")
			}
			r.data = b
		}
	case lblBaseValue, lblBaseSum, lblSum:
		err = errors.New("not supported by LwM2M")
	case lblBaseVersion, lblBaseUnit, lblUnit, lblUpdateTime:
	}
	return err
}

// cborOutRecord is the CBOR form of an outRecord, in the order the labels
// are written.
type cborOutRecord struct {
	BaseName    *string         `cbor:"-2,keyasint,omitempty"`
	BaseTime    *int64          `cbor:"-3,keyasint,omitempty"`
	Name        *string         `cbor:"0,keyasint,omitempty"`
	Value       cbor.RawMessage `cbor:"2,keyasint,omitempty"`
	StringValue *string         `cbor:"3,keyasint,omitempty"`
	BoolValue   *bool           `cbor:"4,keyasint,omitempty"`
	DataValue   *[]byte         `cbor:"8,keyasint,omitempty"`
	ObjLink     *string         `cbor:"vlo,omitempty"`
}

func writeSenMLCBOR(recs []outRecord) ([]byte, error) {
	out := make([]cborOutRecord, len(recs))
	for i, r := range recs {
		c := &out[i]
		if r.hasBN {
			c.BaseName = &r.bn
		}
		if r.hasBT {
			c.BaseTime = &r.bt
		}
		if r.name != "" {
			c.Name = &r.name
		}
		var num any
		switch x := r.value.Interface().(type) {
		case string:
			c.StringValue = &x
		case node.CoreLink:
			s := string(x)
			c.StringValue = &s
		case int64, uint64, float64:
			num = x
		case time.Time:
			num = x.Unix()
		case bool:
			c.BoolValue = &x
		case []byte:
			c.DataValue = &x
		case node.ObjLink:
			s := x.String()
			c.ObjLink = &s
		}
		if num != nil {
			b, err := cborEnc.Marshal(num)
			if err != nil {
				return nil, mismatch(SenMLCBOR, "%v", err)
			}
			c.Value = b
		}
	}
	b, err := cborEnc.Marshal(out)
	if err != nil {
		return nil, mismatch(SenMLCBOR, "%v", err)
	}
	return b, nil
}
