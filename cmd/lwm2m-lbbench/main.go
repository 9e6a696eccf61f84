// Command lwm2m-lbbench measures the UDP throughput of lwm2m-lb against
// direct echo and nginx's stream UDP proxy on loopback; see package
// bench/lbbench.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/bench/lbbench"
	"github.com/lwm2mcluster/lwm2m/internal/cli"
)

const synopsis = `
lwm2m-lbbench: UDP load-balancer throughput on loopback.

Runs each scenario in turn, for --duration after --warmup, with --clients
client sockets (each its own source port) keeping --window datagrams of
--size bytes outstanding, and prints responses/s, loss and ratios:

  direct    load -> one echo backend
  nginx     load -> nginx stream UDP proxy (2 workers, reuseport,
            hash $remote_addr$remote_port consistent) -> echo backends
  lb-nat    load -> lwm2m-lb --mode nat -> echo backends
  lb-proxy  load -> lwm2m-lb --mode proxy -> PROXY v2 echo backends

The lb rows are skipped when there is no lwm2m-lb (--lb-bin, bin/lwm2m-lb,
or built from ./cmd/lwm2m-lb). Everything runs on 127.0.0.1 and shares the
machine's CPUs, so run it on a quiet machine.

Usage: lwm2m-lbbench [flags]`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lwm2m-lbbench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("lwm2m-lbbench", flag.ContinueOnError)
	cli.Usage(fs, synopsis)
	var (
		o         lbbench.Options
		scenarios string
		jsonPath  string
		engine    string
	)
	l := &o.Scenario.Load
	fs.DurationVar(&l.Duration, "duration", lbbench.DefaultDuration, "measuring time per scenario")
	fs.DurationVar(&l.Warmup, "warmup", lbbench.DefaultWarmup, "warm-up time per scenario, not measured")
	fs.IntVar(&l.Clients, "clients", lbbench.DefaultClients, "client sockets, each with its own source port")
	fs.IntVar(&l.Size, "size", lbbench.DefaultSize, "datagram size in bytes (at least 8)")
	fs.IntVar(&l.Window, "window", lbbench.DefaultWindow, "outstanding datagrams per client socket (1: closed loop)")
	fs.IntVar(&l.Workers, "workers", lbbench.DefaultWorkers, "load generator goroutines (epoll engine)")
	fs.StringVar(&engine, "engine", string(lbbench.EngineEpoll), "load generator engine: epoll or goroutines")
	fs.DurationVar(&l.LossTimeout, "loss-timeout", lbbench.DefaultLossTimeout, "time after which an unanswered datagram counts as lost")
	fs.IntVar(&o.Scenario.Backends, "backends", lbbench.DefaultBackends, "echo backends behind nginx and lwm2m-lb")
	fs.IntVar(&o.Rounds, "rounds", 1, "run the scenarios this many times, taking turns, and report each one's median round")
	fs.StringVar(&scenarios, "scenarios", strings.Join(lbbench.Scenarios, ","), "comma-separated scenarios to run, in order")
	fs.StringVar(&o.Scenario.LB, "lb-bin", "", "lwm2m-lb binary (default: bin/lwm2m-lb, else built from ./cmd/lwm2m-lb)")
	fs.StringVar(&o.Scenario.Nginx, "nginx-bin", "nginx", "nginx binary")
	fs.IntVar(&o.Scenario.NginxProxyResponses, "nginx-proxy-responses", 0, "nginx proxy_responses (0: unset, one session per client for the whole run)")
	fs.StringVar(&jsonPath, "json", "", "also write the results as JSON to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	l.Engine = lbbench.Engine(engine)
	for _, s := range strings.Split(scenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.Scenarios = append(o.Scenarios, s)
		}
	}
	o.Progress = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}

	ctx, stop := cli.SignalContext()
	defer stop()
	rep, err := lbbench.Bench(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	if jsonPath != "" {
		f, err := os.Create(jsonPath)
		if err != nil {
			return err
		}
		if err := rep.WriteJSON(f); err != nil {
			f.Close()
			return fmt.Errorf("writing %s: %w", jsonPath, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing %s: %w", jsonPath, err)
		}
	}
	if rep.Failed() {
		return errors.New("some scenarios failed")
	}
	return nil
}
