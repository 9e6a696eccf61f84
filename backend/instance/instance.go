// Package instance wires one lwm2m-server instance together: the shared
// store (Redis, or in memory), the northbound bus, the CoAP listener, the
// LwM2M server, the expiry sweeper, the membership heartbeat and the admin
// endpoint. cmd/lwm2m-server parses flags into Options and calls Start; the
// all-in-one cluster starts several instances on one in-memory store.
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/backend/dtlssession"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/secure"
	"github.com/lwm2mcluster/lwm2m/backend/securityapi"
	"github.com/lwm2mcluster/lwm2m/backend/server"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/admin"
	"github.com/lwm2mcluster/lwm2m/routing/dispatch"
	"github.com/lwm2mcluster/lwm2m/routing/membership"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Options configure an instance. The zero value of a field means its
// default.
type Options struct {
	// CoAPAddr is the plain CoAP listen address; empty disables it.
	CoAPAddr string
	// CoAPSAddr is the CoAP-over-DTLS (PSK) listen address; empty disables it.
	CoAPSAddr string
	// NodeID is the instance's DTLS Connection ID prefix; 0 allocates one
	// in the shared store.
	NodeID uint16
	// CIDLen is the Connection ID length (secure.DefaultCIDLen when 0).
	CIDLen int
	// SessionTTL keeps DTLS sessions resumable this long (default 24h).
	SessionTTL time.Duration
	// HandshakeTimeout bounds a DTLS handshake (default 30s).
	HandshakeTimeout time.Duration
	// AdvertiseDTLS is the CoAPS address announced to balancers (default:
	// derived from CoAPSAddr).
	AdvertiseDTLS string
	// RedisURL selects the Redis store and bus; empty means in-memory.
	RedisURL string
	// KeyPrefix prefixes every Redis key.
	KeyPrefix string
	// InstanceID names the instance (default: the host name).
	InstanceID string
	// AdminAddr is the HTTP admin address; empty disables it.
	AdminAddr string
	// Pprof serves Go's profiles on the admin address (/debug/pprof/).
	Pprof bool
	// Advertise is the backend address announced in the membership, for
	// balancers (default: the CoAP listener's address).
	Advertise string
	// ProxyProtocol expects every datagram behind a PROXY v2 header from
	// one of TrustedProxies (a proxy-mode lwm2m-lb in front).
	ProxyProtocol  bool
	TrustedProxies []netip.Prefix

	Grace         time.Duration
	SweepInterval time.Duration
	Heartbeat     time.Duration
	MemberTTL     time.Duration
	IdleTimeout   time.Duration
	MaxPayload    int

	// ModelsDir holds OMA DDF XML files of objects beyond the core ones.
	ModelsDir string

	Logger *slog.Logger
	// Store and Bus, when set, are used instead of opening them (several
	// in-process instances sharing in-memory state). The caller closes them.
	Store store.Store
	Bus   northbound.Bus
}

// Instance is a running lwm2m-server instance.
type Instance struct {
	ID       string
	log      *slog.Logger
	store    store.Store
	bus      northbound.Bus
	closers  []func() error
	coap     *dgram.Listener
	coaps    *dgram.Listener
	admin    *admin.Server
	announce *membership.Announcer
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errc     chan error
}

