package model

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// MaxDDFSize is the largest DDF document LoadDDF reads, in bytes. The
// largest definitions of the OMA registry are a few hundred kilobytes.
const MaxDDFSize = 8 << 20

// ErrDDF is wrapped by the errors LoadDDF returns for documents that are
// not well-formed DDF.
var ErrDDF = errors.New("invalid DDF")

// The XML shape of an OMA Device Description File (LWM2M-v1_1.xsd). Only the
// elements the registry uses are mapped; the rest are ignored.
type ddfDoc struct {
	XMLName xml.Name    `xml:"LWM2M"`
	Objects []ddfObject `xml:"Object"`
}

type ddfObject struct {
	ObjectType        string    `xml:"ObjectType,attr"`
	Name              string    `xml:"Name"`
	Description1      string    `xml:"Description1"`
	ObjectID          string    `xml:"ObjectID"`
	ObjectURN         string    `xml:"ObjectURN"`
	ObjectVersion     string    `xml:"ObjectVersion"`
	MultipleInstances string    `xml:"MultipleInstances"`
	Mandatory         string    `xml:"Mandatory"`
	Items             []ddfItem `xml:"Resources>Item"`
}

type ddfItem struct {
	ID                string `xml:"ID,attr"`
	Name              string `xml:"Name"`
	Operations        string `xml:"Operations"`
	MultipleInstances string `xml:"MultipleInstances"`
	Mandatory         string `xml:"Mandatory"`
	Type              string `xml:"Type"`
	Units             string `xml:"Units"`
	Description       string `xml:"Description"`
}

// LoadDDF reads one OMA DDF XML document (an <LWM2M> element holding one or
// more <Object ObjectType="MODefinition"> definitions) and adds its objects
// to the registry, replacing definitions with the same IDs. Either every
// object of the document is added or, on error, none is.
func (r *Registry) LoadDDF(rd io.Reader) error {
	objs, err := parseDDF(rd)
	if err != nil {
		return err
	}
	r.addAll(objs)
	return nil
}

// LoadDDFDir loads every file whose name ends in ".xml" (any case) in
// directory dir, in name order, as with LoadDDF. Subdirectories are not
// searched. Either every object is added or, on error, none is.
func (r *Registry) LoadDDFDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("model: load DDF directory: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() && strings.EqualFold(filepath.Ext(e.Name()), ".xml") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var all []*Object
	for _, n := range names {
		objs, err := parseDDFFile(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		all = append(all, objs...)
	}
	r.addAll(all)
	return nil
}

func parseDDFFile(name string) ([]*Object, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	defer f.Close()
	objs, err := parseDDF(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return objs, nil
}

func parseDDF(rd io.Reader) ([]*Object, error) {
	lr := &io.LimitedReader{R: rd, N: MaxDDFSize + 1}
	dec := xml.NewDecoder(lr)
	dec.CharsetReader = func(charset string, input io.Reader) (io.Reader, error) {
		switch strings.ToLower(charset) {
		case "utf-8", "utf8", "us-ascii", "ascii":
			return input, nil
		}
		return nil, fmt.Errorf("unsupported charset %q", charset)
	}
	var doc ddfDoc
	if err := dec.Decode(&doc); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("model: %w: document larger than %d bytes", ErrDDF, MaxDDFSize)
		}
		return nil, fmt.Errorf("model: %w: %w", ErrDDF, err)
	}
	if len(doc.Objects) == 0 {
		return nil, fmt.Errorf("model: %w: no <Object> element", ErrDDF)
	}
	objs := make([]*Object, 0, len(doc.Objects))
	seen := make(map[uint16]bool)
	for i := range doc.Objects {
		o, err := doc.Objects[i].toObject()
		if err != nil {
			return nil, fmt.Errorf("model: %w: %w", ErrDDF, err)
		}
		if seen[o.ID] {
			return nil, fmt.Errorf("model: %w: object %d defined twice", ErrDDF, o.ID)
		}
		seen[o.ID] = true
		objs = append(objs, o)
	}
	return objs, nil
}

