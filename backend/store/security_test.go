package store_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func TestSecurityInfoRedacted(t *testing.T) {
	s := store.SecurityInfo{Endpoint: "dev1", Identity: "id1", Key: []byte{0xc0, 0xff, 0xee, 0x12, 0x34}}
	const keyHex = "c0ffee1234"
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("put", "sec", s)
		l.Info("put", "sec", &s)
		l.Info("put", slog.Any("sec", []store.SecurityInfo{s}))
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		fmt.Fprintf(&buf, f+"\n", s)
		fmt.Fprintf(&buf, f+"\n", &s)
		fmt.Fprintf(&buf, f+"\n", []store.SecurityInfo{s})
	}
	out := strings.ToLower(buf.String())
	for _, leak := range []string{keyHex, "192 255 238", "[192", "wp/u"} { // hex, decimal bytes, base64
		if strings.Contains(out, leak) {
			t.Fatalf("key leaked (%q) in:\n%s", leak, out)
		}
	}
	if !strings.Contains(out, "dev1") || !strings.Contains(out, "id1") || !strings.Contains(out, s.KeyFingerprint()) {
		t.Fatalf("output lacks endpoint, identity or fingerprint:\n%s", out)
	}
	sum, err := json.Marshal(s.Summary())
	if err != nil || strings.Contains(string(sum), keyHex) || !strings.Contains(string(sum), `"pskKeyFingerprint":"sha256:`) {
		t.Fatalf("Summary JSON = %s, %v", sum, err)
	}
}

func TestSecurityInfoJSON(t *testing.T) {
	s := store.SecurityInfo{Endpoint: "dev1", Identity: "id1", Key: []byte{0xc0, 0xff, 0xee}}
	b, err := json.Marshal(s)
	if err != nil || string(b) != `{"ep":"dev1","pskIdentity":"id1","pskKeyFingerprint":"`+s.KeyFingerprint()+`"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	b = []byte(`{"ep":"dev1","pskIdentity":"id1","pskKey":"C0ffee"}`)
	var back store.SecurityInfo
	if err := json.Unmarshal(b, &back); err != nil || back.Endpoint != "dev1" || back.Identity != "id1" || !bytes.Equal(back.Key, s.Key) {
		t.Fatalf("Unmarshal = %v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"ep":"d","pskIdentity":"i","pskKey":"zz"}`), &back); err == nil {
		t.Fatal("Unmarshal(bad hex) succeeded")
	}
}

func TestSecurityInfoValidate(t *testing.T) {
	ok := store.SecurityInfo{Endpoint: "dev", Identity: "id", Key: []byte{1}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 256)
	for name, s := range map[string]store.SecurityInfo{
		"no ep":        {Identity: "id", Key: []byte{1}},
		"long ep":      {Endpoint: long, Identity: "id", Key: []byte{1}},
		"no identity":  {Endpoint: "dev", Key: []byte{1}},
		"long id":      {Endpoint: "dev", Identity: long, Key: []byte{1}},
		"control char": {Endpoint: "dev", Identity: "a\nb", Key: []byte{1}},
		"bad utf8":     {Endpoint: "d\xffv", Identity: "id", Key: []byte{1}},
		"no key":       {Endpoint: "dev", Identity: "id"},
		"long key":     {Endpoint: "dev", Identity: "id", Key: make([]byte, 65)},
	} {
		err := s.Validate()
		if !errors.Is(err, store.ErrInvalidSecurity) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	if fp := (store.SecurityInfo{}).KeyFingerprint(); fp != "(none)" {
		t.Errorf("fingerprint of no key = %q", fp)
	}
}
