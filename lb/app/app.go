// Package app runs lwm2m-lb: one balancer per configured service, their
// backends from the configuration and, with discovery, from the cluster
// membership in Redis, and the admin endpoint. Reload applies a new
// configuration without dropping the flows of services that did not change.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/admin"
	"github.com/lwm2mcluster/lwm2m/lb/balancer"
	"github.com/lwm2mcluster/lwm2m/lb/discovery"
	"github.com/lwm2mcluster/lwm2m/lb/health"
)

// DefaultCIDLen is the Connection ID length lwm2m-server issues by default.
const DefaultCIDLen = 8

// Duration is a time.Duration that reads "1s" style strings from JSON.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"1s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Service is one balanced service.
type Service struct {
	Name   string   `json:"name"`
	Listen []string `json:"listen"`
	Mode   string   `json:"mode"`
	// Backends are static backends (host:port).
	Backends []string `json:"backends,omitempty"`
	// BackendPort replaces the port of discovered backends (0: as announced).
	BackendPort uint16 `json:"backendPort,omitempty"`
	// DTLS makes this a CoAP-over-DTLS service: discovered backends are the
	// instances' CoAPS addresses and records with a Connection ID are routed
	// to the instance that issued it.
	DTLS bool `json:"dtls,omitempty"`
}

// Config is lwm2m-lb's configuration (the -c file, or built from flags).
type Config struct {
	Admin string `json:"admin,omitempty"`
	// Pprof serves Go's profiles on the admin address (/debug/pprof/).
	Pprof bool `json:"pprof,omitempty"`
	// Discover is a Redis URL whose membership supplies the backends.
	Discover  string `json:"discover,omitempty"`
	KeyPrefix string `json:"keyPrefix,omitempty"`

	HealthInterval  Duration `json:"healthInterval,omitempty"`
	HealthTimeout   Duration `json:"healthTimeout,omitempty"`
	Rise            int      `json:"rise,omitempty"`
	Fall            int      `json:"fall,omitempty"`
	FlowIdleTimeout Duration `json:"flowIdleTimeout,omitempty"`
	MaxFlows        int      `json:"maxFlows,omitempty"`
	MaglevSize      uint64   `json:"maglevSize,omitempty"`
	Workers         int      `json:"workers,omitempty"`
	// NoUDPOffload turns off UDP GSO/GRO on proxy-mode sockets.
	NoUDPOffload bool `json:"noUdpOffload,omitempty"`
	// CIDLen is the DTLS Connection ID length the instances issue
	// (default 8), for DTLS services.
	CIDLen int `json:"cidLen,omitempty"`
	// Membership, when set, supplies the backends instead of the Redis
	// of Discover: in-process instances sharing an in-memory store
	// (lwm2m-cluster). Not part of the file.
	Membership store.Membership `json:"-"`

	Services []Service `json:"services"`
}

// Load reads a JSON configuration file. Unknown fields are errors.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, c.Validate()
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if len(c.Services) == 0 {
		return errors.New("config: no service (give --listen, or services in the file)")
	}
	names := map[string]bool{}
	for i := range c.Services {
		s := &c.Services[i]
		if s.Name == "" {
			s.Name = fmt.Sprintf("service%d", i)
		}
		if names[s.Name] {
			return fmt.Errorf("config: duplicate service name %q", s.Name)
		}
		names[s.Name] = true
		if _, err := s.listen(); err != nil {
			return err
		}
		if _, err := s.backends(); err != nil {
			return err
		}
		if s.Mode == "" {
			s.Mode = string(balancer.ModeProxy)
		}
		if _, err := balancer.ParseMode(s.Mode); err != nil {
			return fmt.Errorf("config: service %s: %w", s.Name, err)
		}
		if len(s.Backends) == 0 && !c.discovering() {
			return fmt.Errorf("config: service %s has no backends and no discovery", s.Name)
		}
	}
	return nil
}

// discovering reports whether backends come from a membership.
func (c *Config) discovering() bool { return c.Discover != "" || c.Membership != nil }

