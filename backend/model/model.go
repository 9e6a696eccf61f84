// Package model describes LwM2M objects and resources: which resources an
// object has, what type each resource's value is, whether a resource has
// several instances and which operations it allows.
//
// A Registry maps object IDs to object definitions. Default returns a new
// registry holding the core objects of LwM2M 1.1 (Security, Server, Access
// Control, Device, Connectivity Monitoring, Firmware Update, Location and
// Connectivity Statistics); more objects are added with Add, or loaded from
// OMA Device Description Files (DDF, the XML format of the OMA LwM2M
// registry) with LoadDDF and LoadDDFDir.
//
// The content-format codecs consult a Registry to learn the type of a value,
// since most LwM2M formats (TLV, plain text, opaque, CBOR) do not carry it.
package model

import (
	"fmt"
	"sort"
	"sync"
)

// ResourceType is the data type of a resource's value, as defined in
// appendix C of the LwM2M Core specification.
type ResourceType uint8

// Resource types. TypeNone is the type of executable resources, which have
// no value.
const (
	TypeNone     ResourceType = iota // no value (executable resource)
	TypeString                       // UTF-8 string
	TypeInteger                      // signed 64-bit integer
	TypeUnsigned                     // unsigned 64-bit integer (LwM2M 1.1)
	TypeFloat                        // IEEE 754 binary64
	TypeBoolean                      // true or false
	TypeOpaque                       // sequence of bytes
	TypeTime                         // Unix time in seconds
	TypeObjlnk                       // object link: object ID and instance ID
	TypeCorelnk                      // CoRE link format string (LwM2M 1.1)
)

var typeNames = [...]string{
	TypeNone:     "none",
	TypeString:   "string",
	TypeInteger:  "integer",
	TypeUnsigned: "unsigned_integer",
	TypeFloat:    "float",
	TypeBoolean:  "boolean",
	TypeOpaque:   "opaque",
	TypeTime:     "time",
	TypeObjlnk:   "objlnk",
	TypeCorelnk:  "corelink",
}

// String returns the type's name as used in the northbound JSON API, the
// lower-case names of Leshan: "none", "string", "integer",
// "unsigned_integer", "float", "boolean", "opaque", "time", "objlnk" and
// "corelink".
func (t ResourceType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("ResourceType(%d)", uint8(t))
}

// Valid reports whether t is one of the defined types.
func (t ResourceType) Valid() bool { return int(t) < len(typeNames) }

// ParseResourceType returns the type whose String is s.
func ParseResourceType(s string) (ResourceType, error) {
	for i, n := range typeNames {
		if n == s {
			return ResourceType(i), nil
		}
	}
	return TypeNone, fmt.Errorf("model: unknown resource type %q", s)
}

