// Package maglev implements the Maglev consistent-hashing lookup table
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016) used by the balancer to place new flows.
//
// A [Builder] holds the table size M, a prime. [Builder.Build] fills a table
// of M slots from a set of named, weighted backends; [Table.Lookup] maps a
// flow hash to the backend owning slot hash mod M. Tables are immutable and
// safe for concurrent use, so a data plane swaps in a freshly built table
// (for example through an atomic.Pointer) whenever the healthy set changes.
//
// The table depends only on the set of (name, weight) pairs, never on the
// order in which they are given or on the process building it: backends are
// sorted by name and each backend's permutation is derived from its name with
// fixed-seed hashes. Two balancer instances that see the same backend set
// therefore place every flow on the same backend.
//
// Removing a backend moves only (about) the slots it owned; adding one to a
// set of N moves about 1/(N+1) of the slots. A backend with weight 0
// (draining) receives no slots, exactly as if it were absent; the caller
// keeps its existing flows in a flow table.
//
// [HashAddrPort] is the flow hash used for lookups; see its documentation for
// the exact definition (it is simple enough to reproduce in eBPF).
package maglev

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// DefaultSize is the default table size, the prime recommended by the
// Maglev paper for up to a few hundred backends.
const DefaultSize = 65537

// MaxSize is the largest table size accepted by [New].
const MaxSize = 1 << 24

// Seeds of the xxhash64 digests of a backend name that give the start
// (offset) and the stride (skip) of its permutation. They are part of the
// table's definition: changing them reshuffles every flow.
const (
	offsetSeed = 0x6d61676c65762d6f // "maglev-o"
	skipSeed   = 0x6d61676c65762d73 // "maglev-s"
)

// Errors returned by [New] and [Builder.Build], wrapped with details.
var (
	ErrSize          = errors.New("maglev: table size must be a prime between 2 and MaxSize")
	ErrEmptyName     = errors.New("maglev: backend name is empty")
	ErrDuplicateName = errors.New("maglev: duplicate backend name")
	ErrTooMany       = errors.New("maglev: more weighted backends than table slots")
)

// Backend is one candidate for new flows.
type Backend struct {
	// Name identifies the backend stably across restarts and balancer
	// instances, for example "10.0.0.2:5683". It determines the backend's
	// permutation and its rank when the set is sorted.
	Name string
	// Weight is the backend's relative share of the slots. Zero means
	// draining: the backend gets no slots.
	Weight uint32
}

// Builder builds tables of a fixed size. It is immutable and safe for
// concurrent use.
type Builder struct {
	size uint64
}

// New returns a Builder for tables of the given size, which must be a prime
// no larger than [MaxSize]. For good balance it should be much larger than
// the number of backends (the paper suggests M > 100·N).
func New(size uint64) (*Builder, error) {
	if size < 2 || size > MaxSize || !new(big.Int).SetUint64(size).ProbablyPrime(0) {
		return nil, fmt.Errorf("maglev: size %d: %w", size, ErrSize)
	}
	return &Builder{size: size}, nil
}

// Size reports the number of slots of the tables built by b.
func (b *Builder) Size() uint64 { return b.size }

// Table is an immutable Maglev lookup table. The zero Table has no backends.
type Table struct {
	// entries[i] is the index, in the slice given to Build, of the backend
	// owning slot i, or -1 when the table has no backends.
	entries []int32
	counts  []int
}

// candidate is the per-backend population state.
type candidate struct {
	index  int32  // position in the caller's slice
	weight uint64 // > 0
	pos    uint64 // next slot of the permutation to try
	skip   uint64 // permutation stride, in [1, M-1]
	count  uint64 // slots taken so far
}

