package clicmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/storetest"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/clicmd"
)

const (
	key1 = "00112233445566778899aabbccddeeff"
	key2 = "cafebabecafebabe"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type result struct {
	code           int
	stdout, stderr string
}

type harness struct {
	t      *testing.T
	st     store.Store
	env    map[string]string
	opened []string // URL and prefix of each open
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, st: memstore.New(time.Second), env: map[string]string{}}
}

func (h *harness) run(stdin string, args ...string) result {
	h.t.Helper()
	var out, errb bytes.Buffer
	p := &clicmd.Program{
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
		Open: func(_ context.Context, url, prefix string) (store.Store, error) {
			h.opened = append(h.opened, url+" "+prefix)
			return h.st, nil
		},
		Getenv: func(k string) string { return h.env[k] },
		Now:    func() time.Time { return now },
	}
	code := p.Run(context.Background(), args)
	r := result{code, out.String(), errb.String()}
	for _, leak := range []string{key1, key2, strings.ToUpper(key2)} {
		if strings.Contains(r.stdout+r.stderr, leak) {
			h.t.Fatalf("%v: key in output:\n%s%s", args, r.stdout, r.stderr)
		}
	}
	return r
}

// ok runs args and expects success.
func (h *harness) ok(args ...string) string {
	h.t.Helper()
	r := h.run("", args...)
	if r.code != 0 || r.stderr != "" {
		h.t.Fatalf("%v: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

// fail runs args and expects exit 1 with a one-line error containing msg.
func (h *harness) fail(msg string, args ...string) {
	h.t.Helper()
	r := h.run("", args...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "lwm2m-cli: ") ||
		strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, msg) {
		h.t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line with %q", args, r.code, r.stdout, r.stderr, msg)
	}
}

func TestSecurity(t *testing.T) {
	h := newHarness(t)
	out := h.ok("--redis", "redis://r:6379/0", "security", "add", "--ep", "dev1", "--psk-identity", "id1", "--psk-key", key1)
	fp := store.SecurityInfo{Key: []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}}.KeyFingerprint()
	if !strings.Contains(out, "dev1") || !strings.Contains(out, "id1") || !strings.Contains(out, fp) {
		t.Fatalf("add output = %q", out)
	}
	if len(h.opened) != 1 || h.opened[0] != "redis://r:6379/0 lwm2m:" {
		t.Fatalf("opened %v", h.opened)
	}
	// Key from stdin, upper-case hex, global flags after the command.
	r := h.run(strings.ToUpper(key2)+"\n", "security", "add", "--ep", "dev 2", "--psk-identity", "id2", "--psk-key", "-",
		"--redis", "redis://x/0", "--key-prefix", "p:", "--json")
	if r.code != 0 {
		t.Fatalf("add from stdin: %+v", r)
	}
	var sum store.SecuritySummary
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || sum.Endpoint != "dev 2" || sum.Identity != "id2" {
		t.Fatalf("add --json = %q (%v)", r.stdout, err)
	}
	if h.opened[1] != "redis://x/0 p:" {
		t.Fatalf("opened %v", h.opened)
	}
	got, err := h.st.SecurityByEndpoint(context.Background(), "dev 2")
	if err != nil || len(got.Key) != 8 || got.Key[0] != 0xca {
		t.Fatalf("stored = %v, %v", got, err)
	}

	h.env[clicmd.RedisEnv] = "redis://env/0"
	out = h.ok("security", "list")
	want := "ENDPOINT  PSK IDENTITY  KEY\n" +
		`"dev 2"   id2           ` + got.KeyFingerprint() + "\n" +
		"dev1      id1           " + fp + "\n"
	if out != want {
		t.Fatalf("list =\n%s\nwant\n%s", out, want)
	}
	if h.opened[2] != "redis://env/0 lwm2m:" {
		t.Fatalf("$%s not used: %v", clicmd.RedisEnv, h.opened)
	}
	var l []store.SecuritySummary
	if err := json.Unmarshal([]byte(h.ok("--json", "security", "list")), &l); err != nil || len(l) != 2 || l[0].KeyFingerprint != got.KeyFingerprint() {
		t.Fatalf("list --json = %v, %v", l, err)
	}

	h.fail(`psk identity "id1" already bound to endpoint "dev1"`,
		"security", "add", "--ep", "dev3", "--psk-identity", "id1", "--psk-key", key2)
	if out := h.ok("security", "remove", "--ep", "dev1"); !strings.Contains(out, "removed security info of dev1") {
		t.Fatalf("remove = %q", out)
	}
	h.fail(`no security info for endpoint "dev1"`, "security", "remove", "--ep", "dev1")
	if out := h.ok("security", "remove", "--ep", "dev 2", "--json"); strings.TrimSpace(out) != "{\n  \"ep\": \"dev 2\",\n  \"removed\": true\n}" {
		t.Fatalf("remove --json = %q", out)
	}
	if out := h.ok("--json", "security", "list"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty list --json = %q", out)
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t)
	h.env[clicmd.RedisEnv] = "redis://env/0"
	long := strings.Repeat("x", 256)
	for _, tc := range []struct {
		msg  string
		args []string
	}{
		{"missing command", nil},
		{`unknown command "nope"`, []string{"nope"}},
		{`unknown command "nope"`, []string{"security", "nope"}},
		{"missing command", []string{"security"}},
		{"flag provided but not defined: -bogus", []string{"list", "--bogus"}},
		{`unexpected argument "extra"`, []string{"members", "extra"}},
		{"--ep is required", []string{"security", "add", "--psk-identity", "i", "--psk-key", "01"}},
		{"--psk-identity is required", []string{"security", "add", "--ep", "e", "--psk-key", "01"}},
		{"--psk-key is required", []string{"security", "add", "--ep", "e", "--psk-identity", "i"}},
		{"--psk-key: not a hex string", []string{"security", "add", "--ep", "e", "--psk-identity", "i", "--psk-key", "zz"}},
		{"--psk-key: odd number", []string{"security", "add", "--ep", "e", "--psk-identity", "i", "--psk-key", "abc"}},
		{"PSK key longer than 64 bytes", []string{"security", "add", "--ep", "e", "--psk-identity", "i", "--psk-key", strings.Repeat("ab", 65)}},
		{"PSK identity longer than 255 bytes", []string{"security", "add", "--ep", "e", "--psk-identity", long, "--psk-key", "01"}},
		{"--psk-key -: no key on standard input", []string{"security", "add", "--ep", "e", "--psk-identity", "i", "--psk-key", "-"}},
		{"--ep is required", []string{"security", "remove"}},
		{"invalid value", []string{"--timeout", "soon", "list"}},
		{"(see 'lwm2m-cli security add --help')", []string{"security", "add"}},
	} {
		h.fail(tc.msg, tc.args...)
	}
	if l, _ := h.st.ListSecurity(context.Background()); len(l) != 0 {
		t.Fatalf("bad input stored %v", l)
	}
	delete(h.env, clicmd.RedisEnv)
	h.fail("--redis is required (or set LWM2M_REDIS)", "members")
	if len(h.opened) != 0 {
		t.Fatalf("store opened for bad input: %v", h.opened)
	}
}

func TestHelp(t *testing.T) {
	h := newHarness(t)
	var walk func(path []string, cmds []*clicmd.Command)
	walk = func(path []string, cmds []*clicmd.Command) {
		for _, c := range cmds {
			p := append(append([]string{}, path...), c.Name)
			for _, args := range [][]string{append(append([]string{}, p...), "--help"), append([]string{"help"}, p...)} {
				out := h.ok(args...)
				if !strings.HasPrefix(out, "Usage: lwm2m-cli "+strings.Join(p, " ")) || !strings.Contains(out, "-redis") {
					t.Fatalf("%v: help =\n%s", args, out)
				}
			}
			walk(p, c.Sub)
		}
	}
	walk(nil, clicmd.Commands())
	out := h.ok("--help")
	for _, want := range []string{"security", "list", "members", "-key-prefix", "-json"} {
		if !strings.Contains(out, want) {
			t.Fatalf("--help lacks %q:\n%s", want, out)
		}
	}
	if out := h.ok("security", "add", "-h"); !strings.Contains(out, "-psk-identity") || !strings.Contains(out, "-psk-key") {
		t.Fatalf("security add -h =\n%s", out)
	}
	if len(h.opened) != 0 {
		t.Fatalf("help opened the store: %v", h.opened)
	}
}

func addReg(t *testing.T, s store.Store, ep, owner string, port uint16) *registration.Registration {
	t.Helper()
	r := storetest.NewReg(ep, port, 300, now.Add(-90*time.Second))
	if _, err := s.Add(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if owner != "" {
		if err := s.SetOwner(context.Background(), ep, owner); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestList(t *testing.T) {
	h := newHarness(t)
	h.env[clicmd.RedisEnv] = "redis://env/0"
	if out := h.ok("list"); out != "ENDPOINT  INSTANCE  ADDRESS  LIFETIME  LAST UPDATE\n" {
		t.Fatalf("empty list = %q", out)
	}
	if out := h.ok("list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty list --json = %q", out)
	}
	addReg(t, h.st, "dev-b", "inst-2", 5001)
	r6 := storetest.NewReg("dev-a", 5683, 60, now.Add(-time.Hour))
	r6.Address = "2001:db8::1"
	if _, err := h.st.Add(context.Background(), r6); err != nil {
		t.Fatal(err)
	}
	out := h.ok("list")
	want := "ENDPOINT  INSTANCE  ADDRESS             LIFETIME  LAST UPDATE\n" +
		"dev-a     -         [2001:db8::1]:5683  60s       2026-03-01T11:00:00Z (1h0m0s ago)\n" +
		"dev-b     inst-2    192.0.2.1:5001      300s      2026-03-01T11:58:30Z (1m30s ago)\n"
	if out != want {
		t.Fatalf("list =\n%s\nwant\n%s", out, want)
	}
	var regs []registration.Registration
	if err := json.Unmarshal([]byte(h.ok("list", "--json")), &regs); err != nil || len(regs) != 2 ||
		regs[1].Endpoint != "dev-b" || regs[1].Instance != "inst-2" || regs[1].Lifetime != 300 || regs[0].Instance != "" {
		t.Fatalf("list --json = %+v, %v", regs, err)
	}
}

func TestMembers(t *testing.T) {
	h := newHarness(t)
	h.env[clicmd.RedisEnv] = "redis://env/0"
	ctx := context.Background()
	if err := h.st.Announce(ctx, store.Member{ID: "inst-1", NodeID: 7, Backend: "10.0.0.1:5683", CoAP: ":5683",
		Admin: "127.0.0.1:9683", State: store.StateActive, Started: time.Now().Add(-time.Hour).UnixMilli()}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.st.Announce(ctx, store.Member{ID: "inst-2", NodeID: 8, State: store.StateDraining}, time.Minute); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := clicmd.Members(ctx, &buf, h.st, time.Now(), false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") ||
		!strings.Contains(lines[1], "inst-1") || !strings.Contains(lines[1], "10.0.0.1:5683") || !strings.Contains(lines[1], "1h0m0s") ||
		!strings.Contains(lines[2], "draining") || strings.Fields(lines[2])[1] != "8" {
		t.Fatalf("members =\n%s", buf.String())
	}
	var ms []store.Member
	if err := json.Unmarshal([]byte(h.ok("members", "--json")), &ms); err != nil || len(ms) != 2 || ms[0].NodeID != 7 || ms[1].State != store.StateDraining {
		t.Fatalf("members --json = %+v, %v", ms, err)
	}
}

// TestRedis runs the commands against a real Redis through the default
// opener.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	run := func(stdin string, args ...string) result {
		t.Helper()
		var out, errb bytes.Buffer
		p := &clicmd.Program{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
			Getenv: func(string) string { return "" }}
		code := p.Run(ctx, append([]string{"--redis", srv.URL, "--key-prefix", "cli:"}, args...))
		if strings.Contains(out.String()+errb.String(), key1) {
			t.Fatalf("key in output")
		}
		return result{code, out.String(), errb.String()}
	}
	if r := run("", "security", "add", "--ep", "dev1", "--psk-identity", "id1", "--psk-key", key1); r.code != 0 {
		t.Fatalf("add: %+v", r)
	}
	if r := run("", "security", "add", "--ep", "dev2", "--psk-identity", "id1", "--psk-key", key1); r.code != 1 ||
		!strings.Contains(r.stderr, `already bound to endpoint "dev1"`) {
		t.Fatalf("add taken: %+v", r)
	}
	s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "cli:"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if info, err := s.SecurityByIdentity(ctx, "id1"); err != nil || info.Endpoint != "dev1" {
		t.Fatalf("stored: %v, %v", info, err)
	}
	addReg(t, s, "dev1", "inst-a", 6000)
	if err := s.Announce(ctx, store.Member{ID: "inst-a", NodeID: 1, State: store.StateActive}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if r := run("", "list"); r.code != 0 || !strings.Contains(r.stdout, "inst-a") || !strings.Contains(r.stdout, "192.0.2.1:6000") {
		t.Fatalf("list: %+v", r)
	}
	if r := run("", "members", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"id": "inst-a"`) {
		t.Fatalf("members: %+v", r)
	}
	if r := run("", "security", "list", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"pskIdentity": "id1"`) {
		t.Fatalf("security list: %+v", r)
	}
	if r := run("", "security", "remove", "--ep", "dev1"); r.code != 0 {
		t.Fatalf("remove: %+v", r)
	}
	if r := run("", "security", "list"); r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("list after remove: %+v", r)
	}
	// Another prefix sees nothing.
	var out bytes.Buffer
	p := &clicmd.Program{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
	if code := p.Run(ctx, []string{"--redis", srv.URL, "list", "--json"}); code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("default prefix: %d %q", code, out.String())
	}
}
