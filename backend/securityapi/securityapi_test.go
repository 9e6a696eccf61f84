package securityapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/securityapi"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
)

const key1 = "00112233445566778899aabbccddeeff"

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	t      *testing.T
	srv    *httptest.Server
	prefix *httptest.Server
	st     *memstore.Store
	logs   *syncBuf
}

func setup(t *testing.T) *fixture {
	st := memstore.New(time.Second)
	logs := &syncBuf{}
	h := securityapi.New(st, securityapi.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	// Mounted the way the instance's admin endpoint mounts pages.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /members", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "[]") })
	for p, hh := range h.Routes() {
		mux.Handle(p, hh)
	}
	// The other way to mount it: by prefix.
	prefixMux := http.NewServeMux()
	prefixMux.Handle("/security", securityapi.Handler(st))
	prefixMux.Handle("/security/", securityapi.Handler(st))
	prefixSrv := httptest.NewServer(prefixMux)
	t.Cleanup(prefixSrv.Close)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{t: t, srv: srv, st: st, logs: logs, prefix: prefixSrv}
}

func (f *fixture) do(method, path, body string) (int, string) {
	f.t.Helper()
	return f.doAt(f.srv, method, path, body)
}

func (f *fixture) doAt(srv *httptest.Server, method, path, body string) (int, string) {
	f.t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCRUD(t *testing.T) {
	f := setup(t)
	if code, body := f.do("GET", "/security", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("GET empty = %d %s", code, body)
	}
	code, body := f.do("PUT", "/security/dev1", `{"pskIdentity":"id1","pskKey":"`+key1+`"}`)
	if code != 200 {
		t.Fatalf("PUT = %d %s", code, body)
	}
	var sum store.SecuritySummary
	if err := json.Unmarshal([]byte(body), &sum); err != nil || sum.Endpoint != "dev1" || sum.Identity != "id1" || !strings.HasPrefix(sum.KeyFingerprint, "sha256:") {
		t.Fatalf("PUT body = %s (%v)", body, err)
	}
	got, err := f.st.SecurityByIdentity(context.Background(), "id1")
	if err != nil || got.Endpoint != "dev1" || len(got.Key) != 16 {
		t.Fatalf("stored = %v, %v", got, err)
	}
	// Upper-case hex, an endpoint with a slash (escaped in the path), and
	// the optional ep in the body.
	if code, body := f.do("PUT", "/security/urn:dev%2F2", `{"ep":"urn:dev/2","pskIdentity":"id2","pskKey":"ABCDEF"}`); code != 200 {
		t.Fatalf("PUT dev/2 = %d %s", code, body)
	}
	if code, body := f.do("GET", "/security/urn:dev%2F2", ""); code != 200 || !strings.Contains(body, `"urn:dev/2"`) {
		t.Fatalf("GET dev/2 = %d %s", code, body)
	}
	code, body = f.do("GET", "/security", "")
	var l []store.SecuritySummary
	if err := json.Unmarshal([]byte(body), &l); code != 200 || err != nil || len(l) != 2 || l[0].Endpoint != "dev1" || l[1].Endpoint != "urn:dev/2" {
		t.Fatalf("GET list = %d %s", code, body)
	}
	if code, body := f.do("GET", "/security/nope", ""); code != 404 {
		t.Fatalf("GET unknown = %d %s", code, body)
	}
	if code, body := f.do("DELETE", "/security/dev1", ""); code != 204 || body != "" {
		t.Fatalf("DELETE = %d %s", code, body)
	}
	if code, body := f.do("DELETE", "/security/dev1", ""); code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("DELETE again = %d %s", code, body)
	}
	if _, err := f.st.SecurityByIdentity(context.Background(), "id1"); err == nil {
		t.Fatal("identity still resolves after DELETE")
	}
	if code, _ := f.do("POST", "/security", "{}"); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST = %d, want 405", code)
	}
	// Mounted by prefix.
	if code, body := f.doAt(f.prefix, "GET", "/security", ""); code != 200 || !strings.Contains(body, "urn:dev/2") {
		t.Fatalf("prefix-mounted GET = %d %s", code, body)
	}
	if code, _ := f.doAt(f.prefix, "POST", "/security/x", "{}"); code != http.StatusMethodNotAllowed {
		t.Fatalf("prefix-mounted POST = %d, want 405", code)
	}
	if code, _ := f.doAt(f.prefix, "GET", "/security/a/b", ""); code != 404 {
		t.Fatalf("prefix-mounted GET /security/a/b = %d, want 404", code)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "security info set") || !strings.Contains(logs, "security info removed") {
		t.Fatalf("changes not logged:\n%s", logs)
	}
	assertNoKey(t, f.logs.String()+body)
}

