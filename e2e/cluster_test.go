package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestClusterBinary: `make run`'s lwm2m-cluster, three instances behind the
// balancer on an in-memory state. coap-client-notls registers at the
// balancer's address and the logged LESHAN_REG_NEW shows its real port;
// after a PSK is put through an instance's admin API, coap-client-openssl
// registers over DTLS; SIGTERM stops everything.
func TestClusterBinary(t *testing.T) {
	need(t, "coap-client-notls", "coap-client-openssl")
	coap := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	coaps := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := startProc(t, "lwm2m-cluster", "--coap", coap, "--coaps", coaps, "--admin", admin,
		"--instance-admin-port", "0", "--health-interval", "200ms")
	waitHTTP(t, "http://"+admin+"/healthz", p)

	devPort := freeUDPPort(t)
	res := coapClient(t, "-p", fmt.Sprint(devPort), "-m", "post", "-t", "40", "-e", deviceLinks,
		fmt.Sprintf("coap://%s/rd?ep=cluster-dev&lt=300", coap))
	if res.Code != "2.01" {
		t.Fatalf("register through the cluster: %s\n%s", res.Code, res.Output)
	}
	waitOutput(t, p, regexp.MustCompile(`channel=LESHAN_REG_NEW .*\\"port\\":`+fmt.Sprint(devPort)+`.*cluster-dev`))

	// The instances' admin addresses are in the log.
	adminLine := regexp.MustCompile(`msg=instance id=node-1 coap=\S+ admin=(http://\S+)`)
	waitOutput(t, p, adminLine)
	m := adminLine.FindStringSubmatch(p.Output())
	if m == nil {
		t.Fatalf("no instance admin address in the output:\n%s", p.Output())
	}
	req, _ := http.NewRequest(http.MethodPut, m[1]+"/security/psk-dev",
		bytes.NewBufferString(`{"pskIdentity":"psk-dev-id","pskKey":"`+fmt.Sprintf("%x", "psk-key-0123")+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT security: %s", resp.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "coap-client-openssl", "-v", "7", "-B", "5", "-u", "psk-dev-id", "-k", "psk-key-0123",
		"-m", "post", "-t", "40", "-e", deviceLinks, fmt.Sprintf("coaps://%s/rd?ep=psk-dev&lt=300", coaps)).CombinedOutput()
	code := ""
	for _, line := range strings.Split(string(out), "\n") {
		if m := respLine.FindStringSubmatch(line); m != nil && !strings.Contains(line, "c:POST") && !strings.HasPrefix(m[1], "0.") {
			code = m[1]
		}
	}
	if code != "2.01" {
		t.Fatalf("register over DTLS through the cluster: %q\n%s", code, out)
	}
	waitOutput(t, p, regexp.MustCompile(`channel=LESHAN_REG_NEW .*psk-dev`))
	p.Stop(t)
	if !strings.Contains(p.Output(), "shutting down") {
		t.Fatalf("no clean shutdown:\n%s", p.Output())
	}
}

// waitOutput waits until the process has printed a line matching re.
func waitOutput(t *testing.T, p *proc, re *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !re.MatchString(p.Output()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s printed nothing matching %s:\n%s", p.name, re, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
