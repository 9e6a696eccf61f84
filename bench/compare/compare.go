// Package compare runs the same device fleet (bench/fleet) against several
// deployments brought up on loopback, one after the other, and compares
// them: one lwm2m-server directly; three lwm2m-servers behind lwm2m-lb in
// proxy mode (PROXY v2, backends discovered from the membership); behind
// lwm2m-lb in nat mode (static backends, plain servers); behind nginx's
// stream UDP proxy with `hash $remote_addr$remote_port consistent`. Each
// target gets a fresh redis-server and fresh processes.
//
// A scenario acts on the cluster in the middle of the run:
//
//   - steady: nothing; throughput and latency.
//   - rebind: every device moves to a new source port (a NAT rebinding);
//     reports the sessions kept and the full handshakes caused.
//   - failover: one of the three backends is killed (SIGKILL); reports the
//     devices disrupted (the goal: only that backend's), the time to
//     recover and the registrations lost (the goal: none).
//   - scaleout: a fourth backend joins; reports how many devices moved to
//     another backend (the goal: none of the existing ones).
//
// Backend ownership comes from the cluster's store: each device's owner is
// the instance that handled its latest uplink.
package compare

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/bench/fleet"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Targets.
const (
	TargetDirect  = "direct"
	TargetLBProxy = "lb-proxy"
	TargetLBNAT   = "lb-nat"
	TargetNginx   = "nginx"
)

// Targets lists the targets in the order they run by default.
var Targets = []string{TargetDirect, TargetLBProxy, TargetLBNAT, TargetNginx}

// Scenarios.
const (
	ScenarioSteady   = "steady"
	ScenarioRebind   = "rebind"
	ScenarioFailover = "failover"
	ScenarioScaleout = "scaleout"
)

// Scenarios lists the scenarios.
var Scenarios = []string{ScenarioSteady, ScenarioRebind, ScenarioFailover, ScenarioScaleout}

// Options configure a comparison.
type Options struct {
	// Targets to run, in order (default Targets).
	Targets []string
	// Scenario is one of Scenarios (default steady).
	Scenario string
	// Fleet is the fleet to run against each target; Target, Registered
	// and Northbound are set per target.
	Fleet fleet.Config
	// Northbound drives reads (Fleet.ReadRate) and observations through
	// the cluster's Redis (default true; set NoNorthbound to disable).
	NoNorthbound bool
	// Backends behind the balancers (default 3).
	Backends int
	// BinDir holds lwm2m-server and lwm2m-lb (default "bin").
	BinDir string
	// Dir keeps the processes' logs and configuration (default: a
	// temporary directory, removed at the end unless KeepDir).
	Dir     string
	KeepDir bool
	// Progress receives a line per step; Fleet, when set, is called with
	// each target's fleet once it started (for live progress).
	Progress func(format string, args ...any)
	Watch    func(target string, f *fleet.Fleet)
}

// Run runs the fleet against every target and returns the report. A
// target that fails is recorded with its error and the others still run.
func Run(ctx context.Context, o Options) (*Report, error) {
	if len(o.Targets) == 0 {
		o.Targets = Targets
	}
	if o.Scenario == "" {
		o.Scenario = ScenarioSteady
	}
	if !slices.Contains(Scenarios, o.Scenario) {
		return nil, fmt.Errorf("unknown scenario %q (want one of %s)", o.Scenario, strings.Join(Scenarios, ", "))
	}
	for _, t := range o.Targets {
		if !slices.Contains(Targets, t) {
			return nil, fmt.Errorf("unknown target %q (want some of %s)", t, strings.Join(Targets, ", "))
		}
	}
	if o.Backends <= 0 {
		o.Backends = 3
	}
	if o.BinDir == "" {
		o.BinDir = "bin"
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	for _, b := range []string{"lwm2m-server", "lwm2m-lb"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%s not built in %s (make build): %w", b, o.BinDir, err)
		}
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "lwm2m-bench-")
		if err != nil {
			return nil, err
		}
		o.Dir = dir
		if !o.KeepDir {
			defer os.RemoveAll(dir)
		}
	}
	fc := o.Fleet
	rep := &Report{Scenario: o.Scenario, Started: time.Now().UTC(), Devices: fc.Devices,
		Ramp: fc.Ramp.String(), Duration: fc.Duration.String(), UpdateEvery: fc.UpdateEvery.String(),
		NotifyEvery: fc.NotifyEvery.String(), RebindEvery: fc.RebindEvery.String(), ReadRate: fc.ReadRate,
		DTLS: fc.DTLS, CID: fc.CID, Backends: o.Backends, NumCPU: numCPU(), Kernel: kernel()}
	for _, t := range o.Targets {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		row := Row{Target: t}
		if t == TargetDirect && (o.Scenario == ScenarioFailover || o.Scenario == ScenarioScaleout) {
			row.Skipped = "one backend: nothing to fail over or scale"
			rep.Rows = append(rep.Rows, row)
			continue
		}
		o.Progress("%s: starting (%s scenario)", t, o.Scenario)
		dir := filepath.Join(o.Dir, t)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return rep, err
		}
		if err := runTarget(ctx, o, dir, &row); err != nil {
			row.Error = err.Error()
			o.Progress("%s: FAILED: %v", t, err)
		}
		rep.Rows = append(rep.Rows, row)
	}
	rep.computeRatios()
	rep.verdicts()
	return rep, nil
}

