// Command lwm2m-cluster runs a whole cluster in one process on an in-memory
// state: lwm2m-lb in proxy mode in front of several lwm2m-server instances.
// It is what `make run` starts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/cli"
	"github.com/lwm2mcluster/lwm2m/internal/localcluster"
)

const synopsis = `
lwm2m-cluster: lwm2m-lb (proxy mode) in front of --instances lwm2m-server
instances, in one process, with the cluster's state (registrations,
ownership, membership, security info, observations) and its northbound bus
in memory: no Redis needed, nothing kept after it stops.

Devices use the balancer's addresses (--coap, --coaps). Every northbound
event (LESHAN_REG_NEW, _UP, _DEL, LESHAN_RESP, LESHAN_SEND) is logged.
DTLS-PSK credentials go in through any instance's admin endpoint:

  curl -X PUT http://127.0.0.1:9685/security/dev1 \
       -d '{"pskIdentity":"dev1","pskKey":"000102030405060708090a0b0c0d0e0f"}'

For production run each role as its own process with Redis
(lwm2m-server --redis ..., lwm2m-lb --discover ...).

Usage: lwm2m-cluster [flags]`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lwm2m-cluster:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("lwm2m-cluster", flag.ContinueOnError)
	cli.Usage(fs, synopsis)
	var cfg localcluster.Config
	var logf cli.LogFlags
	var adminPort uint
	events := true
	fs.IntVar(&cfg.Instances, "instances", localcluster.DefaultInstances, "number of lwm2m-server instances")
	fs.StringVar(&cfg.CoAP, "coap", localcluster.DefaultCoAP, "the balancer's CoAP service address IP:port")
	fs.StringVar(&cfg.CoAPS, "coaps", "127.0.0.1:5684", "the balancer's CoAP-over-DTLS (PSK) service address IP:port (empty disables DTLS)")
	fs.StringVar(&cfg.Admin, "admin", localcluster.DefaultAdmin, "the balancer's admin HTTP address: /backends, /metrics, /healthz (empty disables)")
	fs.UintVar(&adminPort, "instance-admin-port", 9685, "admin HTTP port of the first instance on 127.0.0.1, the next ones counting up (0: any free port)")
	fs.StringVar(&cfg.ModelsDir, "models", "", "directory of OMA DDF XML object models beyond the core objects 0-7")
	fs.DurationVar(&cfg.HealthInterval, "health-interval", time.Second, "the balancer's health-check interval")
	fs.BoolVar(&events, "events", true, "log every northbound event")
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
	if adminPort > 65535 {
		return fmt.Errorf("--instance-admin-port %d out of range", adminPort)
	}
	cfg.InstanceAdminPort = uint16(adminPort)
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if events {
		cfg.OnEvent = func(channel string, payload []byte) {
			log.Info("northbound event", "channel", channel, "payload", string(payload))
		}
	}

	ctx, stop := cli.SignalContext()
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := localcluster.Start(startCtx, cfg)
	if err == nil {
		err = c.Ready(startCtx)
	}
	cancel()
	if err != nil {
		if c != nil {
			c.Stop(context.Background())
		}
		return err
	}
	for _, in := range c.Instances() {
		log.Info("instance", "id", in.ID, "coap", in.CoAPAddr().String(), "admin", "http://"+in.AdminAddr().String())
	}
	log.Info("point a device at the balancer", "uri", fmt.Sprintf("coap://%s/rd?ep=<endpoint>", cfg.CoAP),
		"try", fmt.Sprintf("coap-client-notls -m post -e '</3/0>' 'coap://%s/rd?ep=dev1&lt=60'", cfg.CoAP))
	if cfg.CoAPS != "" {
		log.Info("DTLS-PSK service", "uri", fmt.Sprintf("coaps://%s/rd?ep=<endpoint>", cfg.CoAPS))
	}
	if cfg.Admin != "" {
		log.Info("balancer admin", "backends", "http://"+cfg.Admin+"/backends")
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-c.Errors():
		log.Error("serving failed", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Stop(sctx)
	return err
}
