// Package balancer is lwm2m-lb's userspace data plane for one service: it
// receives the devices' datagrams on the service addresses, keeps every
// client (source IP and port) on one backend, and forwards.
//
// Placement: a sticky flow table (lb/flowtable) remembers each client's
// backend; a new client is placed with a Maglev table (lb/maglev) built over
// the healthy backends, so two balancers with the same backends place it
// identically. Adding a backend moves no existing flow; a failed backend's
// flows move and nobody else's; a draining backend keeps its flows and gets
// no new ones.
//
// Two forwarding modes:
//   - ModeProxy: each datagram goes to the backend behind a PROXY v2 header
//     naming the client and the service address; the backend's replies come
//     back behind a header naming the client and leave from the service
//     address. The balancer keeps no socket per flow, and any backend can
//     reach any device. Only backends may send replies.
//   - ModeNAT: for backends that know nothing of PROXY headers. One upstream
//     socket per flow, like nginx's stream proxy; bounded by MaxFlows and
//     closed after FlowIdleTimeout.
//
// The control plane (backends, health, tables) publishes an immutable
// snapshot through an atomic pointer: the per-datagram path takes no lock
// that all workers contend for and allocates nothing in steady state.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/lwm2mcluster/lwm2m/lb/flowtable"
	"github.com/lwm2mcluster/lwm2m/lb/health"
	"github.com/lwm2mcluster/lwm2m/lb/maglev"
	"github.com/lwm2mcluster/lwm2m/lb/udpio"
)

// Mode is a forwarding mode.
type Mode string

// Modes.
const (
	ModeProxy Mode = "proxy"
	ModeNAT   Mode = "nat"
)

// ParseMode parses "proxy" or "nat".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeProxy, ModeNAT:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown mode %q (want proxy or nat)", s)
}

// Defaults.
const (
	DefaultFlowIdleTimeout = 300 * time.Second
	DefaultMaxFlows        = 1 << 20
	DefaultBatch           = 64
	DefaultSocketBuffer    = 4 << 20
	maxDatagram            = 65535
	headroom               = 64 // room for a PROXY v2 header before the payload
)

// Config configures one service.
type Config struct {
	// Name names the service in logs and metrics.
	Name string
	// Listen are the service addresses (VIP:port), at least one.
	Listen []netip.AddrPort
	// Mode is the forwarding mode.
	Mode Mode
	// Workers is the number of sockets (SO_REUSEPORT) and goroutines per
	// service address (default GOMAXPROCS).
	Workers int
	// FlowIdleTimeout forgets a client after this much silence (default 300s).
	FlowIdleTimeout time.Duration
	// MaxFlows bounds the flow table (LRU eviction) and, in NAT mode, the
	// upstream sockets (new flows beyond it are dropped).
	MaxFlows int
	// MaglevSize is the Maglev table size, a prime (default 65537).
	MaglevSize uint64
	// Batch is the datagrams per recvmmsg/sendmmsg (default 64).
	Batch int
	// SocketBuffer is SO_RCVBUF/SO_SNDBUF per socket (default 4 MiB).
	SocketBuffer int
	// NoOffload turns off UDP segmentation and receive offload (GSO/GRO)
	// on the proxy-mode sockets, which otherwise carry each worker's
	// datagrams to a backend, and the backend's replies, through the
	// kernel in batches.
	NoOffload bool
	// CIDLen, when not 0, makes this a DTLS service: a datagram whose first
	// record carries a Connection ID of this length (RFC 9146) goes to the
	// backend whose node id starts the CID, whatever its source address.
	CIDLen int
	// Health configures the health checks. Its Probe and ProxyLocal are
	// set by Mode: in proxy mode, a CoAP ping behind a PROXY v2 LOCAL
	// header, which lwm2m-server's listener answers on its CoAP and CoAPS
	// ports alike; in nat mode, Health.Probe as given, except that a DTLS
	// service (CIDLen not 0) always uses health.ProbeDTLSHello, since a
	// DTLS server answers no plain CoAP on its port.
	Health health.Config
	Logger *slog.Logger
	// Registerer registers the service's metrics (labelled service=Name).
	Registerer prometheus.Registerer
}

