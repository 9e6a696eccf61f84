package simdevice

import (
	"sync"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// Temperature resource IDs (IPSO object 3303).
const (
	TempMinMeasured = 5601
	TempMaxMeasured = 5602
	TempResetMinMax = 5605
	TempSensorValue = 5700
	TempUnits       = 5701
	TempAppType     = 5750
)

// TemperatureObject returns the definition of IPSO object 3303
// (Temperature) with the resources the simulated device implements. A server
// that talks to the device can add it to its own registry.
func TemperatureObject() *model.Object {
	res := func(id uint16, name string, ops model.Operations, t model.ResourceType, units string) model.Resource {
		return model.Resource{ID: id, Name: name, Operations: ops, Type: t, Units: units}
	}
	o := &model.Object{
		ID:       3303,
		Name:     "Temperature",
		URN:      "urn:oma:lwm2m:ext:3303:1.1",
		Version:  "1.1",
		Multiple: true,
		Resources: map[uint16]model.Resource{
			TempMinMeasured: res(TempMinMeasured, "Min Measured Value", model.OpRead, model.TypeFloat, ""),
			TempMaxMeasured: res(TempMaxMeasured, "Max Measured Value", model.OpRead, model.TypeFloat, ""),
			TempResetMinMax: res(TempResetMinMax, "Reset Min and Max Measured Values", model.OpExecute, model.TypeNone, ""),
			TempSensorValue: res(TempSensorValue, "Sensor Value", model.OpRead, model.TypeFloat, ""),
			TempUnits:       res(TempUnits, "Sensor Units", model.OpRead, model.TypeString, ""),
			TempAppType:     res(TempAppType, "Application Type", model.OpReadWrite, model.TypeString, ""),
			5518:            res(5518, "Timestamp", model.OpRead, model.TypeTime, ""),
		},
	}
	sv := o.Resources[TempSensorValue]
	sv.Mandatory = true
	o.Resources[TempSensorValue] = sv
	return o
}

// Registry returns a new registry with the LwM2M core objects (0 to 7) and
// object 3303, the objects of the default device.
func Registry() *model.Registry {
	r := model.Default()
	if err := r.Add(TemperatureObject()); err != nil {
		// TemperatureObject is a constant definition; Add only fails on
		// invalid IDs or types.
		panic("simdevice: invalid object 3303: " + err.Error())
	}
	return r
}

// sharedRegistry is the read-only registry of the devices configured
// without one.
var sharedRegistry = sync.OnceValue(Registry)

// DefaultObjects returns the initial data of a device: Security /0/0 (never
// readable by the server), Server /1/0, Device /3/0 and two Temperature
// instances /3303/0 and /3303/1.
func DefaultObjects(endpoint, serverURI string, lifetime time.Duration, binding string) []node.Object {
	s := node.StringValue
	i := node.IntValue
	f := node.FloatValue
	now := time.Now()
	temp := func(id uint16, v float64) node.Instance {
		return node.Instance{ID: id, Resources: []node.Resource{
			node.NewSingle(TempMinMeasured, f(v)),
			node.NewSingle(TempMaxMeasured, f(v)),
			node.NewSingle(TempSensorValue, f(v)),
			node.NewSingle(TempUnits, s("Cel")),
			node.NewSingle(TempAppType, s("room")),
		}}
	}
	return []node.Object{
		{ID: 0, Instances: []node.Instance{{ID: 0, Resources: []node.Resource{
			node.NewSingle(0, s(serverURI)),
			node.NewSingle(1, node.BoolValue(false)),
			node.NewSingle(2, i(3)), // NoSec
			node.NewSingle(3, node.OpaqueValue(nil)),
			node.NewSingle(4, node.OpaqueValue(nil)),
			node.NewSingle(5, node.OpaqueValue(nil)),
			node.NewSingle(10, i(1)),
		}}}},
		{ID: 1, Instances: []node.Instance{{ID: 0, Resources: []node.Resource{
			node.NewSingle(0, i(1)),
			node.NewSingle(1, i(int64(lifetime/time.Second))),
			node.NewSingle(2, i(0)),
			node.NewSingle(3, i(0)),
			node.NewSingle(6, node.BoolValue(false)),
			node.NewSingle(7, s(binding)),
		}}}},
		{ID: 3, Instances: []node.Instance{{ID: 0, Resources: []node.Resource{
			node.NewSingle(0, s("lwm2mcluster")),
			node.NewSingle(1, s("simdevice")),
			node.NewSingle(2, s("SN-"+endpoint)),
			node.NewSingle(3, s("1.0.0")),
			node.NewMultiple(6, model.TypeInteger, map[uint16]node.Value{0: i(1), 1: i(5)}),
			node.NewMultiple(11, model.TypeInteger, map[uint16]node.Value{0: i(0)}),
			node.NewSingle(13, node.TimeValue(now)),
			node.NewSingle(14, s("+00:00")),
			node.NewSingle(15, s("UTC")),
			node.NewSingle(16, s(binding)),
		}}}},
		{ID: 3303, Instances: []node.Instance{temp(0, 21.5), temp(1, 19.25)}},
	}
}
