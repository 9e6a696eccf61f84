package model

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestDefaultCoreResources(t *testing.T) {
	r := Default()
	tests := []struct {
		obj, res uint16
		name     string
		ops      Operations
		multiple bool
		typ      ResourceType
	}{
		{0, 0, "LWM2M Server URI", OpNone, false, TypeString},
		{0, 3, "Public Key or Identity", OpNone, false, TypeOpaque},
		{0, 10, "Short Server ID", OpNone, false, TypeInteger},
		{0, 17, "OSCORE Security Mode", OpNone, false, TypeObjlnk},
		{1, 0, "Short Server ID", OpRead, false, TypeInteger},
		{1, 1, "Lifetime", OpReadWrite, false, TypeInteger},
		{1, 4, "Disable", OpExecute, false, TypeNone},
		{1, 7, "Binding", OpReadWrite, false, TypeString},
		{1, 8, "Registration Update Trigger", OpExecute, false, TypeNone},
		{1, 11, "TLS-DTLS Alert Code", OpRead, false, TypeUnsigned},
		{1, 12, "Last Bootstrapped", OpRead, false, TypeTime},
		{1, 23, "Mute Send", OpReadWrite, false, TypeBoolean},
		{2, 2, "ACL", OpReadWrite, true, TypeInteger},
		{3, 0, "Manufacturer", OpRead, false, TypeString},
		{3, 4, "Reboot", OpExecute, false, TypeNone},
		{3, 6, "Available Power Sources", OpRead, true, TypeInteger},
		{3, 11, "Error Code", OpRead, true, TypeInteger},
		{3, 13, "Current Time", OpReadWrite, false, TypeTime},
		{3, 16, "Supported Binding and Modes", OpRead, false, TypeString},
		{3, 22, "ExtDevInfo", OpRead, true, TypeObjlnk},
		{4, 4, "IP Addresses", OpRead, true, TypeString},
		{5, 0, "Package", OpWrite, false, TypeOpaque},
		{5, 2, "Update", OpExecute, false, TypeNone},
		{5, 8, "Firmware Update Protocol Support", OpRead, true, TypeInteger},
		{6, 0, "Latitude", OpRead, false, TypeFloat},
		{6, 4, "Velocity", OpRead, false, TypeOpaque},
		{6, 5, "Timestamp", OpRead, false, TypeTime},
		{7, 6, "Start", OpExecute, false, TypeNone},
		{7, 8, "Collection Period", OpReadWrite, false, TypeInteger},
	}
	for _, tt := range tests {
		res, ok := r.Resource(tt.obj, tt.res)
		if !ok {
			t.Errorf("/%d/x/%d: not found", tt.obj, tt.res)
			continue
		}
		if res.ID != tt.res || res.Name != tt.name || res.Operations != tt.ops ||
			res.Multiple != tt.multiple || res.Type != tt.typ {
			t.Errorf("/%d/x/%d = %+v, want name %q ops %v multiple %v type %v",
				tt.obj, tt.res, *res, tt.name, tt.ops, tt.multiple, tt.typ)
		}
	}

	counts := map[uint16]int{0: 18, 1: 24, 2: 4, 3: 23, 4: 13, 5: 9, 6: 7, 7: 9}
	for id, n := range counts {
		o, ok := r.Object(id)
		if !ok {
			t.Fatalf("object %d missing", id)
		}
		if len(o.Resources) != n {
			t.Errorf("object %d has %d resources, want %d", id, len(o.Resources), n)
		}
		for rid, res := range o.Resources {
			if rid != res.ID {
				t.Errorf("object %d: resource key %d has ID %d", id, rid, res.ID)
			}
			if (res.Operations == OpExecute) != (res.Type == TypeNone) {
				t.Errorf("/%d/%d: operations %v with type %v", id, rid, res.Operations, res.Type)
			}
		}
	}
	if _, ok := r.Resource(5, 4); ok {
		t.Error("/5/x/4 exists; it was removed from Firmware Update 1.0")
	}
	if o, _ := r.Object(3); o.Multiple || !o.Mandatory || o.URN != "urn:oma:lwm2m:oma:3:1.1" {
		t.Errorf("device object = %+v", o)
	}
	if o, _ := r.Object(0); !o.Multiple {
		t.Error("security object should be multiple")
	}
	if len(r.Objects()) != 8 {
		t.Errorf("Objects() returned %d objects", len(r.Objects()))
	}
}

