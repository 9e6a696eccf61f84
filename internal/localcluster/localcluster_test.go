package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/internal/localnet"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := localnet.FreePort("udp4")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

func startCluster(t *testing.T, dtls bool, onEvent func(string, []byte)) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	cfg := Config{CoAP: freeAddr(t), HealthInterval: 200 * time.Millisecond, Logger: quiet, OnEvent: onEvent}
	if dtls {
		cfg.CoAPS = freeAddr(t)
	}
	c, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(context.Background()) })
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDevicesThroughTheBalancer: devices that register at the cluster's one
// service address are spread over the instances, each registration shows
// the device's own address (PROXY v2 from the balancer), and the events and
// a northbound read go over the shared bus.
func TestDevicesThroughTheBalancer(t *testing.T) {
	var regNew atomic.Int32
	c := startCluster(t, false, func(channel string, _ []byte) {
		if channel == northbound.ChannelRegNew {
			regNew.Add(1)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events, err := c.Bus().Subscribe(ctx, northbound.ChannelRegNew, northbound.ChannelResp)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	const n = 12
	owners := map[string]int{}
	for i := range n {
		d := simdevice.New(simdevice.Config{Endpoint: fmt.Sprintf("dev-%d", i), Server: c.cfg.CoAP, Logger: quiet})
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if _, err := d.Register(ctx); err != nil {
			t.Fatalf("dev-%d: register through the balancer: %v", i, err)
		}
		reg, err := c.Store().GetByEndpoint(ctx, d.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		local := d.LocalAddr().(*net.UDPAddr).AddrPort()
		if reg.Port != local.Port() || reg.Address != local.Addr().String() {
			t.Fatalf("%s registered from %s:%d, the device is at %v", d.Endpoint(), reg.Address, reg.Port, local)
		}
		owner, err := c.Store().Owner(ctx, d.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		owners[owner]++
	}
	if len(owners) < 2 {
		t.Fatalf("every device on one instance: %v", owners)
	}
	for o := range owners {
		if o != "node-1" && o != "node-2" && o != "node-3" {
			t.Fatalf("owner %q is not an instance", o)
		}
	}
	seen := 0
	for seen < n {
		select {
		case m := <-events.C():
			if m.Channel == northbound.ChannelRegNew {
				seen++
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d LESHAN_REG_NEW events", seen, n)
		}
	}

	for regNew.Load() != n {
		if ctx.Err() != nil {
			t.Fatalf("OnEvent saw %d LESHAN_REG_NEW, want %d", regNew.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}

	req := `{"ep":"dev-3","ticket":"t-read","req":{"kind":"read","path":"/3/0/0"}}`
	if err := c.Bus().Publish(ctx, northbound.ChannelReq, []byte(req)); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-events.C():
			if m.Channel != northbound.ChannelResp {
				continue
			}
			var r struct {
				Ticket string `json:"ticket"`
				Ack    bool   `json:"ack"`
				Resp   *struct {
					Code string `json:"code"`
				} `json:"resp"`
				Err any `json:"err"`
			}
			if err := json.Unmarshal(m.Payload, &r); err != nil || r.Ticket != "t-read" {
				continue
			}
			if r.Err != nil {
				t.Fatalf("read answered err: %s", m.Payload)
			}
			if r.Resp != nil {
				if r.Resp.Code != "CONTENT" {
					t.Fatalf("read answered %s", m.Payload)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("no answer to the northbound read")
		}
	}
}

// TestDTLSThroughTheBalancer: with a CoAPS service, a PSK device
// registers over DTLS through the balancer.
func TestDTLSThroughTheBalancer(t *testing.T) {
	c := startCluster(t, true, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := []byte("0123456789abcdef")
	if err := c.Store().PutSecurity(ctx, store.SecurityInfo{Endpoint: "sec-1", Identity: "sec-1-id", Key: key}); err != nil {
		t.Fatal(err)
	}
	d := simdevice.New(simdevice.Config{Endpoint: "sec-1", Server: c.cfg.CoAPS, PSK: key, PSKIdentity: "sec-1-id", CID: true, Logger: quiet})
	if err := d.Start(ctx); err != nil {
		t.Fatalf("DTLS handshake through the balancer: %v", err)
	}
	defer d.Close()
	if _, err := d.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store().GetByEndpoint(ctx, "sec-1"); err != nil {
		t.Fatalf("registration over DTLS: %v", err)
	}
	if !d.CIDInUse() {
		t.Fatal("the device got no Connection ID")
	}
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{CoAP: pc.LocalAddr().String(), Logger: quiet})
	if err == nil {
		c.Stop(ctx)
		t.Fatal("started on an address in use")
	}
}
