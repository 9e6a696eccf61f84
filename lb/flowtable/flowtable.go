// Package flowtable implements the balancer's sticky flow table: it
// remembers which backend each client flow (source address and port, plus a
// service index) was sent to, so that later datagrams of the flow go to the
// same backend whatever happens to the set of backends.
//
// The table is split into shards selected by a hash of the key, each with
// its own mutex, so that forwarding workers rarely contend. Each shard holds
// at most its share of the configured capacity and evicts its least recently
// used flow when full. A flow that has been idle for the idle timeout is
// expired lazily when it is looked up and in bulk by [Table.Sweep].
//
// Entries are kept in a per-shard slab of pointer-free nodes linked into an
// intrusive LRU list by index, with a map from key to node index, so the
// garbage collector has nothing to scan and looking up or refreshing a flow
// allocates nothing.
package flowtable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Defaults used for zero [Config] fields.
const (
	DefaultMaxFlows    = 1 << 20
	DefaultIdleTimeout = 300 * time.Second // like LVS's UDP timeout
	DefaultShards      = 64
)

// ErrConfig is returned (wrapped) by [New] for an invalid configuration.
var ErrConfig = errors.New("flowtable: invalid configuration")

// Config configures a [Table]. The zero value selects the defaults.
type Config struct {
	// MaxFlows bounds the number of flows; it is rounded up to a multiple
	// of Shards and each shard holds at most MaxFlows/Shards.
	MaxFlows int
	// IdleTimeout is how long a flow lives without traffic.
	IdleTimeout time.Duration
	// Shards is the number of independently locked shards, a power of two.
	Shards int
}

// Key identifies a flow. It is a comparable value without pointers; build it
// with [MakeKey]. IPv4 addresses and their IPv4-mapped IPv6 forms make the
// same key, and zones are dropped.
type Key struct {
	addr    [16]byte
	port    uint16
	service uint16
}

// MakeKey returns the key of the flow from client to the service with the
// given index (0 if the balancer serves a single address).
func MakeKey(client netip.AddrPort, service uint16) Key {
	return Key{addr: client.Addr().As16(), port: client.Port(), service: service}
}

// AddrPort returns the client address of the flow, with IPv4-mapped
// addresses unmapped.
func (k Key) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(k.addr).Unmap(), k.port)
}

// Service returns the service index of the flow.
func (k Key) Service() uint16 { return k.service }

func (k Key) hash() uint64 {
	h := fmix64(binary.LittleEndian.Uint64(k.addr[:8]) ^ 0x9e3779b97f4a7c15)
	h = fmix64(h ^ binary.LittleEndian.Uint64(k.addr[8:]))
	return fmix64(h ^ uint64(k.port)<<16 ^ uint64(k.service))
}

func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// Stats are cumulative counters of a [Table].
type Stats struct {
	Inserted  uint64 // new flows
	Evicted   uint64 // flows dropped because their shard was full
	Expired   uint64 // flows dropped for idleness (lazily or by Sweep)
	Deleted   uint64 // flows removed by Delete or DeleteBackend
	Lookups   uint64 // calls to Lookup
	LookupHit uint64 // calls to Lookup that found a live flow
}

// Table is a sharded, bounded flow table. It is safe for concurrent use.
type Table struct {
	shards []shard
	mask   uint64
	idle   int64     // nanoseconds
	res    int64     // last-seen resolution, nanoseconds
	epoch  time.Time // origin of the nanosecond clock, monotonic
}

// nil marks the end of a list (and an unused link).
const nilIdx = -1

// node is one flow. Free nodes are chained through next.
type node struct {
	key     Key
	backend int32
	prev    int32
	next    int32
	seen    int64 // last-seen time, nanoseconds since Table.epoch
}

type shard struct {
	mu    sync.Mutex
	index map[Key]int32
	nodes []node
	head  int32 // most recently used
	tail  int32 // least recently used
	free  int32 // free list through node.next
	limit int
	stats Stats
	_     [64]byte // keep hot shards on separate cache lines
}

