package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/redistest"
)

// lwm2mLB is a started lwm2m-lb.
type lwm2mLB struct {
	*proc
	vip   string
	admin string
}

func startLB(t *testing.T, args ...string) *lwm2mLB {
	t.Helper()
	lb := &lwm2mLB{
		vip:   fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t)),
		admin: fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t)),
	}
	lb.proc = startProc(t, "lwm2m-lb", append([]string{"--listen", lb.vip, "--admin", lb.admin,
		"--health-interval", "200ms", "--health-timeout", "150ms", "--fall", "2", "--log-level", "debug"}, args...)...)
	waitHTTP(t, "http://"+lb.admin+"/healthz", lb.proc)
	return lb
}

type backendStatus struct {
	Addr  string `json:"addr"`
	State string `json:"state"`
	Flows int    `json:"flows"`
}

func (lb *lwm2mLB) backends(t *testing.T) []backendStatus {
	t.Helper()
	resp, err := http.Get("http://" + lb.admin + "/backends")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string][]backendStatus
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m["default"]
}

func (lb *lwm2mLB) waitBackends(t *testing.T, what string, cond func([]backendStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		bs := lb.backends(t)
		if cond(bs) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, bs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitUp waits until n backends are up.
func (lb *lwm2mLB) waitUp(t *testing.T, n int) {
	t.Helper()
	lb.waitBackends(t, fmt.Sprintf("%d backends up", n), func(bs []backendStatus) bool {
		up := 0
		for _, b := range bs {
			if b.State == "up" {
				up++
			}
		}
		return up == n
	})
}

func metric(t *testing.T, admin, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestLBProxyCluster: lwm2m-lb in proxy mode in front of three
// lwm2m-servers on one Redis, found through the membership. libcoap
// registrations show the device's real port in LESHAN_REG_NEW and an
// owning instance per device; after one server is killed, only its devices
// change owner.
func TestLBProxyCluster(t *testing.T) {
	need(t, "coap-client-notls", "redis-cli", "redis-server")
	rds := redistest.Start(t)
	proxyArgs := []string{"--proxy-protocol", "--trusted-proxy", "127.0.0.0/8", "--heartbeat", "200ms", "--member-ttl", "1s"}
	servers := map[string]*lwm2mServer{}
	for _, id := range []string{"s1", "s2", "s3"} {
		servers[id] = startServer(t, id, rds.URL, proxyArgs...)
	}
	lb := startLB(t, "--discover", rds.URL, "--mode", "proxy")
	lb.waitUp(t, 3)
	sub := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP")

	const n = 24
	type device struct {
		port  int
		regID string
		owner string
	}
	devs := make([]*device, n)
	owners := map[string]int{}
	for i := range devs {
		d := &device{port: freeUDPPort(t)}
		res := coapClient(t, "-p", fmt.Sprint(d.port), "-m", "post", "-t", "40", "-e", deviceLinks,
			fmt.Sprintf("coap://%s/rd?ep=dev-%d&lt=300&lwm2m=1.1", lb.vip, i))
		if res.Code != "2.01" {
			t.Fatalf("register dev-%d through the balancer: %s\n%s", i, res.Code, res.Output)
		}
		d.regID = strings.TrimPrefix(res.Location, "rd/")
		ch, payload := sub.next(t, 5*time.Second)
		ev := decodeReg(t, payload)
		if ch != "LESHAN_REG_NEW" || ev.Endpoint != fmt.Sprintf("dev-%d", i) || ev.Port != d.port || ev.Address != "127.0.0.1" {
			t.Fatalf("got %s %s; want REG_NEW with the device's real port %d", ch, payload, d.port)
		}
		if servers[ev.Instance] == nil {
			t.Fatalf("REG_NEW names instance %q", ev.Instance)
		}
		d.owner = ev.Instance
		owners[ev.Instance]++
		devs[i] = d
	}
	t.Logf("devices per instance: %v", owners)
	if len(owners) < 2 {
		t.Fatalf("%d devices all on %v", n, owners)
	}

	// Kill the instance with the most devices (a crash: no clean leave).
	victim := ""
	for id, k := range owners {
		if victim == "" || k > owners[victim] {
			victim = id
		}
	}
	servers[victim].Kill()
	lb.waitBackends(t, "the killed backend down or gone", func(bs []backendStatus) bool {
		for _, b := range bs {
			if b.Addr == servers[victim].coap && b.State != "down" {
				return false
			}
		}
		return true
	})

	// Every device updates from its own port: the killed instance's devices
	// reach another instance (their state is in Redis: 2.04), everybody
	// else stays where it was.
	for i, d := range devs {
		res := coapClient(t, "-p", fmt.Sprint(d.port), "-m", "post", fmt.Sprintf("coap://%s/rd/%s", lb.vip, d.regID))
		if res.Code != "2.04" {
			t.Fatalf("update dev-%d after the failure: %s\n%s", i, res.Code, res.Output)
		}
		ch, payload := sub.next(t, 5*time.Second)
		var up struct {
			Updated regEvent `json:"regUpdated"`
		}
		if err := json.Unmarshal([]byte(payload), &up); err != nil || ch != "LESHAN_REG_UP" {
			t.Fatalf("got %s %s", ch, payload)
		}
		now := up.Updated.Instance
		switch {
		case d.owner == victim && now == victim:
			t.Errorf("dev-%d still owned by the killed instance", i)
		case d.owner != victim && now != d.owner:
			t.Errorf("dev-%d moved from live instance %s to %s", i, d.owner, now)
		}
		if up.Updated.Port != d.port {
			t.Errorf("dev-%d: port %d, want %d", i, up.Updated.Port, d.port)
		}
	}
	if m := metric(t, lb.admin, "lwm2m_lb_dropped_total"); !strings.Contains(m, `reason="forged_proxy_header",service="default"} 0`) {
		t.Logf("drop counters:\n%s", m)
	}
}

// TestLBNatLibcoapServer: nat mode in front of libcoap's own
// coap-server-notls serves GET and PUT through the balancer.
func TestLBNatLibcoapServer(t *testing.T) {
	need(t, "coap-client-notls", "coap-server-notls")
	var backends []string
	for range 2 {
		port := freeUDPPort(t)
		startProcPath(t, "coap-server-notls", "-A", "127.0.0.1", "-p", fmt.Sprint(port))
		backends = append(backends, fmt.Sprintf("127.0.0.1:%d", port))
	}
	args := []string{"--mode", "nat"}
	for _, b := range backends {
		args = append(args, "--backend", b)
	}
	lb := startLB(t, args...)
	lb.waitBackends(t, "coap-server-notls backends up", func(bs []backendStatus) bool {
		return len(bs) == 2 && bs[0].State == "up" && bs[1].State == "up"
	})
	res := coapClient(t, "-m", "get", fmt.Sprintf("coap://%s/", lb.vip))
	if res.Code != "2.05" || !strings.Contains(res.Output, "libcoap") {
		t.Fatalf("GET / through nat: %s\n%s", res.Code, res.Output)
	}
	// PUT then GET from one client port: one more flow, on one backend.
	port := fmt.Sprint(freeUDPPort(t))
	res = coapClient(t, "-p", port, "-m", "put", "-e", "hello-through-nat", fmt.Sprintf("coap://%s/example_data", lb.vip))
	if res.Code != "2.04" && res.Code != "2.01" {
		t.Fatalf("PUT through nat: %s\n%s", res.Code, res.Output)
	}
	res = coapClient(t, "-p", port, "-m", "get", fmt.Sprintf("coap://%s/example_data", lb.vip))
	if res.Code != "2.05" || !strings.Contains(res.Output, "hello-through-nat") {
		t.Fatalf("GET after PUT through nat: %s\n%s", res.Code, res.Output)
	}
	if m := metric(t, lb.admin, "lwm2m_lb_nat_flows_opened_total"); !strings.Contains(m, "} 2") {
		t.Errorf("nat flows opened:\n%s", m)
	}
}

type lbBackend struct {
	Addr     string `json:"addr"`
	State    string `json:"state"`
	Draining bool   `json:"draining"`
}

// TestLBDiscoveryDrainLeave: the balancer follows the membership: a
// draining instance keeps its devices and gets no new ones, an instance that
// stops leaves the backend set, each within two seconds.
func TestLBDiscoveryDrainLeave(t *testing.T) {
	need(t, "coap-client-notls", "redis-cli", "redis-server")
	rds := redistest.Start(t)
	proxyArgs := []string{"--proxy-protocol", "--trusted-proxy", "127.0.0.1", "--heartbeat", "200ms", "--member-ttl", "1s"}
	s1 := startServer(t, "s1", rds.URL, proxyArgs...)
	s2 := startServer(t, "s2", rds.URL, proxyArgs...)
	lb := startLB(t, "--discover", rds.URL)
	lb.waitBackends(t, "two backends up", func(bs []backendStatus) bool {
		return len(bs) == 2 && bs[0].State == "up" && bs[1].State == "up"
	})
	sub := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP")
	register := func(ep string, port int) (string, string) {
		res := coapClient(t, "-p", fmt.Sprint(port), "-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coap://%s/rd?ep=%s&lt=300", lb.vip, ep))
		if res.Code != "2.01" {
			t.Fatalf("register %s: %s\n%s", ep, res.Code, res.Output)
		}
		_, payload := sub.next(t, 5*time.Second)
		return strings.TrimPrefix(res.Location, "rd/"), decodeReg(t, payload).Instance
	}
	type dev struct {
		port        int
		regID, inst string
	}
	var onS1 []dev
	for i := 0; len(onS1) < 3 && i < 40; i++ {
		d := dev{port: freeUDPPort(t)}
		d.regID, d.inst = register(fmt.Sprintf("old-%d", i), d.port)
		if d.inst == "s1" {
			onS1 = append(onS1, d)
		}
	}
	if len(onS1) == 0 {
		t.Fatal("no device placed on s1")
	}

	// Drain s1 through its admin endpoint.
	resp, err := http.Post("http://"+s1.admin+"/drain", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /drain: %v %v", resp, err)
	}
	resp.Body.Close()
	start := time.Now()
	lb.waitBackends(t, "s1 draining", func(bs []backendStatus) bool {
		for _, b := range lbBackends(t, lb) {
			if b.Addr == s1.coap {
				return b.Draining
			}
		}
		return false
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("drain followed after %v, want within 2s", d)
	}
	for i := range 10 {
		if _, inst := register(fmt.Sprintf("new-%d", i), freeUDPPort(t)); inst != "s2" {
			t.Fatalf("new device placed on draining %s", inst)
		}
	}
	for _, d := range onS1 {
		res := coapClient(t, "-p", fmt.Sprint(d.port), "-m", "post", fmt.Sprintf("coap://%s/rd/%s", lb.vip, d.regID))
		_, payload := sub.next(t, 5*time.Second)
		var up struct {
			Updated regEvent `json:"regUpdated"`
		}
		_ = json.Unmarshal([]byte(payload), &up)
		if res.Code != "2.04" || up.Updated.Instance != "s1" {
			t.Fatalf("device of the draining instance: %s, now on %q", res.Code, up.Updated.Instance)
		}
	}

	// s2 stops cleanly: it leaves the membership, the balancer drops it.
	s2.Stop(t)
	start = time.Now()
	lb.waitBackends(t, "s2 gone", func(bs []backendStatus) bool { return len(bs) == 1 && bs[0].Addr == s1.coap })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("leave followed after %v, want within 2s", d)
	}
}

func lbBackends(t *testing.T, lb *lwm2mLB) []lbBackend {
	t.Helper()
	resp, err := http.Get("http://" + lb.admin + "/backends")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string][]lbBackend
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m["default"]
}