func (s *Service) listen() ([]netip.AddrPort, error) {
	if len(s.Listen) == 0 {
		return nil, fmt.Errorf("config: service %s: no listen address", s.Name)
	}
	var out []netip.AddrPort
	for _, l := range s.Listen {
		a, err := netip.ParseAddrPort(l)
		if err != nil {
			return nil, fmt.Errorf("config: service %s: listen %q: %w", s.Name, l, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func (s *Service) backends() ([]balancer.Backend, error) {
	var out []balancer.Backend
	for _, b := range s.Backends {
		a, err := netip.ParseAddrPort(b)
		if err != nil {
			return nil, fmt.Errorf("config: service %s: backend %q: %w", s.Name, b, err)
		}
		out = append(out, balancer.Backend{Addr: a})
	}
	return out, nil
}

// running is a started service.
type running struct {
	svc    Service
	reg    *prometheus.Registry // the service's own metrics, gone with it
	key    string               // what requires a restart when it changes
	b      *balancer.Balancer
	cancel context.CancelFunc
	done   chan error
}

// App is a running lwm2m-lb.
type App struct {
	log  *slog.Logger
	reg  *prometheus.Registry
	adm  *admin.Server
	disc *redisstore.Store
	// stopDisc ends the membership watch; discDone closes when it has.
	stopDisc context.CancelFunc
	discDone chan struct{}

	mu       sync.Mutex
	cfg      Config
	services map[string]*running
	members  []store.Member
	errc     chan error
}

// Start starts every service, discovery and the admin endpoint.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &App{log: log, reg: prometheus.NewRegistry(), services: map[string]*running{}, errc: make(chan error, 8)}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := a.apply(ctx, cfg); err != nil {
		a.Stop()
		return nil, err
	}
	var src store.Membership
	switch {
	case cfg.Membership != nil:
		src = cfg.Membership
	case cfg.Discover != "":
		s, err := redisstore.Open(ctx, cfg.Discover, redisstore.Options{Prefix: cfg.KeyPrefix})
		if err != nil {
			a.Stop()
			return nil, fmt.Errorf("--discover: %w", err)
		}
		a.disc, src = s, s
	}
	if src != nil {
		dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		a.stopDisc = cancel
		a.discDone = make(chan struct{})
		go func() {
			defer close(a.discDone)
			discovery.Watch(dctx, src, discovery.DefaultInterval, log, a.setMembers)
		}()
	}
	if cfg.Admin != "" {
		adm, err := admin.Listen(admin.Config{
			Addr: cfg.Admin, Gatherer: prometheus.GathererFunc(a.gather), Logger: log, Health: a.health, Pprof: cfg.Pprof,
			Handlers: map[string]http.Handler{
				"GET /backends": admin.JSON(func(context.Context) (any, error) { return a.Backends(), nil }),
			},
		})
		if err != nil {
			a.Stop()
			return nil, fmt.Errorf("--admin: %w", err)
		}
		a.adm = adm
		log.Info("admin endpoint listening", "addr", adm.Addr().String())
	}
	return a, nil
}

func serviceKey(c Config, s Service) string {
	b, _ := json.Marshal(struct {
		L           []string
		M           string
		P           uint16
		D           bool
		C           int
		HI, HT, FI  Duration
		R, F, MF, W int
		MS          uint64
		NO          bool
	}{s.Listen, s.Mode, s.BackendPort, s.DTLS, c.CIDLen, c.HealthInterval, c.HealthTimeout, c.FlowIdleTimeout, c.Rise, c.Fall, c.MaxFlows, c.Workers, c.MaglevSize, c.NoUDPOffload})
	return string(b)
}

// apply starts, restarts, updates or stops services to match cfg.
func (a *App) apply(ctx context.Context, cfg Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	want := map[string]Service{}
	for _, s := range cfg.Services {
		want[s.Name] = s
	}
	for name, r := range a.services {
		if s, ok := want[name]; !ok || serviceKey(cfg, s) != r.key {
			a.log.Info("stopping service", "service", name)
			r.stop()
			delete(a.services, name)
		}
	}
	for _, s := range cfg.Services {
		if r, ok := a.services[s.Name]; ok {
			r.svc = s
			continue
		}
		r, err := a.startService(ctx, cfg, s)
		if err != nil {
			return err
		}
		a.services[s.Name] = r
	}
	a.cfg = cfg
	for _, r := range a.services {
		a.updateBackendsLocked(r)
	}
	return nil
}

// gather collects the process metrics and those of every running service.
func (a *App) gather() ([]*dto.MetricFamily, error) {
	a.mu.Lock()
	gs := prometheus.Gatherers{a.reg}
	for _, r := range a.services {
		gs = append(gs, r.reg)
	}
	a.mu.Unlock()
	return gs.Gather()
}

func (a *App) startService(ctx context.Context, cfg Config, s Service) (*running, error) {
	listen, _ := s.listen()
	reg := prometheus.NewRegistry()
	mode, _ := balancer.ParseMode(s.Mode)
	cidLen := 0
	if s.DTLS {
		cidLen = cfg.CIDLen
		if cidLen == 0 {
			cidLen = DefaultCIDLen
		}
	}
	hc := health.Config{Interval: time.Duration(cfg.HealthInterval), Timeout: time.Duration(cfg.HealthTimeout), Rise: cfg.Rise, Fall: cfg.Fall}
	if s.DTLS {
		// In nat mode the backends are bare DTLS servers, which answer a
		// ClientHello but no CoAP ping; in proxy mode the balancer pings
		// behind a PROXY LOCAL header, which lwm2m-server answers on its
		// CoAPS port too.
		hc.Probe = health.ProbeDTLSHello
	}
	b, err := balancer.New(balancer.Config{
		Name: s.Name, Listen: listen, Mode: mode, Workers: cfg.Workers, CIDLen: cidLen,
		FlowIdleTimeout: time.Duration(cfg.FlowIdleTimeout), MaxFlows: cfg.MaxFlows, MaglevSize: cfg.MaglevSize,
		NoOffload: cfg.NoUDPOffload, Health: hc, Logger: a.log, Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &running{svc: s, reg: reg, key: serviceKey(cfg, s), b: b, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := b.Run(rctx)
		if err != nil {
			a.errc <- fmt.Errorf("service %s: %w", s.Name, err)
		}
		r.done <- err
	}()
	// Fail fast when the sockets cannot be opened.
	deadline := time.Now().Add(5 * time.Second)
	for len(b.Addrs()) < len(listen) {
		select {
		case err := <-r.done:
			cancel()
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			return nil, fmt.Errorf("service %s: sockets not open after 5s", s.Name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r, nil
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

func (a *App) setMembers(ms []store.Member) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.members = ms
	ids := make([]string, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, m.ID+"="+m.State)
	}
	a.log.Info("membership changed", "members", ids)
	for _, r := range a.services {
		a.updateBackendsLocked(r)
	}
}

func (a *App) updateBackendsLocked(r *running) {
	bs, _ := r.svc.backends()
	if a.cfg.discovering() {
		for _, d := range discovery.Backends(a.members, r.svc.BackendPort, r.svc.DTLS) {
			if !slices.ContainsFunc(bs, func(x balancer.Backend) bool { return x.Addr == d.Addr }) {
				bs = append(bs, d)
			}
		}
	}
	r.b.SetBackends(bs)
}

// Reload applies a new configuration; on error the old one stays.
func (a *App) Reload(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a.mu.Lock()
	old := a.cfg
	a.mu.Unlock()
	cfg.Membership = old.Membership // in-process only, never in a file
	if cfg.Discover != old.Discover || cfg.Admin != old.Admin || cfg.KeyPrefix != old.KeyPrefix {
		return errors.New("reload: admin, discover and keyPrefix need a restart")
	}
	if err := a.apply(ctx, cfg); err != nil {
		// Put back what was running (services stopped for a restart are
		// started again with their old settings).
		if rerr := a.apply(ctx, old); rerr != nil {
			return fmt.Errorf("reload: %w; restoring the previous configuration also failed: %v", err, rerr)
		}
		return fmt.Errorf("reload: %w (previous configuration restored)", err)
	}
	return nil
}

// Backends returns each service's backends.
func (a *App) Backends() map[string][]balancer.BackendStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]balancer.BackendStatus{}
	for name, r := range a.services {
		out[name] = r.b.Backends()
	}
	return out
}

// Balancer returns a service's balancer, or nil.
func (a *App) Balancer(name string) *balancer.Balancer {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.services[name]; r != nil {
		return r.b
	}
	return nil
}

// health is healthy when every service has a backend that takes new
// clients (up and not draining).
func (a *App) health(context.Context) error {
	for name, bs := range a.Backends() {
		if !slices.ContainsFunc(bs, func(b balancer.BackendStatus) bool { return b.State == "up" && !b.Draining }) {
			return fmt.Errorf("service %s has no backend up that takes new clients", name)
		}
	}
	return nil
}

// Errors delivers fatal service errors.
func (a *App) Errors() <-chan error { return a.errc }

// Stop stops everything.
func (a *App) Stop() {
	if a.adm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.adm.Shutdown(ctx)
		cancel()
	}
	a.mu.Lock()
	for name, r := range a.services {
		r.stop()
		delete(a.services, name)
	}
	a.mu.Unlock()
	if a.stopDisc != nil {
		a.stopDisc()
		<-a.discDone
	}
	if a.disc != nil {
		_ = a.disc.Close()
	}
}
