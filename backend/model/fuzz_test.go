package model

import (
	"bytes"
	"os"
	"testing"
)

// FuzzLoadDDF: any document either loads whole or is refused whole; it
// never panics, and what loads has valid IDs.
func FuzzLoadDDF(f *testing.F) {
	if b, err := os.ReadFile("testdata/3303.xml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`<LWM2M><Object ObjectType="MODefinition"><ObjectID>9</ObjectID><Resources><Item ID="1"><Type>String</Type></Item></Resources></Object></LWM2M>`))
	f.Add([]byte(`<LWM2M><Object>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewRegistry()
		if err := r.LoadDDF(bytes.NewReader(data)); err != nil {
			if len(r.Objects()) != 0 {
				t.Fatalf("a refused document added %d objects", len(r.Objects()))
			}
			return
		}
		for _, o := range r.Objects() {
			if o.ID > MaxID {
				t.Fatalf("object id %d", o.ID)
			}
			for id := range o.Resources {
				if id > MaxID {
					t.Fatalf("resource id %d", id)
				}
			}
		}
	})
}
