package flowtable

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

var t0 = time.Now()

func at(d time.Duration) time.Time { return t0.Add(d) }

func key(i int) Key {
	return MakeKey(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 5683), 0)
}

func mustNew(t testing.TB, cfg Config) *Table {
	t.Helper()
	tab, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// check verifies the internal invariants of every shard.
func check(t *testing.T, tab *Table) {
	t.Helper()
	for si := range tab.shards {
		s := &tab.shards[si]
		s.mu.Lock()
		n := 0
		prev := int32(nilIdx)
		for i := s.head; i != nilIdx; i = s.nodes[i].next {
			nd := &s.nodes[i]
			if nd.prev != prev {
				t.Fatalf("shard %d: node %d prev = %d, want %d", si, i, nd.prev, prev)
			}
			if prev != nilIdx && s.nodes[prev].seen < nd.seen {
				t.Fatalf("shard %d: list not sorted by last-seen time", si)
			}
			if j, ok := s.index[nd.key]; !ok || j != i {
				t.Fatalf("shard %d: node %d not indexed (%d, %v)", si, i, j, ok)
			}
			if &tab.shards[nd.key.hash()&tab.mask] != s {
				t.Fatalf("shard %d: node %d in the wrong shard", si, i)
			}
			prev = i
			n++
			if n > len(s.nodes) {
				t.Fatalf("shard %d: cycle", si)
			}
		}
		if s.tail != prev {
			t.Fatalf("shard %d: tail = %d, want %d", si, s.tail, prev)
		}
		if n != len(s.index) || n > s.limit {
			t.Fatalf("shard %d: %d listed, %d indexed, limit %d", si, n, len(s.index), s.limit)
		}
		free := 0
		for i := s.free; i != nilIdx; i = s.nodes[i].next {
			free++
			if free > len(s.nodes) {
				t.Fatalf("shard %d: free list cycle", si)
			}
		}
		if n+free != len(s.nodes) {
			t.Fatalf("shard %d: %d live + %d free != %d nodes", si, n, free, len(s.nodes))
		}
		s.mu.Unlock()
	}
}

func TestConfig(t *testing.T) {
	tab := mustNew(t, Config{})
	if tab.Cap() != DefaultMaxFlows || tab.IdleTimeout() != DefaultIdleTimeout || len(tab.shards) != DefaultShards {
		t.Errorf("defaults: cap %d, idle %v, shards %d", tab.Cap(), tab.IdleTimeout(), len(tab.shards))
	}
	if tab := mustNew(t, Config{MaxFlows: 100, Shards: 8}); tab.Cap() != 104 {
		t.Errorf("Cap() = %d, want 104", tab.Cap())
	}
	for _, cfg := range []Config{
		{Shards: 3}, {Shards: -4}, {Shards: 1 << 17}, {MaxFlows: -1}, {IdleTimeout: -time.Second}, {MaxFlows: 1 << 31},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) error = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestKey(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:5683")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), v4.Port())
	if MakeKey(v4, 1) != MakeKey(mapped, 1) {
		t.Error("IPv4 and IPv4-mapped keys differ")
	}
	if MakeKey(v4, 1) == MakeKey(v4, 2) {
		t.Error("service index ignored")
	}
	if MakeKey(v4, 1) == MakeKey(netip.AddrPortFrom(v4.Addr(), 5684), 1) {
		t.Error("port ignored")
	}
	k := MakeKey(mapped, 7)
	if k.AddrPort() != v4 || k.Service() != 7 {
		t.Errorf("AddrPort() = %v, Service() = %d", k.AddrPort(), k.Service())
	}
	v6 := netip.MustParseAddrPort("[2001:db8::1]:1")
	if MakeKey(v6, 0).AddrPort() != v6 {
		t.Error("IPv6 round trip")
	}
}

func TestBasic(t *testing.T) {
	tab := mustNew(t, Config{MaxFlows: 1000})
	if _, ok := tab.Lookup(key(1), at(0)); ok {
		t.Fatal("lookup in empty table")
	}
	tab.Insert(key(1), 3, at(0))
	tab.Insert(key(2), 4, at(0))
	if b, ok := tab.Lookup(key(1), at(time.Second)); !ok || b != 3 {
		t.Fatalf("Lookup = %d, %v; want 3, true", b, ok)
	}
	tab.Insert(key(1), 5, at(time.Second)) // re-pin
	if b, _ := tab.Lookup(key(1), at(time.Second)); b != 5 {
		t.Fatalf("after update: %d", b)
	}
	if tab.Len() != 2 {
		t.Fatalf("Len() = %d", tab.Len())
	}
	if !tab.Delete(key(1)) || tab.Delete(key(1)) {
		t.Fatal("Delete")
	}
	if _, ok := tab.Lookup(key(1), at(time.Second)); ok {
		t.Fatal("deleted flow found")
	}
	if b, ok := tab.Lookup(key(2), at(time.Second)); !ok || b != 4 {
		t.Fatal("other flow lost")
	}
	check(t, tab)
	st := tab.Stats()
	if st.Inserted != 2 || st.Deleted != 1 || st.Lookups != 5 || st.LookupHit != 3 {
		t.Errorf("Stats() = %+v", st)
	}
}

func TestLRU(t *testing.T) {
	tab := mustNew(t, Config{MaxFlows: 4, Shards: 1})
	for i := range 4 {
		tab.Insert(key(i), int32(i), at(time.Duration(i)*time.Second))
	}
	tab.Lookup(key(0), at(10*time.Second)) // 0 becomes most recent; 1 is now the LRU
	tab.Insert(key(4), 4, at(11*time.Second))
	if _, ok := tab.Lookup(key(1), at(12*time.Second)); ok {
		t.Error("LRU flow 1 not evicted")
	}
	for _, i := range []int{0, 2, 3, 4} {
		if _, ok := tab.Lookup(key(i), at(13*time.Second)); !ok {
			t.Errorf("flow %d evicted", i)
		}
	}
	if st := tab.Stats(); st.Evicted != 1 || tab.Len() != 4 {
		t.Errorf("evicted %d, len %d", st.Evicted, tab.Len())
	}
	check(t, tab)

	// Many shards: the bound holds globally.
	tab = mustNew(t, Config{MaxFlows: 1000, Shards: 16})
	for i := range 10000 {
		tab.Insert(key(i), 0, at(time.Duration(i)))
	}
	if tab.Len() > tab.Cap() || tab.Len() < tab.Cap()*9/10 {
		t.Errorf("Len() = %d, Cap() = %d", tab.Len(), tab.Cap())
	}
	// The most recent flows survive.
	for i := 9990; i < 10000; i++ {
		if _, ok := tab.Lookup(key(i), at(10000)); !ok {
			t.Errorf("recent flow %d evicted", i)
		}
	}
	check(t, tab)
}

func TestIdleExpiry(t *testing.T) {
	const idle = 300 * time.Second
	tab := mustNew(t, Config{IdleTimeout: idle})
	tab.Insert(key(1), 1, at(0))
	if _, ok := tab.Lookup(key(1), at(idle-1)); !ok {
		t.Fatal("expired early")
	}
	// The lookup refreshed the flow.
	if _, ok := tab.Lookup(key(1), at(2*idle-2)); !ok {
		t.Fatal("lookup did not refresh")
	}
	if _, ok := tab.Lookup(key(1), at(3*idle-2)); ok {
		t.Fatal("idle flow found")
	}
	if tab.Len() != 0 || tab.Stats().Expired != 1 {
		t.Fatalf("Len() = %d, Expired = %d", tab.Len(), tab.Stats().Expired)
	}
	// A flow is not resurrected by Insert of another key evicting it
	// either: Insert into a full shard counts an idle tail as expired.
	small := mustNew(t, Config{MaxFlows: 1, Shards: 1, IdleTimeout: idle})
	small.Insert(key(1), 1, at(0))
	small.Insert(key(2), 1, at(idle))
	if st := small.Stats(); st.Expired != 1 || st.Evicted != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSweep(t *testing.T) {
	const idle = time.Minute
	tab := mustNew(t, Config{IdleTimeout: idle, Shards: 4})
	// 5000 flows (more than a sweep batch per shard), seen at i ms.
	const n = 5000
	for i := range n {
		tab.Insert(key(i), int32(i%3), at(time.Duration(i)*time.Millisecond))
	}
	// Refresh a few old ones.
	for i := range 10 {
		tab.Lookup(key(i), at(n*time.Millisecond))
	}
	// At idle + 3000ms the flows seen at or before 3000ms, except the 10
	// refreshed, are expired.
	if got := tab.Sweep(at(idle + 3000*time.Millisecond)); got != 3001-10 {
		t.Errorf("Sweep removed %d, want %d", got, 3001-10)
	}
	if tab.Len() != n-3001+10 {
		t.Errorf("Len() = %d", tab.Len())
	}
	for i := range n {
		_, ok := tab.Lookup(key(i), at(idle+3000*time.Millisecond))
		if want := i < 10 || i > 3000; ok != want {
			t.Fatalf("flow %d present = %v, want %v", i, ok, want)
		}
	}
	check(t, tab)
	if got := tab.Sweep(at(10 * idle)); got != n-3001+10 || tab.Len() != 0 {
		t.Errorf("final sweep removed %d, Len() = %d", got, tab.Len())
	}
	check(t, tab)
}

// Workers may pass slightly stale times; the list stays ordered and Sweep
// still finds every expired flow.
func TestOutOfOrderTimes(t *testing.T) {
	tab := mustNew(t, Config{IdleTimeout: 100, Shards: 1})
	tab.Insert(key(1), 1, at(50))
	tab.Insert(key(2), 1, at(40)) // stale: clamped to 50
	tab.Lookup(key(1), at(45))    // stale refresh
	check(t, tab)
	if n := tab.Sweep(at(149)); n != 0 {
		t.Errorf("Sweep(149) = %d", n)
	}
	if n := tab.Sweep(at(150)); n != 2 {
		t.Errorf("Sweep(150) = %d", n)
	}
}

func TestDeleteBackend(t *testing.T) {
	tab := mustNew(t, Config{})
	for i := range 1000 {
		tab.Insert(key(i), int32(i%4), at(0))
	}
	if got := tab.CountByBackend(); len(got) != 4 || got[0] != 250 || got[3] != 250 {
		t.Errorf("CountByBackend() = %v", got)
	}
	if n := tab.DeleteBackend(2); n != 250 {
		t.Errorf("DeleteBackend(2) = %d", n)
	}
	if n := tab.DeleteBackend(2); n != 0 {
		t.Errorf("second DeleteBackend(2) = %d", n)
	}
	got := tab.CountByBackend()
	if _, ok := got[2]; ok || len(got) != 3 || tab.Len() != 750 {
		t.Errorf("after delete: %v, Len() = %d", got, tab.Len())
	}
	for i := range 1000 {
		b, ok := tab.Lookup(key(i), at(0))
		if ok != (i%4 != 2) || (ok && b != int32(i%4)) {
			t.Fatalf("flow %d: %d, %v", i, b, ok)
		}
	}
	check(t, tab)
}

// TestModel runs random operations against a single-shard table and a
// straightforward model of an LRU with idle expiry.
func TestModel(t *testing.T) {
	const limit, idle = 16, 50
	tab := mustNew(t, Config{MaxFlows: limit, Shards: 1, IdleTimeout: idle})
	type entry struct {
		backend int32
		seen    int64
	}
	model := map[Key]entry{}
	var order []Key // LRU first
	touch := func(k Key) {
		for i, o := range order {
			if o == k {
				order = append(order[:i], order[i+1:]...)
				break
			}
		}
		order = append(order, k)
	}
	drop := func(k Key) {
		delete(model, k)
		for i, o := range order {
			if o == k {
				order = append(order[:i], order[i+1:]...)
				break
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	var now int64
	for step := range 20000 {
		now += int64(r.IntN(5))
		k := key(r.IntN(40))
		switch op := r.IntN(10); {
		case op < 5:
			b, ok := tab.Lookup(k, at(time.Duration(now)))
			e, present := model[k]
			want := present && now-e.seen < idle
			if present && !want {
				drop(k)
			}
			if ok != want || (ok && b != e.backend) {
				t.Fatalf("step %d: Lookup = %d, %v; model %+v, %v", step, b, ok, e, want)
			}
			if ok {
				model[k] = entry{e.backend, now}
				touch(k)
			}
		case op < 9:
			b := int32(r.IntN(4))
			if _, ok := model[k]; !ok && len(model) == limit {
				drop(order[0])
			}
			model[k] = entry{b, now}
			touch(k)
			tab.Insert(k, b, at(time.Duration(now)))
		case op < 10:
			_, present := model[k]
			if tab.Delete(k) != present {
				t.Fatalf("step %d: Delete disagrees", step)
			}
			drop(k)
		}
		if step%1000 == 0 {
			n := tab.Sweep(at(time.Duration(now)))
			m := 0
			for k, e := range model {
				if now-e.seen >= idle {
					drop(k)
					m++
				}
			}
			if n != m {
				t.Fatalf("step %d: Sweep = %d, model %d", step, n, m)
			}
		}
		if tab.Len() != len(model) {
			t.Fatalf("step %d: Len() = %d, model %d", step, tab.Len(), len(model))
		}
	}
	check(t, tab)
}

func TestConcurrent(t *testing.T) {
	tab := mustNew(t, Config{MaxFlows: 2000, Shards: 8, IdleTimeout: time.Second})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 5))
			for i := range 20000 {
				k := key(r.IntN(5000))
				now := at(time.Duration(i) * time.Microsecond)
				switch r.IntN(20) {
				case 0:
					tab.Delete(k)
				case 1:
					if i%1000 == 0 {
						tab.DeleteBackend(int32(r.IntN(4)))
						tab.Sweep(now)
						tab.CountByBackend()
					}
				default:
					if _, ok := tab.Lookup(k, now); !ok {
						tab.Insert(k, int32(r.IntN(4)), now)
					}
				}
			}
		})
	}
	wg.Wait()
	check(t, tab)
	total := 0
	for _, c := range tab.CountByBackend() {
		total += c
	}
	if total != tab.Len() || tab.Len() > tab.Cap() {
		t.Errorf("counts sum to %d, Len() = %d, Cap() = %d", total, tab.Len(), tab.Cap())
	}
}

func TestZeroAllocs(t *testing.T) {
	tab := mustNew(t, Config{MaxFlows: 4096, Shards: 16})
	for i := range 8192 { // fill and churn once so the shards reach their size
		tab.Insert(key(i), 1, at(0))
	}
	k, miss := key(8000), key(1)
	for name, f := range map[string]func(){
		"Lookup hit":      func() { tab.Lookup(k, at(1)) },
		"Lookup miss":     func() { tab.Lookup(miss, at(1)) },
		"Insert existing": func() { tab.Insert(k, 2, at(1)) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s allocates %v times", name, n)
		}
	}
	// Steady churn (new flows evicting old ones) reuses nodes and map
	// slots. AllocsPerRun rounds down, so count every allocation. The
	// first round lets the maps clean up their tombstones once.
	i := 10000
	for round := range 3 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 100000 {
			tab.Insert(key(i), 1, at(2))
			i++
		}
		runtime.ReadMemStats(&after)
		if n := after.Mallocs - before.Mallocs; round > 0 && n != 0 {
			t.Errorf("100000 inserts with eviction allocate %d times", n)
		}
	}
}

