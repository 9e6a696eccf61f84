package lbbench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenario names.
const (
	// ScenarioDirect is the load against one echo backend.
	ScenarioDirect = "direct"
	// ScenarioNginx is the load through nginx's stream UDP proxy to
	// plain echo backends.
	ScenarioNginx = "nginx"
	// ScenarioLBNAT is the load through `lwm2m-lb --mode nat` to plain
	// echo backends.
	ScenarioLBNAT = "lb-nat"
	// ScenarioLBProxy is the load through `lwm2m-lb --mode proxy` to
	// PROXY v2 echo backends.
	ScenarioLBProxy = "lb-proxy"
)

// Scenarios lists every scenario in the order Bench runs them by default.
var Scenarios = []string{ScenarioDirect, ScenarioNginx, ScenarioLBNAT, ScenarioLBProxy}

// DefaultBackends is the number of echo backends behind a proxy.
const DefaultBackends = 3

// Scenario is one benchmark configuration. The zero value of every field
// but Name means its default.
type Scenario struct {
	// Name is one of the Scenario* constants.
	Name string
	// Load is the load to run; Run sets its Target.
	Load Load
	// Backends is the number of echo backends behind nginx or lwm2m-lb
	// (default DefaultBackends).
	Backends int
	// EchoWorkers is the number of sockets and goroutines per echo backend
	// (default GOMAXPROCS).
	EchoWorkers int
	// Nginx is the nginx binary (default "nginx" on $PATH).
	Nginx string
	// NginxProxyResponses is NginxConfig.ProxyResponses: 0 (the default)
	// leaves proxy_responses unset so that each client keeps one nginx
	// session for the run; 1 makes nginx open a new session and upstream
	// socket whenever a client's outstanding datagrams have all been
	// answered.
	NginxProxyResponses int
	// LB is the lwm2m-lb binary (default: found by FindLB).
	LB string
	// LBSettle is how long the balancer gets for its health checks after
	// /healthz first answers 200 (default 1 s).
	LBSettle time.Duration
	// TempDir holds what the scenario writes (nginx prefix, lwm2m-lb
	// build); default: a new temporary directory, removed afterwards.
	TempDir string
}

// Result is the outcome of one scenario.
type Result struct {
	// Scenario is the scenario's name.
	Scenario string `json:"scenario"`
	// Skipped is set when the scenario did not run for a reason that is
	// not a failure (lwm2m-lb not built yet); Note says why.
	Skipped bool `json:"skipped,omitempty"`
	// Error is set when the scenario failed.
	Error string `json:"error,omitempty"`
	// Note is a remark on the run, for example nginx error log alerts.
	Note string `json:"note,omitempty"`
	// Load is what the load generator measured.
	Load LoadResult `json:"load"`
	// Backends are the echo backends' counters, in order.
	Backends []EchoStats `json:"backends,omitempty"`
	// VsDirect and VsNginx are ResponsesPerSec over that of the direct and
	// nginx scenarios in the same report; 0 when either is missing.
	VsDirect float64 `json:"vs_direct,omitempty"`
	VsNginx  float64 `json:"vs_nginx,omitempty"`
	// Samples are the responses per second of every round, in order,
	// when there was more than one; the rest of the result is the median
	// round's.
	Samples []float64 `json:"samples,omitempty"`
	// ProxyCPU is the CPU time (user and system, all its processes and
	// threads) the proxy (nginx or lwm2m-lb) used during the counting
	// period, and ProxyCPUPerResponse that over the responses: how much
	// work each proxy does per answered datagram, whatever else shares the
	// machine. Zero for direct. /proc counts in 10 ms ticks.
	ProxyCPU            time.Duration `json:"proxy_cpu_ns,omitempty"`
	ProxyCPUPerResponse time.Duration `json:"proxy_cpu_per_response_ns,omitempty"`
	// Target is the throughput target for the scenario, if any,
	// and TargetMet whether it was reached (absent when it could not be
	// computed).
	Target    string `json:"target,omitempty"`
	TargetMet *bool  `json:"target_met,omitempty"`
}

// ok reports whether the scenario ran to completion.
func (r *Result) ok() bool { return !r.Skipped && r.Error == "" }

