package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/redistest"
)

const deviceLinks = `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`

type regEvent struct {
	Address  string `json:"address"`
	Port     int    `json:"port"`
	Endpoint string `json:"ep"`
	RegID    string `json:"regId"`
	Lifetime int    `json:"lt"`
	Instance string `json:"instance"`
	ObjLink  []struct {
		URL string            `json:"url"`
		At  map[string]string `json:"at"`
	} `json:"objLink"`
	RegDate int64 `json:"regDate"`
	LastUp  int64 `json:"lastUp"`
	Root    string
}

func decodeReg(t *testing.T, payload string) regEvent {
	t.Helper()
	var e regEvent
	if err := json.Unmarshal([]byte(payload), &e); err != nil {
		t.Fatalf("event payload %q: %v", payload, err)
	}
	return e
}

func hasLink(e regEvent, url string) bool {
	for _, l := range e.ObjLink {
		if l.URL == url {
			return true
		}
	}
	return false
}

// TestLibcoapLifecycle: coap-client-notls registers, updates and
// de-registers; redis-cli SUBSCRIBE sees each event once, with the device's
// real source port and the /3/0 object link.
func TestLibcoapLifecycle(t *testing.T) {
	need(t, "coap-client-notls", "redis-cli", "redis-server")
	rds := redistest.Start(t)
	srv := startServer(t, "inst-a", rds.URL)
	sub := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP", "LESHAN_REG_DEL")

	devPort := freeUDPPort(t)
	res := coapClient(t, "-p", fmt.Sprint(devPort), "-m", "post", "-t", "40", "-e", deviceLinks,
		fmt.Sprintf("coap://%s/rd?ep=libcoap-dev&lt=300&lwm2m=1.1&b=U", srv.coap))
	if res.Code != "2.01" || !strings.HasPrefix(res.Location, "rd/") {
		t.Fatalf("register: code %s location %q\n%s", res.Code, res.Location, res.Output)
	}
	regID := strings.TrimPrefix(res.Location, "rd/")

	ch, payload := sub.next(t, 5*time.Second)
	ev := decodeReg(t, payload)
	if ch != "LESHAN_REG_NEW" || ev.Endpoint != "libcoap-dev" || ev.RegID != regID || ev.Port != devPort ||
		ev.Address != "127.0.0.1" || !hasLink(ev, "/3/0") || ev.Instance != "inst-a" || ev.Lifetime != 300 {
		t.Fatalf("got %s %s; want REG_NEW for libcoap-dev from port %d", ch, payload, devPort)
	}

	updPort := freeUDPPort(t)
	res = coapClient(t, "-p", fmt.Sprint(updPort), "-m", "post", fmt.Sprintf("coap://%s/rd/%s?lt=600", srv.coap, regID))
	if res.Code != "2.04" {
		t.Fatalf("update: %s\n%s", res.Code, res.Output)
	}
	ch, payload = sub.next(t, 5*time.Second)
	var up struct {
		Update  map[string]any `json:"regUpdate"`
		Updated regEvent       `json:"regUpdated"`
	}
	if err := json.Unmarshal([]byte(payload), &up); err != nil {
		t.Fatal(err)
	}
	if ch != "LESHAN_REG_UP" || up.Update["regId"] != regID || up.Update["port"] != float64(updPort) ||
		up.Updated.Port != updPort || up.Updated.Lifetime != 600 || !hasLink(up.Updated, "/3/0") {
		t.Fatalf("got %s %s; want REG_UP with port %d, lt 600", ch, payload, updPort)
	}

	res = coapClient(t, "-m", "delete", fmt.Sprintf("coap://%s/rd/%s", srv.coap, regID))
	if res.Code != "2.02" {
		t.Fatalf("de-register: %s\n%s", res.Code, res.Output)
	}
	ch, payload = sub.next(t, 5*time.Second)
	if ev := decodeReg(t, payload); ch != "LESHAN_REG_DEL" || ev.RegID != regID {
		t.Fatalf("got %s %s; want REG_DEL", ch, payload)
	}
	sub.none(t, 500*time.Millisecond) // each event exactly once

	// Error answers seen by a real client.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coap://%s/rd?lt=30", srv.coap)}, "4.00"},
		{[]string{"-m", "post", "-t", "40", "-e", "</3/0", fmt.Sprintf("coap://%s/rd?ep=x", srv.coap)}, "4.00"},
		{[]string{"-m", "post", fmt.Sprintf("coap://%s/rd/%s", srv.coap, regID)}, "4.04"},
		{[]string{"-m", "delete", fmt.Sprintf("coap://%s/rd/%s", srv.coap, regID)}, "4.04"},
		{[]string{"-m", "get", fmt.Sprintf("coap://%s/.well-known/core", srv.coap)}, "4.04"},
		{[]string{"-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coap://%s/rd?ep=x&lwm2m=3.0", srv.coap)}, "4.12"},
	} {
		if res := coapClient(t, tc.args...); res.Code != tc.want {
			t.Errorf("coap-client-notls %v: %s, want %s", tc.args, res.Code, tc.want)
		}
	}
	sub.none(t, 300*time.Millisecond)
	srv.Stop(t)
}

