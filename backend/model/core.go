package model

// The core objects of LwM2M 1.1, transcribed from the OMA definitions that
// LwM2M 1.1 references: Security 1.1 (LWM2M_Security-v1_1), Server 1.1,
// Access Control 1.0, Device 1.1, Connectivity Monitoring 1.2, Firmware
// Update 1.0, Location 1.0 and Connectivity Statistics 1.0. Descriptions
// are left out; Units are those of the definitions, with the unit of a few
// resources that the definitions give only in prose (mV, mA, KB, dBm).

const (
	single    = false
	multiple  = true
	mandatory = true
	optional  = false
)

type resDef struct {
	id        uint16
	name      string
	ops       Operations
	multiple  bool
	mandatory bool
	typ       ResourceType
	units     string
}

func newObject(id uint16, name, urn, version string, multi, mand bool, defs []resDef) *Object {
	o := &Object{
		ID:        id,
		Name:      name,
		URN:       urn,
		Version:   version,
		Multiple:  multi,
		Mandatory: mand,
		Resources: make(map[uint16]Resource, len(defs)),
	}
	for _, d := range defs {
		o.Resources[d.id] = Resource{
			ID:         d.id,
			Name:       d.name,
			Operations: d.ops,
			Multiple:   d.multiple,
			Mandatory:  d.mandatory,
			Type:       d.typ,
			Units:      d.units,
		}
	}
	return o
}

