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
	"github.com/lwm2mcluster/lwm2m/backend/server"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/admin"
	"github.com/lwm2mcluster/lwm2m/routing/membership"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Options configure an instance. The zero value of a field means its
// default.
type Options struct {
	// CoAPAddr is the plain CoAP listen address; empty disables it.
	CoAPAddr string
	// CoAPSAddr is reserved for CoAP over DTLS; it must be empty for now.
	CoAPSAddr string
	// RedisURL selects the Redis store and bus; empty means in-memory.
	RedisURL string
	// KeyPrefix prefixes every Redis key.
	KeyPrefix string
	// InstanceID names the instance (default: the host name).
	InstanceID string
	// AdminAddr is the HTTP admin address; empty disables it.
	AdminAddr string
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
	if o.CoAPSAddr != "" {
		return nil, errors.New("--coaps: CoAP over DTLS is not available in this version; leave it empty")
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := server.New(server.Config{
		InstanceID: o.InstanceID, Store: in.store, Events: in.bus, Logger: log,
		Registerer: reg, MaxPayload: o.MaxPayload, SweepInterval: o.SweepInterval,
		IdleTimeout: o.IdleTimeout,
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
		registerDgramMetrics(reg, l)
		in.log.Info("CoAP listening", "addr", l.Addr().String(), "proxyProtocol", o.ProxyProtocol)
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			if err := srv.ServeCoAP(runCtx, l); err != nil {
				in.errc <- err
			}
		}()
	}

	in.wg.Add(1)
	go func() { defer in.wg.Done(); srv.RunSweeper(runCtx) }()

	advertise := o.Advertise
	if advertise == "" && in.coap != nil {
		advertise = advertiseAddr(in.coap.Addr().(*net.UDPAddr).AddrPort())
		if advertise != in.coap.Addr().String() {
			in.log.Info("announcing a concrete backend address for the wildcard listener (set --advertise to choose)", "advertise", advertise)
		}
	}
	in.announce = membership.New(in.store, store.Member{
		ID: o.InstanceID, CoAP: addrString(in.coap), Backend: advertise, Admin: o.AdminAddr,
	}, o.Heartbeat, o.MemberTTL, in.log)
	in.wg.Add(1)
	go func() { defer in.wg.Done(); in.announce.Run(runCtx) }()

	if o.AdminAddr != "" {
		a, err := admin.Listen(admin.Config{
			Addr: o.AdminAddr, Gatherer: reg, Logger: in.log,
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
		counter("lwm2m_udp_health_pings_total", "Balancer health-check pings (PROXY LOCAL) answered.", func(s dgram.Stats) uint64 { return s.HealthPings }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lwm2m_sessions", Help: "Open CoAP sessions (one per device address)."},
			func() float64 { return float64(l.Stats().Sessions) }),
	)
}
