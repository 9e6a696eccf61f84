// Command lwm2m-bench simulates a fleet of LwM2M devices against a server
// or a balancer and reports throughput, latency and disruption; with
// --compare it brings up the deployments to compare on loopback and runs
// the same fleet against each. See packages bench/fleet and bench/compare.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/bench/compare"
	"github.com/lwm2mcluster/lwm2m/bench/fleet"
	"github.com/lwm2mcluster/lwm2m/internal/cli"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

const synopsis = `
lwm2m-bench: LwM2M device-fleet load generator and comparison harness.

Three modes:

  lwm2m-bench --target HOST:PORT [flags]
      Simulates --devices LwM2M 1.1 devices, each with its own UDP socket
      (source port), started evenly over --ramp. Each registers, sends an
      Update every --update-every, changes /3303/0/5700 every --notify-every
      (a notification when the server observes it), moves to a new source
      port every --nat-rebind-every, and answers the server's requests.
      With --dtls it speaks DTLS 1.2 PSK (identity <psk-prefix>/<endpoint>,
      key SHA-256 of the identity, first 16 bytes; --redis provisions them),
      with --cid a DTLS Connection ID. With --northbound it observes every
      device's temperature through the northbound API and reads /3/0/0 on
      random devices at --read-rate per second. Runs for --duration after
      the ramp and prints the results; --report and --html write them.

  lwm2m-bench --compare [--scenario steady|rebind|failover|scaleout] [flags]
      Runs the same fleet, one after the other, against: one lwm2m-server
      (direct); three behind lwm2m-lb --mode proxy (lb-proxy); three
      behind lwm2m-lb --mode nat (lb-nat); three behind nginx's stream UDP
      proxy with hash $remote_addr$remote_port consistent (nginx). Each gets
      a fresh redis-server; binaries come from --bin-dir (make build).
      Prints a table with ratios to direct and nginx, and PASS/MISSED
      verdicts for the scenario's goals. This is what 'make bench' runs.

  lwm2m-bench --serve-stub HOST:PORT
      Serves the cheapest possible registration endpoint (2.01 to POST /rd,
      2.04 to updates, nothing else) until interrupted: a trivial target
      to measure the generator's own ceiling.

A device request unanswered within --request-timeout counts as lost; it is
not retried (the device goes on with its schedule). Live progress is shown
when standard output is a terminal.

Usage: lwm2m-bench (--target ADDR | --compare | --serve-stub ADDR) [flags]`

// quietRedis drops go-redis's own log lines (connection retries while a
// redis-server starts, pool notices), which would garble the output.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quietRedis{})
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "lwm2m-bench:", err)
		os.Exit(1)
	}
}

type options struct {
	fc           fleet.Config
	target       string
	compare      bool
	stub         string
	redisURL     string
	nbURL        string
	report       string
	htmlPath     string
	scenario     string
	targets      string
	backends     int
	binDir       string
	keepDir      bool
	noNorthbound bool
}

