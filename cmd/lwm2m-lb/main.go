// Command lwm2m-lb is the cluster's sticky UDP load balancer.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/cli"
	"github.com/lwm2mcluster/lwm2m/lb/app"
	"github.com/lwm2mcluster/lwm2m/lb/balancer"
	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/maglev"
)

const synopsis = `
lwm2m-lb: sticky UDP load balancer for CoAP/DTLS devices in front of
lwm2m-server instances (or any UDP backend in nat mode).

Each client (source IP and port) stays on one backend; new clients are placed
with Maglev over the healthy backends (health checks: a CoAP ping, or a DTLS
ClientHello for DTLS services in nat mode). In proxy mode datagrams carry a
PROXY v2 header with the client's address (lwm2m-server --proxy-protocol); in
nat mode the balancer opens one upstream socket per client, for unmodified
backends.

Usage:
  lwm2m-lb --listen 10.0.0.1:5683 --backend 10.0.1.1:5683 --backend 10.0.1.2:5683 [flags]
  lwm2m-lb --listen 10.0.0.1:5683 --discover redis://redis:6379/0 [flags]
  lwm2m-lb -c /etc/lwm2m-lb.json        (SIGHUP reloads it)`

type multi []string

func (m *multi) String() string     { return fmt.Sprint(*m) }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lwm2m-lb:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("lwm2m-lb", flag.ContinueOnError)
	cli.Usage(fs, synopsis)
	var (
		listen, backends multi
		listenDTLS       multi
		backendsDTLS     multi
		cfg              app.Config
		mode             string
		backendPort      uint
		file             string
		interval, tmo    time.Duration
		idle             time.Duration
		logf             cli.LogFlags
	)
	fs.Var(&listen, "listen", "service address IP:port (repeatable)")
	fs.Var(&backends, "backend", "static backend IP:port (repeatable)")
	fs.Var(&listenDTLS, "listen-dtls", "CoAP-over-DTLS service address IP:port (repeatable): a second service, routed by DTLS Connection ID")
	fs.Var(&backendsDTLS, "backend-dtls", "static CoAPS backend IP:port for the DTLS service (repeatable; node ids come only with --discover)")
	fs.IntVar(&cfg.CIDLen, "cid-len", app.DefaultCIDLen, "DTLS Connection ID length the instances issue")
	fs.StringVar(&cfg.Discover, "discover", "", "Redis URL: take backends from the lwm2m-server membership")
	fs.StringVar(&cfg.KeyPrefix, "key-prefix", redisstore.DefaultPrefix, "Redis key prefix of the cluster (with --discover)")
	fs.UintVar(&backendPort, "backend-port", 0, "port of discovered backends (0: as announced)")
	fs.StringVar(&mode, "mode", string(balancer.ModeProxy), "forwarding mode: proxy (PROXY v2 to lwm2m-server) or nat (one socket per flow, any backend)")
	fs.DurationVar(&interval, "health-interval", health.DefaultInterval, "health check interval")
	fs.DurationVar(&tmo, "health-timeout", 500*time.Millisecond, "health check timeout (at most the interval)")
	fs.IntVar(&cfg.Rise, "rise", health.DefaultRise, "consecutive successful checks that bring a backend up")
	fs.IntVar(&cfg.Fall, "fall", health.DefaultFall, "consecutive failed checks that take a backend down")
	fs.DurationVar(&idle, "flow-idle-timeout", balancer.DefaultFlowIdleTimeout, "forget a client after this much silence")
	fs.IntVar(&cfg.MaxFlows, "max-flows", balancer.DefaultMaxFlows, "flow table size (LRU beyond); in nat mode also the cap on upstream sockets")
	fs.Uint64Var(&cfg.MaglevSize, "maglev-size", maglev.DefaultSize, "Maglev table size (a prime)")
	fs.IntVar(&cfg.Workers, "workers", 0, "sockets/goroutines per service address (0: GOMAXPROCS)")
	fs.BoolVar(&cfg.NoUDPOffload, "no-udp-offload", false, "proxy mode: send and read datagrams one by one instead of in GSO/GRO batches")
	fs.StringVar(&cfg.Admin, "admin", "127.0.0.1:9684", "admin HTTP address: /healthz, /metrics, /backends (empty disables)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "also serve Go's runtime profiles on the admin address under /debug/pprof/")
	fs.StringVar(&file, "c", "", "JSON configuration file with several services (see docs/operations.md); SIGHUP reloads it")
	logf.Register(fs)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	cfg.HealthInterval, cfg.HealthTimeout, cfg.FlowIdleTimeout = app.Duration(interval), app.Duration(tmo), app.Duration(idle)
	if backendPort > 65535 {
		return fmt.Errorf("--backend-port %d out of range", backendPort)
	}
	load := func() (app.Config, error) {
		if file == "" {
			c := cfg
			if len(listen) > 0 || len(listenDTLS) == 0 {
				c.Services = append(c.Services, app.Service{Name: "default", Listen: listen, Mode: mode, Backends: backends, BackendPort: uint16(backendPort)})
			}
			if len(listenDTLS) > 0 {
				c.Services = append(c.Services, app.Service{Name: "dtls", Listen: listenDTLS, Mode: mode, Backends: backendsDTLS, DTLS: true})
			}
			return c, c.Validate()
		}
		return app.Load(file)
	}
	c, err := load()
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	a, err := app.Start(ctx, c, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			a.Stop()
			return nil
		case err := <-a.Errors():
			a.Stop()
			return err
		case <-hup:
			nc, err := load()
			if err == nil {
				err = a.Reload(context.Background(), nc)
			}
			if err != nil {
				log.Error("reload refused; the running configuration stays", "err", err)
				continue
			}
			log.Info("configuration reloaded")
		}
	}
}