// New returns an empty table.
func New(cfg Config) (*Table, error) {
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	switch {
	case cfg.Shards < 0 || cfg.Shards&(cfg.Shards-1) != 0 || cfg.Shards > 1<<16:
		return nil, fmt.Errorf("flowtable: %d shards (want a power of two up to 65536): %w", cfg.Shards, ErrConfig)
	case cfg.MaxFlows < 0 || cfg.MaxFlows > 1<<31-1-cfg.Shards:
		return nil, fmt.Errorf("flowtable: max flows %d: %w", cfg.MaxFlows, ErrConfig)
	case cfg.IdleTimeout < 0:
		return nil, fmt.Errorf("flowtable: idle timeout %v: %w", cfg.IdleTimeout, ErrConfig)
	}
	t := &Table{
		shards: make([]shard, cfg.Shards),
		mask:   uint64(cfg.Shards - 1),
		idle:   int64(cfg.IdleTimeout),
		res:    min(int64(cfg.IdleTimeout/256), int64(time.Second)),
		epoch:  time.Now(),
	}
	limit := (cfg.MaxFlows + cfg.Shards - 1) / cfg.Shards
	for i := range t.shards {
		s := &t.shards[i]
		s.index = make(map[Key]int32)
		s.head, s.tail, s.free = nilIdx, nilIdx, nilIdx
		s.limit = limit
	}
	return t, nil
}

// Cap reports the maximum number of flows.
func (t *Table) Cap() int { return len(t.shards) * t.shards[0].limit }

// IdleTimeout reports the configured idle timeout.
func (t *Table) IdleTimeout() time.Duration { return time.Duration(t.idle) }