// Build returns the table for the given backends. Lookup results are indexes
// into backends. Names must be non-empty and unique.
//
// With equal weights every backend gets ⌊M/N⌋ or ⌈M/N⌉ slots. With unequal
// weights the shares are proportional to the weights up to a slot or so per
// backend.
func (b *Builder) Build(backends []Backend) (*Table, error) {
	m := b.size
	if len(backends) > MaxSize {
		return nil, fmt.Errorf("maglev: %d backends: %w", len(backends), ErrTooMany)
	}
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return cmp.Compare(backends[x].Name, backends[y].Name) })

	var cands []candidate
	var wmax uint64
	for k, i := range order {
		be := &backends[i]
		if be.Name == "" {
			return nil, fmt.Errorf("maglev: backend %d: %w", i, ErrEmptyName)
		}
		if k > 0 && backends[order[k-1]].Name == be.Name {
			return nil, fmt.Errorf("maglev: %q: %w", be.Name, ErrDuplicateName)
		}
		if be.Weight == 0 {
			continue
		}
		cands = append(cands, candidate{
			index:  int32(i),
			weight: uint64(be.Weight),
			pos:    nameHash(offsetSeed, be.Name) % m,
			skip:   nameHash(skipSeed, be.Name)%(m-1) + 1,
		})
		wmax = max(wmax, uint64(be.Weight))
	}
	if uint64(len(cands)) > m {
		return nil, fmt.Errorf("maglev: %d weighted backends for %d slots: %w", len(cands), m, ErrTooMany)
	}

	t := &Table{entries: make([]int32, m), counts: make([]int, len(backends))}
	for i := range t.entries {
		t.entries[i] = -1
	}
	if len(cands) == 0 {
		return t, nil
	}

	// Population (the paper's Algorithm 1) with a weight gate: in round r a
	// backend may take its next preferred free slot only while
	// count/r < weight/wmax, so the heaviest backends take one slot per
	// round and the others proportionally fewer. With equal weights this is
	// exactly the original round robin. The products fit in 64 bits since
	// count, r <= M <= 2^24 and weights < 2^32.
	var filled uint64
	for r := uint64(1); ; r++ {
		for k := range cands {
			c := &cands[k]
			if c.count*wmax >= r*c.weight {
				continue
			}
			for t.entries[c.pos] >= 0 {
				c.pos = advance(c.pos, c.skip, m)
			}
			t.entries[c.pos] = c.index
			c.pos = advance(c.pos, c.skip, m)
			c.count++
			t.counts[c.index]++
			filled++
			if filled == m {
				return t, nil
			}
		}
	}
}

func advance(pos, skip, m uint64) uint64 {
	pos += skip
	if pos >= m {
		pos -= m
	}
	return pos
}

func nameHash(seed uint64, name string) uint64 {
	d := xxhash.NewWithSeed(seed)
	d.WriteString(name)
	return d.Sum64()
}

// Lookup returns the index of the backend owning slot hash mod Size(). It
// reports false when the table has no backend with a non-zero weight.
func (t *Table) Lookup(hash uint64) (index int, ok bool) {
	m := uint64(len(t.entries))
	if m == 0 {
		return -1, false
	}
	i := t.entries[hash%m]
	return int(i), i >= 0
}

// Size reports the number of slots (zero for the zero Table).
func (t *Table) Size() int { return len(t.entries) }

// AppendEntries appends the slot owners, one per slot in slot order, to dst
// and returns the extended slice; -1 marks a slot without backend. It is
// meant for filling a kernel (eBPF) array map with the same table.
func (t *Table) AppendEntries(dst []int32) []int32 { return append(dst, t.entries...) }

// Count reports how many slots the backend with the given index owns.
func (t *Table) Count(index int) int {
	if index < 0 || index >= len(t.counts) {
		return 0
	}
	return t.counts[index]
}

// hashSeed is the initial state of HashAddrPort.
const hashSeed = 0x9e3779b97f4a7c15

// HashAddrPort returns the flow hash of a client address and port. It
// allocates nothing and is the same in every process and on every platform.
//
// Definition, for reimplementation (for example in an eBPF program): let
// a be the 16-byte address (IPv4 addresses in their IPv4-mapped IPv6 form
// ::ffff:a.b.c.d, zones ignored), hi and lo its two big-endian 64-bit halves,
// p the port, and fmix64 the MurmurHash3 64-bit finalizer. Then
//
//	h = fmix64(0x9e3779b97f4a7c15 ^ hi)
//	h = fmix64(h ^ lo)
//	h = fmix64(h ^ p)
//
// An IPv4 address and its IPv4-mapped form hash alike, so a dual-stack socket
// and an IPv4 socket place a client the same way.
func HashAddrPort(ap netip.AddrPort) uint64 {
	a := ap.Addr().As16()
	h := fmix64(hashSeed ^ binary.BigEndian.Uint64(a[:8]))
	h = fmix64(h ^ binary.BigEndian.Uint64(a[8:]))
	return fmix64(h ^ uint64(ap.Port()))
}

// fmix64 is the MurmurHash3 64-bit finalizer, a bijection with full
// avalanche.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}
