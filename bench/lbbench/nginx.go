package lbbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
)

// Nginx defaults.
const (
	// DefaultNginxWorkers is nginx's worker_processes.
	DefaultNginxWorkers = 2
	// DefaultNginxProxyTimeout is nginx's proxy_timeout: a UDP session
	// (and its upstream socket) lives this long after its last datagram,
	// comfortably longer than a benchmark run so that every client keeps
	// one session, as it keeps one flow through lwm2m-lb.
	DefaultNginxProxyTimeout = 5 * time.Minute
	// DefaultNginxWorkerConnections is nginx's worker_connections, enough
	// for 1,000 clients; NginxWorkerConnections sizes it for other
	// numbers.
	DefaultNginxWorkerConnections = 4096
	// NginxInstallHint says how to get nginx with the stream module.
	NginxInstallHint = "`make bench-lb` (./scripts/deps.sh nginx) installs nginx-light and libnginx-mod-stream"
)

// defaultModulesPath is where Debian's libnginx-mod-stream installs
// ngx_stream_module.so when `nginx -V` does not say.
const defaultModulesPath = "/usr/lib/nginx/modules"

// NginxConfig describes an nginx stream UDP proxy in front of echo backends:
// one server listening with reuseport, hashing each client's address and
// port onto the backends with a consistent hash.
type NginxConfig struct {
	// Bin is the nginx binary (default: "nginx" on $PATH).
	Bin string
	// Dir is the prefix directory for the configuration, pid file and
	// error log; StartNginx makes a temporary one when it is empty.
	Dir string
	// Listen is the UDP address nginx listens on.
	Listen netip.AddrPort
	// Backends are the upstream servers.
	Backends []netip.AddrPort
	// StreamModule is the path of ngx_stream_module.so, loaded with
	// load_module; empty when the stream module is built in. StreamModule
	// (the function) finds it.
	StreamModule string
	// Workers is worker_processes (default DefaultNginxWorkers).
	Workers int
	// WorkerConnections is worker_connections (default
	// DefaultNginxWorkerConnections).
	WorkerConnections int
	// RlimitNofile is worker_rlimit_nofile (default: what
	// WorkerConnections needs, capped at this process's hard
	// RLIMIT_NOFILE, which the workers cannot exceed).
	RlimitNofile int
	// ProxyTimeout is proxy_timeout (default DefaultNginxProxyTimeout).
	ProxyTimeout time.Duration
	// ListenRcvbuf is the listen socket's receive buffer size (the listen
	// directive's rcvbuf parameter; default DefaultSocketBuffer, as the
	// echo backends have; the kernel caps it at net.core.rmem_max). With
	// the kernel default of about 200 KB, enough for a few hundred small
	// datagrams, nginx drops some of the 1,000 clients' datagrams.
	ListenRcvbuf int
	// ProxyResponses, when positive, sets proxy_responses. nginx then ends
	// a client's UDP session, closing its upstream socket, as soon as it
	// has had that many responses per request, so that with 1 the next
	// datagram of the client opens a new session and a new upstream
	// socket; left unset (0), sessions last until ProxyTimeout.
	ProxyResponses int
}

func (c NginxConfig) withDefaults() NginxConfig {
	if c.Bin == "" {
		c.Bin = "nginx"
	}
	if c.Workers <= 0 {
		c.Workers = DefaultNginxWorkers
	}
	if c.WorkerConnections <= 0 {
		c.WorkerConnections = DefaultNginxWorkerConnections
	}
	if c.ProxyTimeout <= 0 {
		c.ProxyTimeout = DefaultNginxProxyTimeout
	}
	if c.ListenRcvbuf <= 0 {
		c.ListenRcvbuf = DefaultSocketBuffer
	}
	if c.RlimitNofile <= 0 {
		c.RlimitNofile = 2*c.WorkerConnections + 64
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Max < uint64(c.RlimitNofile) {
			c.RlimitNofile = int(lim.Max)
		}
	}
	return c
}

// NginxWorkerConnections returns the worker_connections nginx needs for
// clients UDP clients: two connections per client, as if the kernel's
// reuseport hash put them all on one worker, and some room.
func NginxWorkerConnections(clients int) int {
	return max(2*clients+256, 1024)
}

var nginxTemplate = template.Must(template.New("nginx.conf").Parse(`# Written by lbbench: nginx stream UDP proxy in front of echo backends.
{{with .StreamModule}}load_module {{.}};
{{end}}worker_processes {{.Workers}};
worker_rlimit_nofile {{.RlimitNofile}};
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;

events {
    worker_connections {{.WorkerConnections}};
}

stream {
    upstream echo {
        hash $remote_addr$remote_port consistent;
{{- range .Backends}}
        server {{.}};
{{- end}}
    }

    server {
        listen {{.Listen}} udp reuseport rcvbuf={{.ListenRcvbuf}};
        proxy_pass echo;
        # One session per client for the whole run; see NginxConfig.
        proxy_timeout {{.ProxyTimeoutSeconds}}s;
{{- if gt .ProxyResponses 0}}
        proxy_responses {{.ProxyResponses}};
{{- end}}
    }
}
`))

