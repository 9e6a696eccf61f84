package balancer

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lwm2mcluster/lwm2m/lb/maglev"
)

const natShards = 64

// natFlow is one client's upstream socket in NAT mode.
type natFlow struct {
	client  netip.AddrPort
	backend int32
	up      *net.UDPConn
	reply   *net.UDPConn // the service-address socket replies leave from
	last    atomic.Int64 // unix nanoseconds of the latest datagram either way
	closed  atomic.Bool
}

type natShard struct {
	mu    sync.Mutex
	flows map[netip.AddrPort]*natFlow
}

// natTable holds NAT-mode flows, sharded by client so workers rarely meet.
type natTable struct {
	b        *Balancer
	shards   [natShards]natShard
	count    atomic.Int64
	max      int64
	lastWarn atomic.Int64
	wg       sync.WaitGroup
}

func newNATTable(b *Balancer) *natTable {
	t := &natTable{b: b, max: int64(b.cfg.MaxFlows)}
	// Never run out of file descriptors: cap upstream sockets below the
	// process limit.
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
		if limit := int64(rl.Cur) - 256; limit > 0 && limit < t.max {
			b.log.Warn("nat mode: max flows lowered to fit the file descriptor limit",
				"maxFlows", limit, "requested", t.max, "RLIMIT_NOFILE", rl.Cur)
			t.max = limit
		}
	}
	for i := range t.shards {
		t.shards[i].flows = map[netip.AddrPort]*natFlow{}
	}
	return t
}

func (t *natTable) shard(a netip.AddrPort) *natShard {
	return &t.shards[maglev.HashAddrPort(a)%natShards]
}

// forward sends a client's datagram through its flow's upstream socket,
// opening one on first use (or when its backend changed).
func (t *natTable) forward(w *worker, s *snapshot, id int32, client netip.AddrPort, payload []byte, now time.Time) {
	sh := t.shard(client)
	sh.mu.Lock()
	f := sh.flows[client]
	if f != nil && f.backend != id {
		// The backend failed over: the old socket goes.
		delete(sh.flows, client)
		t.count.Add(-1)
		f.close()
		f = nil
	}
	if f == nil {
		if t.count.Load() >= t.max {
			sh.mu.Unlock()
			w.c.dropped[dropFlowLimit].Add(1)
			if last := t.lastWarn.Load(); now.UnixNano()-last > int64(10*time.Second) && t.lastWarn.CompareAndSwap(last, now.UnixNano()) {
				t.b.log.Warn("nat mode: flow limit reached, new clients are dropped", "maxFlows", t.max)
			}
			return
		}
		up, err := net.DialUDP(udpNetwork(s.addrs[id]), nil, net.UDPAddrFromAddrPort(s.addrs[id]))
		if err != nil {
			sh.mu.Unlock()
			w.c.dropped[dropUpstream].Add(1)
			return
		}
		f = &natFlow{client: client, backend: id, up: up, reply: w.conn.UDPConn()}
		sh.flows[client] = f
		t.count.Add(1)
		w.c.natOpened.Add(1)
		t.wg.Add(1)
		go t.relay(f)
	}
	f.last.Store(now.UnixNano())
	sh.mu.Unlock()
	if _, err := f.up.Write(payload); err != nil {
		w.c.writeErrors.Add(1)
		return
	}
	w.c.tx.Add(1)
}

func udpNetwork(a netip.AddrPort) string {
	if a.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}

// relay copies a flow's replies back to its client until the flow closes.
func (t *natTable) relay(f *natFlow) {
	defer t.wg.Done()
	buf := make([]byte, 2048)
	oob := []byte(nil)
	c := t.b.m.relayCounters
	for {
		n, _, flags, _, err := f.up.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.closed.Load() {
				return
			}
			// ICMP errors (backend port closed) surface here; keep going,
			// the health checks decide about the backend.
			c.readErrors.Add(1)
			continue
		}
		if flags&unix.MSG_TRUNC != 0 {
			c.dropped[dropTooBig].Add(1)
			continue
		}
		f.last.Store(time.Now().UnixNano())
		c.rx.Add(1)
		if _, err := f.reply.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			c.writeErrors.Add(1)
			continue
		}
		c.tx.Add(1)
		c.replies.Add(1)
	}
}

func (f *natFlow) close() {
	if f.closed.CompareAndSwap(false, true) {
		_ = f.up.Close()
	}
}

// sweep closes flows idle for longer than the idle timeout.
func (t *natTable) sweep(now time.Time) {
	limit := now.Add(-t.b.cfg.FlowIdleTimeout).UnixNano()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, f := range sh.flows {
			if f.last.Load() < limit {
				delete(sh.flows, k)
				t.count.Add(-1)
				f.close()
				t.b.m.natExpired.Inc()
			}
		}
		sh.mu.Unlock()
	}
}

// closeBackend closes every flow of a backend and returns how many.
func (t *natTable) closeBackend(id int32) int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, f := range sh.flows {
			if f.backend == id {
				delete(sh.flows, k)
				t.count.Add(-1)
				f.close()
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

func (t *natTable) countByBackend() map[int32]int {
	out := map[int32]int{}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, f := range sh.flows {
			out[f.backend]++
		}
		sh.mu.Unlock()
	}
	return out
}

// closeAll closes every flow and waits for their relays.
func (t *natTable) closeAll() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, f := range sh.flows {
			delete(sh.flows, k)
			t.count.Add(-1)
			f.close()
		}
		sh.mu.Unlock()
	}
	t.wg.Wait()
}

// open returns the number of open NAT flows.
func (t *natTable) open() int64 { return t.count.Load() }