// Busy flows are not relinked on every lookup, but idle expiry and LRU
// order still hold at the documented resolution.
func TestResolution(t *testing.T) {
	tab := mustNew(t, Config{MaxFlows: 2, Shards: 1, IdleTimeout: 256 * time.Second})
	tab.Insert(key(1), 1, at(0))
	tab.Insert(key(2), 2, at(0))
	// Within the resolution: key 1 stays the LRU flow...
	tab.Lookup(key(1), at(time.Second-1))
	tab.Insert(key(3), 3, at(time.Second-1))
	if _, ok := tab.Lookup(key(1), at(time.Second-1)); ok {
		t.Error("flow 1 refreshed within the resolution")
	}
	// ...beyond it, the lookup refreshes it.
	tab.Lookup(key(2), at(2*time.Second))
	tab.Insert(key(4), 4, at(2*time.Second))
	if _, ok := tab.Lookup(key(2), at(2*time.Second)); !ok {
		t.Error("flow 2 not refreshed")
	}
	if _, ok := tab.Lookup(key(2), at(258*time.Second-1)); !ok {
		t.Error("flow 2 expired early")
	}
	check(t, tab)
}

func BenchmarkLookupHit(b *testing.B) {
	tab := mustNew(b, Config{})
	const n = 100000
	for i := range n {
		tab.Insert(key(i), 1, t0)
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tab.Lookup(key(i%n), now)
		i++
	}
}

func BenchmarkInsertExisting(b *testing.B) {
	tab := mustNew(b, Config{})
	const n = 100000
	for i := range n {
		tab.Insert(key(i), 1, t0)
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tab.Insert(key(i%n), 2, now)
		i++
	}
}

// BenchmarkInsertChurn inserts only new flows into a full table, each one
// evicting the least recently used flow of its shard.
func BenchmarkInsertChurn(b *testing.B) {
	tab := mustNew(b, Config{MaxFlows: 1 << 16})
	i := 0
	for ; i < 1<<17; i++ {
		tab.Insert(key(i), 1, t0)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		tab.Insert(key(i), 1, now)
		i++
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	for _, shards := range []int{1, 64} {
		b.Run(fmt.Sprint("shards=", shards), func(b *testing.B) {
			tab := mustNew(b, Config{Shards: shards})
			const n = 100000
			for i := range n {
				tab.Insert(key(i), 1, t0)
			}
			now := time.Now()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(n)
				for pb.Next() {
					tab.Lookup(key(i%n), now)
					i++
				}
			})
		})
	}
}
