package registration

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/linkformat"
)

func TestParseRegisterQuery(t *testing.T) {
	p, err := ParseRegisterQuery([]string{"ep=dev1", "lt=30", "lwm2m=1.1", "b=UQ", "sms=+33", "Q", "foo=bar"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Endpoint != "dev1" || p.Lifetime != 30 || p.Version != "1.1" || p.Binding != "UQ" ||
		p.SMS != "+33" || !p.Queue || p.AddAttr["foo"] != "bar" {
		t.Fatalf("unexpected params %+v", p)
	}
	p, err = ParseRegisterQuery([]string{"ep=x"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Lifetime != DefaultLifetime || p.Version != DefaultVersion || p.Binding != DefaultBinding || p.Queue {
		t.Fatalf("defaults not applied: %+v", p)
	}
}

func TestParseRegisterQueryErrors(t *testing.T) {
	tests := []struct {
		q    []string
		want error
	}{
		{nil, ErrBadRequest},
		{[]string{"lt=30"}, ErrBadRequest},
		{[]string{"ep="}, ErrBadRequest},
		{[]string{"ep=a", "ep=b"}, ErrBadRequest},
		{[]string{"ep=a", "lt=x"}, ErrBadRequest},
		{[]string{"ep=a", "lt=0"}, ErrBadRequest},
		{[]string{"ep=a", "lt=-5"}, ErrBadRequest},
		{[]string{"ep=a", "lt=99999999999"}, ErrBadRequest},
		{[]string{"ep=a", "b=X"}, ErrBadRequest},
		{[]string{"ep=a", "b=UU"}, ErrBadRequest},
		{[]string{"ep=a", "Q=1"}, ErrBadRequest},
		{[]string{"ep=a", "=1"}, ErrBadRequest},
		{[]string{"ep=a\x00b"}, ErrBadRequest},
		{[]string{"ep=" + strings.Repeat("a", 300)}, ErrBadRequest},
		{[]string{"ep=a", "lwm2m=2.0"}, ErrUnsupportedVersion},
	}
	for _, tt := range tests {
		if _, err := ParseRegisterQuery(tt.q); !errors.Is(err, tt.want) {
			t.Errorf("ParseRegisterQuery(%q) err = %v, want %v", tt.q, err, tt.want)
		}
	}
}

func TestParseUpdateQuery(t *testing.T) {
	p, err := ParseUpdateQuery([]string{"lt=60", "b=U"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Lifetime == nil || *p.Lifetime != 60 || p.Binding != "U" || p.SMS != nil {
		t.Fatalf("unexpected %+v", p)
	}
	for _, q := range [][]string{{"lt=0"}, {"ep=x"}, {"lt=1", "lt=2"}, {"b=Z"}} {
		if _, err := ParseUpdateQuery(q); !errors.Is(err, ErrBadRequest) {
			t.Errorf("ParseUpdateQuery(%q) err = %v", q, err)
		}
	}
}

func TestObjectLinks(t *testing.T) {
	links, root, err := ObjectLinks([]byte(`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`))
	if err != nil || root != "/" || len(links) != 4 {
		t.Fatalf("links=%v root=%q err=%v", links, root, err)
	}
	links, root, err = ObjectLinks([]byte(`</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3>`))
	if err != nil || root != "/lwm2m" || len(links) != 3 {
		t.Fatalf("alternate path: links=%v root=%q err=%v", links, root, err)
	}
	if links, root, err = ObjectLinks(nil); err != nil || root != "/" || links == nil {
		t.Fatalf("empty payload: %v %q %v", links, root, err)
	}
	for _, bad := range []string{"</a/b>", "</1/2/3>", "</1/x>", "<", `</x>;rt="oma.lwm2m",</1>`, "</65535>"} {
		if _, _, err := ObjectLinks([]byte(bad)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("ObjectLinks(%q) err = %v", bad, err)
		}
	}
}

func TestJSONShape(t *testing.T) {
	r := Registration{
		RegDate: 1467883514122, Address: "127.0.0.1", Port: 60071, RegAddr: "0.0.0.0", RegPort: 5683,
		Lifetime: 30, Version: "1.0", Binding: "U", Endpoint: "myDevice", ID: "ELP5Ql2v4b",
		ObjLinks: []linkformat.Link{{URL: "/", Attrs: map[string]string{"rt": "oma.lwm2m"}}, {URL: "/3/0", Attrs: map[string]string{}}},
		AddAttr:  map[string]string{}, Root: "/", LastUp: 1467883514122, Instance: "a",
	}
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"regDate", "address", "port", "regAddr", "regPort", "lt", "ver", "bnd", "ep", "regId", "objLink", "addAttr", "root", "lastUp", "instance"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	if got := string(b); !strings.Contains(got, `"objLink":[{"url":"/","at":{"rt":"oma.lwm2m"}},{"url":"/3/0","at":{}}]`) {
		t.Errorf("objLink shape: %s", got)
	}
}

func TestApply(t *testing.T) {
	r := &Registration{Lifetime: 30, Binding: "U", LastUp: 1, AddAttr: map[string]string{}}
	lt := uint32(60)
	now := time.UnixMilli(5000)
	r.Apply(&Update{Address: "10.0.0.1", Port: 9, Lifetime: &lt, ObjLinks: []linkformat.Link{{URL: "/3/0"}}}, now)
	if r.Lifetime != 60 || r.Address != "10.0.0.1" || r.Port != 9 || r.LastUp != 5000 || len(r.ObjLinks) != 1 || r.Binding != "U" {
		t.Fatalf("Apply: %+v", r)
	}
	if got := r.ExpiresAt(time.Second); !got.Equal(time.UnixMilli(5000 + 61000)) {
		t.Fatalf("ExpiresAt = %v", got)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if len(id) != 10 || !ValidID(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
	if ValidID("a/b") || ValidID("") {
		t.Fatal("ValidID accepts garbage")
	}
}

func FuzzParseRegisterQuery(f *testing.F) {
	f.Add("ep=dev&lt=30&lwm2m=1.1&b=UQ&Q")
	f.Add("lt=5")
	f.Add("ep=a&ep=b")
	f.Fuzz(func(t *testing.T, s string) {
		qs := strings.Split(s, "&")
		p, err := ParseRegisterQuery(qs)
		if err != nil {
			return
		}
		if p.Endpoint == "" || p.Lifetime == 0 || p.Lifetime > MaxLifetime || !supportedVersions[p.Version] {
			t.Fatalf("accepted invalid params %+v from %q", p, s)
		}
		_, _ = ParseUpdateQuery(qs)
	})
}

func FuzzObjectLinks(f *testing.F) {
	f.Add(`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`)
	f.Add(`</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>`)
	f.Fuzz(func(t *testing.T, s string) {
		links, root, err := ObjectLinks([]byte(s))
		if err != nil {
			return
		}
		if links == nil || !strings.HasPrefix(root, "/") {
			t.Fatalf("ObjectLinks(%q) = %v, %q", s, links, root)
		}
	})
}
