// Package localcluster runs a whole cluster in one process, for trying the
// product out without Redis (make run): lwm2m-lb in proxy mode in front of
// several lwm2m-server instances that share one in-memory store and one
// in-memory northbound bus. The balancer follows the instances' membership
// from that store, as it follows Redis with --discover.
//
// Everything the separate binaries do happens here too: PROXY v2 to the
// instances, health checks, Maglev placement, CID routing for DTLS,
// ownership, northbound dispatch; only the state is in memory, so it lives
// and dies with the process.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/instance"
	"github.com/lwm2mcluster/lwm2m/backend/server"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/lb/app"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Defaults of Config.
const (
	DefaultInstances = 3
	DefaultCoAP      = "127.0.0.1:5683"
	DefaultAdmin     = "127.0.0.1:9684"
)

// Config configures a local cluster.
type Config struct {
	// Instances is the number of lwm2m-server instances (default 3).
	Instances int
	// CoAP is the balancer's plain CoAP service address (default
	// 127.0.0.1:5683).
	CoAP string
	// CoAPS is the balancer's CoAP-over-DTLS (PSK) service address; empty
	// disables DTLS.
	CoAPS string
	// Admin is the balancer's admin address (/backends, /metrics,
	// /healthz); empty disables it.
	Admin string
	// InstanceAdminPort is the admin port of the first instance, the next
	// ones counting up (0: any free port). Each instance's admin serves
	// /healthz, /metrics, /members and the /security API.
	InstanceAdminPort uint16
	// ModelsDir holds extra OMA DDF object models for the instances.
	ModelsDir string
	// HealthInterval is the balancer's health-check interval (default 1s).
	HealthInterval time.Duration
	// OnEvent, when set, gets every northbound event (LESHAN_REG_NEW,
	// _UP, _DEL, LESHAN_RESP, LESHAN_SEND) from before the balancer
	// starts until the cluster stops; in a local cluster they are the
	// only way to see the northbound from outside.
	OnEvent func(channel string, payload []byte)
	Logger  *slog.Logger
}

// Cluster is a running local cluster.
type Cluster struct {
	log       *slog.Logger
	store     *memstore.Store
	bus       *northbound.Broker
	instances []*instance.Instance
	lb        *app.App
	cfg       Config
	errc      chan error
	stopped   chan struct{} // closed by Stop
	// eventsDone is closed when the OnEvent goroutine has returned.
	eventsDone chan struct{}
}

// Start starts the instances, then the balancer in front of them.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Instances <= 0 {
		cfg.Instances = DefaultInstances
	}
	if cfg.CoAP == "" {
		cfg.CoAP = DefaultCoAP
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if int(cfg.InstanceAdminPort)+cfg.Instances-1 > 65535 {
		return nil, fmt.Errorf("localcluster: instance admin ports from %d do not fit %d instances", cfg.InstanceAdminPort, cfg.Instances)
	}
	c := &Cluster{log: cfg.Logger, store: memstore.New(store.DefaultGrace), bus: northbound.NewBroker(), cfg: cfg,
		errc: make(chan error, 1), stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			c.Stop(context.Background())
		}
	}()
	if cfg.OnEvent != nil {
		if err := c.watchEvents(ctx, cfg.OnEvent); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Instances {
		adminPort := 0
		if cfg.InstanceAdminPort != 0 {
			adminPort = int(cfg.InstanceAdminPort) + i
		}
		o := instance.Options{
			InstanceID: fmt.Sprintf("node-%d", i+1),
			CoAPAddr:   "127.0.0.1:0",
			AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
			// Only the balancer, on loopback, reaches the instances.
			ProxyProtocol:  true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			ModelsDir:      cfg.ModelsDir,
			Store:          c.store,
			Bus:            c.bus,
			Logger:         cfg.Logger,
		}
		if cfg.CoAPS != "" {
			o.CoAPSAddr = "127.0.0.1:0"
		}
		in, err := instance.Start(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("localcluster: instance %s: %w", o.InstanceID, err)
		}
		c.instances = append(c.instances, in)
	}
	lbCfg := app.Config{
		Admin:          cfg.Admin,
		Membership:     c.store,
		HealthInterval: app.Duration(cfg.HealthInterval),
		Services:       []app.Service{{Name: "coap", Listen: []string{cfg.CoAP}, Mode: "proxy"}},
	}
	if cfg.CoAPS != "" {
		lbCfg.Services = append(lbCfg.Services, app.Service{Name: "coaps", Listen: []string{cfg.CoAPS}, Mode: "proxy", DTLS: true})
	}
	if c.lb, err = app.Start(ctx, lbCfg, cfg.Logger.With("role", "lb")); err != nil {
		return nil, fmt.Errorf("localcluster: balancer: %w", err)
	}
	c.watchErrors()
	return c, nil
}

// Instances returns the running instances, in order.
func (c *Cluster) Instances() []*instance.Instance { return c.instances }

// Store returns the shared in-memory store.
func (c *Cluster) Store() store.Store { return c.store }

// Bus returns the shared northbound bus: publish LESHAN_REQ on it, read
// LESHAN_RESP and the registration events from it.
func (c *Cluster) Bus() northbound.Bus { return c.bus }

// Balancer returns the running balancer.
func (c *Cluster) Balancer() *app.App { return c.lb }

// Ready waits until every service of the balancer has all the instances up.
func (c *Cluster) Ready(ctx context.Context) error {
	for {
		ready := true
		for _, bs := range c.lb.Backends() {
			up := 0
			for _, b := range bs {
				if b.State == "up" {
					up++
				}
			}
			ready = ready && up == len(c.instances)
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localcluster: instances not all up behind the balancer: %w (backends: %v)", ctx.Err(), c.lb.Backends())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Errors delivers the first fatal error of the balancer or an instance.
func (c *Cluster) Errors() <-chan error { return c.errc }

// watchErrors forwards the first fatal error of any component to errc.
func (c *Cluster) watchErrors() {
	forward := func(ch <-chan error) {
		select {
		case err := <-ch:
			select {
			case c.errc <- err:
			default:
			}
		case <-c.stopped:
		}
	}
	go forward(c.lb.Errors())
	for _, in := range c.instances {
		go forward(in.Errors())
	}
}

// watchEvents calls fn with every northbound event until the cluster stops.
func (c *Cluster) watchEvents(ctx context.Context, fn func(channel string, payload []byte)) error {
	sub, err := c.bus.Subscribe(ctx, northbound.ChannelRegNew, northbound.ChannelRegUp, northbound.ChannelRegDel,
		northbound.ChannelResp, server.ChannelSend)
	if err != nil {
		return fmt.Errorf("localcluster: subscribe: %w", err)
	}
	c.eventsDone = make(chan struct{})
	go func() {
		defer close(c.eventsDone)
		defer sub.Close()
		for m := range sub.C() { // closed when the bus closes
			fn(m.Channel, m.Payload)
		}
	}()
	return nil
}

// Stop stops the balancer, then the instances; OnEvent is not called
// after it returns. Call it once.
func (c *Cluster) Stop(ctx context.Context) {
	close(c.stopped)
	if c.lb != nil {
		c.lb.Stop()
	}
	for _, in := range c.instances {
		in.Stop(ctx)
	}
	_ = c.bus.Close()
	if c.eventsDone != nil {
		<-c.eventsDone
	}
	if err := c.store.Close(); err != nil && !errors.Is(err, context.Canceled) {
		c.log.Warn("closing the store", "err", err)
	}
}