// cluster is the processes of one target.
type cluster struct {
	o        Options
	dir      string
	redis    *proc
	redisURL string
	servers  []*server
	lb       *proc
	lbAdmin  netip.AddrPort
	nginx    *nginx
	target   netip.AddrPort
}

type server struct {
	id    string
	coap  netip.AddrPort
	coaps netip.AddrPort
	admin netip.AddrPort
	p     *proc
}

func (c *cluster) stop() {
	c.lb.Stop()
	if c.nginx != nil {
		c.nginx.Stop()
	}
	var wg sync.WaitGroup
	for _, s := range c.servers {
		wg.Add(1)
		go func() { defer wg.Done(); s.p.Stop() }()
	}
	wg.Wait()
	c.redis.Stop()
}

func (c *cluster) proxied(target string) bool { return target == TargetLBProxy }

// startServer starts lwm2m-server number n.
func (c *cluster) startServer(ctx context.Context, target string, n int) (*server, error) {
	s := &server{id: "s" + strconv.Itoa(n)}
	var err error
	if s.coap, err = freeAddr("udp4"); err != nil {
		return nil, err
	}
	if s.admin, err = freeAddr("tcp4"); err != nil {
		return nil, err
	}
	args := []string{"--coap", s.coap.String(), "--admin", s.admin.String(), "--instance-id", s.id,
		"--redis", c.redisURL, "--heartbeat", "200ms", "--member-ttl", "1s", "--log-level", "warn"}
	if c.o.Fleet.DTLS {
		if s.coaps, err = freeAddr("udp4"); err != nil {
			return nil, err
		}
		args = append(args, "--coaps", s.coaps.String(), "--node-id", strconv.Itoa(n))
	}
	if c.proxied(target) {
		args = append(args, "--proxy-protocol", "--trusted-proxy", "127.0.0.0/8")
	}
	if s.p, err = startProc(c.dir, "lwm2m-server-"+s.id, filepath.Join(c.o.BinDir, "lwm2m-server"), args...); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+s.admin.String()+"/healthz", s.p, 15*time.Second); err != nil {
		s.p.Kill()
		return nil, err
	}
	return s, nil
}

// backendAddrs returns the addresses devices' traffic goes to on the
// servers (CoAPS with DTLS).
func (c *cluster) backendAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range c.servers {
		if s.p.Exited() {
			continue
		}
		if c.o.Fleet.DTLS {
			out = append(out, s.coaps)
		} else {
			out = append(out, s.coap)
		}
	}
	return out
}