// MarshalText implements encoding.TextMarshaler.
func (t ResourceType) MarshalText() ([]byte, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("model: invalid resource type %d", uint8(t))
	}
	return []byte(t.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *ResourceType) UnmarshalText(b []byte) error {
	v, err := ParseResourceType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Operations is the set of operations a resource allows. It is one of
// OpNone, OpRead, OpWrite, OpReadWrite and OpExecute.
type Operations uint8

// The operation sets that the object definitions use. OpNone is used by
// resources that only a bootstrap server may access (for example every
// resource of the Security object).
const (
	OpNone      Operations = 0
	OpRead      Operations = 1
	OpWrite     Operations = 2
	OpReadWrite Operations = OpRead | OpWrite
	OpExecute   Operations = 4
)

// Readable reports whether the Read operation is allowed.
func (o Operations) Readable() bool { return o&OpRead != 0 }

// Writable reports whether the Write operation is allowed.
func (o Operations) Writable() bool { return o&OpWrite != 0 }

// Executable reports whether the Execute operation is allowed.
func (o Operations) Executable() bool { return o&OpExecute != 0 }

// String returns the operations as written in a DDF: "", "R", "W", "RW" or
// "E".
func (o Operations) String() string {
	switch o {
	case OpNone:
		return ""
	case OpRead:
		return "R"
	case OpWrite:
		return "W"
	case OpReadWrite:
		return "RW"
	case OpExecute:
		return "E"
	}
	return fmt.Sprintf("Operations(%d)", uint8(o))
}

// ParseOperations parses the DDF notation of s ("", "R", "W", "RW", "E").
func ParseOperations(s string) (Operations, error) {
	switch s {
	case "":
		return OpNone, nil
	case "R":
		return OpRead, nil
	case "W":
		return OpWrite, nil
	case "RW":
		return OpReadWrite, nil
	case "E":
		return OpExecute, nil
	}
	return OpNone, fmt.Errorf("model: unknown operations %q", s)
}

// MaxID is the largest object, instance or resource ID; 65535 is reserved
// by the LwM2M specification.
const MaxID = 65534

// Resource is the definition of one resource of an object.
type Resource struct {
	ID          uint16
	Name        string
	Operations  Operations
	Multiple    bool // the resource has resource instances
	Mandatory   bool
	Type        ResourceType
	Units       string
	Description string
}

// Object is the definition of an object.
type Object struct {
	ID          uint16
	Name        string
	URN         string // for example "urn:oma:lwm2m:oma:3:1.1"
	Version     string // object version, "1.0" when the definition has none
	Multiple    bool   // the object may have several instances
	Mandatory   bool
	Description string
	Resources   map[uint16]Resource
}

// Resource returns the definition of resource id.
func (o *Object) Resource(id uint16) (*Resource, bool) {
	if o == nil {
		return nil, false
	}
	r, ok := o.Resources[id]
	if !ok {
		return nil, false
	}
	return &r, true
}

// validate checks the IDs and types of an object definition.
func (o *Object) validate() error {
	if o.ID > MaxID {
		return fmt.Errorf("model: object ID %d out of range", o.ID)
	}
	for k, r := range o.Resources {
		if k != r.ID {
			return fmt.Errorf("model: object %d: resource keyed %d has ID %d", o.ID, k, r.ID)
		}
		if r.ID > MaxID {
			return fmt.Errorf("model: object %d: resource ID %d out of range", o.ID, r.ID)
		}
		if !r.Type.Valid() {
			return fmt.Errorf("model: object %d: resource %d: invalid type %d", o.ID, r.ID, uint8(r.Type))
		}
		switch r.Operations {
		case OpNone, OpRead, OpWrite, OpReadWrite, OpExecute:
		default:
			return fmt.Errorf("model: object %d: resource %d: invalid operations %d", o.ID, r.ID, uint8(r.Operations))
		}
	}
	return nil
}

func (o *Object) clone() *Object {
	c := *o
	c.Resources = make(map[uint16]Resource, len(o.Resources))
	for k, r := range o.Resources {
		c.Resources[k] = r
	}
	return &c
}

// Registry holds object definitions by object ID. The zero value is an empty
// registry ready to use, and a nil *Registry is an empty registry that
// cannot be added to. A Registry is safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex
	objects map[uint16]*Object
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Default returns a new registry holding the LwM2M 1.1 core objects 0 to 7.
// Each call builds a new registry, so callers may add to it freely.
func Default() *Registry {
	r := NewRegistry()
	r.addAll(coreObjects())
	return r
}

func (r *Registry) ensure() map[uint16]*Object {
	if r.objects == nil {
		r.objects = make(map[uint16]*Object)
	}
	return r.objects
}

// Object returns the definition of object id. The returned object is shared
// and must not be modified.
func (r *Registry) Object(id uint16) (*Object, bool) {
	if r == nil {
		return nil, false
	}
	r.mu.RLock()
	o, ok := r.objects[id]
	r.mu.RUnlock()
	return o, ok
}

// Resource returns the definition of resource resourceID of object
// objectID.
func (r *Registry) Resource(objectID, resourceID uint16) (*Resource, bool) {
	o, ok := r.Object(objectID)
	if !ok {
		return nil, false
	}
	return o.Resource(resourceID)
}

// Objects returns the definitions in the registry, sorted by ID. The
// returned objects are shared and must not be modified.
func (r *Registry) Objects() []*Object {
	if r == nil {
		return nil
	}
	r.mu.RLock()
	out := make([]*Object, 0, len(r.objects))
	for _, o := range r.objects {
		out = append(out, o)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Add adds a copy of o to the registry, replacing any definition with the
// same ID. It returns an error if o's IDs or types are invalid.
func (r *Registry) Add(o *Object) error {
	if o == nil {
		return fmt.Errorf("model: nil object")
	}
	if err := o.validate(); err != nil {
		return err
	}
	c := o.clone()
	r.mu.Lock()
	r.ensure()[c.ID] = c
	r.mu.Unlock()
	return nil
}

func (r *Registry) addAll(objs []*Object) {
	r.mu.Lock()
	m := r.ensure()
	for _, o := range objs {
		m[o.ID] = o
	}
	r.mu.Unlock()
}
