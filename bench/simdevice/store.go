package simdevice

import (
	"slices"
	"sort"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// store is the device's data: a tree of objects sorted by ID, each with its
// instances and resources sorted by ID. It is not safe for concurrent use;
// the Device guards it with its mutex.
type store struct {
	objs []node.Object
}

func cloneResource(r node.Resource) node.Resource {
	if r.Multiple {
		m := make(map[uint16]node.Value, len(r.Instances))
		for k, v := range r.Instances {
			m[k] = v
		}
		r.Instances = m
	}
	return r
}

func cloneInstance(in node.Instance) node.Instance {
	rs := make([]node.Resource, len(in.Resources))
	for i, r := range in.Resources {
		rs[i] = cloneResource(r)
	}
	in.Resources = rs
	return in
}

func cloneObject(o node.Object) node.Object {
	ins := make([]node.Instance, len(o.Instances))
	for i, in := range o.Instances {
		ins[i] = cloneInstance(in)
	}
	o.Instances = ins
	return o
}

func (s *store) objectIndex(id uint16) int {
	for i := range s.objs {
		if s.objs[i].ID == id {
			return i
		}
	}
	return -1
}

func (s *store) object(id uint16) *node.Object {
	if i := s.objectIndex(id); i >= 0 {
		return &s.objs[i]
	}
	return nil
}

func (s *store) instance(oid, iid uint16) *node.Instance {
	o := s.object(oid)
	if o == nil {
		return nil
	}
	for i := range o.Instances {
		if o.Instances[i].ID == iid {
			return &o.Instances[i]
		}
	}
	return nil
}

func (s *store) resource(oid, iid, rid uint16) *node.Resource {
	in := s.instance(oid, iid)
	if in == nil {
		return nil
	}
	for i := range in.Resources {
		if in.Resources[i].ID == rid {
			return &in.Resources[i]
		}
	}
	return nil
}

// get returns a copy of the node at p, or false if there is none. The root
// is not a node.
func (s *store) get(p node.Path) (node.Node, bool) {
	switch p.Level() {
	case node.LevelObject:
		if o := s.object(p.ObjectID()); o != nil {
			return cloneObject(*o), true
		}
	case node.LevelInstance:
		if in := s.instance(p.ObjectID(), p.InstanceID()); in != nil {
			return cloneInstance(*in), true
		}
	case node.LevelResource:
		if r := s.resource(p.ObjectID(), p.InstanceID(), p.ResourceID()); r != nil {
			return cloneResource(*r), true
		}
	case node.LevelResourceInstance:
		r := s.resource(p.ObjectID(), p.InstanceID(), p.ResourceID())
		if r == nil || !r.Multiple {
			return nil, false
		}
		if v, ok := r.Instances[p.ResourceInstanceID()]; ok {
			return node.ResourceInstance{ID: p.ResourceInstanceID(), Type: r.Type, Value: v}, true
		}
	}
	return nil, false
}

// exists reports whether there is a node at p.
func (s *store) exists(p node.Path) bool {
	switch p.Level() {
	case node.LevelObject:
		return s.object(p.ObjectID()) != nil
	case node.LevelInstance:
		return s.instance(p.ObjectID(), p.InstanceID()) != nil
	case node.LevelResource:
		return s.resource(p.ObjectID(), p.InstanceID(), p.ResourceID()) != nil
	case node.LevelResourceInstance:
		r := s.resource(p.ObjectID(), p.InstanceID(), p.ResourceID())
		if r == nil || !r.Multiple {
			return false
		}
		_, ok := r.Instances[p.ResourceInstanceID()]
		return ok
	}
	return false
}

// setResource adds or replaces resource r of instance in.
func setResource(in *node.Instance, r node.Resource) {
	for i := range in.Resources {
		if in.Resources[i].ID == r.ID {
			in.Resources[i] = r
			return
		}
	}
	in.Resources = append(in.Resources, r)
	sort.Slice(in.Resources, func(i, j int) bool { return in.Resources[i].ID < in.Resources[j].ID })
}

// removeResource removes resource id of instance in.
func removeResource(in *node.Instance, id uint16) {
	in.Resources = slices.DeleteFunc(in.Resources, func(r node.Resource) bool { return r.ID == id })
}

// putInstance adds or replaces an instance of an existing object.
func (s *store) putInstance(oid uint16, in node.Instance) bool {
	o := s.object(oid)
	if o == nil {
		return false
	}
	for i := range o.Instances {
		if o.Instances[i].ID == in.ID {
			o.Instances[i] = in
			return true
		}
	}
	o.Instances = append(o.Instances, in)
	sort.Slice(o.Instances, func(i, j int) bool { return o.Instances[i].ID < o.Instances[j].ID })
	return true
}

// deleteInstance removes an instance; it reports whether it existed.
func (s *store) deleteInstance(oid, iid uint16) bool {
	o := s.object(oid)
	if o == nil {
		return false
	}
	n := len(o.Instances)
	o.Instances = slices.DeleteFunc(o.Instances, func(in node.Instance) bool { return in.ID == iid })
	return len(o.Instances) != n
}

// freeInstanceID returns the lowest unused instance ID of object oid.
func (s *store) freeInstanceID(oid uint16) (uint16, bool) {
	o := s.object(oid)
	if o == nil {
		return 0, false
	}
	used := make(map[uint16]bool, len(o.Instances))
	for _, in := range o.Instances {
		used[in.ID] = true
	}
	for id := uint16(0); id <= node.MaxID; id++ {
		if !used[id] {
			return id, true
		}
	}
	return 0, false
}

// resourceWritable reports whether the model lets the server write resource
// rid of object oid. Unknown resources are writable.
func resourceWritable(reg *model.Registry, oid, rid uint16) bool {
	def, ok := reg.Resource(oid, rid)
	return !ok || def.Operations.Writable()
}

// resourceReadable reports whether the model lets the server read resource
// rid of object oid. Unknown resources are readable.
func resourceReadable(reg *model.Registry, oid, rid uint16) bool {
	def, ok := reg.Resource(oid, rid)
	return !ok || def.Operations.Readable()
}

// resourceExecutable reports whether resource rid of object oid is
// executable in the model.
func resourceExecutable(reg *model.Registry, oid, rid uint16) bool {
	def, ok := reg.Resource(oid, rid)
	return ok && def.Operations.Executable()
}
