// Package discovery follows the cluster membership that lwm2m-server
// instances announce (routing/membership) and turns it into balancer
// backends: joins, leaves and drain-state changes show up within one poll
// interval.
package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/lb/balancer"
)

// DefaultInterval is the poll interval: well inside the two seconds within
// which a balancer must follow the membership.
const DefaultInterval = 500 * time.Millisecond

// Backends maps members to backends: the member's announced backend
// address (its CoAPS address when dtls), with its port replaced by port when
// port is not 0, and its node id; draining members drain. Members without a
// usable address are skipped.
func Backends(ms []store.Member, port uint16, dtls bool) []balancer.Backend {
	var out []balancer.Backend
	for _, m := range ms {
		addr := m.Backend
		if dtls {
			addr = m.CoAPS
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Addr().IsUnspecified() {
			continue
		}
		if port != 0 {
			ap = netip.AddrPortFrom(ap.Addr(), port)
		}
		out = append(out, balancer.Backend{Addr: ap, Draining: m.State == store.StateDraining, NodeID: m.NodeID})
	}
	slices.SortFunc(out, func(a, b balancer.Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Watch polls src every interval and calls fn with the members whenever
// they change (and once at the start). It returns when ctx ends.
func Watch(ctx context.Context, src store.Membership, interval time.Duration, log *slog.Logger, fn func([]store.Member)) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	var last string
	first, failing := true, false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, interval)
		ms, err := src.Members(qctx)
		cancel()
		switch {
		case err != nil:
			if !failing && ctx.Err() == nil {
				log.Warn("membership discovery failing; keeping the last known backends", "err", err)
				failing = true
			}
		default:
			if failing {
				log.Info("membership discovery restored")
				failing = false
			}
			// Seen changes on every heartbeat; compare what matters.
			key := ""
			for _, m := range ms {
				key += fmt.Sprintf("%s|%s|%s|%s|%d;", m.ID, m.Backend, m.CoAPS, m.State, m.NodeID)
			}
			if key != last || first {
				last, first = key, false
				fn(ms)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
