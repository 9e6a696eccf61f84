package node

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxID is the largest object, object instance, resource or resource
// instance ID. The LwM2M specification reserves 65535.
const MaxID = 65534

// Level is the depth of a path.
type Level uint8

// Path levels.
const (
	LevelRoot             Level = iota // "/"
	LevelObject                        // "/3"
	LevelInstance                      // "/3/0"
	LevelResource                      // "/3/0/1"
	LevelResourceInstance              // "/3/0/6/1"
)

func (l Level) String() string {
	switch l {
	case LevelRoot:
		return "root"
	case LevelObject:
		return "object"
	case LevelInstance:
		return "object instance"
	case LevelResource:
		return "resource"
	case LevelResourceInstance:
		return "resource instance"
	}
	return fmt.Sprintf("Level(%d)", uint8(l))
}

// ErrInvalidPath is wrapped by the errors ParsePath and the Path
// constructors return.
var ErrInvalidPath = errors.New("invalid LwM2M path")

// Path addresses a node: the root, an object, an object instance, a resource
// or a resource instance. Paths are comparable and may be used as map keys.
// The zero Path is the root.
type Path struct {
	n   uint8
	ids [4]uint16
}

// Root is the root path "/".
var Root = Path{}

// NewPath returns the path with the given IDs, from the object ID down. It
// takes at most four IDs, each at most MaxID.
func NewPath(ids ...uint16) (Path, error) {
	if len(ids) > 4 {
		return Path{}, fmt.Errorf("%w: %d levels", ErrInvalidPath, len(ids))
	}
	var p Path
	for _, id := range ids {
		if id > MaxID {
			return Path{}, fmt.Errorf("%w: ID %d out of range", ErrInvalidPath, id)
		}
		p.ids[p.n] = id
		p.n++
	}
	return p, nil
}

// MustPath is like NewPath but panics on error. It is meant for constant
// paths in programs and tests.
func MustPath(ids ...uint16) Path {
	p, err := NewPath(ids...)
	if err != nil {
		panic(err)
	}
	return p
}

// ParsePath parses a path in the LwM2M URI notation: "/" for the root, or a
// slash before each decimal ID, as in "/3/0/1". IDs are 0 to MaxID, written
// without sign or leading zeros; there are at most four of them. A trailing
// slash is not allowed, so String(ParsePath(s)) == s for every valid s.
func ParsePath(s string) (Path, error) {
	if s == "/" {
		return Root, nil
	}
	if len(s) < 2 || s[0] != '/' {
		return Path{}, fmt.Errorf("%w: %q", ErrInvalidPath, s)
	}
	var p Path
	rest := s[1:]
	for {
		seg, tail, more := strings.Cut(rest, "/")
		if p.n == 4 {
			return Path{}, fmt.Errorf("%w: %q has more than 4 levels", ErrInvalidPath, s)
		}
		id, err := parseID(seg)
		if err != nil {
			return Path{}, fmt.Errorf("%w: %q: %v", ErrInvalidPath, s, err)
		}
		p.ids[p.n] = id
		p.n++
		if !more {
			return p, nil
		}
		rest = tail
	}
}

func parseID(seg string) (uint16, error) {
	if seg == "" {
		return 0, errors.New("empty segment")
	}
	if len(seg) > 1 && seg[0] == '0' {
		return 0, fmt.Errorf("leading zero in %q", seg)
	}
	for i := 0; i < len(seg); i++ {
		if seg[i] < '0' || seg[i] > '9' {
			return 0, fmt.Errorf("bad ID %q", seg)
		}
	}
	n, err := strconv.ParseUint(seg, 10, 16)
	if err != nil || n > MaxID {
		return 0, fmt.Errorf("ID %s out of range", seg)
	}
	return uint16(n), nil
}

// String returns the path in URI notation, for example "/3/0/1" or "/".
func (p Path) String() string {
	if p.n == 0 {
		return "/"
	}
	b := make([]byte, 0, 24)
	for i := uint8(0); i < p.n; i++ {
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(p.ids[i]), 10)
	}
	return string(b)
}

// MarshalText implements encoding.TextMarshaler.
func (p Path) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler using ParsePath.
func (p *Path) UnmarshalText(b []byte) error {
	q, err := ParsePath(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// Level returns the depth of the path.
func (p Path) Level() Level { return Level(p.n) }

// Len returns the number of IDs in the path (0 for the root).
func (p Path) Len() int { return int(p.n) }

// ID returns the i'th ID of the path, 0 being the object ID. It panics if i
// is not below Len.
func (p Path) ID(i int) uint16 {
	if i < 0 || i >= int(p.n) {
		panic(fmt.Sprintf("node: Path.ID(%d) on %s", i, p))
	}
	return p.ids[i]
}

// ObjectID returns the object ID, or 0 for the root.
func (p Path) ObjectID() uint16 { return p.ids[0] }

// InstanceID returns the object instance ID, or 0 if the path is shorter.
func (p Path) InstanceID() uint16 { return p.ids[1] }

// ResourceID returns the resource ID, or 0 if the path is shorter.
func (p Path) ResourceID() uint16 { return p.ids[2] }

// ResourceInstanceID returns the resource instance ID, or 0 if the path is
// shorter.
func (p Path) ResourceInstanceID() uint16 { return p.ids[3] }

// Last returns the last ID of the path, or 0 for the root.
func (p Path) Last() uint16 {
	if p.n == 0 {
		return 0
	}
	return p.ids[p.n-1]
}

// Child returns the path one level below p with the given ID.
func (p Path) Child(id uint16) (Path, error) {
	if p.n == 4 {
		return Path{}, fmt.Errorf("%w: %s has no children", ErrInvalidPath, p)
	}
	if id > MaxID {
		return Path{}, fmt.Errorf("%w: ID %d out of range", ErrInvalidPath, id)
	}
	c := p
	c.ids[c.n] = id
	c.n++
	return c, nil
}

// Parent returns the path one level above p. The parent of the root is the
// root.
func (p Path) Parent() Path {
	if p.n == 0 {
		return p
	}
	q := p
	q.n--
	q.ids[q.n] = 0
	return q
}

// HasPrefix reports whether q is p or an ancestor of p.
func (p Path) HasPrefix(q Path) bool {
	if q.n > p.n {
		return false
	}
	for i := uint8(0); i < q.n; i++ {
		if p.ids[i] != q.ids[i] {
			return false
		}
	}
	return true
}

// Compare returns -1, 0 or +1 as p sorts before, equal to or after q.
// Paths sort by IDs, level by level, a parent before its children.
func (p Path) Compare(q Path) int {
	for i := uint8(0); i < p.n && i < q.n; i++ {
		switch {
		case p.ids[i] < q.ids[i]:
			return -1
		case p.ids[i] > q.ids[i]:
			return 1
		}
	}
	switch {
	case p.n < q.n:
		return -1
	case p.n > q.n:
		return 1
	}
	return 0
}