func coreObjects() []*Object {
	return []*Object{
		newObject(0, "LWM2M Security", "urn:oma:lwm2m:oma:0:1.1", "1.1", multiple, mandatory, []resDef{
			{0, "LWM2M Server URI", OpNone, single, mandatory, TypeString, ""},
			{1, "Bootstrap-Server", OpNone, single, mandatory, TypeBoolean, ""},
			{2, "Security Mode", OpNone, single, mandatory, TypeInteger, ""},
			{3, "Public Key or Identity", OpNone, single, mandatory, TypeOpaque, ""},
			{4, "Server Public Key", OpNone, single, mandatory, TypeOpaque, ""},
			{5, "Secret Key", OpNone, single, mandatory, TypeOpaque, ""},
			{6, "SMS Security Mode", OpNone, single, optional, TypeInteger, ""},
			{7, "SMS Binding Key Parameters", OpNone, single, optional, TypeOpaque, ""},
			{8, "SMS Binding Secret Key(s)", OpNone, single, optional, TypeOpaque, ""},
			{9, "LwM2M Server SMS Number", OpNone, single, optional, TypeString, ""},
			{10, "Short Server ID", OpNone, single, optional, TypeInteger, ""},
			{11, "Client Hold Off Time", OpNone, single, optional, TypeInteger, "s"},
			{12, "Bootstrap-Server Account Timeout", OpNone, single, optional, TypeInteger, "s"},
			{13, "Matching Type", OpNone, single, optional, TypeUnsigned, ""},
			{14, "SNI", OpNone, single, optional, TypeString, ""},
			{15, "Certificate Usage", OpNone, single, optional, TypeInteger, ""},
			{16, "DTLS/TLS Ciphersuite", OpNone, multiple, optional, TypeInteger, ""},
			{17, "OSCORE Security Mode", OpNone, single, optional, TypeObjlnk, ""},
		}),
		newObject(1, "LwM2M Server", "urn:oma:lwm2m:oma:1:1.1", "1.1", multiple, mandatory, []resDef{
			{0, "Short Server ID", OpRead, single, mandatory, TypeInteger, ""},
			{1, "Lifetime", OpReadWrite, single, mandatory, TypeInteger, "s"},
			{2, "Default Minimum Period", OpReadWrite, single, optional, TypeInteger, "s"},
			{3, "Default Maximum Period", OpReadWrite, single, optional, TypeInteger, "s"},
			{4, "Disable", OpExecute, single, optional, TypeNone, ""},
			{5, "Disable Timeout", OpReadWrite, single, optional, TypeInteger, "s"},
			{6, "Notification Storing When Disabled or Offline", OpReadWrite, single, mandatory, TypeBoolean, ""},
			{7, "Binding", OpReadWrite, single, mandatory, TypeString, ""},
			{8, "Registration Update Trigger", OpExecute, single, mandatory, TypeNone, ""},
			{9, "Bootstrap-Request Trigger", OpExecute, single, optional, TypeNone, ""},
			{10, "APN Link", OpReadWrite, single, optional, TypeObjlnk, ""},
			{11, "TLS-DTLS Alert Code", OpRead, single, optional, TypeUnsigned, ""},
			{12, "Last Bootstrapped", OpRead, single, optional, TypeTime, ""},
			{13, "Registration Priority Order", OpReadWrite, single, optional, TypeUnsigned, ""},
			{14, "Initial Registration Delay Timer", OpReadWrite, single, optional, TypeUnsigned, "s"},
			{15, "Registration Failure Block", OpReadWrite, single, optional, TypeBoolean, ""},
			{16, "Bootstrap on Registration Failure", OpReadWrite, single, optional, TypeBoolean, ""},
			{17, "Communication Retry Count", OpReadWrite, single, optional, TypeUnsigned, ""},
			{18, "Communication Retry Timer", OpReadWrite, single, optional, TypeUnsigned, "s"},
			{19, "Communication Sequence Delay Timer", OpReadWrite, single, optional, TypeUnsigned, "s"},
			{20, "Communication Sequence Retry Count", OpReadWrite, single, optional, TypeUnsigned, ""},
			{21, "Trigger", OpReadWrite, single, optional, TypeBoolean, ""},
			{22, "Preferred Transport", OpReadWrite, single, optional, TypeString, ""},
			{23, "Mute Send", OpReadWrite, single, optional, TypeBoolean, ""},
		}),
		newObject(2, "LwM2M Access Control", "urn:oma:lwm2m:oma:2", "1.0", multiple, optional, []resDef{
			{0, "Object ID", OpRead, single, mandatory, TypeInteger, ""},
			{1, "Object Instance ID", OpRead, single, mandatory, TypeInteger, ""},
			{2, "ACL", OpReadWrite, multiple, optional, TypeInteger, ""},
			{3, "Access Control Owner", OpReadWrite, single, mandatory, TypeInteger, ""},
		}),
		newObject(3, "Device", "urn:oma:lwm2m:oma:3:1.1", "1.1", single, mandatory, []resDef{
			{0, "Manufacturer", OpRead, single, optional, TypeString, ""},
			{1, "Model Number", OpRead, single, optional, TypeString, ""},
			{2, "Serial Number", OpRead, single, optional, TypeString, ""},
			{3, "Firmware Version", OpRead, single, optional, TypeString, ""},
			{4, "Reboot", OpExecute, single, mandatory, TypeNone, ""},
			{5, "Factory Reset", OpExecute, single, optional, TypeNone, ""},
			{6, "Available Power Sources", OpRead, multiple, optional, TypeInteger, ""},
			{7, "Power Source Voltage", OpRead, multiple, optional, TypeInteger, "mV"},
			{8, "Power Source Current", OpRead, multiple, optional, TypeInteger, "mA"},
			{9, "Battery Level", OpRead, single, optional, TypeInteger, "%"},
			{10, "Memory Free", OpRead, single, optional, TypeInteger, "KB"},
			{11, "Error Code", OpRead, multiple, mandatory, TypeInteger, ""},
			{12, "Reset Error Code", OpExecute, single, optional, TypeNone, ""},
			{13, "Current Time", OpReadWrite, single, optional, TypeTime, ""},
			{14, "UTC Offset", OpReadWrite, single, optional, TypeString, ""},
			{15, "Timezone", OpReadWrite, single, optional, TypeString, ""},
			{16, "Supported Binding and Modes", OpRead, single, mandatory, TypeString, ""},
			{17, "Device Type", OpRead, single, optional, TypeString, ""},
			{18, "Hardware Version", OpRead, single, optional, TypeString, ""},
			{19, "Software Version", OpRead, single, optional, TypeString, ""},
			{20, "Battery Status", OpRead, single, optional, TypeInteger, ""},
			{21, "Memory Total", OpRead, single, optional, TypeInteger, "KB"},
			{22, "ExtDevInfo", OpRead, multiple, optional, TypeObjlnk, ""},
		}),
		newObject(4, "Connectivity Monitoring", "urn:oma:lwm2m:oma:4:1.2", "1.2", single, optional, []resDef{
			{0, "Network Bearer", OpRead, single, mandatory, TypeInteger, ""},
			{1, "Available Network Bearer", OpRead, multiple, mandatory, TypeInteger, ""},
			{2, "Radio Signal Strength", OpRead, single, mandatory, TypeInteger, "dBm"},
			{3, "Link Quality", OpRead, single, optional, TypeInteger, ""},
			{4, "IP Addresses", OpRead, multiple, mandatory, TypeString, ""},
			{5, "Router IP Addresses", OpRead, multiple, optional, TypeString, ""},
			{6, "Link Utilization", OpRead, single, optional, TypeInteger, "%"},
			{7, "APN", OpRead, multiple, optional, TypeString, ""},
			{8, "Cell ID", OpRead, single, optional, TypeInteger, ""},
			{9, "SMNC", OpRead, single, optional, TypeInteger, ""},
			{10, "SMCC", OpRead, single, optional, TypeInteger, ""},
			{11, "SignalSNR", OpRead, single, optional, TypeInteger, "dB"},
			{12, "LAC", OpRead, single, optional, TypeInteger, ""},
		}),
		newObject(5, "Firmware Update", "urn:oma:lwm2m:oma:5", "1.0", single, optional, []resDef{
			{0, "Package", OpWrite, single, mandatory, TypeOpaque, ""},
			{1, "Package URI", OpReadWrite, single, mandatory, TypeString, ""},
			{2, "Update", OpExecute, single, mandatory, TypeNone, ""},
			{3, "State", OpRead, single, mandatory, TypeInteger, ""},
			{5, "Update Result", OpRead, single, mandatory, TypeInteger, ""},
			{6, "PkgName", OpRead, single, optional, TypeString, ""},
			{7, "PkgVersion", OpRead, single, optional, TypeString, ""},
			{8, "Firmware Update Protocol Support", OpRead, multiple, optional, TypeInteger, ""},
			{9, "Firmware Update Delivery Method", OpRead, single, mandatory, TypeInteger, ""},
		}),
		newObject(6, "Location", "urn:oma:lwm2m:oma:6", "1.0", single, optional, []resDef{
			{0, "Latitude", OpRead, single, mandatory, TypeFloat, "lat"},
			{1, "Longitude", OpRead, single, mandatory, TypeFloat, "lon"},
			{2, "Altitude", OpRead, single, optional, TypeFloat, "m"},
			{3, "Radius", OpRead, single, optional, TypeFloat, "m"},
			{4, "Velocity", OpRead, single, optional, TypeOpaque, ""},
			{5, "Timestamp", OpRead, single, mandatory, TypeTime, ""},
			{6, "Speed", OpRead, single, optional, TypeFloat, "m/s"},
		}),
		newObject(7, "Connectivity Statistics", "urn:oma:lwm2m:oma:7", "1.0", single, optional, []resDef{
			{0, "SMS Tx Counter", OpRead, single, optional, TypeInteger, ""},
			{1, "SMS Rx Counter", OpRead, single, optional, TypeInteger, ""},
			{2, "Tx Data", OpRead, single, optional, TypeInteger, "KB"},
			{3, "Rx Data", OpRead, single, optional, TypeInteger, "KB"},
			{4, "Max Message Size", OpRead, single, optional, TypeInteger, "B"},
			{5, "Average Message Size", OpRead, single, optional, TypeInteger, "B"},
			{6, "Start", OpExecute, single, mandatory, TypeNone, ""},
			{7, "Stop", OpExecute, single, mandatory, TypeNone, ""},
			{8, "Collection Period", OpReadWrite, single, optional, TypeInteger, "s"},
		}),
	}
}
