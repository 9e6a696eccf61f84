package simdevice

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// attrNames are the notification attributes of LwM2M 1.1 Write-Attributes,
// in the order Discover writes them.
var attrNames = [...]string{"pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"}

// Attributes are the notification attributes set on one path by
// Write-Attributes. Only the attributes present in Set are in effect.
type Attributes struct {
	Set   uint8 // bit i set: attrNames[i] is present
	Pmin  int64 // seconds
	Pmax  int64 // seconds
	Gt    float64
	Lt    float64
	St    float64
	Epmin int64
	Epmax int64
}

const (
	attrPmin = 1 << iota
	attrPmax
	attrGt
	attrLt
	attrSt
	attrEpmin
	attrEpmax
)

// Has reports whether the attribute called name ("pmin", ...) is set.
func (a Attributes) Has(name string) bool {
	for i, n := range attrNames {
		if n == name {
			return a.Set&(1<<i) != 0
		}
	}
	return false
}

// Empty reports whether no attribute is set.
func (a Attributes) Empty() bool { return a.Set == 0 }

// links returns the attributes as ";name=value" link parameters.
func (a Attributes) links() string {
	var b strings.Builder
	for i, n := range attrNames {
		if a.Set&(1<<i) == 0 {
			continue
		}
		b.WriteByte(';')
		b.WriteString(n)
		b.WriteByte('=')
		switch 1 << i {
		case attrPmin:
			b.WriteString(strconv.FormatInt(a.Pmin, 10))
		case attrPmax:
			b.WriteString(strconv.FormatInt(a.Pmax, 10))
		case attrGt:
			b.WriteString(strconv.FormatFloat(a.Gt, 'g', -1, 64))
		case attrLt:
			b.WriteString(strconv.FormatFloat(a.Lt, 'g', -1, 64))
		case attrSt:
			b.WriteString(strconv.FormatFloat(a.St, 'g', -1, 64))
		case attrEpmin:
			b.WriteString(strconv.FormatInt(a.Epmin, 10))
		case attrEpmax:
			b.WriteString(strconv.FormatInt(a.Epmax, 10))
		}
	}
	return b.String()
}

// apply applies Write-Attributes query parameters to a. A parameter without
// value ("pmin") removes the attribute. Unknown parameters and bad values
// are errors, and a is then unchanged.
func (a Attributes) apply(queries []string) (Attributes, error) {
	out := a
	sort.Strings(queries)
	for _, q := range queries {
		name, val, hasVal := strings.Cut(q, "=")
		idx := -1
		for i, n := range attrNames {
			if n == name {
				idx = i
			}
		}
		if idx < 0 {
			return a, fmt.Errorf("unknown attribute %q", name)
		}
		bit := uint8(1) << idx
		if !hasVal {
			out.Set &^= bit
			continue
		}
		switch bit {
		case attrPmin, attrPmax, attrEpmin, attrEpmax:
			v, err := strconv.ParseInt(val, 10, 64)
			if err != nil || v < 0 {
				return a, fmt.Errorf("attribute %s: bad value %q", name, val)
			}
			switch bit {
			case attrPmin:
				out.Pmin = v
			case attrPmax:
				out.Pmax = v
			case attrEpmin:
				out.Epmin = v
			case attrEpmax:
				out.Epmax = v
			}
		default:
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return a, fmt.Errorf("attribute %s: bad value %q", name, val)
			}
			switch bit {
			case attrGt:
				out.Gt = v
			case attrLt:
				out.Lt = v
			case attrSt:
				if v < 0 {
					return a, fmt.Errorf("attribute st: negative value %q", val)
				}
				out.St = v
			}
		}
		out.Set |= bit
	}
	if out.Set&(attrPmin|attrPmax) == attrPmin|attrPmax && out.Pmax != 0 && out.Pmax < out.Pmin {
		return a, fmt.Errorf("pmax %d below pmin %d", out.Pmax, out.Pmin)
	}
	return out, nil
}

// pmin and pmax as durations, zero when not set.
func (a Attributes) pminDur() time.Duration {
	if a.Set&attrPmin == 0 {
		return 0
	}
	return time.Duration(a.Pmin) * time.Second
}

func (a Attributes) pmaxDur() time.Duration {
	if a.Set&attrPmax == 0 {
		return 0
	}
	return time.Duration(a.Pmax) * time.Second
}