func parse(args []string, out io.Writer) (*options, error) {
	fs := flag.NewFlagSet("lwm2m-bench", flag.ContinueOnError)
	fs.SetOutput(out)
	cli.Usage(fs, synopsis)
	o := &options{}
	c := &o.fc
	fs.StringVar(&o.target, "target", "", "host:port of the server or balancer to load (CoAPS address with --dtls)")
	fs.BoolVar(&o.compare, "compare", false, "run the comparison harness instead (see above)")
	fs.StringVar(&o.stub, "serve-stub", "", "serve a trivial registration endpoint on this address and do nothing else")
	fs.IntVar(&c.Devices, "devices", 2000, "number of simulated devices (10000 fit on a 2-core machine)")
	fs.StringVar(&c.Prefix, "prefix", fleet.DefaultPrefix, "endpoint name prefix; device i is <prefix><i, 6 digits>")
	fs.BoolVar(&c.DTLS, "dtls", false, "speak CoAP over DTLS 1.2 with per-device PSKs")
	fs.BoolVar(&c.CID, "cid", false, "with --dtls: ask for a DTLS Connection ID (a rebind then keeps the session)")
	fs.StringVar(&c.PSKPrefix, "psk-prefix", fleet.DefaultPSKPrefix, "with --dtls: PSK identity is <psk-prefix>/<endpoint>, key the first 16 bytes of its SHA-256")
	fs.BoolVar(&c.NoResumption, "no-resumption", false, "with --dtls: never resume a session; every handshake is a full one")
	fs.StringVar(&o.redisURL, "redis", "", "the cluster's Redis: provision the PSKs (with --dtls) and count registrations lost at the end (default: --northbound's)")
	fs.DurationVar(&c.Ramp, "ramp", 5*time.Second, "bring the devices up evenly over this time")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "how long to run after the ramp (per target with --compare)")
	fs.DurationVar(&c.UpdateEvery, "update-every", 2*time.Second, "registration update interval of each device (negative: none)")
	fs.DurationVar(&c.NotifyEvery, "notify-every", 5*time.Second, "each device changes its observed temperature at this interval (negative: never)")
	fs.DurationVar(&c.RebindEvery, "nat-rebind-every", 0, "each device moves to a new source port at this interval (0: never)")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", fleet.DefaultRequestTimeout, "a device request unanswered after this long is lost")
	fs.DurationVar(&c.ACKTimeout, "ack-timeout", fleet.DefaultACKTimeout, "CoAP ACK_TIMEOUT of the devices (first retransmission)")
	fs.DurationVar(&c.Lifetime, "lifetime", fleet.DefaultLifetime, "registration lifetime")
	fs.StringVar(&o.nbURL, "northbound", "", "Redis URL of the cluster's northbound API: observe the devices and read them at --read-rate")
	fs.Float64Var(&c.ReadRate, "read-rate", 50, "northbound reads per second on random devices (with --northbound, or --compare)")
	fs.Float64Var(&c.ObserveFraction, "observe-fraction", 1, "share of the devices the northbound driver observes (0 to 1)")
	fs.StringVar(&o.report, "report", "", "write the results as JSON to this file")
	fs.StringVar(&o.htmlPath, "html", "", "write a self-contained HTML report (latency histograms, throughput timeline) to this file")
	fs.StringVar(&o.scenario, "scenario", compare.ScenarioSteady, "with --compare: steady, rebind, failover or scaleout")
	fs.StringVar(&o.targets, "targets", strings.Join(compare.Targets, ","), "with --compare: targets to run, in order")
	fs.IntVar(&o.backends, "backends", 3, "with --compare: lwm2m-servers behind the balancers")
	fs.StringVar(&o.binDir, "bin-dir", "bin", "with --compare: directory of lwm2m-server and lwm2m-lb")
	fs.BoolVar(&o.keepDir, "keep-dir", false, "with --compare: keep the processes' logs and configuration (the directory is printed)")
	fs.BoolVar(&o.noNorthbound, "no-northbound", false, "with --compare: do not drive the northbound API")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	modes := 0
	for _, set := range []bool{o.target != "", o.compare, o.stub != ""} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return nil, errors.New("give exactly one of --target, --compare and --serve-stub (see --help)")
	}
	if c.CID && !c.DTLS {
		return nil, errors.New("--cid needs --dtls")
	}
	if c.ObserveFraction == 0 {
		c.ObserveFraction = -1 // 0 means the default in fleet.Config
	}
	if o.redisURL == "" {
		o.redisURL = o.nbURL
	}
	return o, nil
}

func run(args []string, stdout io.Writer) error {
	o, err := parse(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch {
	case o.stub != "":
		return serveStub(ctx, o.stub)
	case o.compare:
		return runCompare(ctx, o, stdout)
	}
	return runFleet(ctx, o, stdout)
}

func serveStub(ctx context.Context, addr string) error {
	s, err := fleet.StartStub(fleet.StubConfig{Addr: addr})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "stub registration endpoint on %s; Ctrl-C stops it\n", s.Addr())
	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "stub: %d datagrams received, %d answered\n", s.Received.Load(), s.Answered.Load())
	return s.Close()
}

