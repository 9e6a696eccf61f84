package compare

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/localnet"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/bench/lbbench"
)

// proc is a child process with its output in a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	waitErr error
}

// startProc starts bin with args, its output going to dir/name.log.
func startProc(dir, name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p := &proc{name: name, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	// Its own process group: a terminal's ^C reaches the harness, which
	// stops its children itself.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", name, bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill ends the process at once (SIGKILL: a crash, no clean leave).
func (p *proc) Kill() {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop ends the process with SIGTERM, SIGKILL after 5 s.
func (p *proc) Stop() {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.Kill()
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	b = bytes.TrimSpace(b)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "; " + p.name + " log:\n" + string(b)
}

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

func freePort(network string) (uint16, error) { return localnet.FreePort(network) }

func freeAddr(network string) (netip.AddrPort, error) {
	p, err := freePort(network)
	return netip.AddrPortFrom(loopback, p), err
}

// startRedis starts a private redis-server on a free port.
func startRedis(ctx context.Context, dir string) (*proc, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, "", fmt.Errorf("redis-server not found (make deps installs it): %w", err)
	}
	port, err := freePort("tcp4")
	if err != nil {
		return nil, "", err
	}
	p, err := startProc(dir, "redis", bin, "--port", strconv.Itoa(int(port)), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no", "--loglevel", "warning")
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return p, "redis://" + addr + "/0", nil
		}
		if p.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			p.Kill()
			return nil, "", fmt.Errorf("redis-server did not answer: %v%s", err, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitHTTP polls url until it answers 200.
func waitHTTP(ctx context.Context, url string, p *proc, timeout time.Duration) error {
	if err := localnet.WaitHTTP(ctx, url, timeout, p.Exited); err != nil {
		return fmt.Errorf("%s: %w%s", p.name, err, p.tail())
	}
	return nil
}

// waitCoAPPing sends CoAP pings (empty CON) to addr until one is answered
// with a reset: the server, or a proxy in front of one, is up.
func waitCoAPPing(ctx context.Context, addr netip.AddrPort, p *proc, timeout time.Duration) error {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 256)
	for mid := int32(1); ; mid++ {
		ping := make([]byte, 16)
		n, err := coder.DefaultCoder.Encode(message.Message{Type: message.Confirmable, MessageID: mid & 0xffff}, ping)
		if err != nil {
			return err
		}
		if _, err := c.Write(ping[:n]); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if m, err := c.Read(buf); err == nil && m >= 4 && buf[0]>>4&3 == uint8(message.Reset) {
				return nil
			}
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case p != nil && p.Exited():
			return fmt.Errorf("%s exited%s", p.name, p.tail())
		case time.Now().After(deadline):
			tail := ""
			if p != nil {
				tail = p.tail()
			}
			return fmt.Errorf("no CoAP answer from %v within %v%s", addr, timeout, tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nginx is an nginx stream UDP proxy, configured by lbbench.NginxConfig
// (hash $remote_addr$remote_port consistent), that can be reconfigured.
type nginx struct {
	*proc
	cfg lbbench.NginxConfig
}

func startNginx(ctx context.Context, dir string, listen netip.AddrPort, backends []netip.AddrPort, clients int) (*nginx, error) {
	module, err := lbbench.StreamModule(ctx, "")
	if err != nil {
		return nil, err
	}
	n := &nginx{cfg: lbbench.NginxConfig{
		Bin: "nginx", Dir: dir, Listen: listen, Backends: backends, StreamModule: module,
		WorkerConnections: lbbench.NginxWorkerConnections(clients),
		// Sessions outlive the run, like lwm2m-lb's flows.
		ProxyTimeout: 10 * time.Minute,
	}}
	conf, err := n.writeConfig()
	if err != nil {
		return nil, err
	}
	n.proc, err = startProc(dir, "nginx", "nginx", "-p", dir+"/", "-e", filepath.Join(dir, "error.log"),
		"-c", conf, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	return n, nil
}

func (n *nginx) writeConfig() (string, error) {
	b, err := n.cfg.Render()
	if err != nil {
		return "", err
	}
	conf := filepath.Join(n.cfg.Dir, "nginx.conf")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		return "", err
	}
	if err := lbbench.TestNginxConfig(context.Background(), "nginx", conf); err != nil {
		return "", err
	}
	return conf, nil
}

// setBackends rewrites the configuration and reloads nginx (SIGHUP).
func (n *nginx) setBackends(backends []netip.AddrPort) error {
	n.cfg.Backends = backends
	if _, err := n.writeConfig(); err != nil {
		return err
	}
	return n.cmd.Process.Signal(syscall.SIGHUP)
}
