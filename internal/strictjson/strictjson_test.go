package strictjson

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestMembers(t *testing.T) {
	var got []string
	err := Members([]byte(` {"a":1, "b":{"c":[1,2]}, "d":"x"} `), func(name string, raw json.RawMessage) error {
		got = append(got, name+"="+string(raw))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := `a=1 b={"c":[1,2]} d="x"`; strings.Join(got, " ") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, " "), want)
	}
}

func TestMembersRejects(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `"x"`, `{"a":1,"a":2}`, `{"a":1} {}`, `{"a":1} x`, `{"a":}`, `{"a":1`, `{1:2}`,
	} {
		if err := Members([]byte(in), func(string, json.RawMessage) error { return nil }); err == nil {
			t.Errorf("Members(%q) accepted", in)
		}
	}
}

func TestMembersStopsOnError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	err := Members([]byte(`{"a":1,"b":2}`), func(string, json.RawMessage) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("err %v after %d calls, want stop after 1", err, n)
	}
}

func TestElements(t *testing.T) {
	var got []string
	if err := Elements([]byte(`[1, "a", {"b":null}, []]`), func(raw json.RawMessage) error {
		got = append(got, string(raw))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := `1|"a"|{"b":null}|[]`; strings.Join(got, "|") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, "|"), want)
	}
	for _, in := range []string{``, `{}`, `[1,]`, `[1] [2]`, `[1`} {
		if err := Elements([]byte(in), func(json.RawMessage) error { return nil }); err == nil {
			t.Errorf("Elements(%q) accepted", in)
		}
	}
}

func FuzzMembers(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":{"b":[1,2,{"c":"d"}]}}`, `{"a":1,"a":1}`, `[1,2]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		err := Members(data, func(name string, raw json.RawMessage) error {
			if !json.Valid(raw) {
				t.Fatalf("member %q: invalid raw value %q", name, raw)
			}
			return Elements(raw, func(json.RawMessage) error { return nil })
		})
		_ = err
	})
}