// Backend is a backend as the control plane sees it.
type Backend struct {
	Addr     netip.AddrPort
	Draining bool
	// NodeID is the backend's DTLS Connection ID prefix (0: unknown).
	NodeID uint16
}

// BackendStatus is a backend's state for operators (/backends).
type BackendStatus struct {
	Addr     string `json:"addr"`
	State    string `json:"state"` // up, down, unknown
	Draining bool   `json:"draining"`
	NodeID   uint16 `json:"nodeId,omitempty"`
	Flows    int    `json:"flows"`
}

type backend struct {
	id       int32
	addr     netip.AddrPort
	draining bool
	present  bool
	nodeID   uint16
}

// snapshot is the immutable view the workers read.
type snapshot struct {
	table    *maglev.Table
	tableIDs []int32          // maglev index -> backend id
	usable   []bool           // by backend id: present and healthy
	addrs    []netip.AddrPort // by backend id
	byAddr   map[netip.AddrPort]int32
	byNode   map[uint16]int32 // DTLS node id -> backend id
}

// Balancer forwards one service.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	flows   *flowtable.Table
	builder *maglev.Builder
	checker *health.Checker
	m       *metrics
	// probe and proxyLocal are the health checks' probe.
	probe      health.Probe
	proxyLocal bool

	snap atomic.Pointer[snapshot]

	mu       sync.Mutex
	backends []*backend // by id; ids are never reused
	byAddr   map[netip.AddrPort]*backend

	conns    map[netip.AddrPort]*net.UDPConn                 // one socket per service address, for cross-address replies
	vipConns atomic.Pointer[map[netip.AddrPort]*net.UDPConn] // the same, published for the workers
	workers  []*worker
	nat      *natTable
	started  atomic.Bool
}

