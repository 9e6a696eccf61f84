// Command lwm2m-server runs one LwM2M server instance of the cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/instance"
	"github.com/lwm2mcluster/lwm2m/backend/secure"
	"github.com/lwm2mcluster/lwm2m/backend/server"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/cli"
	"github.com/lwm2mcluster/lwm2m/routing/membership"
)

const synopsis = `
lwm2m-server: one LwM2M server instance of the cluster.

Devices register over CoAP (OMA LwM2M 1.1 registration interface, 1.0
accepted). With --redis, registrations, ownership and membership live in
Redis and registration events are published on LESHAN_REG_NEW, LESHAN_REG_UP
and LESHAN_REG_DEL; without it the instance keeps its state in memory and
runs alone.

Usage: lwm2m-server [flags]`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lwm2m-server:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("lwm2m-server", flag.ContinueOnError)
	cli.Usage(fs, synopsis)
	var o instance.Options
	var logf cli.LogFlags
	fs.StringVar(&o.CoAPAddr, "coap", ":5683", "plain CoAP listen address (empty disables)")
	fs.StringVar(&o.CoAPSAddr, "coaps", "", "CoAP over DTLS (PSK) listen address, e.g. :5684 (empty disables)")
	var nodeID uint
	fs.UintVar(&nodeID, "node-id", 0, "DTLS Connection ID prefix of this instance, 1-65535 (0: allocated in the shared store)")
	fs.IntVar(&o.CIDLen, "cid-len", secure.DefaultCIDLen, "DTLS Connection ID length in bytes (node id + random)")
	fs.DurationVar(&o.SessionTTL, "dtls-session-ttl", 24*time.Hour, "how long a DTLS session stays resumable in the shared store")
	fs.DurationVar(&o.HandshakeTimeout, "dtls-handshake-timeout", 30*time.Second, "give up a DTLS handshake after this long (a wrong PSK shows up as a timeout: the peer's Finished cannot be decrypted)")
	fs.StringVar(&o.AdvertiseDTLS, "advertise-dtls", "", "CoAPS address announced to balancers (default: the --coaps address)")
	fs.StringVar(&o.RedisURL, "redis", "", "Redis URL (redis://[user:pass@]host:port/db); empty keeps state in memory, single instance")
	fs.StringVar(&o.KeyPrefix, "key-prefix", redisstore.DefaultPrefix, "prefix of every Redis key")
	fs.StringVar(&o.InstanceID, "instance-id", "", "instance id in ownership records and events (default: host name)")
	fs.StringVar(&o.AdminAddr, "admin", "127.0.0.1:9683", "admin HTTP address for /healthz, /metrics, /members (empty disables)")
	fs.BoolVar(&o.Pprof, "pprof", false, "also serve Go's runtime profiles on the admin address under /debug/pprof/")
	fs.StringVar(&o.Advertise, "advertise", "", "backend address announced to balancers in the membership (default: the --coap address)")
	fs.DurationVar(&o.Grace, "expiry-grace", store.DefaultGrace, "time past a registration's lifetime before it expires")
	fs.DurationVar(&o.SweepInterval, "sweep-interval", server.DefaultSweepInterval, "how often expired registrations are swept")
	fs.DurationVar(&o.Heartbeat, "heartbeat", membership.DefaultInterval, "membership heartbeat interval")
	fs.DurationVar(&o.MemberTTL, "member-ttl", membership.DefaultTTL, "membership entry lifetime without heartbeat")
	fs.DurationVar(&o.IdleTimeout, "session-idle", server.DefaultIdleTimeout, "close a device's CoAP session after this much silence")
	fs.IntVar(&o.MaxPayload, "max-payload", server.DefaultMaxPayload, "largest Register/Update payload accepted, in bytes (4.13 beyond)")
	fs.StringVar(&o.ModelsDir, "models", "", "directory of OMA DDF XML object models to load beyond the core objects 0-7")
	fs.BoolVar(&o.ProxyProtocol, "proxy-protocol", false, "expect a PROXY v2 header on every datagram (behind lwm2m-lb in proxy mode); needs --trusted-proxy")
	fs.Func("trusted-proxy", "CIDR of balancers allowed to send PROXY headers (repeatable)", func(v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return fmt.Errorf("want a CIDR or an address: %w", err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		o.TrustedProxies = append(o.TrustedProxies, p.Masked())
		return nil
	})
	logf.Register(fs)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if nodeID > 65535 {
		return fmt.Errorf("--node-id %d out of range 1-65535", nodeID)
	}
	o.NodeID = uint16(nodeID)
	if o.ProxyProtocol && len(o.TrustedProxies) == 0 {
		return fmt.Errorf("--proxy-protocol needs at least one --trusted-proxy")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	o.Logger = log

	ctx, stop := cli.SignalContext()
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	in, err := instance.Start(startCtx, o)
	cancel()
	if err != nil {
		return err
	}
	if a := in.CoAPAddr(); a != nil {
		log.Info("point a device at this server", "uri", fmt.Sprintf("coap://%s/rd?ep=<endpoint>", a))
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-in.Errors():
		log.Error("serving failed", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in.Stop(sctx)
	return err
}
