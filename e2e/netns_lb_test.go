package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/netns"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
)

// Health check settings given to both balancers.
const (
	nlbInterval = 200 * time.Millisecond
	nlbTimeout  = 150 * time.Millisecond
	nlbFall     = 3
	nlbRise     = 2
	nlbPort     = 5683
	nlbAdmin    = 9684
)

// TestNetnsBalancer drives two lwm2m-lb processes, each in its own network
// namespace with its own VIP, in front of PROXY v2 echo backends in other
// namespaces, with 1,200 real UDP clients in yet another namespace:
//
//  1. 1,000 clients through lb1 spread evenly over 3 backends;
//  2. every client sticks to its backend;
//  3. a killed backend is declared down within fall x interval + timeout,
//     then only its clients move, to live backends;
//  4. a joining backend moves no existing flow, and new clients reach it;
//  5. lb2, with the same backends and health view, places 200 new clients
//     exactly as lb1 does.
func TestNetnsBalancer(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Fatalf("network namespaces are needed for this test: %v", err)
	}
	begin := time.Now()
	phase := begin
	logPhase := func(what string) {
		t.Logf("phase %q took %v", what, time.Since(phase).Round(time.Millisecond))
		phase = time.Now()
	}

	lab := netns.New(t, "10.77.0.0/24")
	lb1h, lb2h := lab.AddHost("lb1"), lab.AddHost("lb2")
	var beHosts []*netns.Host
	for i := 1; i <= 4; i++ {
		beHosts = append(beHosts, lab.AddHost(fmt.Sprintf("be%d", i)))
	}
	clh := lab.AddHost("cl")

	var beAddrs []netip.AddrPort
	beName := map[string]string{} // "IP:port" -> host name
	for _, h := range beHosts {
		a := netip.AddrPortFrom(h.IP, nlbPort)
		beAddrs = append(beAddrs, a)
		beName[a.String()] = h.Name
	}
	addrOf := func(name string) string {
		for a, n := range beName {
			if n == name {
				return a
			}
		}
		t.Fatalf("no backend %s", name)
		return ""
	}

	// be1..be3 serve from the start; be4 is configured on both balancers
	// but only starts serving in step 4.
	echoes := map[string]*nlbEcho{}
	for _, h := range beHosts[:3] {
		echoes[h.Name] = nlbStartEcho(t, h)
	}
	lb1 := nlbStartLB(t, lab, lb1h, beAddrs)
	lb2 := nlbStartLB(t, lab, lb2h, beAddrs)
	t.Logf("lab %s: lb1 %s (VIP %s), lb2 %s (VIP %s), backends %v, clients on %s",
		lab.Prefix, lb1h.IP, lb1.vip, lb2h.IP, lb2.vip, beAddrs, clh.IP)

	initial := map[string]string{
		addrOf("be1"): "up", addrOf("be2"): "up", addrOf("be3"): "up", addrOf("be4"): "down",
	}
	for _, l := range []*nlbLB{lb1, lb2} {
		l.waitStates(t, initial, 15*time.Second)
		if code, body, err := l.get("/healthz"); err != nil || code != http.StatusOK {
			t.Fatalf("%s /healthz: %d %q %v", l.name, code, body, err)
		}
	}
	logPhase("setup")

	clients := nlbOpenClients(t, clh, 20000, 1000)

	// (1) Spread.
	r1 := nlbRound(t, clients, lb1.vip, "r1")
	c1 := nlbCount(r1)
	t.Logf("(1) 1000 flows through lb1: %v", c1)
	third := 1000.0 / 3
	for _, name := range []string{"be1", "be2", "be3"} {
		if d := math.Abs(float64(c1[name]) - third); d > third/10 {
			t.Errorf("(1) %s got %d flows, want %.0f ± 10%%", name, c1[name], third)
		}
	}
	if len(c1) != 3 {
		t.Errorf("(1) flows went to %v, want be1, be2 and be3 only", c1)
	}
	lb1.checkFlows(t, "(1)", beName, c1)
	if t.Failed() {
		t.FailNow()
	}
	logPhase("(1) spread")

	// (2) Stickiness.
	r2 := nlbRound(t, clients, lb1.vip, "r2")
	if moved := nlbMoved(r1, r2); len(moved) > 0 {
		t.Fatalf("(2) %d clients changed backend between two rounds, e.g. %v", len(moved), moved[:min(5, len(moved))])
	}
	t.Logf("(2) all 1000 clients answered by the same backend twice")
	logPhase("(2) stickiness")

	// (3) Failure of be2.
	victim := "be2"
	t0 := time.Now()
	echoes[victim].kill()
	detect1 := lb1.waitState(t, addrOf(victim), "down", t0, 10*time.Second)
	detect2 := lb2.waitState(t, addrOf(victim), "down", t0, 10*time.Second)
	expect := time.Duration(nlbFall)*nlbInterval + nlbTimeout
	bound := 2 * (expect + 100*time.Millisecond)
	t.Logf("(3) %s killed: lb1 reported it down after %v, lb2 after %v (fall x interval + timeout = %v, bound %v)",
		victim, detect1.Round(time.Millisecond), detect2.Round(time.Millisecond), expect, bound)
	if detect1 > bound || detect2 > bound {
		t.Fatalf("(3) failure detection too slow: lb1 %v, lb2 %v, want at most %v", detect1, detect2, bound)
	}
	r3 := nlbRound(t, clients, lb1.vip, "r3")
	movedTo := map[string]int{}
	var wrong []string
	for port, was := range r2 {
		now := r3[port]
		switch {
		case was == victim && (now == victim || now == "be4"):
			wrong = append(wrong, fmt.Sprintf("%d: %s -> %s (not a live backend)", port, was, now))
		case was == victim:
			movedTo[now]++
		case now != was:
			wrong = append(wrong, fmt.Sprintf("%d: %s -> %s (its backend is alive)", port, was, now))
		}
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		t.Fatalf("(3) %d clients misplaced after %s failed, e.g. %v", len(wrong), victim, wrong[:min(5, len(wrong))])
	}
	t.Logf("(3) the %d clients of %s moved: %v; the other %d kept their backend",
		c1[victim], victim, movedTo, 1000-c1[victim])
	c3 := nlbCount(r3)
	lb1.checkFlows(t, "(3)", beName, c3)
	logPhase("(3) failure")

	// (4) be4 joins.
	t4 := time.Now()
	echoes["be4"] = nlbStartEcho(t, beHosts[3])
	join1 := lb1.waitState(t, addrOf("be4"), "up", t4, 10*time.Second)
	join2 := lb2.waitState(t, addrOf("be4"), "up", t4, 10*time.Second)
	t.Logf("(4) be4 started serving: up on lb1 after %v, on lb2 after %v", join1.Round(time.Millisecond), join2.Round(time.Millisecond))

	newClients := nlbOpenClients(t, clh, 21000, 200)
	n1 := nlbRound(t, newClients, lb1.vip, "n1")
	cn := nlbCount(n1)
	t.Logf("(4) 200 new clients through lb1: %v", cn)
	if cn[victim] > 0 {
		t.Errorf("(4) %d new clients placed on the dead %s", cn[victim], victim)
	}
	// be4 owns a third of the new Maglev table (be1, be3, be4): about 67
	// of 200 new clients; ask for a fifth.
	if cn["be4"] < 40 {
		t.Errorf("(4) only %d of 200 new clients reached be4, want at least 40", cn["be4"])
	}
	r4 := nlbRound(t, clients, lb1.vip, "r4")
	if moved := nlbMoved(r3, r4); len(moved) > 0 {
		t.Fatalf("(4) %d existing clients moved when be4 joined, e.g. %v", len(moved), moved[:min(5, len(moved))])
	}
	t.Logf("(4) none of the 1000 existing clients moved")
	want := map[string]int{}
	for k, v := range c3 {
		want[k] += v
	}
	for k, v := range cn {
		want[k] += v
	}
	lb1.checkFlows(t, "(4)", beName, want)
	logPhase("(4) join")

	// (5) lb2 places the same new clients on the same backends.
	st1, err1 := lb1.backends()
	st2, err2 := lb2.backends()
	if err1 != nil || err2 != nil {
		t.Fatalf("(5) /backends: %v, %v", err1, err2)
	}
	for _, a := range beAddrs {
		if st1[a.String()].State != st2[a.String()].State {
			t.Fatalf("(5) health views differ on %s: lb1 %q, lb2 %q", a, st1[a.String()].State, st2[a.String()].State)
		}
	}
	n2 := nlbRound(t, newClients, lb2.vip, "n2")
	if moved := nlbMoved(n1, n2); len(moved) > 0 {
		t.Fatalf("(5) %d of 200 clients placed differently by lb1 and lb2, e.g. %v", len(moved), moved[:min(5, len(moved))])
	}
	t.Logf("(5) lb2 placed all 200 new clients as lb1 did: %v", nlbCount(n2))
	lb2.checkFlows(t, "(5)", beName, nlbCount(n2))
	logPhase("(5) two balancers")

	for _, name := range []string{"be1", "be2", "be3", "be4"} {
		e := echoes[name]
		if n := e.bad.Load(); n > 0 {
			t.Errorf("%s received %d malformed datagrams, first: %s", name, n, e.firstBad())
		}
		t.Logf("%s answered %d data datagrams and %d health checks", name, e.data.Load(), e.pings.Load())
	}
	t.Logf("datagrams retried by the clients: %d", nlbRetries.Load())
	t.Logf("total %v", time.Since(begin).Round(time.Millisecond))
}