// isTerminal reports whether f is a terminal (a character device).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress prints a live status line for f every second until ctx ends
// or f finishes.
func progress(ctx context.Context, w io.Writer, name string, f *fleet.Fleet) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	total := f.Config().Devices
	for {
		select {
		case <-ctx.Done():
			fmt.Fprint(w, "\r\033[K")
			return
		case <-t.C:
		}
		cur, prev, ok := f.Latest()
		if !ok {
			continue
		}
		secs := (cur.At - prev.At).Seconds()
		if secs <= 0 {
			secs = 1
		}
		fmt.Fprintf(w, "\r\033[K%s %5.0fs  up %d/%d  req/s %.0f  lost %d  errors %d  nb reads/s %.0f  notifications/s %.0f",
			name, cur.At.Seconds(), cur.Up, total, float64(cur.OK-prev.OK)/secs, cur.Lost, cur.Errors,
			float64(cur.Reads-prev.Reads)/secs, float64(cur.Notifications-prev.Notifications)/secs)
	}
}

func runFleet(ctx context.Context, o *options, stdout io.Writer) error {
	fc := o.fc
	fc.Target = o.target
	if o.redisURL != "" {
		st, err := redisstore.Open(ctx, o.redisURL, redisstore.Options{})
		if err != nil {
			return err
		}
		defer st.Close()
		if fc.DTLS {
			fmt.Fprintf(os.Stderr, "provisioning %d PSKs in %s\n", fc.Devices, o.redisURL)
			if err := fleet.ProvisionPSK(ctx, fc, func(ctx context.Context, ep, id string, key []byte) error {
				return st.PutSecurity(ctx, store.SecurityInfo{Endpoint: ep, Identity: id, Key: key})
			}); err != nil {
				return err
			}
		}
		fc.Registered = func(ctx context.Context) (map[string]string, error) {
			regs, err := st.List(ctx)
			if err != nil {
				return nil, err
			}
			m := make(map[string]string, len(regs))
			for _, r := range regs {
				m[r.Endpoint] = r.ID
			}
			return m, nil
		}
	}
	if o.nbURL != "" {
		st, err := redisstore.Open(ctx, o.nbURL, redisstore.Options{})
		if err != nil {
			return err
		}
		defer st.Close()
		nb := nbclient.New(northbound.NewRedisBus(st.Client()), st, nbclient.Options{NotificationBuffer: 16})
		defer nb.Close()
		fc.Northbound = nb
	}
	f, err := fleet.New(fc)
	if err != nil {
		return err
	}
	f.Start(ctx)
	pctx, pstop := context.WithCancel(ctx)
	done := make(chan struct{})
	if isTerminal(os.Stdout) {
		go func() { defer close(done); progress(pctx, stdout, o.target, f) }()
	} else {
		close(done)
	}
	err = f.WaitRamp(ctx)
	if err == nil {
		t := time.NewTimer(fc.Duration)
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
		}
		t.Stop()
	}
	res, ferr := f.Finish(context.Background())
	pstop()
	<-done
	if ferr != nil {
		return ferr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	writeSummary(stdout, res)
	if o.report != "" {
		if err := writeFile(o.report, func(w io.Writer) error { return fleet.WriteJSON(w, res) }); err != nil {
			return err
		}
	}
	if o.htmlPath != "" {
		h := fleet.HTMLReport{Title: "lwm2m-bench: " + o.target}
		var sb strings.Builder
		writeSummary(&sb, res)
		h.Summary = sb.String()
		h.Runs = []fleet.HTMLRun{{Name: o.target, Result: res}}
		if err := writeFile(o.htmlPath, h.WriteHTML); err != nil {
			return err
		}
	}
	return nil
}

