package lbbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/localnet"
)

// probeMessage is what waitUDPEcho sends: not a CoAP ping, so that it is
// echoed and not answered with a reset.
const probeMessage = "lbbench probe"

// waitUDPEcho sends probes to addr until one comes back, the process
// behind it exits (exited is closed), ctx is done or timeout passes.
func waitUDPEcho(ctx context.Context, addr netip.AddrPort, exited <-chan struct{}, timeout time.Duration) error {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return fmt.Errorf("probing %v: %w", addr, err)
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 512)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("probing %v: %w", addr, context.Cause(ctx))
		case <-exited:
			return fmt.Errorf("exited before answering on %v", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no echo from %v within %v", addr, timeout)
		}
		// Errors (ECONNREFUSED while nothing listens yet) mean try again.
		if _, err := c.Write([]byte(probeMessage)); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, err := c.Read(buf); err == nil && string(buf[:n]) == probeMessage {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(network string) (uint16, error) { return localnet.FreePort(network) }

// ErrLBNotBuilt is returned by FindLB when there is no lwm2m-lb binary and
// no source to build one from.
var ErrLBNotBuilt = errors.New("lwm2m-lb not built")

// FindLB returns the lwm2m-lb binary to benchmark. With bin set, that is
// the one, and it must exist. Otherwise it looks for bin/lwm2m-lb under
// the working directory, and failing that builds ./cmd/lwm2m-lb into
// tmpDir when that directory exists. It returns ErrLBNotBuilt when there
// is neither.
func FindLB(ctx context.Context, bin, tmpDir string) (string, error) {
	if bin != "" {
		p, err := exec.LookPath(bin)
		if err != nil {
			return "", fmt.Errorf("lwm2m-lb: %w", err)
		}
		return p, nil
	}
	const built = "bin/lwm2m-lb"
	if fi, err := os.Stat(built); err == nil && !fi.IsDir() {
		return filepath.Abs(built)
	}
	if fi, err := os.Stat("cmd/lwm2m-lb"); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w: no %s and no ./cmd/lwm2m-lb to build it from", ErrLBNotBuilt, built)
	}
	out := filepath.Join(tmpDir, "lwm2m-lb")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/lwm2m-lb")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building ./cmd/lwm2m-lb: %w: %s", err, bytes.TrimSpace(msg))
	}
	return out, nil
}

// LBConfig describes an lwm2m-lb process to start.
type LBConfig struct {
	// Bin is the lwm2m-lb binary.
	Bin string
	// Mode is "nat" or "proxy".
	Mode string
	// Listen is the UDP address the balancer listens on.
	Listen netip.AddrPort
	// Admin is the balancer's admin HTTP address, for /healthz.
	Admin netip.AddrPort
	// Backends are the echo backends.
	Backends []netip.AddrPort
	// Settle is how long to wait after /healthz first answers 200, for the
	// health checks to mark the backends up (default 1 s).
	Settle time.Duration
	// Log receives the balancer's standard output and error (default:
	// discarded).
	Log *os.File
}

// LB is a running lwm2m-lb started by StartLB.
type LB struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartLB starts lwm2m-lb, waits until GET /healthz on its admin address
// answers 200, gives its health checks cfg.Settle, and checks that a
// datagram sent to it comes back. Stop stops it.
func StartLB(ctx context.Context, cfg LBConfig) (*LB, error) {
	if cfg.Settle <= 0 {
		cfg.Settle = time.Second
	}
	args := []string{"--listen", cfg.Listen.String(), "--mode", cfg.Mode, "--admin", cfg.Admin.String()}
	for _, b := range cfg.Backends {
		args = append(args, "--backend", b.String())
	}
	lb := &LB{cmd: exec.Command(cfg.Bin, args...), done: make(chan struct{})}
	if cfg.Log != nil {
		lb.cmd.Stdout, lb.cmd.Stderr = cfg.Log, cfg.Log
	}
	lb.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := lb.cmd.Start(); err != nil {
		return nil, fmt.Errorf("lwm2m-lb: starting %s: %w", cfg.Bin, err)
	}
	go func() {
		lb.waitErr = lb.cmd.Wait()
		close(lb.done)
	}()
	fail := func(err error) (*LB, error) {
		lb.Stop()
		return nil, fmt.Errorf("lwm2m-lb --mode %s: %w", cfg.Mode, err)
	}
	if err := waitHealthz(ctx, "http://"+cfg.Admin.String()+"/healthz", lb.done, 10*time.Second); err != nil {
		return fail(err)
	}
	select {
	case <-ctx.Done():
		return fail(context.Cause(ctx))
	case <-lb.done:
		return fail(fmt.Errorf("exited: %v", lb.waitErr))
	case <-time.After(cfg.Settle):
	}
	if err := waitUDPEcho(ctx, cfg.Listen, lb.done, 5*time.Second); err != nil {
		return fail(err)
	}
	return lb, nil
}

// waitHealthz polls url until it answers 200.
func waitHealthz(ctx context.Context, url string, exited <-chan struct{}, timeout time.Duration) error {
	return localnet.WaitHTTP(ctx, url, timeout, func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	})
}

// Stop stops the balancer (SIGTERM, then SIGKILL after 5 s).
func (lb *LB) Stop() error {
	select {
	case <-lb.done:
		return nil
	default:
	}
	_ = lb.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-lb.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-lb.cmd.Process.Pid, syscall.SIGKILL)
		<-lb.done
	}
	var ee *exec.ExitError
	if lb.waitErr != nil && !errors.As(lb.waitErr, &ee) {
		return fmt.Errorf("lwm2m-lb: %w", lb.waitErr)
	}
	return nil
}