func TestPutErrors(t *testing.T) {
	f := setup(t)
	if code, body := f.do("PUT", "/security/owner", `{"pskIdentity":"taken","pskKey":"01"}`); code != 200 {
		t.Fatalf("PUT = %d %s", code, body)
	}
	long := strings.Repeat("x", store.MaxPSKIdentityLength+1)
	for _, tc := range []struct {
		name, path, body string
		code             int
		msg              string
	}{
		{"bad hex", "/security/d", `{"pskIdentity":"i","pskKey":"zz` + key1 + `"}`, 400, "not a hex string"},
		{"odd hex", "/security/d", `{"pskIdentity":"i","pskKey":"abc"}`, 400, "odd number"},
		{"empty key", "/security/d", `{"pskIdentity":"i","pskKey":""}`, 400, "empty PSK key"},
		{"long key", "/security/d", `{"pskIdentity":"i","pskKey":"` + strings.Repeat("ab", 65) + `"}`, 400, "longer than 64"},
		{"empty identity", "/security/d", `{"pskIdentity":"","pskKey":"01"}`, 400, "empty PSK identity"},
		{"long identity", "/security/d", `{"pskIdentity":"` + long + `","pskKey":"01"}`, 400, "longer than 255"},
		{"long endpoint", "/security/" + strings.Repeat("e", 256), `{"pskIdentity":"i","pskKey":"01"}`, 400, "endpoint name longer"},
		{"unknown field", "/security/d", `{"pskIdentity":"i","pskKey":"01","psk":"x"}`, 400, "unknown field"},
		{"not json", "/security/d", `pskKey=01`, 400, "invalid JSON"},
		{"trailing", "/security/d", `{"pskIdentity":"i","pskKey":"01"} {}`, 400, "after the object"},
		{"ep mismatch", "/security/d", `{"ep":"e","pskIdentity":"i","pskKey":"01"}`, 400, "differs"},
		{"too big", "/security/d", `{"pskIdentity":"` + strings.Repeat("x", securityapi.MaxBodyBytes) + `"}`, 413, "larger"},
		{"taken", "/security/d", `{"pskIdentity":"taken","pskKey":"02"}`, 409, "already bound"},
	} {
		code, body := f.do("PUT", tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.msg) {
			t.Errorf("%s: %d %s; want %d with %q", tc.name, code, body, tc.code, tc.msg)
		}
		var e map[string]string
		if err := json.Unmarshal([]byte(body), &e); err != nil || e["error"] == "" {
			t.Errorf("%s: error body %q is not {\"error\":...}", tc.name, body)
		}
		if strings.Contains(body, key1) {
			t.Errorf("%s: key in the response: %s", tc.name, body)
		}
	}
	if l, _ := f.st.ListSecurity(context.Background()); len(l) != 1 {
		t.Fatalf("refused PUTs stored something: %v", l)
	}
	assertNoKey(t, f.logs.String())
}

func assertNoKey(t *testing.T, s string) {
	t.Helper()
	if strings.Contains(strings.ToLower(s), key1) || strings.Contains(strings.ToLower(s), "abcdef") {
		t.Fatalf("a key leaked:\n%s", s)
	}
}