func TestDefaultIsFresh(t *testing.T) {
	a, b := Default(), Default()
	if err := a.Add(&Object{ID: 3, Name: "replaced"}); err != nil {
		t.Fatal(err)
	}
	if o, _ := b.Object(3); o.Name != "Device" {
		t.Fatalf("Default registries share state: %q", o.Name)
	}
}

func TestLoadDDF(t *testing.T) {
	r := Default()
	f, err := os.Open(filepath.Join("testdata", "3303.xml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.LoadDDF(f); err != nil {
		t.Fatal(err)
	}
	o, ok := r.Object(3303)
	if !ok {
		t.Fatal("object 3303 not loaded")
	}
	if o.Name != "Temperature" || o.Version != "1.1" || !o.Multiple || o.Mandatory ||
		o.URN != "urn:oma:lwm2m:ext:3303:1.1" || len(o.Resources) != 8 {
		t.Errorf("object = %+v", o)
	}
	want := map[uint16]Resource{
		5700: {ID: 5700, Name: "Sensor Value", Operations: OpRead, Mandatory: true, Type: TypeFloat, Units: "Cel",
			Description: "Last or Current Measured Value from the Sensor."},
		5605: {ID: 5605, Name: "Reset Min and Max Measured Values", Operations: OpExecute, Type: TypeNone,
			Description: "Reset the Min and Max Measured Values to Current Value."},
		6042: {ID: 6042, Name: "Measurement Quality Indicator", Operations: OpRead, Multiple: true, Type: TypeUnsigned,
			Description: "Measurement quality indicators."},
		6050: {ID: 6050, Name: "Link", Operations: OpRead, Type: TypeCorelnk, Description: "A CoRE link."},
		5518: {ID: 5518, Name: "Timestamp", Operations: OpRead, Type: TypeTime,
			Description: "The timestamp of when the measurement was performed."},
	}
	for id, w := range want {
		got, ok := r.Resource(3303, id)
		if !ok || *got != w {
			t.Errorf("resource %d = %+v, want %+v", id, got, w)
		}
	}
	// The core objects are still there.
	if _, ok := r.Resource(3, 0); !ok {
		t.Error("core object lost")
	}
}

func TestLoadDDFDir(t *testing.T) {
	dir := t.TempDir()
	src, err := os.ReadFile(filepath.Join("testdata", "3303.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "3303.XML"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	other := strings.ReplaceAll(string(src), "<ObjectID>3303</ObjectID>", "<ObjectID>3304</ObjectID>")
	if err := os.WriteFile(filepath.Join(dir, "3304.xml"), []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not xml"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := NewRegistry()
	if err := r.LoadDDFDir(dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint16{3303, 3304} {
		if _, ok := r.Object(id); !ok {
			t.Errorf("object %d not loaded", id)
		}
	}

	// A bad file makes the whole directory fail and adds nothing.
	if err := os.WriteFile(filepath.Join(dir, "bad.xml"), []byte("<LWM2M><Object><ObjectID>x</ObjectID></Object></LWM2M>"), 0o644); err != nil {
		t.Fatal(err)
	}
	r2 := NewRegistry()
	err = r2.LoadDDFDir(dir)
	if !errors.Is(err, ErrDDF) || !strings.Contains(err.Error(), "bad.xml") {
		t.Fatalf("err = %v", err)
	}
	if len(r2.Objects()) != 0 {
		t.Error("objects added despite error")
	}
}

func TestLoadDDFErrors(t *testing.T) {
	item := func(id, ops, multi, typ string) string {
		return `<Item ID="` + id + `"><Name>x</Name><Operations>` + ops + `</Operations><MultipleInstances>` + multi +
			`</MultipleInstances><Mandatory>Optional</Mandatory><Type>` + typ + `</Type></Item>`
	}
	obj := func(id, items string) string {
		return `<LWM2M><Object ObjectType="MODefinition"><Name>o</Name><ObjectID>` + id +
			`</ObjectID><MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory><Resources>` +
			items + `</Resources></Object></LWM2M>`
	}
	bad := map[string]string{
		"not xml":        "hello",
		"no object":      "<LWM2M></LWM2M>",
		"wrong root":     "<Foo/>",
		"object id":      obj("65535", ""),
		"object id text": obj("three", ""),
		"resource id":    obj("1000", item("-1", "R", "Single", "String")),
		"duplicate":      obj("1000", item("1", "R", "Single", "String")+item("1", "R", "Single", "String")),
		"operations":     obj("1000", item("1", "RWX", "Single", "String")),
		"multiplicity":   obj("1000", item("1", "R", "Many", "String")),
		"type":           obj("1000", item("1", "R", "Single", "Double")),
		"charset":        `<?xml version="1.0" encoding="ISO-8859-1"?>` + obj("1000", ""),
		"two objects":    strings.Replace(obj("1000", ""), "</LWM2M>", `<Object><Name>o</Name><ObjectID>1000</ObjectID><MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory></Object></LWM2M>`, 1),
	}
	for name, doc := range bad {
		r := NewRegistry()
		err := r.LoadDDF(strings.NewReader(doc))
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if !errors.Is(err, ErrDDF) {
			t.Errorf("%s: error %v does not wrap ErrDDF", name, err)
		}
		if len(r.Objects()) != 0 {
			t.Errorf("%s: objects added despite error", name)
		}
	}
	good := obj("1000", item("1", "", "Multiple", "Unsigned Integer")+item("2", "E", "Single", ""))
	r := NewRegistry()
	if err := r.LoadDDF(strings.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.Resource(1000, 1); res.Type != TypeUnsigned || !res.Multiple || res.Operations != OpNone {
		t.Errorf("resource = %+v", res)
	}
}

func TestTooLargeDDF(t *testing.T) {
	big := "<LWM2M>" + strings.Repeat(" ", MaxDDFSize) + "</LWM2M>"
	err := NewRegistry().LoadDDF(strings.NewReader(big))
	if !errors.Is(err, ErrDDF) {
		t.Fatalf("err = %v", err)
	}
}

func TestAddValidatesAndCopies(t *testing.T) {
	r := NewRegistry()
	if err := r.Add(&Object{ID: 65535}); err == nil {
		t.Error("object 65535 accepted")
	}
	if err := r.Add(&Object{ID: 1, Resources: map[uint16]Resource{1: {ID: 2}}}); err == nil {
		t.Error("mismatched resource key accepted")
	}
	if err := r.Add(&Object{ID: 1, Resources: map[uint16]Resource{1: {ID: 1, Type: 200}}}); err == nil {
		t.Error("invalid type accepted")
	}
	o := &Object{ID: 9, Resources: map[uint16]Resource{1: {ID: 1, Type: TypeString}}}
	if err := r.Add(o); err != nil {
		t.Fatal(err)
	}
	o.Resources[2] = Resource{ID: 2}
	if got, _ := r.Object(9); len(got.Resources) != 1 {
		t.Error("Add did not copy the object")
	}
	var nilReg *Registry
	if _, ok := nilReg.Object(3); ok {
		t.Error("nil registry found an object")
	}
	if _, ok := nilReg.Resource(3, 0); ok {
		t.Error("nil registry found a resource")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := Default()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				r.Resource(3, 0)
				r.Objects()
			}
		}()
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				_ = r.Add(&Object{ID: uint16(1000 + i)})
			}
		}(i)
	}
	wg.Wait()
}

func TestTypeAndOperationNames(t *testing.T) {
	for typ := TypeNone; typ <= TypeCorelnk; typ++ {
		b, err := typ.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back ResourceType
		if err := back.UnmarshalText(b); err != nil || back != typ {
			t.Errorf("%v: round trip gave %v, %v", typ, back, err)
		}
	}
	if _, err := ResourceType(99).MarshalText(); err == nil {
		t.Error("invalid type marshaled")
	}
	if _, err := ParseResourceType("String"); err == nil {
		t.Error("type names are case-sensitive")
	}
	for _, ops := range []Operations{OpNone, OpRead, OpWrite, OpReadWrite, OpExecute} {
		back, err := ParseOperations(ops.String())
		if err != nil || back != ops {
			t.Errorf("%v: round trip gave %v, %v", ops, back, err)
		}
	}
	if !OpReadWrite.Readable() || !OpReadWrite.Writable() || OpReadWrite.Executable() || !OpExecute.Executable() {
		t.Error("operation predicates wrong")
	}
}