// Start opens everything and starts serving. It returns once the listeners
// are bound; Wait blocks until the instance stops.
func Start(ctx context.Context, o Options) (_ *Instance, err error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.InstanceID == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return nil, fmt.Errorf("instance id: no --instance-id and no host name: %w", err)
		}
		o.InstanceID = h
	}
	if o.Grace == 0 {
		o.Grace = store.DefaultGrace
	}
	in := &Instance{ID: o.InstanceID, log: log.With("instance", o.InstanceID), errc: make(chan error, 4)}
	defer func() {
		if err != nil {
			in.closeAll()
		}
	}()

	switch {
	case o.Store != nil:
		in.store, in.bus = o.Store, o.Bus
		if in.bus == nil {
			return nil, errors.New("instance: a shared Store needs a shared Bus")
		}
	case o.RedisURL != "":
		rs, err := redisstore.Open(ctx, o.RedisURL, redisstore.Options{Prefix: o.KeyPrefix, Grace: o.Grace})
		if err != nil {
			return nil, err
		}
		in.store, in.bus = rs, northbound.NewRedisBus(rs.Client())
		in.closers = append(in.closers, rs.Close)
		in.log.Info("shared state in Redis", "prefix", rs.Prefix())
	default:
		ms := memstore.New(o.Grace)
		br := northbound.NewBroker()
		in.store, in.bus = ms, br
		in.closers = append(in.closers, br.Close)
		in.log.Warn("no --redis: state is in memory, this instance cannot share it with others (single-instance mode)")
	}

	objects := model.Default()
	if o.ModelsDir != "" {
		if err := objects.LoadDDFDir(o.ModelsDir); err != nil {
			return nil, fmt.Errorf("--models: %w", err)
		}
		in.log.Info("object models loaded", "dir", o.ModelsDir)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := server.New(server.Config{
		InstanceID: o.InstanceID, Store: in.store, Events: in.bus, Logger: log,
		Registerer: reg, MaxPayload: o.MaxPayload, SweepInterval: o.SweepInterval,
		IdleTimeout: o.IdleTimeout, Registry: objects,
	})
	if err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	in.cancel = cancel

	if o.CoAPAddr != "" {
		l, err := dgram.Listen(o.CoAPAddr, dgram.Config{ProxyProtocol: o.ProxyProtocol, Trusted: o.TrustedProxies})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("--coap: %w", err)
		}
		in.coap = l
		registerDgramMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"listener": "coap"}, reg), l)
		in.log.Info("CoAP listening", "addr", l.Addr().String(), "proxyProtocol", o.ProxyProtocol)
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			if err := srv.ServeCoAP(runCtx, l); err != nil {
				in.errc <- err
			}
		}()
	}

	member := store.Member{ID: o.InstanceID, Admin: o.AdminAddr}
	if o.CoAPSAddr != "" {
		nodeID, err := in.nodeID(ctx, o)
		if err != nil {
			cancel()
			in.wg.Wait()
			return nil, err
		}
		layer, err := secure.New(secure.Config{
			Keys: func(ctx context.Context, identity string) ([]byte, error) {
				info, err := in.store.SecurityByIdentity(ctx, identity)
				return info.Key, err
			},
			NodeID: nodeID, CIDLen: o.CIDLen, HandshakeTimeout: o.HandshakeTimeout,
			Sessions: dtlssession.New(in.store, dtlssession.Options{TTL: o.SessionTTL}),
			Logger:   in.log, Registerer: reg,
		})
		if err != nil {
			cancel()
			in.wg.Wait()
			return nil, err
		}
		l, err := dgram.Listen(o.CoAPSAddr, dgram.Config{ProxyProtocol: o.ProxyProtocol, Trusted: o.TrustedProxies, CIDLen: layer.CIDLen()})
		if err != nil {
			cancel()
			in.wg.Wait()
			return nil, fmt.Errorf("--coaps: %w", err)
		}
		in.coaps = l
		registerDgramMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"listener": "coaps"}, reg), l)
		in.log.Info("CoAP over DTLS listening", "addr", l.Addr().String(), "nodeId", nodeID, "proxyProtocol", o.ProxyProtocol)
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			if err := srv.ServeCoAP(runCtx, layer.Listener(l)); err != nil {
				in.errc <- err
			}
		}()
		member.NodeID = nodeID
		member.CoAPS = o.AdvertiseDTLS
		if member.CoAPS == "" {
			member.CoAPS = advertiseAddr(l.Addr().(*net.UDPAddr).AddrPort())
		}
	}

	in.wg.Add(1)
	go func() { defer in.wg.Done(); srv.RunSweeper(runCtx) }()

	disp, err := dispatch.New(dispatch.Config{
		InstanceID: o.InstanceID, Bus: in.bus, State: in.store, Exec: srv,
		Logger: log, Registerer: reg,
	})
	if err != nil {
		cancel()
		in.wg.Wait()
		return nil, err
	}
	reqs, err := disp.Subscribe(ctx)
	if err != nil {
		cancel()
		in.wg.Wait()
		return nil, fmt.Errorf("northbound requests: %w", err)
	}
	in.wg.Add(1)
	go func() { defer in.wg.Done(); disp.Serve(runCtx, reqs) }()

	advertise := o.Advertise
	if advertise == "" && in.coap != nil {
		advertise = advertiseAddr(in.coap.Addr().(*net.UDPAddr).AddrPort())
		if advertise != in.coap.Addr().String() {
			in.log.Info("announcing a concrete backend address for the wildcard listener (set --advertise to choose)", "advertise", advertise)
		}
	}
	member.CoAP, member.Backend = addrString(in.coap), advertise
	in.announce = membership.New(in.store, member, o.Heartbeat, o.MemberTTL, in.log)
	in.wg.Add(1)
	go func() { defer in.wg.Done(); in.announce.Run(runCtx) }()

	if o.AdminAddr != "" {
		a, err := admin.Listen(admin.Config{
			Addr: o.AdminAddr, Gatherer: reg, Logger: in.log, Pprof: o.Pprof,
			Health: in.store.Ping,
			Handlers: map[string]http.Handler{
				"GET /members": admin.JSON(func(ctx context.Context) (any, error) { return in.store.Members(ctx) }),
				// Draining: balancers send this instance no new devices
				// and keep its current ones (see docs/operations.md).
				"POST /drain": admin.JSON(func(context.Context) (any, error) {
					in.SetDraining(true)
					return in.announce.Member(), nil
				}),
				"POST /undrain": admin.JSON(func(context.Context) (any, error) {
					in.SetDraining(false)
					return in.announce.Member(), nil
				}),
				"/security":  securityapi.Handler(in.store),
				"/security/": securityapi.Handler(in.store),
			},
		})
		if err != nil {
			cancel()
			in.wg.Wait()
			return nil, fmt.Errorf("--admin: %w", err)
		}
		in.admin = a
		in.log.Info("admin endpoint listening", "addr", a.Addr().String())
	}
	return in, nil
}