// TestTwoInstancesUpdate: register through instance A, update through B
// with the same rd/<regId>: 2.04 and one LESHAN_REG_UP naming B.
func TestTwoInstancesUpdate(t *testing.T) {
	need(t, "coap-client-notls", "redis-cli", "redis-server")
	rds := redistest.Start(t)
	a := startServer(t, "inst-a", rds.URL)
	b := startServer(t, "inst-b", rds.URL)
	sub := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_UP", "LESHAN_REG_DEL")

	res := coapClient(t, "-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coap://%s/rd?ep=roamer&lt=300", a.coap))
	if res.Code != "2.01" {
		t.Fatalf("register via A: %s\n%s", res.Code, res.Output)
	}
	regID := strings.TrimPrefix(res.Location, "rd/")
	if ch, payload := sub.next(t, 5*time.Second); ch != "LESHAN_REG_NEW" || decodeReg(t, payload).Instance != "inst-a" {
		t.Fatalf("got %s %s", ch, payload)
	}
	res = coapClient(t, "-m", "post", fmt.Sprintf("coap://%s/rd/%s", b.coap, regID))
	if res.Code != "2.04" {
		t.Fatalf("update via B: %s\n%s", res.Code, res.Output)
	}
	ch, payload := sub.next(t, 5*time.Second)
	var up struct {
		Updated regEvent `json:"regUpdated"`
	}
	_ = json.Unmarshal([]byte(payload), &up)
	if ch != "LESHAN_REG_UP" || up.Updated.RegID != regID || up.Updated.Instance != "inst-b" {
		t.Fatalf("got %s %s; want one REG_UP from inst-b", ch, payload)
	}
	sub.none(t, 500*time.Millisecond)
}

// TestExpiryExactlyOnce: lt=2 expires within a few seconds and exactly one
// LESHAN_REG_DEL is published although two instances sweep.
func TestExpiryExactlyOnce(t *testing.T) {
	need(t, "coap-client-notls", "redis-cli", "redis-server")
	rds := redistest.Start(t)
	fast := []string{"--expiry-grace", "500ms", "--sweep-interval", "100ms"}
	a := startServer(t, "inst-a", rds.URL, fast...)
	startServer(t, "inst-b", rds.URL, fast...)
	sub := subscribe(t, rds.Addr, "LESHAN_REG_NEW", "LESHAN_REG_DEL")

	const n = 5
	for i := range n {
		res := coapClient(t, "-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coap://%s/rd?ep=short-%d&lt=2", a.coap, i))
		if res.Code != "2.01" {
			t.Fatalf("register: %s\n%s", res.Code, res.Output)
		}
	}
	start := time.Now()
	dels := map[string]int{}
	for len(dels) < n {
		ch, payload := sub.next(t, 10*time.Second)
		if ch == "LESHAN_REG_DEL" {
			dels[decodeReg(t, payload).Endpoint]++
		}
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("expiry took %v for lt=2", took)
	}
	sub.none(t, 1500*time.Millisecond)
	for ep, k := range dels {
		if k != 1 {
			t.Errorf("%s: %d REG_DEL, want 1", ep, k)
		}
	}
}