// start brings up the target's processes.
func (c *cluster) start(ctx context.Context, target string) error {
	var err error
	if c.redis, c.redisURL, err = startRedis(ctx, c.dir); err != nil {
		return err
	}
	n := c.o.Backends
	if target == TargetDirect {
		n = 1
	}
	for i := 1; i <= n; i++ {
		s, err := c.startServer(ctx, target, i)
		if err != nil {
			return err
		}
		c.servers = append(c.servers, s)
	}
	switch target {
	case TargetDirect:
		c.target = c.backendAddrs()[0]
		if !c.o.Fleet.DTLS {
			return waitCoAPPing(ctx, c.target, c.servers[0].p, 10*time.Second)
		}
		return nil
	case TargetNginx:
		if c.target, err = freeAddr("udp4"); err != nil {
			return err
		}
		if c.nginx, err = startNginx(ctx, c.dir, c.target, c.backendAddrs(), c.o.Fleet.Devices); err != nil {
			return err
		}
		if !c.o.Fleet.DTLS {
			return waitCoAPPing(ctx, c.target, c.nginx.proc, 10*time.Second)
		}
		time.Sleep(time.Second)
		return nil
	}
	// lwm2m-lb.
	if c.target, err = freeAddr("udp4"); err != nil {
		return err
	}
	if c.lbAdmin, err = freeAddr("tcp4"); err != nil {
		return err
	}
	args := []string{"--admin", c.lbAdmin.String(), "--health-interval", "200ms", "--health-timeout", "150ms",
		"--fall", "2", "--rise", "1", "--log-level", "warn"}
	if c.o.Fleet.DTLS {
		args = append(args, "--listen-dtls", c.target.String())
		// The plain service is required; give it an unused port.
		plain, err := freeAddr("udp4")
		if err != nil {
			return err
		}
		args = append(args, "--listen", plain.String())
	} else {
		args = append(args, "--listen", c.target.String())
	}
	// nat mode has static backends, except for scaleout, where the new
	// backend is found in the membership, and with DTLS, where only the
	// membership tells the balancer each backend's node id and plain
	// address for its CoAP ping health checks.
	if target == TargetLBProxy || c.o.Scenario == ScenarioScaleout || c.o.Fleet.DTLS {
		args = append(args, "--discover", c.redisURL)
	} else {
		for _, s := range c.servers {
			args = append(args, "--backend", s.coap.String())
		}
	}
	args = append(args, "--mode", strings.TrimPrefix(target, "lb-"))
	if c.lb, err = startProc(c.dir, "lwm2m-lb", filepath.Join(c.o.BinDir, "lwm2m-lb"), args...); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+c.lbAdmin.String()+"/healthz", c.lb, 15*time.Second); err != nil {
		return err
	}
	// Let the health checks bring every backend up.
	time.Sleep(time.Second)
	if !c.o.Fleet.DTLS {
		return waitCoAPPing(ctx, c.target, c.lb, 10*time.Second)
	}
	return nil
}