// nlbEcho is a PROXY v2 echo backend: it answers health checks (LOCAL +
// CoAP ping) with LOCAL + CoAP reset and data with a PROXY header back to
// the client followed by "name|client|service|payload".
type nlbEcho struct {
	name  string
	conn  *net.UDPConn
	done  chan struct{}
	once  sync.Once
	pings atomic.Int64
	data  atomic.Int64
	bad   atomic.Int64
	mu    sync.Mutex
	first string
}

func nlbStartEcho(t *testing.T, h *netns.Host) *nlbEcho {
	t.Helper()
	e := &nlbEcho{name: h.Name, done: make(chan struct{})}
	if err := h.Do(func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(h.IP, nlbPort)))
		e.conn = c
		return err
	}); err != nil {
		t.Fatalf("echo on %s: %v", h.Name, err)
	}
	go e.serve()
	t.Cleanup(e.kill)
	return e
}

func (e *nlbEcho) badf(format string, args ...any) {
	if e.bad.Add(1) == 1 {
		e.mu.Lock()
		e.first = fmt.Sprintf(format, args...)
		e.mu.Unlock()
	}
}

func (e *nlbEcho) firstBad() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.first
}

func (e *nlbEcho) serve() {
	defer close(e.done)
	buf := make([]byte, 65536)
	out := make([]byte, 0, 65536+proxyv2.IPv6Len+256)
	for {
		n, from, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			e.badf("read: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		h, payload, err := proxyv2.Parse(buf[:n])
		if err != nil {
			e.badf("from %v: %v: %q", from, err, buf[:n])
			continue
		}
		switch h.Command {
		case proxyv2.Local:
			mid, ok := peek.IsCoAPPing(payload)
			if !ok {
				e.badf("from %v: LOCAL without a CoAP ping: %q", from, payload)
				continue
			}
			out = proxyv2.AppendHeader(out[:0], proxyv2.Local, netip.AddrPort{}, netip.AddrPort{})
			out = peek.AppendCoAPReset(out, mid)
			e.pings.Add(1)
		case proxyv2.Proxy:
			out = proxyv2.AppendHeader(out[:0], proxyv2.Proxy, h.Dst, h.Src)
			out = fmt.Appendf(out, "%s|%s|%s|%s", e.name, h.Src, h.Dst, payload)
			e.data.Add(1)
		default:
			e.badf("from %v: command %v", from, h.Command)
			continue
		}
		_, _ = e.conn.WriteToUDPAddrPort(out, from)
	}
}

// kill closes the socket: the backend stops answering anything.
func (e *nlbEcho) kill() {
	e.once.Do(func() {
		e.conn.Close()
		select {
		case <-e.done:
		case <-time.After(5 * time.Second):
		}
	})
}

// nlbLB is an lwm2m-lb running inside a host of the lab.
type nlbLB struct {
	name  string
	host  *netns.Host
	vip   netip.AddrPort
	admin string
	p     *proc
	hc    *http.Client
}

func nlbStartLB(t *testing.T, lab *netns.Lab, h *netns.Host, backends []netip.AddrPort) *nlbLB {
	t.Helper()
	vip := lab.FreeAddr()
	h.AddAddr(vip)
	l := &nlbLB{
		name:  h.Name,
		host:  h,
		vip:   netip.AddrPortFrom(vip, nlbPort),
		admin: netip.AddrPortFrom(h.IP, nlbAdmin).String(),
	}
	args := []string{
		"--listen", l.vip.String(), "--mode", "proxy",
		"--health-interval", nlbInterval.String(), "--health-timeout", nlbTimeout.String(),
		"--fall", fmt.Sprint(nlbFall), "--rise", fmt.Sprint(nlbRise),
		"--admin", l.admin, "--log-level", "debug",
	}
	for _, b := range backends {
		args = append(args, "--backend", b.String())
	}
	p := &proc{name: "lwm2m-lb@" + h.Name, done: make(chan struct{})}
	p.cmd = h.Command(context.Background(), filepath.Join(binDir, "lwm2m-lb"), args...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start lwm2m-lb in %s: %v", h.Name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.Kill()
		}
		if t.Failed() {
			t.Logf("--- %s %s output:\n%s", p.name, strings.Join(args, " "), p.Output())
		}
	})
	l.p = p
	// The admin endpoint lives in h's namespace: dial it from there.
	l.hc = &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := h.Do(func() error {
					var err error
					d := net.Dialer{Timeout: time.Second}
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
	return l
}

func (l *nlbLB) get(path string) (int, []byte, error) {
	resp, err := l.hc.Get("http://" + l.admin + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

type nlbStatus struct {
	Addr     string `json:"addr"`
	State    string `json:"state"`
	Draining bool   `json:"draining"`
	Flows    int    `json:"flows"`
}

// backends returns /backends of the default service, by address.
func (l *nlbLB) backends() (map[string]nlbStatus, error) {
	code, body, err := l.get("/backends")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /backends: %d %q", code, body)
	}
	var m map[string][]nlbStatus
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("GET /backends: %v: %q", err, body)
	}
	out := map[string]nlbStatus{}
	for _, s := range m["default"] {
		out[s.Addr] = s
	}
	return out, nil
}

// poll calls cond every 10ms until it reports true; it fails the test after
// timeout or when the balancer exits.
func (l *nlbLB) poll(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		select {
		case <-l.p.done:
			t.Fatalf("%s exited while waiting for %s:\n%s", l.name, what, l.p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s within %v: %s", l.name, what, timeout, detail)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *nlbLB) waitStates(t *testing.T, want map[string]string, timeout time.Duration) {
	t.Helper()
	l.poll(t, fmt.Sprintf("backend states %v", want), timeout, func() (bool, string) {
		st, err := l.backends()
		if err != nil {
			return false, err.Error()
		}
		for a, s := range want {
			if st[a].State != s {
				return false, fmt.Sprintf("%v", st)
			}
		}
		return true, ""
	})
}

// waitState waits for a backend's state and returns the time since t0.
func (l *nlbLB) waitState(t *testing.T, addr, state string, t0 time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	var at time.Duration
	l.poll(t, fmt.Sprintf("%s %s", addr, state), timeout, func() (bool, string) {
		st, err := l.backends()
		at = time.Since(t0)
		if err != nil {
			return false, err.Error()
		}
		return st[addr].State == state, fmt.Sprintf("%v", st)
	})
	return at
}

// checkFlows compares the balancer's flow counts with what the clients saw.
func (l *nlbLB) checkFlows(t *testing.T, step string, beName map[string]string, want map[string]int) {
	t.Helper()
	st, err := l.backends()
	if err != nil {
		t.Fatalf("%s %s /backends: %v", step, l.name, err)
	}
	got := map[string]int{}
	for a, s := range st {
		if s.Flows > 0 {
			got[beName[a]] = s.Flows
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s %s reports flows %v, the clients saw %v", step, l.name, got, want)
	}
}

// nlbClient is a UDP socket of the client host with a fixed port.
type nlbClient struct {
	conn *net.UDPConn
	addr netip.AddrPort
	buf  []byte
}

func nlbOpenClients(t *testing.T, h *netns.Host, firstPort, n int) []*nlbClient {
	t.Helper()
	var cs []*nlbClient
	err := h.Do(func() error {
		for i := 0; i < n; i++ {
			a := netip.AddrPortFrom(h.IP, uint16(firstPort+i))
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(a))
			if err != nil {
				return err
			}
			cs = append(cs, &nlbClient{conn: c, addr: a, buf: make([]byte, 2048)})
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range cs {
			c.conn.Close()
		}
	})
	if err != nil {
		t.Fatalf("client sockets on %s: %v", h.Name, err)
	}
	return cs
}

var nlbRetries atomic.Int64

// exchange sends one datagram to vip and returns the name of the backend
// that answered. It waits at most a second per attempt and retries a lost
// datagram at most 3 times.
func (c *nlbClient) exchange(vip netip.AddrPort, tag string) (string, error) {
	msg := fmt.Sprintf("%s/%d", tag, c.addr.Port())
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			nlbRetries.Add(1)
		}
		if _, err := c.conn.WriteToUDPAddrPort([]byte(msg), vip); err != nil {
			return "", fmt.Errorf("send: %w", err)
		}
		if err := c.conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return "", err
		}
		for {
			n, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return "", fmt.Errorf("read: %w", err)
			}
			parts := strings.SplitN(string(c.buf[:n]), "|", 4)
			if len(parts) != 4 {
				return "", fmt.Errorf("malformed answer %q from %v", c.buf[:n], from)
			}
			if parts[3] != msg {
				continue // a late answer of an earlier round
			}
			switch {
			case from != vip:
				return "", fmt.Errorf("answer from %v, not from the VIP %v", from, vip)
			case parts[1] != c.addr.String():
				return "", fmt.Errorf("%s saw client %s in the PROXY header, want %s", parts[0], parts[1], c.addr)
			case parts[2] != vip.String():
				return "", fmt.Errorf("%s saw service %s in the PROXY header, want %s", parts[0], parts[2], vip)
			}
			return parts[0], nil
		}
	}
	return "", errors.New("no answer after 4 attempts")
}

