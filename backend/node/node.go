// Package node is the LwM2M data model of values that a server reads from
// and writes to devices: objects, object instances, resources (single or
// multiple) and resource instances, addressed by a Path.
//
// Nodes have a JSON form, the "node" of the northbound API (see the seed's
// Leshan cluster page), for example
//
//	{"kind":"singleresource","id":1,"type":"string","value":"Lightweight M2M Client"}
//	{"kind":"multipleresource","id":6,"type":"integer","values":{"0":1,"1":5}}
//	{"kind":"resourceinstance","id":0,"type":"integer","value":5}
//	{"kind":"instance","id":0,"resources":[...]}
//	{"kind":"object","id":3,"instances":[...]}
//
// The "type" names are those of model.ResourceType.String. Values of type
// string and corelink are JSON strings; integer and unsigned_integer are
// JSON integers (exact, also beyond 2^53); float is a JSON number; boolean a
// JSON boolean; opaque a string of lower-case hexadecimal digits; time an
// integer, the Unix time in seconds; objlnk a string "objectID:instanceID",
// for example "3:0". Floats that are NaN or infinite have no JSON form.
//
// Decoding is strict: unknown or duplicate members, a member that does not
// belong to the kind, a value that does not match the type, an ID above
// MaxID and two children with the same ID are all errors.
package node

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"unicode/utf8"

	"github.com/lwm2mcluster/lwm2m/backend/model"
)

// Kind is the kind of a node.
type Kind uint8

// Node kinds. Their String is the "kind" of the JSON form.
const (
	KindObject Kind = iota + 1
	KindInstance
	KindSingleResource
	KindMultipleResource
	KindResourceInstance
)

