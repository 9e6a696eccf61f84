// Package server is the LwM2M server of one cluster instance: the CoAP
// endpoint devices talk to, the registration interface (Register, Update,
// De-register), lifetime expiry, and the northbound registration events.
//
// Long-lived state lives in a store.Store shared by every instance; what
// stays in this process is per-device CoAP session state (message ids,
// deduplication), as the cluster design prescribes.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/plgd-dev/go-coap/v3/dtls/server"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lwm2mcluster/lwm2m/backend/devmgmt"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Defaults.
const (
	DefaultMaxPayload    = 16 * 1024
	DefaultSweepInterval = time.Second
	DefaultSweepBatch    = 256
	DefaultIdleTimeout   = 5 * time.Minute
	DefaultStoreTimeout  = 5 * time.Second
	// DefaultNotificationTimeout bounds getting the later blocks of a
	// notification sent block-wise, like a northbound request without
	// a timeout.
	DefaultNotificationTimeout = northbound.DefaultTimeoutMs * time.Millisecond
)

// Config configures a Server.
type Config struct {
	// InstanceID names this instance in ownership records and events.
	InstanceID string
	// Store is the shared state.
	Store store.Store
	// Events receives the northbound registration events.
	Events northbound.Publisher
	// Logger logs; slog.Default() when nil.
	Logger *slog.Logger
	// Registerer registers the metrics; none when nil.
	Registerer prometheus.Registerer
	// MaxPayload bounds Register/Update payloads (4.13 beyond).
	MaxPayload int
	// SweepInterval is how often expired registrations are swept.
	SweepInterval time.Duration
	// SweepBatch bounds the registrations removed per sweep round trip.
	SweepBatch int
	// IdleTimeout closes a device's CoAP session after this much silence
	// (its registration is unaffected).
	IdleTimeout time.Duration
	// StoreTimeout bounds each store operation made for a request.
	StoreTimeout time.Duration
	// NotificationTimeout bounds getting the later blocks of a
	// notification the device sends block-wise (RFC 7959 section 2.6).
	NotificationTimeout time.Duration
	// Registry is the object model used to decode and encode values;
	// model.Default() when nil.
	Registry *model.Registry
}

// Server is one instance's LwM2M server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	m        *metrics
	now      func() time.Time
	exec     *devmgmt.Executor
	sessions sessions
	// observing holds the tokens of the observe (and cancel) requests of
	// one path (GET) in flight, whose block-wise answers go-coap
	// assembles; blockTokens those of the requests whose blocks the
	// server gets itself: composite requests (FETCH) in flight, marked by
	// devmgmt (Executor.HoldBlocks), and the requests for later blocks
	// of those answers and of notifications; fetches the block-wise
	// notifications being completed, by observation token (see
	// blockwise.go).
	observing   tokenSet
	blockTokens tokenSet
	fetches     fetches
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.InstanceID == "" {
		return nil, errors.New("server: instance id is required")
	}
	if cfg.Store == nil || cfg.Events == nil {
		return nil, errors.New("server: store and events publisher are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepBatch <= 0 {
		cfg.SweepBatch = DefaultSweepBatch
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = DefaultStoreTimeout
	}
	if cfg.NotificationTimeout <= 0 {
		cfg.NotificationTimeout = DefaultNotificationTimeout
	}
	if cfg.Registry == nil {
		cfg.Registry = model.Default()
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Logger.With("instance", cfg.InstanceID),
		m:   newMetrics(cfg.Registerer),
		now: time.Now,
	}
	// devmgmt completes the block-wise answers of composite requests
	// (FETCH) itself; receive hides their Block2 from go-coap.
	s.exec = &devmgmt.Executor{Registry: cfg.Registry, HoldBlocks: s.blockTokens.add}
	return s, nil
}

// Listener is a source of per-peer datagram sessions (package dgram's
// Listener, plain or unwrapping PROXY v2 headers).
type Listener = server.Listener

// ServeCoAP serves CoAP on the sessions of l until ctx is cancelled or l is
// closed. It closes l when it returns.
func (s *Server) ServeCoAP(ctx context.Context, l Listener) error {
	// The sessions' contexts derive from ctx: their background work
	// (completing block-wise notifications) is tracked by bg, and waited
	// for on return.
	bg := &background{}
	defer bg.close()
	ctx = context.WithValue(ctx, backgroundKey{}, bg)
	srv := server.New(
		options.WithContext(ctx),
		options.WithHandlerFunc(s.handle),
		options.WithProcessReceivedMessageFunc(s.receive),
		options.WithMaxMessageSize(uint32(s.cfg.MaxPayload+1024)),
		options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpClient.Conn) {
			_ = cc.Close()
		}),
		options.WithErrors(func(err error) {
			s.log.Debug("coap", "err", err)
		}),
	)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		srv.Stop()
		<-errc
		return nil
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("server: serve CoAP: %w", err)
		}
		return nil
	}
}

// RunSweeper removes expired registrations every SweepInterval and
// publishes a LESHAN_REG_DEL for each one this instance removed (the store
// hands each expired registration to exactly one sweeper in the cluster).
// It returns when ctx is cancelled.
func (s *Server) RunSweeper(ctx context.Context) {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sweep(ctx)
		}
	}
}

// Sweep removes the registrations expired now and announces them.
func (s *Server) Sweep(ctx context.Context) {
	start := time.Now()
	defer func() { s.m.sweepDuration.Observe(time.Since(start).Seconds()) }()
	for {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
		expired, err := s.cfg.Store.RemoveExpired(sctx, s.now(), s.cfg.SweepBatch)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.m.storeErrors.Inc()
				s.log.Warn("expiry sweep failed", "err", err)
			}
			return
		}
		for _, r := range expired {
			s.m.registrations.WithLabelValues("expire").Inc()
			s.log.Info("registration expired", "ep", r.Endpoint, "regId", r.ID)
			s.publish(ctx, northbound.ChannelRegDel, s.withInstance(r))
		}
		if len(expired) < s.cfg.SweepBatch {
			return
		}
	}
}