// New validates cfg and returns a Balancer with no backends.
func New(cfg Config) (*Balancer, error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("balancer: no listen address")
	}
	for _, a := range cfg.Listen {
		if !a.IsValid() || a.Addr().IsUnspecified() || a.Port() == 0 {
			return nil, fmt.Errorf("balancer: listen address %v must be a specific IP and port (replies leave from it)", a)
		}
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeProxy
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Listen[0].String()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.FlowIdleTimeout <= 0 {
		cfg.FlowIdleTimeout = DefaultFlowIdleTimeout
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaglevSize == 0 {
		cfg.MaglevSize = maglev.DefaultSize
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.SocketBuffer <= 0 {
		cfg.SocketBuffer = DefaultSocketBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	builder, err := maglev.New(cfg.MaglevSize)
	if err != nil {
		return nil, fmt.Errorf("balancer: maglev size: %w", err)
	}
	flows, err := flowtable.New(flowtable.Config{MaxFlows: cfg.MaxFlows, IdleTimeout: cfg.FlowIdleTimeout})
	if err != nil {
		return nil, fmt.Errorf("balancer: flow table: %w", err)
	}
	b := &Balancer{
		cfg: cfg, log: cfg.Logger.With("service", cfg.Name), flows: flows, builder: builder,
		byAddr: map[netip.AddrPort]*backend{}, conns: map[netip.AddrPort]*net.UDPConn{},
	}
	b.m = newMetrics(cfg.Registerer, cfg.Name, b)
	hc := cfg.Health
	hc.ProxyLocal = cfg.Mode == ModeProxy
	switch {
	case cfg.Mode == ModeProxy:
		hc.Probe = health.ProbeCoAPPing
	case cfg.CIDLen != 0:
		hc.Probe = health.ProbeDTLSHello
	}
	hc.Logger = b.log
	hc.OnChange = func(health.State) { b.rebuild() }
	if cfg.Registerer != nil {
		hc.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"service": cfg.Name}, cfg.Registerer)
	}
	if b.checker, err = health.New(hc); err != nil {
		return nil, fmt.Errorf("balancer: health checks: %w", err)
	}
	b.probe, b.proxyLocal = hc.Probe, hc.ProxyLocal
	if cfg.Mode == ModeNAT {
		b.nat = newNATTable(b)
	}
	if cfg.CIDLen < 0 || cfg.CIDLen > 255 || (cfg.CIDLen > 0 && cfg.CIDLen < 2) {
		return nil, fmt.Errorf("balancer: CID length %d out of range", cfg.CIDLen)
	}
	b.snap.Store(&snapshot{byAddr: map[netip.AddrPort]int32{}, byNode: map[uint16]int32{}})
	return b, nil
}

// SetBackends replaces the backend set. Backends that stay keep their id,
// flows and health state.
func (b *Balancer) SetBackends(bs []Backend) {
	b.mu.Lock()
	want := map[netip.AddrPort]Backend{}
	for _, x := range bs {
		x.Addr = netip.AddrPortFrom(x.Addr.Addr().Unmap(), x.Addr.Port())
		want[x.Addr] = x
	}
	var removed []int32
	for addr, be := range b.byAddr {
		if _, ok := want[addr]; !ok {
			be.present = false
			delete(b.byAddr, addr)
			removed = append(removed, be.id)
			b.log.Info("backend removed", "backend", addr.String())
		}
	}
	for addr, x := range want {
		be := b.byAddr[addr]
		if be == nil {
			be = &backend{id: int32(len(b.backends)), addr: addr, present: true}
			b.backends = append(b.backends, be)
			b.byAddr[addr] = be
			b.log.Info("backend added", "backend", addr.String(), "draining", x.Draining)
		} else if be.draining != x.Draining {
			b.log.Info("backend drain state changed", "backend", addr.String(), "draining", x.Draining)
		}
		be.draining = x.Draining
		be.nodeID = x.NodeID
	}
	targets := make([]health.Target, 0, len(b.byAddr))
	for addr := range b.byAddr {
		targets = append(targets, health.Target{ID: addr.String(), Addr: addr})
	}
	b.mu.Unlock()
	sort.Slice(targets, func(i, j int) bool { return targets[i].ID < targets[j].ID })
	b.checker.SetTargets(targets)
	b.rebuild()
	for _, id := range removed {
		b.dropBackendFlows(id)
	}
}

// rebuild publishes a new snapshot from the backend set and health.
func (b *Balancer) rebuild() {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.backends)
	s := &snapshot{
		usable: make([]bool, n), addrs: make([]netip.AddrPort, n),
		byAddr: make(map[netip.AddrPort]int32, len(b.byAddr)),
		byNode: map[uint16]int32{},
	}
	var mb []maglev.Backend
	var ids []int32
	var down []int32
	old := b.snap.Load()
	for _, be := range b.backends {
		s.addrs[be.id] = be.addr
		if !be.present {
			continue
		}
		s.byAddr[be.addr] = be.id
		if be.nodeID != 0 {
			s.byNode[be.nodeID] = be.id
		}
		healthy := b.checker.Healthy(be.addr.String())
		s.usable[be.id] = healthy
		if !healthy && int(be.id) < len(old.usable) && old.usable[be.id] {
			down = append(down, be.id)
		}
		if healthy {
			w := uint32(1)
			if be.draining {
				w = 0
			}
			mb = append(mb, maglev.Backend{Name: be.addr.String(), Weight: w})
			ids = append(ids, be.id)
		}
	}
	if len(mb) > 0 {
		t, err := b.builder.Build(mb)
		if err != nil {
			b.log.Error("maglev table not rebuilt", "err", err)
			t = nil
		}
		s.table = t
		s.tableIDs = ids
	}
	b.snap.Store(s)
	b.m.tableBuilds.Inc()
	// A failed backend's flows move: forget them now (the workers would
	// also re-place them lazily).
	for _, id := range down {
		go b.dropBackendFlows(id)
	}
}

func (b *Balancer) dropBackendFlows(id int32) {
	n := b.flows.DeleteBackend(id)
	if b.nat != nil {
		n += b.nat.closeBackend(id)
	}
	if n > 0 {
		b.log.Info("flows of a lost backend released", "backend", b.snap.Load().addrs[id].String(), "flows", n)
	}
}

// pick returns the backend of a client, placing it if it has none (or its
// backend is no longer usable).
func (b *Balancer) pick(s *snapshot, key flowtable.Key, client netip.AddrPort, now time.Time) (int32, bool) {
	if id, ok := b.flows.Lookup(key, now); ok && int(id) < len(s.usable) && s.usable[id] {
		return id, true
	}
	if s.table == nil {
		return 0, false
	}
	idx, ok := s.table.Lookup(maglev.HashAddrPort(client))
	if !ok {
		return 0, false
	}
	id := s.tableIDs[idx]
	b.flows.Insert(key, id, now)
	return id, true
}