// advertiseAddr turns a wildcard listen address into one a balancer can
// reach: the first global unicast address of this host, else loopback.
func advertiseAddr(bound netip.AddrPort) string {
	if !bound.Addr().IsUnspecified() {
		return bound.String()
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsGlobalUnicast() && p.Addr().Is4() {
				return netip.AddrPortFrom(p.Addr(), bound.Port()).String()
			}
		}
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), bound.Port()).String()
}

func addrString(l *dgram.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// nodeID claims the configured node id or allocates one.
func (in *Instance) nodeID(ctx context.Context, o Options) (uint16, error) {
	if o.NodeID != 0 {
		if err := in.store.ClaimNodeID(ctx, o.InstanceID, o.NodeID); err != nil {
			return 0, fmt.Errorf("--node-id %d: %w", o.NodeID, err)
		}
		return o.NodeID, nil
	}
	id, err := in.store.AllocateNodeID(ctx, o.InstanceID)
	if err != nil {
		return 0, fmt.Errorf("node id allocation: %w", err)
	}
	return id, nil
}

// CoAPSAddr returns the bound CoAPS address, or nil.
func (in *Instance) CoAPSAddr() *net.UDPAddr {
	if in.coaps == nil {
		return nil
	}
	return in.coaps.Addr().(*net.UDPAddr)
}

// CoAPAddr returns the bound CoAP address, or nil.
func (in *Instance) CoAPAddr() *net.UDPAddr {
	if in.coap == nil {
		return nil
	}
	return in.coap.Addr().(*net.UDPAddr)
}

// AdminAddr returns the bound admin address, or nil.
func (in *Instance) AdminAddr() net.Addr {
	if in.admin == nil {
		return nil
	}
	return in.admin.Addr()
}

// Store returns the instance's store.
func (in *Instance) Store() store.Store { return in.store }

// Bus returns the instance's northbound bus.
func (in *Instance) Bus() northbound.Bus { return in.bus }

// SetDraining announces the instance as draining (balancers send it no new
// devices) or active again.
func (in *Instance) SetDraining(draining bool) {
	if draining {
		in.announce.SetState(store.StateDraining)
	} else {
		in.announce.SetState(store.StateActive)
	}
}

// Errors delivers fatal serving errors.
func (in *Instance) Errors() <-chan error { return in.errc }

// Stop stops serving, leaves the membership and closes what Start opened.
func (in *Instance) Stop(ctx context.Context) {
	if in.admin != nil {
		_ = in.admin.Shutdown(ctx)
	}
	in.cancel()
	in.wg.Wait()
	in.closeAll()
	in.log.Info("stopped")
}

func (in *Instance) closeAll() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		_ = in.closers[i]()
	}
	in.closers = nil
}

func registerDgramMetrics(reg prometheus.Registerer, l *dgram.Listener) {
	counter := func(name, help string, f func(dgram.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(l.Stats())) })
	}
	reg.MustRegister(
		counter("lwm2m_udp_received_total", "Datagrams received on the CoAP socket.", func(s dgram.Stats) uint64 { return s.Received }),
		counter("lwm2m_udp_sent_total", "Datagrams sent on the CoAP socket.", func(s dgram.Stats) uint64 { return s.Sent }),
		counter("lwm2m_udp_dropped_queue_total", "Datagrams dropped: a session's queue was full.", func(s dgram.Stats) uint64 { return s.DroppedQueue }),
		counter("lwm2m_udp_dropped_accept_total", "Datagrams dropped: too many new sessions at once.", func(s dgram.Stats) uint64 { return s.DroppedAccept }),
		counter("lwm2m_udp_dropped_sessions_total", "Datagrams dropped: session limit reached.", func(s dgram.Stats) uint64 { return s.DroppedSessions }),
		counter("lwm2m_udp_dropped_untrusted_total", "Datagrams dropped in PROXY mode: source is not a trusted balancer.", func(s dgram.Stats) uint64 { return s.DroppedUntrusted }),
		counter("lwm2m_udp_dropped_header_total", "Datagrams dropped in PROXY mode: missing or invalid PROXY v2 header.", func(s dgram.Stats) uint64 { return s.DroppedHeader }),
		counter("lwm2m_dtls_cid_routed_total", "DTLS datagrams delivered to their session by Connection ID.", func(s dgram.Stats) uint64 { return s.CIDRouted }),
		counter("lwm2m_dtls_peer_migrations_total", "DTLS sessions that moved to a new peer address (RFC 9146 peer address update).", func(s dgram.Stats) uint64 { return s.Migrations }),
		counter("lwm2m_udp_health_pings_total", "Balancer health-check pings (PROXY LOCAL) answered.", func(s dgram.Stats) uint64 { return s.HealthPings }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lwm2m_sessions", Help: "Open CoAP sessions (one per device address)."},
			func() float64 { return float64(l.Stats().Sessions) }),
	)
}