func writeSummary(w io.Writer, r *fleet.Result) {
	dl := r.DeviceLatency()
	fmt.Fprintf(w, "target %s: %d/%d devices up; ramp %v, then %v\n", r.Target, r.Up, r.Devices, r.Ramp.Round(time.Millisecond), r.Steady.Round(time.Millisecond))
	fmt.Fprintf(w, "registrations: %d (%.0f/s over the ramp), %d re-registrations\n", r.Registrations, r.RegistrationsPerSec, r.Reregistrations)
	fmt.Fprintf(w, "device requests: %d sent, %d answered (%.0f/s after the ramp), %d lost (%.3f%%), %d failed, %d retransmissions (inferred)\n",
		r.Sent, r.OK, r.RequestsPerSec, r.Lost, r.LossPercent, r.Errors, r.Retransmissions)
	fmt.Fprintf(w, "  register rtt %s\n  update rtt   %s\n  both         %s\n", latency(r.Register), latency(r.Update), latency(dl))
	if r.DTLS {
		fmt.Fprintf(w, "DTLS handshakes: %d full, %d resumed, %d failed (%.1f/s)\n", r.HandshakesFull, r.HandshakesResumed, r.HandshakesFailed, r.HandshakesPerSec)
	}
	if r.Rebinds > 0 {
		fmt.Fprintf(w, "rebinds: %d; sessions kept %d, resumed %d, full handshake %d, lost %d\n", r.Rebinds, r.RebindKept, r.RebindResumed, r.RebindFull, r.RebindLost)
	}
	if r.Reads+r.Observes > 0 {
		fmt.Fprintf(w, "northbound: %d reads, %d answered, %d lost, %d failed, %d skipped; %d observes, %d ok; %d notifications\n",
			r.Reads, r.ReadOK, r.ReadLost, r.ReadErrors, r.ReadSkipped, r.Observes, r.ObserveOK, r.Notifications)
		fmt.Fprintf(w, "  read rtt     %s\n  observe rtt  %s\n  notification %s\n", latency(r.Read), latency(r.Observe), latency(r.Notify))
	}
	if r.RegistrationsChecked {
		fmt.Fprintf(w, "registrations lost: %d of %d (%d with another registration id)\n", r.RegistrationsLost, r.RegisteredAtEnd, r.RegistrationsStale)
	}
	for k, v := range r.Errs {
		fmt.Fprintf(w, "  error %s: %d\n", k, v)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintf(w, "generator: %.1f s CPU (%.0f%% of one core), peak RSS %d MiB\n",
		r.CPU.Seconds(), 100*r.CPU.Seconds()/r.Elapsed.Seconds(), r.MaxRSS>>20)
}

func latency(s fleet.HistSnapshot) string {
	if s.Count == 0 {
		return "-"
	}
	q := func(p float64) string { return s.Quantile(p).Round(time.Microsecond).String() }
	return fmt.Sprintf("n=%d p50 %s p99 %s p999 %s max %s", s.Count, q(0.5), q(0.99), q(0.999), time.Duration(s.Max).Round(time.Microsecond))
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

func runCompare(ctx context.Context, o *options, stdout io.Writer) error {
	co := compare.Options{
		Scenario: o.scenario, Fleet: o.fc, NoNorthbound: o.noNorthbound,
		Backends: o.backends, BinDir: o.binDir, KeepDir: o.keepDir,
		Progress: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
		},
	}
	for _, t := range strings.Split(o.targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			co.Targets = append(co.Targets, t)
		}
	}
	if o.keepDir {
		dir, err := os.MkdirTemp("", "lwm2m-bench-")
		if err != nil {
			return err
		}
		co.Dir = dir
		fmt.Fprintln(os.Stderr, "logs and configuration in", dir)
	}
	var pstop context.CancelFunc = func() {}
	var pdone chan struct{}
	if isTerminal(os.Stdout) {
		co.Watch = func(target string, f *fleet.Fleet) {
			pstop()
			if pdone != nil {
				<-pdone
			}
			var pctx context.Context
			pctx, pstop = context.WithCancel(ctx)
			pdone = make(chan struct{})
			done := pdone
			go func() { defer close(done); progress(pctx, stdout, target, f) }()
		}
	}
	rep, err := compare.Run(ctx, co)
	pstop()
	if pdone != nil {
		<-pdone
	}
	if err != nil && rep == nil {
		return err
	}
	fmt.Fprintf(stdout, "\nlwm2m-bench %s\n", strings.Join(os.Args[1:], " "))
	if werr := rep.WriteTable(stdout); werr != nil {
		return werr
	}
	if o.report != "" {
		if err := writeFile(o.report, func(w io.Writer) error { return fleet.WriteJSON(w, rep) }); err != nil {
			return err
		}
	}
	if o.htmlPath != "" {
		if err := writeFile(o.htmlPath, rep.WriteHTML); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "\nHTML report:", o.htmlPath)
	}
	if err != nil {
		return err
	}
	if rep.Failed() {
		return errors.New("some targets failed")
	}
	return nil
}
