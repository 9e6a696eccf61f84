// Package membership keeps an instance's entry in the cluster membership
// alive: it announces the instance at start, refreshes it on a heartbeat
// well inside its TTL, publishes state changes (active, draining) at once,
// and removes the entry when the instance stops cleanly. An instance that
// dies without leaving disappears when its TTL runs out.
package membership

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Defaults.
const (
	DefaultInterval = time.Second
	DefaultTTL      = 3 * time.Second
)

// Announcer heartbeats one member.
type Announcer struct {
	store    store.Membership
	interval time.Duration
	ttl      time.Duration
	log      *slog.Logger

	mu     sync.Mutex
	member store.Member
	kick   chan struct{}
}

// New returns an Announcer for m. Zero interval or ttl take the defaults;
// ttl is raised to at least twice the interval.
func New(s store.Membership, m store.Member, interval, ttl time.Duration, log *slog.Logger) *Announcer {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if ttl < 2*interval {
		ttl = 2 * interval
	}
	if log == nil {
		log = slog.Default()
	}
	if m.State == "" {
		m.State = store.StateActive
	}
	if m.Started == 0 {
		m.Started = time.Now().UnixMilli()
	}
	return &Announcer{store: s, interval: interval, ttl: ttl, log: log, member: m, kick: make(chan struct{}, 1)}
}

// SetState changes the announced state (store.StateActive or
// store.StateDraining) and announces it at once.
func (a *Announcer) SetState(state string) {
	a.mu.Lock()
	a.member.State = state
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Member returns the announced entry.
func (a *Announcer) Member() store.Member {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.member
}

// Run announces until ctx is cancelled, then leaves.
func (a *Announcer) Run(ctx context.Context) {
	t := time.NewTicker(a.interval)
	defer t.Stop()
	failing := false
	for {
		actx, cancel := context.WithTimeout(ctx, a.interval)
		err := a.store.Announce(actx, a.Member(), a.ttl)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			a.log.Warn("membership heartbeat failing", "err", err)
		case err == nil && failing:
			failing = false
			a.log.Info("membership heartbeat restored")
		}
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := a.store.Leave(lctx, a.member.ID); err != nil {
				a.log.Warn("membership leave failed; entry expires with its TTL", "err", err)
			}
			cancel()
			return
		case <-t.C:
		case <-a.kick:
		}
	}
}
