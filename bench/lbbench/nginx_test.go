package lbbench

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testNginxConfig(dir string) NginxConfig {
	return NginxConfig{
		Dir:    dir,
		Listen: netip.MustParseAddrPort("127.0.0.1:15683"),
		Backends: []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:25001"),
			netip.MustParseAddrPort("127.0.0.1:25002"),
			netip.MustParseAddrPort("127.0.0.1:25003"),
		},
		StreamModule: "/usr/lib/nginx/modules/ngx_stream_module.so",
	}
}

// TestNginxConfigRender checks the generated configuration without nginx.
func TestNginxConfigRender(t *testing.T) {
	dir := t.TempDir()
	conf, err := testNginxConfig(dir).Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"load_module /usr/lib/nginx/modules/ngx_stream_module.so;",
		"worker_processes 2;",
		"pid " + dir + "/nginx.pid;",
		"error_log " + dir + "/error.log",
		"hash $remote_addr$remote_port consistent;",
		"server 127.0.0.1:25001;",
		"server 127.0.0.1:25003;",
		"listen 127.0.0.1:15683 udp reuseport rcvbuf=4194304;",
		"proxy_pass echo;",
		"proxy_timeout 300s;",
	} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(string(conf), "proxy_responses") {
		t.Errorf("config sets proxy_responses by default:\n%s", conf)
	}

	c := testNginxConfig(dir)
	c.StreamModule = ""
	c.ProxyResponses = 1
	conf, err = c.Render()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(conf), "load_module") || !strings.Contains(string(conf), "proxy_responses 1;") {
		t.Errorf("built-in module, proxy_responses 1:\n%s", conf)
	}

	for _, bad := range []func(*NginxConfig){
		func(c *NginxConfig) { c.Dir = "" },
		func(c *NginxConfig) { c.Listen = netip.AddrPort{} },
		func(c *NginxConfig) { c.Backends = nil },
		func(c *NginxConfig) { c.Dir = "/tmp/a dir" },
	} {
		c := testNginxConfig(dir)
		bad(&c)
		if _, err := c.Render(); err == nil {
			t.Errorf("Render(%+v) succeeded", c)
		}
	}
}

// TestNginxConfigAccepted checks that nginx accepts the generated
// configuration (`nginx -t`). It needs Debian's nginx and
// libnginx-mod-stream, which `make test` installs.
func TestNginxConfigAccepted(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatalf("nginx is not installed (%v): `make test` installs nginx-light and libnginx-mod-stream (./scripts/deps.sh nginx)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	module, err := StreamModule(ctx, "nginx")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := testNginxConfig(dir)
	c.StreamModule = module
	conf, err := c.Render()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := TestNginxConfig(ctx, "nginx", path); err != nil {
		t.Fatalf("%v\nconfig:\n%s", err, conf)
	}
}