// clock converts now to the table's nanosecond clock. It uses the monotonic
// reading when now has one (as time.Now does), so wall clock steps do not
// expire or resurrect flows.
func (t *Table) clock(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

func (t *Table) shard(k Key) *shard { return &t.shards[k.hash()&t.mask] }

// Lookup returns the backend of the flow and marks the flow as used at now.
// A flow idle for the idle timeout or longer is removed and not reported.
//
// Last-seen times have a resolution of 1/256 of the idle timeout, at most one
// second: a flow used again within that time keeps its earlier last-seen
// time and LRU position.
func (t *Table) Lookup(k Key, now time.Time) (backend int32, ok bool) {
	ts := t.clock(now)
	s := t.shard(k)
	s.mu.Lock()
	s.stats.Lookups++
	i, ok := s.index[k]
	if !ok {
		s.mu.Unlock()
		return -1, false
	}
	n := &s.nodes[i]
	if ts-n.seen >= t.idle {
		s.remove(i)
		s.stats.Expired++
		s.mu.Unlock()
		return -1, false
	}
	backend = n.backend
	s.touch(i, ts, t.res)
	s.stats.LookupHit++
	s.mu.Unlock()
	return backend, true
}

// Insert sets the backend of the flow and marks it as used at now, adding
// the flow if it is absent. Adding a flow to a full shard evicts the shard's
// least recently used flow.
func (t *Table) Insert(k Key, backend int32, now time.Time) {
	ts := t.clock(now)
	s := t.shard(k)
	s.mu.Lock()
	if i, ok := s.index[k]; ok {
		s.nodes[i].backend = backend
		s.touch(i, ts, t.res)
		s.mu.Unlock()
		return
	}
	if len(s.index) >= s.limit {
		if ts-s.nodes[s.tail].seen >= t.idle {
			s.stats.Expired++
		} else {
			s.stats.Evicted++
		}
		s.remove(s.tail)
	}
	var i int32
	if s.free != nilIdx {
		i = s.free
		s.free = s.nodes[i].next
	} else {
		i = int32(len(s.nodes))
		s.nodes = append(s.nodes, node{})
	}
	s.nodes[i] = node{key: k, backend: backend, prev: nilIdx, next: nilIdx, seen: ts}
	s.pushFront(i, ts)
	s.index[k] = i
	s.stats.Inserted++
	s.mu.Unlock()
}

// Delete removes the flow and reports whether it was present.
func (t *Table) Delete(k Key) bool {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[k]
	if ok {
		s.remove(i)
		s.stats.Deleted++
	}
	return ok
}

// DeleteBackend removes every flow of the backend, for example when it has
// failed, and returns how many it removed.
func (t *Table) DeleteBackend(backend int32) int {
	total := 0
	for si := range t.shards {
		s := &t.shards[si]
		s.mu.Lock()
		for i := s.head; i != nilIdx; {
			next := s.nodes[i].next
			if s.nodes[i].backend == backend {
				s.remove(i)
				total++
				s.stats.Deleted++
			}
			i = next
		}
		s.mu.Unlock()
	}
	return total
}

// sweepBatch bounds the work done under one shard lock by Sweep.
const sweepBatch = 1024

// Sweep removes every flow idle for the idle timeout or longer at now and
// returns how many it removed. Call it periodically (for example every few
// seconds) to bound the memory held by dead flows; lookups expire flows
// lazily in any case.
func (t *Table) Sweep(now time.Time) int {
	ts := t.clock(now)
	total := 0
	for si := range t.shards {
		s := &t.shards[si]
		for {
			n := 0
			s.mu.Lock()
			// The list is ordered by last-seen time (see touch), so the
			// expired flows are exactly a suffix of it.
			for s.tail != nilIdx && ts-s.nodes[s.tail].seen >= t.idle && n < sweepBatch {
				s.remove(s.tail)
				n++
			}
			s.stats.Expired += uint64(n)
			more := n == sweepBatch
			s.mu.Unlock()
			total += n
			if !more {
				break
			}
		}
	}
	return total
}

// Len reports the number of flows, including idle ones not yet expired.
func (t *Table) Len() int {
	total := 0
	for si := range t.shards {
		s := &t.shards[si]
		s.mu.Lock()
		total += len(s.index)
		s.mu.Unlock()
	}
	return total
}

// CountByBackend returns the number of flows of each backend, including idle
// ones not yet expired.
func (t *Table) CountByBackend() map[int32]int {
	counts := make(map[int32]int)
	for si := range t.shards {
		s := &t.shards[si]
		s.mu.Lock()
		for i := s.head; i != nilIdx; i = s.nodes[i].next {
			counts[s.nodes[i].backend]++
		}
		s.mu.Unlock()
	}
	return counts
}

// Stats returns the table's cumulative counters.
func (t *Table) Stats() Stats {
	var st Stats
	for si := range t.shards {
		s := &t.shards[si]
		s.mu.Lock()
		st.Inserted += s.stats.Inserted
		st.Evicted += s.stats.Evicted
		st.Expired += s.stats.Expired
		st.Deleted += s.stats.Deleted
		st.Lookups += s.stats.Lookups
		st.LookupHit += s.stats.LookupHit
		s.mu.Unlock()
	}
	return st
}

// touch moves node i to the front of the list and records ts, unless the
// node was seen less than res ago: tracking last-seen times with a coarse
// resolution spares the list updates (and their cache misses) for busy flows.
// Workers may call with slightly out-of-order times; the last-seen time is
// clamped to the previous head's so that the list stays sorted by last-seen
// time.
func (s *shard) touch(i int32, ts, res int64) {
	if ts-s.nodes[i].seen < res {
		return
	}
	if s.head == i {
		s.nodes[i].seen = max(s.nodes[i].seen, ts)
		return
	}
	s.unlink(i)
	s.pushFront(i, ts)
}

// pushFront links the unlinked node i at the front with last-seen ts.
func (s *shard) pushFront(i int32, ts int64) {
	n := &s.nodes[i]
	n.prev = nilIdx
	n.next = s.head
	if s.head != nilIdx {
		h := &s.nodes[s.head]
		ts = max(ts, h.seen)
		h.prev = i
	} else {
		s.tail = i
	}
	n.seen = ts
	s.head = i
}

func (s *shard) unlink(i int32) {
	n := &s.nodes[i]
	if n.prev != nilIdx {
		s.nodes[n.prev].next = n.next
	} else {
		s.head = n.next
	}
	if n.next != nilIdx {
		s.nodes[n.next].prev = n.prev
	} else {
		s.tail = n.prev
	}
	n.prev, n.next = nilIdx, nilIdx
}

// remove unlinks node i, drops it from the index and frees it.
func (s *shard) remove(i int32) {
	s.unlink(i)
	delete(s.index, s.nodes[i].key)
	s.nodes[i] = node{backend: -1, prev: nilIdx, next: s.free}
	s.free = i
}