// Render returns the nginx configuration file for c. Dir must be set.
func (c NginxConfig) Render() ([]byte, error) {
	c = c.withDefaults()
	switch {
	case c.Dir == "":
		return nil, errors.New("nginx: config needs a prefix directory")
	case !c.Listen.IsValid():
		return nil, errors.New("nginx: config needs a listen address")
	case len(c.Backends) == 0:
		return nil, errors.New("nginx: config needs at least one backend")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	for _, s := range append([]string{dir}, c.StreamModule) {
		if strings.ContainsAny(s, " \t\n;{}\"'$#") {
			return nil, fmt.Errorf("nginx: path %q would need quoting", s)
		}
	}
	var buf bytes.Buffer
	err = nginxTemplate.Execute(&buf, struct {
		NginxConfig
		Dir                 string
		ProxyTimeoutSeconds int64
	}{
		NginxConfig:         c,
		Dir:                 dir,
		ProxyTimeoutSeconds: int64(max(c.ProxyTimeout.Round(time.Second), time.Second) / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("nginx: rendering config: %w", err)
	}
	return buf.Bytes(), nil
}

// StreamModule returns what NginxConfig.StreamModule must be for the nginx
// binary bin: the path of ngx_stream_module.so when nginx was built with
// the stream module as a dynamic module (Debian's nginx, the module coming
// from libnginx-mod-stream), or "" when it is built in. It fails when nginx
// cannot run, has no stream module, or the dynamic module is missing.
func StreamModule(ctx context.Context, bin string) (string, error) {
	if bin == "" {
		bin = "nginx"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("nginx not found (%s): %w", NginxInstallHint, err)
	}
	out, err := exec.CommandContext(ctx, path, "-V").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nginx -V: %w: %s", err, bytes.TrimSpace(out))
	}
	modules := defaultModulesPath
	dynamic, builtin := false, false
	for _, f := range strings.Fields(string(out)) {
		switch {
		case f == "--with-stream":
			builtin = true
		case f == "--with-stream=dynamic":
			dynamic = true
		case strings.HasPrefix(f, "--modules-path="):
			modules = strings.TrimPrefix(f, "--modules-path=")
		}
	}
	switch {
	case builtin:
		return "", nil
	case !dynamic:
		return "", fmt.Errorf("%s was built without the stream module", path)
	}
	so := filepath.Join(modules, "ngx_stream_module.so")
	if _, err := os.Stat(so); err != nil {
		return "", fmt.Errorf("nginx stream module missing (%s): %w", NginxInstallHint, err)
	}
	return so, nil
}

// Nginx is a running nginx started by StartNginx.
type Nginx struct {
	cfg     NginxConfig
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid once done is closed
	tmpDir  string        // removed by Stop when StartNginx made it
}

// StartNginx writes the configuration into cfg.Dir (a new temporary
// directory when empty), checks it with `nginx -t`, starts nginx in the
// foreground and waits until it answers on cfg.Listen. Stop stops it.
func StartNginx(ctx context.Context, cfg NginxConfig) (_ *Nginx, err error) {
	cfg = cfg.withDefaults()
	n := &Nginx{done: make(chan struct{})}
	if cfg.Dir == "" {
		if cfg.Dir, err = os.MkdirTemp("", "lbbench-nginx-"); err != nil {
			return nil, fmt.Errorf("nginx: %w", err)
		}
		n.tmpDir = cfg.Dir
		defer func() {
			if err != nil {
				os.RemoveAll(n.tmpDir)
			}
		}()
	}
	n.cfg = cfg
	conf, err := cfg.Render()
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(cfg.Dir, "nginx.conf")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	if err := TestNginxConfig(ctx, cfg.Bin, confPath); err != nil {
		return nil, err
	}
	n.cmd = exec.Command(cfg.Bin, n.args(confPath)...)
	n.cmd.Stdout = nil
	n.cmd.Stderr = nil
	// Its own process group, so that a terminal's ^C reaches the harness
	// first and the harness stops nginx cleanly.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: starting %s: %w", cfg.Bin, err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		close(n.done)
	}()
	if err := waitUDPEcho(ctx, cfg.Listen, n.done, 10*time.Second); err != nil {
		n.Stop()
		return nil, fmt.Errorf("nginx: %w%s", err, n.errorLogTail())
	}
	return n, nil
}

// args returns nginx's command line for the configuration file conf.
func (n *Nginx) args(conf string) []string {
	return []string{"-p", n.cfg.Dir + "/", "-e", filepath.Join(n.cfg.Dir, "error.log"),
		"-c", conf, "-g", "daemon off;"}
}

// TestNginxConfig runs `nginx -t` on the configuration file conf, with the
// configuration's directory as prefix.
func TestNginxConfig(ctx context.Context, bin, conf string) error {
	if bin == "" {
		bin = "nginx"
	}
	dir := filepath.Dir(conf)
	out, err := exec.CommandContext(ctx, bin, "-t", "-q", "-p", dir+"/",
		"-e", filepath.Join(dir, "error.log"), "-c", conf).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nginx -t -c %s: %w: %s", conf, err, bytes.TrimSpace(out))
	}
	return nil
}

// ErrorLog returns the contents of nginx's error log.
func (n *Nginx) ErrorLog() ([]byte, error) {
	return os.ReadFile(filepath.Join(n.cfg.Dir, "error.log"))
}

// errorLogTail returns the end of the error log, for error messages.
func (n *Nginx) errorLogTail() string {
	b, err := n.ErrorLog()
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; error log:\n" + string(bytes.TrimSpace(b))
}

// Stop stops nginx at once (SIGTERM, then SIGKILL after 5 s: a graceful
// SIGQUIT would wait for the UDP sessions to time out) and removes the
// temporary directory StartNginx made.
func (n *Nginx) Stop() error {
	defer func() {
		if n.tmpDir != "" {
			os.RemoveAll(n.tmpDir)
		}
	}()
	select {
	case <-n.done:
		return nil
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
		// The workers are in the same process group.
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	var ee *exec.ExitError
	if n.waitErr != nil && !errors.As(n.waitErr, &ee) {
		return fmt.Errorf("nginx: %w", n.waitErr)
	}
	return nil
}