// runTarget brings the target up, runs the fleet and the scenario, and
// fills row.
func runTarget(ctx context.Context, o Options, dir string, row *Row) error {
	c := &cluster{o: o, dir: dir}
	defer c.stop()
	if err := c.start(ctx, row.Target); err != nil {
		return err
	}
	st, err := redisstore.Open(ctx, c.redisURL, redisstore.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	fc := o.Fleet
	fc.Target = c.target.String()
	fc.Logger = slog.New(slog.DiscardHandler)
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
	if fc.DTLS {
		o.Progress("%s: provisioning %d PSKs", row.Target, fc.Devices)
		if err := fleet.ProvisionPSK(ctx, fc, func(ctx context.Context, ep, id string, key []byte) error {
			return st.PutSecurity(ctx, store.SecurityInfo{Endpoint: ep, Identity: id, Key: key})
		}); err != nil {
			return err
		}
	}
	if !o.NoNorthbound {
		nb := nbclient.New(northbound.NewRedisBus(st.Client()), st, nbclient.Options{NotificationBuffer: 16})
		defer nb.Close()
		fc.Northbound = nb
	}
	f, err := fleet.New(fc)
	if err != nil {
		return err
	}
	f.Start(ctx)
	if o.Watch != nil {
		o.Watch(row.Target, f)
	}
	if err := f.WaitRamp(ctx); err != nil {
		_, _ = f.Finish(context.Background())
		return err
	}
	o.Progress("%s: %d/%d devices up after %v, running %v", row.Target, f.Up(), fc.Devices, f.Elapsed().Round(time.Millisecond), fc.Duration)
	var scen func() error
	switch o.Scenario {
	case ScenarioRebind:
		scen = func() error { return c.rebind(ctx, f, row) }
	case ScenarioFailover:
		scen = func() error { return c.failover(ctx, f, st, row) }
	case ScenarioScaleout:
		scen = func() error { return c.scaleout(ctx, f, st, row) }
	default:
		scen = func() error { return sleep(ctx, fc.Duration) }
	}
	serr := scen()
	res, err := f.Finish(context.Background())
	if err != nil {
		return err
	}
	row.Result = res
	for _, s := range c.servers {
		if s.p.Exited() && row.Failover == nil {
			row.Notes = append(row.Notes, fmt.Sprintf("lwm2m-server %s exited on its own%s", s.id, s.p.tail()))
		}
	}
	if c.lb != nil && c.lb.Exited() {
		row.Notes = append(row.Notes, "lwm2m-lb exited"+c.lb.tail())
	}
	if c.nginx != nil {
		if b, err := os.ReadFile(filepath.Join(dir, "error.log")); err == nil {
			if n := strings.Count(string(b), "[error]") + strings.Count(string(b), "[alert]") + strings.Count(string(b), "[crit]"); n > 0 {
				row.Notes = append(row.Notes, fmt.Sprintf("nginx logged %d errors", n))
			}
		}
	}
	return serr
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// thirds splits the run: the action happens a third into it.
func thirds(d time.Duration) (before, after time.Duration) {
	return d / 3, d - d/3
}

func (c *cluster) rebind(ctx context.Context, f *fleet.Fleet, row *Row) error {
	before, after := thirds(c.o.Fleet.Duration)
	if err := sleep(ctx, before); err != nil {
		return err
	}
	c.o.Progress("%s: every device rebinds to a new port", row.Target)
	f.Mark("rebind all")
	spread := min(2*time.Second, after/4)
	f.RebindAll(spread)
	row.Rebind = &RebindResult{}
	return sleep(ctx, after)
}

// owners returns each endpoint's owner in the store.
func owners(ctx context.Context, st store.Ownership, eps []string) map[string]string {
	out := make(map[string]string, len(eps))
	var mu sync.Mutex
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, ep := range eps {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o, err := st.Owner(ctx, ep)
			if err != nil {
				return
			}
			mu.Lock()
			out[ep] = o
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (c *cluster) failover(ctx context.Context, f *fleet.Fleet, st store.Ownership, row *Row) error {
	before, after := thirds(c.o.Fleet.Duration)
	if err := sleep(ctx, before); err != nil {
		return err
	}
	victim := c.servers[1]
	own := owners(ctx, st, f.Endpoints())
	c.o.Progress("%s: killing backend %s", row.Target, victim.id)
	victim.p.Kill()
	killed := f.Mark("kill " + victim.id)
	if c.nginx != nil {
		// nginx has no active UDP health checks: it is told, as an
		// operator or a controller would tell it.
		_ = c.nginx.setBackends(c.backendAddrs())
	}
	if err := sleep(ctx, after); err != nil {
		return err
	}
	fr := &FailoverResult{Victim: victim.id}
	for _, o := range own {
		if o == victim.id {
			fr.VictimDevices++
		}
	}
	var recov []time.Duration
	for _, d := range f.Disruptions(killed) {
		fr.Disrupted++
		if own[d.Endpoint] == victim.id {
			fr.DisruptedVictim++
		} else {
			fr.DisruptedOthers++
		}
		if d.End.IsZero() {
			fr.Unrecovered++
			continue
		}
		recov = append(recov, d.End.Sub(killed))
	}
	if len(recov) > 0 {
		slices.Sort(recov)
		fr.RecoveryP50 = recov[len(recov)/2]
		fr.RecoveryMax = recov[len(recov)-1]
	}
	row.Failover = fr
	return nil
}

func (c *cluster) scaleout(ctx context.Context, f *fleet.Fleet, st store.Ownership, row *Row) error {
	before, after := thirds(c.o.Fleet.Duration)
	if err := sleep(ctx, before); err != nil {
		return err
	}
	eps := f.Endpoints()
	own := owners(ctx, st, eps)
	n := len(c.servers) + 1
	c.o.Progress("%s: adding backend s%d", row.Target, n)
	s, err := c.startServer(ctx, row.Target, n)
	if err != nil {
		return err
	}
	c.servers = append(c.servers, s)
	f.Mark("add s" + strconv.Itoa(n))
	if c.nginx != nil {
		if err := c.nginx.setBackends(c.backendAddrs()); err != nil {
			return err
		}
	}
	if err := sleep(ctx, after); err != nil {
		return err
	}
	now := owners(ctx, st, eps)
	sr := &ScaleoutResult{Added: s.id}
	for _, ep := range eps {
		b, a := own[ep], now[ep]
		if b == "" {
			continue
		}
		sr.Existing++
		if a != b {
			sr.Moved++
			if a == s.id {
				sr.MovedToNew++
			}
		}
	}
	for _, a := range now {
		if a == s.id {
			sr.OnNew++
		}
	}
	row.Scaleout = sr
	return nil
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