// Run runs one scenario: it starts the echo backends and, for the proxied
// scenarios, nginx or lwm2m-lb in front of them, runs the load, and stops
// everything. A scenario that cannot run for a reason that is not a
// failure (lwm2m-lb not built) comes back Skipped with a nil error.
func Run(ctx context.Context, s Scenario) (Result, error) {
	res := Result{Scenario: s.Name}
	if s.Backends <= 0 {
		s.Backends = DefaultBackends
	}
	if s.TempDir == "" {
		dir, err := os.MkdirTemp("", "lbbench-")
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		defer os.RemoveAll(dir)
		s.TempDir = dir
	}

	var lbBin string
	switch s.Name {
	case ScenarioDirect, ScenarioNginx:
	case ScenarioLBNAT, ScenarioLBProxy:
		var err error
		lbBin, err = FindLB(ctx, s.LB, s.TempDir)
		if errors.Is(err, ErrLBNotBuilt) {
			res.Skipped = true
			res.Note = err.Error()
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
	default:
		return res, fmt.Errorf("unknown scenario %q (want one of %s)", s.Name, strings.Join(Scenarios, ", "))
	}

	n := s.Backends
	if s.Name == ScenarioDirect {
		n = 1
	}
	echoes := make([]*Echo, 0, n)
	defer func() {
		for _, e := range echoes {
			e.Close()
		}
	}()
	backends := make([]netip.AddrPort, 0, n)
	for range n {
		e, err := StartEcho(EchoConfig{Workers: s.EchoWorkers, ProxyV2: s.Name == ScenarioLBProxy})
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		echoes = append(echoes, e)
		backends = append(backends, e.Addr())
	}

	loopback := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	var nginx *Nginx
	proxy := 0 // the proxy's process group, for its CPU time
	switch s.Name {
	case ScenarioDirect:
		s.Load.Target = backends[0]
	case ScenarioNginx:
		port, err := freePort("udp4")
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		module, err := StreamModule(ctx, s.Nginx)
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		s.Load.Target = netip.AddrPortFrom(loopback, port)
		nginx, err = StartNginx(ctx, NginxConfig{
			Bin:               s.Nginx,
			Dir:               s.TempDir,
			Listen:            s.Load.Target,
			Backends:          backends,
			StreamModule:      module,
			WorkerConnections: NginxWorkerConnections(s.Load.withDefaults().Clients),
			ProxyResponses:    s.NginxProxyResponses,
		})
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		defer nginx.Stop()
		proxy = nginx.cmd.Process.Pid
	case ScenarioLBNAT, ScenarioLBProxy:
		port, err := freePort("udp4")
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		admin, err := freePort("tcp4")
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		s.Load.Target = netip.AddrPortFrom(loopback, port)
		logFile, err := os.Create(s.TempDir + "/lwm2m-lb.log")
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		defer logFile.Close()
		lb, err := StartLB(ctx, LBConfig{
			Bin:      lbBin,
			Mode:     strings.TrimPrefix(s.Name, "lb-"),
			Listen:   s.Load.Target,
			Admin:    netip.AddrPortFrom(loopback, admin),
			Backends: backends,
			Settle:   s.LBSettle,
			Log:      logFile,
		})
		if err != nil {
			return res, fmt.Errorf("%s: %w%s", s.Name, err, fileTail(logFile.Name()))
		}
		defer lb.Stop()
		proxy = lb.cmd.Process.Pid
	}

	var cpuStart, cpuEnd time.Duration
	var cpuErr error
	if proxy != 0 {
		s.Load.OnCount = func(started bool) {
			c, err := groupCPU(proxy)
			if err != nil {
				cpuErr = err
			}
			if started {
				cpuStart = c
			} else {
				cpuEnd = c
			}
		}
	}
	load, err := s.Load.Run(ctx)
	if err != nil {
		return res, fmt.Errorf("%s: %w", s.Name, err)
	}
	res.Load = load
	if proxy != 0 && cpuErr == nil && cpuEnd > cpuStart {
		res.ProxyCPU = cpuEnd - cpuStart
		if load.Responses > 0 {
			res.ProxyCPUPerResponse = res.ProxyCPU / time.Duration(load.Responses)
		}
	}
	for _, e := range echoes {
		res.Backends = append(res.Backends, e.Stats())
	}
	if nginx != nil {
		if log, err := nginx.ErrorLog(); err == nil {
			res.Note = nginxAlerts(log)
		}
	}
	return res, nil
}

// nginxAlerts summarises the error log lines of level error and above.
func nginxAlerts(log []byte) string {
	var first string
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		for _, level := range []string{"[error]", "[crit]", "[alert]", "[emerg]"} {
			if strings.Contains(line, level) {
				if n == 0 {
					first = line
				}
				n++
				break
			}
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("nginx logged %d errors, first: %s", n, first)
}

// fileTail returns the end of a log file for an error message.
func fileTail(name string) string {
	b, err := os.ReadFile(name)
	b = bytes.TrimSpace(b)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; log:\n" + string(b)
}

// Options configures Bench.
type Options struct {
	// Scenarios are the scenarios to run, in order (default Scenarios).
	Scenarios []string
	// Scenario holds the settings shared by every scenario; its Name is
	// ignored.
	Scenario Scenario
	// Rounds is the number of times the list of scenarios is run, the
	// scenarios taking turns so that background load on a shared machine
	// spreads over all of them; each scenario's result is its median
	// round (default 1).
	Rounds int
	// Pause is the time left before each run for the previous one's
	// processes and sockets to go away; the machine's CPU use is sampled
	// meanwhile (default 1 s).
	Pause time.Duration
	// Progress, if set, receives a line as each run starts.
	Progress func(format string, args ...any)
}

// Report is the outcome of Bench.
type Report struct {
	Started    time.Time `json:"started"`
	Kernel     string    `json:"kernel,omitempty"`
	NumCPU     int       `json:"num_cpu"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	Clients    int       `json:"clients"`
	Size       int       `json:"size"`
	Window     int       `json:"window"`
	Engine     Engine    `json:"engine"`
	Workers    int       `json:"workers"`
	Warmup     string    `json:"warmup"`
	Duration   string    `json:"duration"`
	Backends   int       `json:"backends"`
	Rounds     int       `json:"rounds"`
	// BusyBefore is the share of all CPUs, in percent, busy with other
	// work in the pauses before the runs (mean and maximum): a busy
	// machine makes the figures lower and noisier.
	BusyBeforeMean float64  `json:"busy_before_mean_percent"`
	BusyBeforeMax  float64  `json:"busy_before_max_percent"`
	Results        []Result `json:"results"`
}

// Failed reports whether a scenario failed (skipped ones do not count).
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if res.Error != "" {
			return true
		}
	}
	return false
}

// Bench runs the scenarios one at a time, Rounds times over, and returns
// their results with the ratios between them. A scenario that fails is
// recorded in its Result and the others still run; Bench itself only fails
// on bad options or when ctx is done.
func Bench(ctx context.Context, o Options) (*Report, error) {
	if len(o.Scenarios) == 0 {
		o.Scenarios = Scenarios
	}
	if o.Rounds <= 0 {
		o.Rounds = 1
	}
	if o.Pause <= 0 {
		o.Pause = time.Second
	}
	for _, name := range o.Scenarios {
		if !isScenario(name) {
			return nil, fmt.Errorf("unknown scenario %q (want one of %s)", name, strings.Join(Scenarios, ", "))
		}
	}
	load := o.Scenario.Load.withDefaults()
	if err := load.check(); err != nil {
		return nil, err
	}
	rep := &Report{
		Started:    time.Now().UTC(),
		Kernel:     kernelRelease(),
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		Clients:    load.Clients,
		Size:       load.Size,
		Window:     load.Window,
		Engine:     load.Engine,
		Workers:    load.Workers,
		Warmup:     load.Warmup.String(),
		Duration:   load.Duration.String(),
		Backends:   o.Scenario.Backends,
		Rounds:     o.Rounds,
	}
	if rep.Backends <= 0 {
		rep.Backends = DefaultBackends
	}
	runs := make([][]Result, len(o.Scenarios)) // by scenario, then round
	var busy []float64
	for round := range o.Rounds {
		for i, name := range o.Scenarios {
			b, err := sampleBusy(ctx, o.Pause)
			if err != nil {
				return rep, err
			}
			if b >= 0 {
				busy = append(busy, b)
			}
			if o.Progress != nil {
				o.Progress("round %d/%d: running %s for %v (after %v warm-up)", round+1, o.Rounds, name, load.Duration, load.Warmup)
			}
			s := o.Scenario
			s.Name = name
			res, err := Run(ctx, s)
			if ctx.Err() != nil {
				return rep, context.Cause(ctx)
			}
			if err != nil {
				res.Error = err.Error()
			}
			runs[i] = append(runs[i], res)
		}
	}
	for _, b := range busy {
		rep.BusyBeforeMean += b / float64(len(busy))
		rep.BusyBeforeMax = max(rep.BusyBeforeMax, b)
	}
	for _, rs := range runs {
		rep.Results = append(rep.Results, median(rs))
	}
	rep.computeRatios()
	return rep, nil
}

// median returns the round with the median responses per second, with
// every round's figure in Samples; a failed or skipped round makes the
// result that round's.
func median(rs []Result) Result {
	for _, r := range rs {
		if !r.ok() {
			return r
		}
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b Result) int {
		return cmp.Compare(a.Load.ResponsesPerSec, b.Load.ResponsesPerSec)
	})
	m := sorted[(len(sorted)-1)/2]
	if len(rs) > 1 {
		for _, r := range rs {
			m.Samples = append(m.Samples, r.Load.ResponsesPerSec)
		}
	}
	return m
}

// sampleBusy waits for d and returns the share of all CPUs, in percent,
// that was busy meanwhile according to /proc/stat, or -1 if unknown.
func sampleBusy(ctx context.Context, d time.Duration) (float64, error) {
	busy0, total0, ok0 := cpuTimes()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	case <-t.C:
	}
	busy1, total1, ok1 := cpuTimes()
	if !ok0 || !ok1 || total1 <= total0 {
		return -1, nil
	}
	return 100 * float64(busy1-busy0) / float64(total1-total0), nil
}

// cpuTimes returns the busy and total CPU time of the machine in clock
// ticks, from the first line of /proc/stat.
func cpuTimes() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal (guest time is
	// already counted in user and nice).
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, true
}

func isScenario(name string) bool { return slices.Contains(Scenarios, name) }

// Throughput targets from the issue.
const (
	// TargetNATvsNginx is the smallest acceptable lb-nat / nginx ratio.
	TargetNATvsNginx = 1.2
	// TargetProxyVsDirect is the smallest acceptable lb-proxy / direct
	// ratio.
	TargetProxyVsDirect = 0.6
)

// computeRatios fills in VsDirect, VsNginx, Target and TargetMet.
func (r *Report) computeRatios() {
	rate := func(name string) float64 {
		for _, res := range r.Results {
			if res.Scenario == name && res.ok() {
				return res.Load.ResponsesPerSec
			}
		}
		return 0
	}
	direct, nginx := rate(ScenarioDirect), rate(ScenarioNginx)
	for i := range r.Results {
		res := &r.Results[i]
		if !res.ok() {
			res.VsDirect, res.VsNginx = 0, 0
		} else {
			if direct > 0 {
				res.VsDirect = res.Load.ResponsesPerSec / direct
			}
			if nginx > 0 {
				res.VsNginx = res.Load.ResponsesPerSec / nginx
			}
		}
		var ratio, want float64
		var base string
		switch res.Scenario {
		case ScenarioLBNAT:
			ratio, want, base = res.VsNginx, TargetNATvsNginx, ScenarioNginx
		case ScenarioLBProxy:
			ratio, want, base = res.VsDirect, TargetProxyVsDirect, ScenarioDirect
		default:
			continue
		}
		res.Target = fmt.Sprintf(">= %.1fx %s", want, base)
		res.TargetMet = nil
		if ratio > 0 {
			met := ratio >= want
			res.TargetMet = &met
		}
	}
}

// kernelRelease returns the running kernel's release, or "".
func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
