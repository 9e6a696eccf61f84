package linkformat

import (
	"errors"
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want []Link
	}{
		{"", nil},
		{"  ", nil},
		{"</1/0>", []Link{{URL: "/1/0", Attrs: map[string]string{}}}},
		{`</>;rt="oma.lwm2m";ct=11543,</1/0>, </3/0>,</6/0>`, []Link{
			{URL: "/", Attrs: map[string]string{"rt": "oma.lwm2m", "ct": "11543"}},
			{URL: "/1/0", Attrs: map[string]string{}},
			{URL: "/3/0", Attrs: map[string]string{}},
			{URL: "/6/0", Attrs: map[string]string{}},
		}},
		{`</3>;ver=1.1,</3/0>;obs;title="a, \"quoted\"; one"`, []Link{
			{URL: "/3", Attrs: map[string]string{"ver": "1.1"}},
			{URL: "/3/0", Attrs: map[string]string{"obs": "", "title": `a, "quoted"; one`}},
		}},
		{"</lwm2m>;rt=\"oma.lwm2m\",\n</lwm2m/3/0>", []Link{
			{URL: "/lwm2m", Attrs: map[string]string{"rt": "oma.lwm2m"}},
			{URL: "/lwm2m/3/0", Attrs: map[string]string{}},
		}},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"/3/0", "<", "</3/0", "<>", "</3/0>,", "</3/0>;", "</3/0>;=1", "</3/0>;a=",
		`</3/0>;a="x`, "</3/0> </4/0>", "</3/0>;a;a", "</3 0>", `</3/0>;a="\`,
	} {
		if _, err := Parse(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) error = %v, want ErrSyntax", in, err)
		}
	}
}

func TestParseLimits(t *testing.T) {
	doc := ""
	for i := 0; i <= MaxLinks; i++ {
		if i > 0 {
			doc += ","
		}
		doc += "</1>"
	}
	if _, err := Parse(doc); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too many links: err = %v", err)
	}
}

func TestFormatRoundTrip(t *testing.T) {
	in := `</>;ct=11543;rt="oma.lwm2m",</3/0>;obs;title="a, b"`
	links, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	out := Format(links)
	again, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(Format()) = %v (doc %q)", err, out)
	}
	if !reflect.DeepEqual(links, again) {
		t.Fatalf("round trip changed links: %q -> %q", in, out)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`,
		`</3/0>;obs;title="a\"b"`, "<", ";", `</a>;b="`, "</1>,</2>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		links, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(Format(links))
		if err != nil {
			t.Fatalf("Format output does not parse: %v", err)
		}
		if len(links) != len(again) {
			t.Fatalf("round trip changed the number of links")
		}
		for i := range links {
			if links[i].URL != again[i].URL || len(links[i].Attrs) != len(again[i].Attrs) {
				t.Fatalf("round trip changed link %d: %#v -> %#v", i, links[i], again[i])
			}
			for k, v := range links[i].Attrs {
				if again[i].Attrs[k] != v {
					t.Fatalf("round trip changed attribute %q: %q -> %q", k, v, again[i].Attrs[k])
				}
			}
		}
	})
}