// nlbRound makes every client exchange one datagram through vip, 50 at a
// time, and returns the answering backend by client port.
func nlbRound(t *testing.T, clients []*nlbClient, vip netip.AddrPort, tag string) map[uint16]string {
	t.Helper()
	start := time.Now()
	names := make([]string, len(clients))
	errs := make([]error, len(clients))
	const parallel = 50
	var wg sync.WaitGroup
	for g := 0; g < parallel; g++ {
		wg.Go(func() {
			for i := g; i < len(clients); i += parallel {
				names[i], errs[i] = clients[i].exchange(vip, tag)
			}
		})
	}
	wg.Wait()
	out := map[uint16]string{}
	var failed []string
	for i, c := range clients {
		if errs[i] != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", c.addr, errs[i]))
			continue
		}
		out[c.addr.Port()] = names[i]
	}
	if len(failed) > 0 {
		t.Fatalf("round %s through %s: %d of %d clients failed, e.g. %v", tag, vip, len(failed), len(clients), failed[:min(5, len(failed))])
	}
	t.Logf("round %s: %d clients through %s in %v", tag, len(clients), vip, time.Since(start).Round(time.Millisecond))
	return out
}

func nlbCount(r map[uint16]string) map[string]int {
	c := map[string]int{}
	for _, n := range r {
		c[n]++
	}
	return c
}

// nlbMoved lists the clients whose backend differs between a and b.
func nlbMoved(a, b map[uint16]string) []string {
	var out []string
	for port, x := range a {
		if y := b[port]; y != x {
			out = append(out, fmt.Sprintf("%d: %s -> %s", port, x, y))
		}
	}
	slices.Sort(out)
	return out
}
