package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/internal/natsim"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
)

// dtlsCluster is two (or more) lwm2m-server instances with CoAPS behind a
// proxy-mode lwm2m-lb DTLS service, on one Redis.
type dtlsCluster struct {
	rds     *redistest.Server
	servers map[string]*lwm2mServer
	lb      *proc
	vip     string
	lbAdmin string
}

func startDTLSCluster(t *testing.T, ids ...string) *dtlsCluster {
	t.Helper()
	need(t, "redis-server", "redis-cli")
	c := &dtlsCluster{rds: redistest.Start(t), servers: map[string]*lwm2mServer{}}
	for _, id := range ids {
		coaps := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
		s := startServer(t, id, c.rds.URL, "--coaps", coaps, "--proxy-protocol", "--trusted-proxy", "127.0.0.1",
			"--heartbeat", "200ms", "--member-ttl", "1s", "--dtls-handshake-timeout", "3s")
		s.coaps = coaps
		c.servers[id] = s
	}
	c.vip = fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	c.lbAdmin = fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	c.lb = startProc(t, "lwm2m-lb", "--listen-dtls", c.vip, "--discover", c.rds.URL, "--admin", c.lbAdmin,
		"--health-interval", "200ms", "--health-timeout", "150ms", "--fall", "2", "--log-level", "debug")
	waitHTTP(t, "http://"+c.lbAdmin+"/healthz", c.lb)
	deadline := time.Now().Add(10 * time.Second)
	for {
		up := 0
		for _, b := range c.backends(t) {
			if b.State == "up" && b.NodeID != 0 {
				up++
			}
		}
		if up == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DTLS backends not up with node ids: %+v", c.backends(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

type dtlsBackend struct {
	Addr   string `json:"addr"`
	State  string `json:"state"`
	NodeID uint16 `json:"nodeId"`
}

func (c *dtlsCluster) backends(t *testing.T) []dtlsBackend {
	t.Helper()
	var m map[string][]dtlsBackend
	getJSON(t, "http://"+c.lbAdmin+"/backends", &m)
	return m["dtls"]
}

// provision stores an endpoint's PSK with lwm2m-cli.
func (c *dtlsCluster) provision(t *testing.T, ep, identity, key string) {
	t.Helper()
	out, err := exec.Command(binDir+"/lwm2m-cli", "--redis", c.rds.URL, "security", "add",
		"--ep", ep, "--psk-identity", identity, "--psk-key", hex.EncodeToString([]byte(key))).CombinedOutput()
	if err != nil {
		t.Fatalf("lwm2m-cli security add: %v\n%s", err, out)
	}
}

// handshakes sums lwm2m_dtls_handshakes_total{kind} over the instances.
func (c *dtlsCluster) handshakes(t *testing.T, kind string) int {
	t.Helper()
	n := 0
	for _, s := range c.servers {
		select {
		case <-s.done:
			continue // killed
		default:
		}
		n += metricValue(t, s.admin, fmt.Sprintf(`lwm2m_dtls_handshakes_total{kind=%q}`, kind))
	}
	return n
}

var metricLine = regexp.MustCompile(`^(\S+) (\S+)$`)

// metricValue returns the integer value of one exact series, 0 if absent.
func metricValue(t *testing.T, admin, series string) int {
	t.Helper()
	for _, l := range strings.Split(metric(t, admin, strings.SplitN(series, "{", 2)[0]), "\n") {
		if m := metricLine.FindStringSubmatch(l); m != nil && m[1] == series {
			f, _ := strconv.ParseFloat(m[2], 64)
			return int(f)
		}
	}
	return 0
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := httpGet(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(resp, v); err != nil {
		t.Fatalf("%s: %v: %s", url, err, resp)
	}
}

// device is a Go LwM2M device over DTLS-PSK behind a rebinding NAT.
type device struct {
	t        *testing.T
	ep       string
	identity string
	key      []byte
	cid      bool
	target   *net.UDPAddr
	sessions *clientSessions
	nat      *natsim.Conn
	dc       *piondtls.Conn
	cc       *udpClient.Conn
	regID    string
}

func newDevice(t *testing.T, target, ep, identity, key string, cid bool) *device {
	ua, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, ep: ep, identity: identity, key: []byte(key), cid: cid, target: ua, sessions: &clientSessions{m: map[string]piondtls.Session{}}}
	t.Cleanup(d.close)
	return d
}

// connect opens a DTLS session (resuming the previous one if any) from a
// fresh source port.
func (d *device) connect() error {
	d.close()
	nat, err := natsim.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	cfg := &piondtls.Config{
		PSK:             func([]byte) ([]byte, error) { return d.key, nil },
		PSKIdentityHint: []byte(d.identity),
		CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
		SessionStore:    d.sessions,
	}
	if d.cid {
		cfg.ConnectionIDGenerator = piondtls.OnlySendCIDGenerator()
	}
	dc, err := piondtls.Client(nat, d.target, cfg)
	if err != nil {
		nat.Close()
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		nat.Close()
		return fmt.Errorf("handshake: %w", err)
	}
	d.nat, d.dc, d.cc = nat, dc, dtls.Client(dc, options.WithMux(dtlsDeviceRouter(d.ep)))
	return nil
}

// dtlsDeviceRouter answers the server's reads of /3/0/0 (text) with the
// endpoint name: enough to see northbound requests reach the device.
func dtlsDeviceRouter(ep string) *mux.Router {
	r := mux.NewRouter()
	_ = r.Handle("/3/0/0", mux.HandlerFunc(func(w mux.ResponseWriter, req *mux.Message) {
		_ = w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader([]byte(ep)))
	}))
	return r
}

func (d *device) close() {
	if d.cc != nil {
		_ = d.cc.Close()
	}
	if d.nat != nil {
		_ = d.nat.Close()
	}
	d.cc, d.dc, d.nat = nil, nil, nil
}

func (d *device) post(path string, payload []byte, queries ...string) (codes.Code, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var opts []message.Option
	for _, q := range queries {
		opts = append(opts, message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	var body *bytes.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
		resp, err := d.cc.Post(ctx, path, message.AppLinkFormat, body, opts...)
		if err != nil {
			return 0, "", err
		}
		loc, _ := resp.Options().LocationPath()
		return resp.Code(), loc, nil
	}
	resp, err := d.cc.Post(ctx, path, message.TextPlain, nil, opts...)
	if err != nil {
		return 0, "", err
	}
	return resp.Code(), "", nil
}

func (d *device) register() error {
	code, loc, err := d.post("/rd", []byte(deviceLinks), "ep="+d.ep, "lt=300", "lwm2m=1.1")
	if err != nil {
		return err
	}
	if code != codes.Created {
		return fmt.Errorf("register: %v", code)
	}
	d.regID = strings.TrimPrefix(loc, "/rd/")
	return nil
}

func (d *device) update() (codes.Code, error) {
	code, _, err := d.post("/rd/"+d.regID, nil)
	return code, err
}

// clientSessions is the device's own session cache (pion asks for a zero
// Session and no error when there is none).
type clientSessions struct {
	mu sync.Mutex
	m  map[string]piondtls.Session
}

func (s *clientSessions) Set(k []byte, v piondtls.Session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[string(k)] = v
	return nil
}

func (s *clientSessions) Get(k []byte) (piondtls.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[string(k)], nil
}

func (s *clientSessions) Del(k []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, string(k))
	return nil
}

func nextReg(t *testing.T, sub *subscriber, ch string) regEvent {
	t.Helper()
	for {
		c, payload := sub.next(t, 10*time.Second)
		if c != ch {
			continue
		}
		if ch == "LESHAN_REG_UP" {
			var up struct {
				Updated regEvent `json:"regUpdated"`
			}
			if err := json.Unmarshal([]byte(payload), &up); err != nil {
				t.Fatal(err)
			}
			return up.Updated
		}
		return decodeReg(t, payload)
	}
}

// TestDTLSLibcoap: coap-client-openssl registers over DTLS-PSK through
// lwm2m-lb in front of two instances; a wrong key is refused and counted;
// another endpoint's identity gets 4.03.
func TestDTLSLibcoap(t *testing.T) {
	need(t, "coap-client-openssl")
	c := startDTLSCluster(t, "s1", "s2")
	c.provision(t, "sec-dev", "sec-id", "sec-key-0123")
	c.provision(t, "other-dev", "other-id", "other-key-456")
	sub := subscribe(t, c.rds.Addr, "LESHAN_REG_NEW")

	client := func(identity, key, ep string) coapResult {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "coap-client-openssl", "-v", "7", "-B", "5", "-u", identity, "-k", key,
			"-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coaps://%s/rd?ep=%s&lt=300", c.vip, ep)).CombinedOutput()
		res := coapResult{Output: string(out)}
		for _, line := range strings.Split(string(out), "\n") {
			if m := respLine.FindStringSubmatch(line); m != nil && !strings.Contains(line, "c:POST") && !strings.HasPrefix(m[1], "0.") {
				res.Code = m[1]
			}
		}
		return res
	}
	if res := client("sec-id", "sec-key-0123", "sec-dev"); res.Code != "2.01" {
		t.Fatalf("register over DTLS: %q\n%s", res.Code, res.Output)
	}
	ev := nextReg(t, sub, "LESHAN_REG_NEW")
	if ev.Endpoint != "sec-dev" || c.servers[ev.Instance] == nil {
		t.Fatalf("REG_NEW %+v", ev)
	}

	failures := func() int {
		n := 0
		for _, s := range c.servers {
			for _, reason := range []string{"handshake", "timeout"} {
				n += metricValue(t, s.admin, fmt.Sprintf(`lwm2m_dtls_handshake_failures_total{reason=%q}`, reason))
			}
		}
		return n
	}
	before := failures()
	if res := client("sec-id", "wrong-key-999", "sec-dev"); res.Code == "2.01" {
		t.Fatalf("registration with a wrong key succeeded\n%s", res.Output)
	}
	// pion drops the undecryptable Finished; the handshake fails when it
	// times out (--dtls-handshake-timeout 3s here).
	deadline := time.Now().Add(10 * time.Second)
	for failures() <= before {
		if time.Now().After(deadline) {
			t.Fatalf("wrong key not counted as a handshake failure")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res := client("other-id", "other-key-456", "sec-dev"); res.Code != "4.03" {
		t.Fatalf("another endpoint's identity: %q, want 4.03\n%s", res.Code, res.Output)
	}
	sub.none(t, 300*time.Millisecond)
}

// TestDTLSCIDRebind: a pion client with Connection IDs registers through
// the balancer, then sends from new source ports (NAT rebinds): every update
// reaches the same instance on the same session, and the registration's
// port follows.
func TestDTLSCIDRebind(t *testing.T) {
	c := startDTLSCluster(t, "s1", "s2")
	c.provision(t, "cid-dev", "cid-id", "cid-key")
	sub := subscribe(t, c.rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP")
	d := newDevice(t, c.vip, "cid-dev", "cid-id", "cid-key", true)
	if err := d.connect(); err != nil {
		t.Fatal(err)
	}
	if err := d.register(); err != nil {
		t.Fatal(err)
	}
	owner := nextReg(t, sub, "LESHAN_REG_NEW").Instance
	peer := newBackendPeer(t, c.rds.Addr)
	for i := range 4 {
		if err := d.nat.Rebind(); err != nil {
			t.Fatal(err)
		}
		code, err := d.update()
		if err != nil || code != codes.Changed {
			t.Fatalf("update %d after rebind: %v %v", i, code, err)
		}
		ev := nextReg(t, sub, "LESHAN_REG_UP")
		if ev.Instance != owner {
			t.Fatalf("update %d reached %s, want %s (the session's instance)", i, ev.Instance, owner)
		}
		if ev.Port != d.nat.Port() {
			t.Fatalf("update %d: registration port %d, device now at %d", i, ev.Port, d.nat.Port())
		}
		// A northbound read (redis-cli PUBLISH) still reaches the device
		// at its new port, on the same session.
		_, resp := peer.call("cid-dev", `{"kind":"read","path":"/3/0/0","contentFormat":0}`)
		if r, ok := respNode(t, resp).(node.Resource); !ok || !r.Value.Equal(node.StringValue("cid-dev")) {
			t.Fatalf("northbound read after rebind %d: %s", i, resp["node"])
		}
	}
	if full, resumed := c.handshakes(t, "full"), c.handshakes(t, "resumed"); full != 1 || resumed != 0 {
		t.Fatalf("handshakes: %d full, %d resumed; want exactly the first one", full, resumed)
	}
	if n := metricValue(t, c.lbAdmin, `lwm2m_lb_cid_routed_total{service="dtls"}`); n < 4 {
		t.Fatalf("CID-routed datagrams at the balancer: %d", n)
	}
}

// TestDTLSRebindWithoutCID: without CID a rebind lands wherever the hash
// says; the device resumes its session (from Redis) instead of a full
// handshake.
func TestDTLSRebindWithoutCID(t *testing.T) {
	c := startDTLSCluster(t, "s1", "s2")
	c.provision(t, "nocid-dev", "nocid-id", "nocid-key")
	d := newDevice(t, c.vip, "nocid-dev", "nocid-id", "nocid-key", false)
	if err := d.connect(); err != nil {
		t.Fatal(err)
	}
	if err := d.register(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		// The NAT gives the device a new port: its session is not found
		// there, the request goes unanswered, the device reconnects.
		if err := d.nat.Rebind(); err != nil {
			t.Fatal(err)
		}
		if code, err := d.update(); err == nil && code == codes.Changed {
			t.Logf("rebind %d: the old session still answered (same instance and address reuse)", i)
			continue
		}
		if err := d.connect(); err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		if code, err := d.update(); err != nil || code != codes.Changed {
			t.Fatalf("update after reconnect %d: %v %v", i, code, err)
		}
	}
	full, resumed := c.handshakes(t, "full"), c.handshakes(t, "resumed")
	t.Logf("handshakes: %d full, %d resumed", full, resumed)
	if full != 1 || resumed < 1 {
		t.Fatalf("handshakes: %d full, %d resumed; want 1 full and the rest resumed", full, resumed)
	}
}

// TestDTLSFailover: kill the instance holding the most of 100 DTLS
// devices: every device recovers on the survivors with a resumed
// handshake, none re-registers, no registration is lost.
func TestDTLSFailover(t *testing.T) {
	c := startDTLSCluster(t, "s1", "s2", "s3")
	const n = 100
	devs := make([]*device, n)
	for i := range devs {
		ep := fmt.Sprintf("fo-%03d", i)
		c.provision(t, ep, "id-"+ep, "key-"+ep)
		devs[i] = newDevice(t, c.vip, ep, "id-"+ep, "key-"+ep, true)
	}
	sub := subscribe(t, c.rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP")
	owner := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.connect(); err != nil {
				errs <- fmt.Errorf("%s: %w", d.ep, err)
				return
			}
			if err := d.register(); err != nil {
				errs <- fmt.Errorf("%s: %w", d.ep, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	per := map[string]int{}
	for range n {
		ev := nextReg(t, sub, "LESHAN_REG_NEW")
		owner[ev.Endpoint] = ev.Instance
		per[ev.Instance]++
	}
	victim := ""
	for id, k := range per {
		if victim == "" || k > per[victim] {
			victim = id
		}
	}
	t.Logf("devices per instance %v; killing %s", per, victim)
	c.servers[victim].Kill()
	fullBefore := c.handshakes(t, "full") // the survivors' own

	// Every device updates. Those of the dead instance get no answer, then
	// reconnect (resuming) and update again.
	var mu sync.Mutex
	moved := 0
	errs = make(chan error, n)
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := d.update()
			if err == nil && code == codes.Changed {
				if owner[d.ep] == victim {
					errs <- fmt.Errorf("%s: answered by a dead instance?", d.ep)
				}
				return
			}
			if owner[d.ep] != victim {
				errs <- fmt.Errorf("%s on a live instance: update failed: %v %v", d.ep, code, err)
				return
			}
			for attempt := 0; ; attempt++ {
				err = d.connect()
				if err == nil {
					code, err = d.update()
					if err == nil && code == codes.Changed {
						break
					}
					err = fmt.Errorf("update: %v %v", code, err)
				}
				if attempt == 4 {
					errs <- fmt.Errorf("%s did not recover: %w", d.ep, err)
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			mu.Lock()
			moved++
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if moved != per[victim] {
		t.Errorf("%d devices recovered, %d were on the killed instance", moved, per[victim])
	}
	if full := c.handshakes(t, "full"); full != fullBefore {
		t.Errorf("recovery caused %d full handshakes, want 0 (all resumed)", full-fullBefore)
	}
	resumed := c.handshakes(t, "resumed")
	if resumed < per[victim] {
		t.Errorf("%d resumed handshakes on the survivors, want %d", resumed, per[victim])
	}
	// No registration lost, none re-registered.
	out, err := exec.Command("redis-cli", "-u", c.rds.URL, "ZCARD", "lwm2m:reg:expiry").Output()
	if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(n) {
		t.Errorf("registrations in Redis: %q %v, want %d", out, err, n)
	}
	for {
		select {
		case m := <-sub.msgs:
			if m[0] == "LESHAN_REG_NEW" {
				t.Errorf("a device re-registered: %s", m[1])
			}
			continue
		case <-time.After(300 * time.Millisecond):
		}
		break
	}
}