func parseID(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n > MaxID {
		return 0, fmt.Errorf("invalid ID %q", s)
	}
	return uint16(n), nil
}

func parseMultiple(s string) (bool, error) {
	switch strings.TrimSpace(s) {
	case "Multiple":
		return true, nil
	case "Single":
		return false, nil
	}
	return false, fmt.Errorf("invalid MultipleInstances %q", s)
}

func parseMandatory(s string) (bool, error) {
	switch strings.TrimSpace(s) {
	case "Mandatory":
		return true, nil
	case "Optional":
		return false, nil
	}
	return false, fmt.Errorf("invalid Mandatory %q", s)
}

// parseDDFType parses the <Type> element. The empty type is that of
// executable resources.
func parseDDFType(s string) (ResourceType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "none":
		return TypeNone, nil
	case "string":
		return TypeString, nil
	case "integer":
		return TypeInteger, nil
	case "unsigned integer":
		return TypeUnsigned, nil
	case "float":
		return TypeFloat, nil
	case "boolean":
		return TypeBoolean, nil
	case "opaque":
		return TypeOpaque, nil
	case "time":
		return TypeTime, nil
	case "objlnk":
		return TypeObjlnk, nil
	case "corelnk":
		return TypeCorelnk, nil
	}
	return TypeNone, fmt.Errorf("invalid Type %q", s)
}

func (d *ddfObject) toObject() (*Object, error) {
	if t := strings.TrimSpace(d.ObjectType); t != "" && t != "MODefinition" {
		return nil, fmt.Errorf("unsupported ObjectType %q", t)
	}
	id, err := parseID(d.ObjectID)
	if err != nil {
		return nil, fmt.Errorf("ObjectID: %w", err)
	}
	o := &Object{
		ID:          id,
		Name:        strings.TrimSpace(d.Name),
		URN:         strings.TrimSpace(d.ObjectURN),
		Version:     strings.TrimSpace(d.ObjectVersion),
		Description: strings.TrimSpace(d.Description1),
		Resources:   make(map[uint16]Resource, len(d.Items)),
	}
	if o.Version == "" {
		o.Version = "1.0"
	}
	if o.Multiple, err = parseMultiple(d.MultipleInstances); err != nil {
		return nil, fmt.Errorf("object %d: %w", id, err)
	}
	if o.Mandatory, err = parseMandatory(d.Mandatory); err != nil {
		return nil, fmt.Errorf("object %d: %w", id, err)
	}
	for _, it := range d.Items {
		rid, err := parseID(it.ID)
		if err != nil {
			return nil, fmt.Errorf("object %d: Item: %w", id, err)
		}
		if _, dup := o.Resources[rid]; dup {
			return nil, fmt.Errorf("object %d: resource %d defined twice", id, rid)
		}
		res := Resource{
			ID:          rid,
			Name:        strings.TrimSpace(it.Name),
			Units:       strings.TrimSpace(it.Units),
			Description: strings.TrimSpace(it.Description),
		}
		if res.Operations, err = ParseOperations(strings.TrimSpace(it.Operations)); err != nil {
			return nil, fmt.Errorf("object %d resource %d: %w", id, rid, err)
		}
		if res.Multiple, err = parseMultiple(it.MultipleInstances); err != nil {
			return nil, fmt.Errorf("object %d resource %d: %w", id, rid, err)
		}
		if res.Mandatory, err = parseMandatory(it.Mandatory); err != nil {
			return nil, fmt.Errorf("object %d resource %d: %w", id, rid, err)
		}
		if res.Type, err = parseDDFType(it.Type); err != nil {
			return nil, fmt.Errorf("object %d resource %d: %w", id, rid, err)
		}
		o.Resources[rid] = res
	}
	return o, nil
}