// Place returns the backend a new client would get now (for tests and
// operators); ok is false when no backend is usable.
func (b *Balancer) Place(client netip.AddrPort) (netip.AddrPort, bool) {
	s := b.snap.Load()
	if s.table == nil {
		return netip.AddrPort{}, false
	}
	idx, ok := s.table.Lookup(maglev.HashAddrPort(client))
	if !ok {
		return netip.AddrPort{}, false
	}
	return s.addrs[s.tableIDs[idx]], true
}

// Backends returns every backend's state.
func (b *Balancer) Backends() []BackendStatus {
	counts := b.flows.CountByBackend()
	if b.nat != nil {
		counts = b.nat.countByBackend()
	}
	states := map[string]health.State{}
	for _, st := range b.checker.States() {
		states[st.ID] = st
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []BackendStatus{}
	for _, be := range b.backends {
		if !be.present {
			continue
		}
		st := states[be.addr.String()]
		state := "unknown"
		if st.Known {
			state = "down"
			if st.Healthy {
				state = "up"
			}
		}
		out = append(out, BackendStatus{Addr: be.addr.String(), State: state, Draining: be.draining, NodeID: be.nodeID, Flows: counts[be.id]})
	}
	slices.SortFunc(out, func(a, b BackendStatus) int {
		if a.Addr < b.Addr {
			return -1
		}
		if a.Addr > b.Addr {
			return 1
		}
		return 0
	})
	return out
}

// HealthProbe returns the kind of probe the health checks send and whether
// it goes behind a PROXY v2 LOCAL header.
func (b *Balancer) HealthProbe() (probe health.Probe, proxyLocal bool) {
	return b.probe, b.proxyLocal
}

// Addrs returns the bound service addresses (after Run has started).
func (b *Balancer) Addrs() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(b.conns))
	for a := range b.conns {
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y netip.AddrPort) int { return x.Compare(y) })
	return out
}

// Run opens the sockets and forwards until ctx is cancelled.
func (b *Balancer) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("balancer: already running")
	}
	var conns []*net.UDPConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
		if b.nat != nil {
			b.nat.closeAll() // the flows and their relays
		}
	}
	for li, addr := range b.cfg.Listen {
		bind := addr.String()
		for wi := 0; wi < b.cfg.Workers; wi++ {
			pc, err := udpio.ListenReusePort(ctx, udpio.Network(addr), bind, b.cfg.SocketBuffer)
			if err != nil {
				closeAll()
				return fmt.Errorf("balancer %s: %w", b.cfg.Name, err)
			}
			conns = append(conns, pc)
			bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
			bound = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
			bind = bound.String() // port 0: later workers join the chosen port
			w, err := newWorker(b, pc, bound, uint16(li))
			if err != nil {
				closeAll()
				return err
			}
			b.mu.Lock()
			if _, ok := b.conns[bound]; !ok {
				b.conns[bound] = pc
			}
			b.workers = append(b.workers, w)
			b.mu.Unlock()
		}
		b.log.Info("listening", "addr", bind, "mode", string(b.cfg.Mode), "workers", b.cfg.Workers, "healthProbe", b.probe.String())
	}
	b.mu.Lock()
	vc := make(map[netip.AddrPort]*net.UDPConn, len(b.conns))
	for a, c := range b.conns {
		vc[a] = c
	}
	b.mu.Unlock()
	b.vipConns.Store(&vc)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.checker.Run(gctx) })
	g.Go(func() error { b.sweep(gctx); return nil })
	for _, w := range b.workers {
		g.Go(func() error { return w.run() })
	}
	<-gctx.Done()
	closeAll()
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// sweep expires idle flows.
func (b *Balancer) sweep(ctx context.Context) {
	every := min(b.cfg.FlowIdleTimeout/4, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			b.flows.Sweep(now)
			if b.nat != nil {
				b.nat.sweep(now)
			}
		}
	}
}

// connFor returns the socket of a service address, for replies that must
// leave from another address than the worker's.
func (b *Balancer) connFor(a netip.AddrPort) *net.UDPConn {
	if m := b.vipConns.Load(); m != nil {
		return (*m)[a]
	}
	return nil
}
