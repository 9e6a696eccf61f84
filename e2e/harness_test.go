// Package e2e runs the built binaries against real peers: redis-server,
// redis-cli and libcoap's coap-client-notls. `make test` installs them; a
// missing one fails the tests.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lwm2m-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "../cmd/...")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the binaries failed:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `make test`, which installs it (%v)", tool, err)
		}
	}
}

// freeUDPPort returns a loopback UDP port nobody uses right now.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a running binary whose output is kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Kill stops the process with SIGKILL (a crash, no clean leave).
func (p *proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop stops the process with SIGTERM and waits.
func (p *proc) Stop(t *testing.T) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not stop on SIGTERM:\n%s", p.name, p.Output())
		p.Kill()
	}
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(binDir, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.Kill()
		}
		if t.Failed() {
			t.Logf("--- %s %s output:\n%s", name, strings.Join(args, " "), p.Output())
		}
	})
	return p
}

// lwm2mServer is a started lwm2m-server.
type lwm2mServer struct {
	*proc
	id    string
	coap  string
	coaps string
	admin string
}

// httpGet returns the body of a 200 answer.
func httpGet(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}

func startServer(t *testing.T, id, redisURL string, extra ...string) *lwm2mServer {
	t.Helper()
	s := &lwm2mServer{
		id:    id,
		coap:  fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t)),
		admin: fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t)),
	}
	args := []string{"--coap", s.coap, "--admin", s.admin, "--instance-id", id, "--log-level", "debug"}
	if redisURL != "" {
		args = append(args, "--redis", redisURL)
	}
	s.proc = startProc(t, "lwm2m-server", append(args, extra...)...)
	waitHTTP(t, "http://"+s.admin+"/healthz", s.proc)
	return s
}

func waitHTTP(t *testing.T, url string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.name, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy at %s: %v\n%s", p.name, url, err, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// coapResult is what coap-client-notls printed about the response.
type coapResult struct {
	Code     string // "2.01"
	Location string // "rd/abc" from Location-Path options
	Payload  string
	Output   string
}

var (
	respLine = regexp.MustCompile(`t:(?:ACK|CON|NON) c:([0-9]\.[0-9]{2}) i:[0-9a-f]+ \{[0-9a-f]*\} \[(.*)\]`)
	locOpt   = regexp.MustCompile(`Location-Path:([^, \]]+)`)
)

// coapClient runs libcoap's coap-client-notls with debug output and parses
// the response.
func coapClient(t *testing.T, args ...string) coapResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "coap-client-notls", append([]string{"-v", "7", "-B", "10"}, args...)...)
	out, _ := cmd.CombinedOutput()
	res := coapResult{Output: string(out)}
	for _, line := range strings.Split(string(out), "\n") {
		m := respLine.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(m[1], "0.") {
			continue
		}
		if strings.Contains(line, "c:POST") || strings.Contains(line, "c:GET") || strings.Contains(line, "c:DELETE") || strings.Contains(line, "c:PUT") {
			continue
		}
		res.Code = m[1]
		var loc []string
		for _, l := range locOpt.FindAllStringSubmatch(m[2], -1) {
			loc = append(loc, l[1])
		}
		res.Location = strings.Join(loc, "/")
	}
	if res.Code == "" {
		t.Fatalf("coap-client-notls %v: no response:\n%s", args, out)
	}
	return res
}

// subscriber is a raw `redis-cli SUBSCRIBE`, as an IoT backend would run.
type subscriber struct {
	cmd  *exec.Cmd
	msgs chan [2]string // channel, payload
}

func subscribe(t *testing.T, redisAddr string, channels ...string) *subscriber {
	t.Helper()
	host, port, _ := net.SplitHostPort(redisAddr)
	cmd := exec.Command("redis-cli", append([]string{"-h", host, "-p", port, "SUBSCRIBE"}, channels...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &subscriber{cmd: cmd, msgs: make(chan [2]string, 1000)}
	confirmed := make(chan struct{})
	go func() {
		defer close(s.msgs)
		r := bufio.NewReader(out)
		readLine := func() (string, error) {
			l, err := r.ReadString('\n')
			return strings.TrimRight(l, "\r\n"), err
		}
		n := 0
		for {
			kind, err := readLine()
			if err != nil {
				return
			}
			ch, _ := readLine()
			payload, err := readLine()
			if err != nil && err != io.EOF {
				return
			}
			switch kind {
			case "subscribe":
				if n++; n == len(channels) {
					close(confirmed)
				}
			case "message":
				s.msgs <- [2]string{ch, payload}
			}
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	select {
	case <-confirmed:
	case <-time.After(10 * time.Second):
		t.Fatal("redis-cli SUBSCRIBE not confirmed")
	}
	return s
}

// next waits for the next message.
func (s *subscriber) next(t *testing.T, timeout time.Duration) (channel, payload string) {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatal("redis-cli SUBSCRIBE ended")
		}
		return m[0], m[1]
	case <-time.After(timeout):
		t.Fatalf("no message within %v", timeout)
	}
	return "", ""
}

// none asserts that nothing arrives within d.
func (s *subscriber) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-s.msgs:
		t.Fatalf("unexpected message on %s: %s", m[0], m[1])
	case <-time.After(d):
	}
}

// startProcPath starts a program from PATH (a real peer such as libcoap's
// coap-server-notls), stopped when the test ends.
func startProcPath(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make test`, which installs it", name)
	}
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.Kill()
		}
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.Output())
		}
	})
	return p
}