func (k Kind) String() string {
	switch k {
	case KindObject:
		return "object"
	case KindInstance:
		return "instance"
	case KindSingleResource:
		return "singleresource"
	case KindMultipleResource:
		return "multipleresource"
	case KindResourceInstance:
		return "resourceinstance"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Level returns the path level at which nodes of kind k live.
func (k Kind) Level() Level {
	switch k {
	case KindObject:
		return LevelObject
	case KindInstance:
		return LevelInstance
	case KindSingleResource, KindMultipleResource:
		return LevelResource
	case KindResourceInstance:
		return LevelResourceInstance
	}
	return LevelRoot
}

// Node is one of Object, Instance, Resource and ResourceInstance.
type Node interface {
	// Kind returns the kind of the node.
	Kind() Kind
	// NodeID returns the node's ID, the last ID of its path.
	NodeID() uint16
	node()
}

// Object is an object with its instances.
type Object struct {
	ID        uint16
	Instances []Instance
}

// Instance is an object instance with its resources.
type Instance struct {
	ID        uint16
	Resources []Resource
}

// Resource is a resource. A single resource has Multiple false and its
// value in Value; a multiple resource has Multiple true and its resource
// instances' values in Instances, keyed by resource instance ID. Type is the
// type of the value or values; it is required for multiple resources, which
// may have no instances.
type Resource struct {
	ID        uint16
	Type      model.ResourceType
	Multiple  bool
	Value     Value
	Instances map[uint16]Value
}

// ResourceInstance is one instance of a multiple resource.
type ResourceInstance struct {
	ID    uint16
	Type  model.ResourceType
	Value Value
}

// Kind implements Node.
func (Object) Kind() Kind { return KindObject }

// Kind implements Node.
func (Instance) Kind() Kind { return KindInstance }

// Kind implements Node.
func (r Resource) Kind() Kind {
	if r.Multiple {
		return KindMultipleResource
	}
	return KindSingleResource
}

// Kind implements Node.
func (ResourceInstance) Kind() Kind { return KindResourceInstance }

// NodeID implements Node.
func (o Object) NodeID() uint16 { return o.ID }

// NodeID implements Node.
func (i Instance) NodeID() uint16 { return i.ID }

// NodeID implements Node.
func (r Resource) NodeID() uint16 { return r.ID }

// NodeID implements Node.
func (r ResourceInstance) NodeID() uint16 { return r.ID }

func (Object) node()           {}
func (Instance) node()         {}
func (Resource) node()         {}
func (ResourceInstance) node() {}

// NewSingle returns a single resource holding v.
func NewSingle(id uint16, v Value) Resource {
	return Resource{ID: id, Type: v.Type(), Value: v}
}

// NewMultiple returns a multiple resource of type t holding values. The map
// is used as is, not copied.
func NewMultiple(id uint16, t model.ResourceType, values map[uint16]Value) Resource {
	if values == nil {
		values = map[uint16]Value{}
	}
	return Resource{ID: id, Type: t, Multiple: true, Instances: values}
}

// NewResourceInstance returns a resource instance holding v.
func NewResourceInstance(id uint16, v Value) ResourceInstance {
	return ResourceInstance{ID: id, Type: v.Type(), Value: v}
}

// Resource returns the instance's resource with the given ID.
func (i Instance) Resource(id uint16) (Resource, bool) {
	for _, r := range i.Resources {
		if r.ID == id {
			return r, true
		}
	}
	return Resource{}, false
}

// Instance returns the object's instance with the given ID.
func (o Object) Instance(id uint16) (Instance, bool) {
	for _, i := range o.Instances {
		if i.ID == id {
			return i, true
		}
	}
	return Instance{}, false
}

// ErrInvalidNode is wrapped by the errors of Validate.
var ErrInvalidNode = errors.New("invalid node")

// Validate checks that a node is well-formed: IDs are at most MaxID,
// children's IDs are unique, every value is valid and of the declared type,
// strings are valid UTF-8, and no value has type TypeNone.
func Validate(n Node) error {
	if err := validate(n); err != nil {
		return fmt.Errorf("node: %w: %w", ErrInvalidNode, err)
	}
	return nil
}

func validate(n Node) error {
	switch n := n.(type) {
	case nil:
		return errors.New("nil node")
	case Object:
		return validateObject(n)
	case *Object:
		if n == nil {
			return errors.New("nil node")
		}
		return validateObject(*n)
	case Instance:
		return validateInstance(n)
	case *Instance:
		if n == nil {
			return errors.New("nil node")
		}
		return validateInstance(*n)
	case Resource:
		return validateResource(n)
	case *Resource:
		if n == nil {
			return errors.New("nil node")
		}
		return validateResource(*n)
	case ResourceInstance:
		return validateResourceInstance(n)
	case *ResourceInstance:
		if n == nil {
			return errors.New("nil node")
		}
		return validateResourceInstance(*n)
	}
	return fmt.Errorf("unknown node type %T", n)
}

func checkID(id uint16) error {
	if id > MaxID {
		return fmt.Errorf("ID %d out of range", id)
	}
	return nil
}

func validateObject(o Object) error {
	if err := checkID(o.ID); err != nil {
		return fmt.Errorf("object: %w", err)
	}
	seen := make(map[uint16]bool, len(o.Instances))
	for _, i := range o.Instances {
		if seen[i.ID] {
			return fmt.Errorf("object %d: duplicate instance %d", o.ID, i.ID)
		}
		seen[i.ID] = true
		if err := validateInstance(i); err != nil {
			return fmt.Errorf("object %d: %w", o.ID, err)
		}
	}
	return nil
}

func validateInstance(i Instance) error {
	if err := checkID(i.ID); err != nil {
		return fmt.Errorf("instance: %w", err)
	}
	seen := make(map[uint16]bool, len(i.Resources))
	for _, r := range i.Resources {
		if seen[r.ID] {
			return fmt.Errorf("instance %d: duplicate resource %d", i.ID, r.ID)
		}
		seen[r.ID] = true
		if err := validateResource(r); err != nil {
			return fmt.Errorf("instance %d: %w", i.ID, err)
		}
	}
	return nil
}

func validateResource(r Resource) error {
	if err := checkID(r.ID); err != nil {
		return fmt.Errorf("resource: %w", err)
	}
	if r.Type == model.TypeNone || !r.Type.Valid() {
		return fmt.Errorf("resource %d: invalid type %v", r.ID, r.Type)
	}
	if !r.Multiple {
		if r.Instances != nil {
			return fmt.Errorf("resource %d: single resource with instances", r.ID)
		}
		if err := validateValue(r.Type, r.Value); err != nil {
			return fmt.Errorf("resource %d: %w", r.ID, err)
		}
		return nil
	}
	if r.Value.IsValid() {
		return fmt.Errorf("resource %d: multiple resource with a single value", r.ID)
	}
	for id, v := range r.Instances {
		if err := checkID(id); err != nil {
			return fmt.Errorf("resource %d: instance: %w", r.ID, err)
		}
		if err := validateValue(r.Type, v); err != nil {
			return fmt.Errorf("resource %d instance %d: %w", r.ID, id, err)
		}
	}
	return nil
}

func validateResourceInstance(r ResourceInstance) error {
	if err := checkID(r.ID); err != nil {
		return fmt.Errorf("resource instance: %w", err)
	}
	if r.Type == model.TypeNone || !r.Type.Valid() {
		return fmt.Errorf("resource instance %d: invalid type %v", r.ID, r.Type)
	}
	if err := validateValue(r.Type, r.Value); err != nil {
		return fmt.Errorf("resource instance %d: %w", r.ID, err)
	}
	return nil
}

func validateValue(t model.ResourceType, v Value) error {
	if !v.IsValid() {
		return errors.New("missing value")
	}
	if v.Type() != t {
		return fmt.Errorf("value of type %v in a %v node", v.Type(), t)
	}
	switch x := v.v.(type) {
	case string:
		if !utf8.ValidString(x) {
			return errors.New("string is not valid UTF-8")
		}
	case CoreLink:
		if !utf8.ValidString(string(x)) {
			return errors.New("core link is not valid UTF-8")
		}
	}
	return nil
}

// Equal reports whether a and b are the same node: same kind, IDs, types
// and values, children compared by ID whatever their order in the slices.
func Equal(a, b Node) bool {
	a, b = deref(a), deref(b)
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	switch x := a.(type) {
	case Object:
		y, ok := b.(Object)
		if !ok || x.ID != y.ID || len(x.Instances) != len(y.Instances) {
			return false
		}
		for _, xi := range x.Instances {
			yi, ok := y.Instance(xi.ID)
			if !ok || !Equal(xi, yi) {
				return false
			}
		}
		return true
	case Instance:
		y, ok := b.(Instance)
		if !ok || x.ID != y.ID || len(x.Resources) != len(y.Resources) {
			return false
		}
		for _, xr := range x.Resources {
			yr, ok := y.Resource(xr.ID)
			if !ok || !Equal(xr, yr) {
				return false
			}
		}
		return true
	case Resource:
		y, ok := b.(Resource)
		if !ok || x.ID != y.ID || x.Type != y.Type || x.Multiple != y.Multiple {
			return false
		}
		if !x.Multiple {
			return x.Value.Equal(y.Value)
		}
		if len(x.Instances) != len(y.Instances) {
			return false
		}
		for id, xv := range x.Instances {
			yv, ok := y.Instances[id]
			if !ok || !xv.Equal(yv) {
				return false
			}
		}
		return true
	case ResourceInstance:
		y, ok := b.(ResourceInstance)
		return ok && x.ID == y.ID && x.Type == y.Type && x.Value.Equal(y.Value)
	}
	return false
}

// deref turns pointers to nodes into nodes.
func deref(n Node) Node {
	switch p := n.(type) {
	case *Object:
		if p == nil {
			return nil
		}
		return *p
	case *Instance:
		if p == nil {
			return nil
		}
		return *p
	case *Resource:
		if p == nil {
			return nil
		}
		return *p
	case *ResourceInstance:
		if p == nil {
			return nil
		}
		return *p
	}
	return n
}

// Sort orders the children of n by ID, recursively, in place. Decoders
// return sorted nodes; Sort is for nodes built by hand.
func Sort(n Node) {
	switch n := n.(type) {
	case Object:
		sortObject(&n)
	case *Object:
		sortObject(n)
	case Instance:
		sortInstance(&n)
	case *Instance:
		sortInstance(n)
	}
}

func sortObject(o *Object) {
	sort.Slice(o.Instances, func(i, j int) bool { return o.Instances[i].ID < o.Instances[j].ID })
	for i := range o.Instances {
		sortInstance(&o.Instances[i])
	}
}

func sortInstance(i *Instance) {
	sort.Slice(i.Resources, func(a, b int) bool { return i.Resources[a].ID < i.Resources[b].ID })
}

// PathOf returns the path of node n addressed at p: p itself if p is at
// n's level and ends with n's ID, or p's child n.NodeID() if p is n's
// parent. Any other combination is an error. It lets callers check that a
// node matches the path of a request.
func PathOf(parent Path, n Node) (Path, error) {
	n = deref(n)
	if n == nil {
		return Path{}, fmt.Errorf("node: %w: nil node", ErrInvalidNode)
	}
	lvl := n.Kind().Level()
	switch {
	case parent.Level() == lvl && parent.Last() == n.NodeID():
		return parent, nil
	case parent.Level()+1 == lvl:
		return parent.Child(n.NodeID())
	}
	return Path{}, fmt.Errorf("node: %w: %v %d does not belong at %s", ErrInvalidNode, n.Kind(), n.NodeID(), parent)
}

// isFinite reports whether f can be written as JSON.
func isFinite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
