package fleet

import (
	"encoding/json"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout: values (durations in nanoseconds) below linearLimit
// each have their own bucket; above, every power of two is split into
// subBuckets buckets of equal width, so a bucket is at most 1/subBuckets
// (0.8%) of its values wide and a quantile read from the histogram is
// within 0.4% of the true one (the bucket's midpoint is returned).
const (
	subBits     = 7
	subBuckets  = 1 << subBits // per power of two
	linearLimit = 2 * subBuckets
	// maxShift bounds the largest value: 2^(maxShift+subBits+1) ns, about
	// 19 hours; larger values land in the last bucket.
	maxShift   = 38
	numBuckets = linearLimit + maxShift*subBuckets
)

// bucketOf returns the index of the bucket holding v (v >= 0).
func bucketOf(v uint64) int {
	if v < linearLimit {
		return int(v)
	}
	// v has l significant bits, l > subBits+1; keep the subBits+1 top
	// ones: top is in [subBuckets, 2*subBuckets).
	shift := bits.Len64(v) - subBits - 1
	if shift > maxShift {
		return numBuckets - 1
	}
	top := v >> uint(shift)
	return linearLimit + (shift-1)*subBuckets + int(top-subBuckets)
}

// bucketBounds returns the smallest value of bucket i and the smallest value
// of the next one.
func bucketBounds(i int) (lo, hi uint64) {
	if i < linearLimit {
		return uint64(i), uint64(i) + 1
	}
	shift := (i-linearLimit)/subBuckets + 1
	top := uint64((i-linearLimit)%subBuckets + subBuckets)
	return top << uint(shift), (top + 1) << uint(shift)
}

// Histogram counts durations in log-linear buckets. Record is safe for
// concurrent use and does not allocate; the zero value is not usable, call
// NewHistogram.
type Histogram struct {
	buckets []atomic.Uint64
	count   atomic.Uint64
	sum     atomic.Uint64 // nanoseconds
	min     atomic.Uint64 // nanoseconds + 1; 0 while empty
	max     atomic.Uint64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{buckets: make([]atomic.Uint64, numBuckets)}
}

// Record adds one duration; negative ones count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.buckets[bucketOf(v)].Add(1)
	h.count.Add(1)
	h.sum.Add(v)
	for {
		m := h.min.Load()
		if m != 0 && m-1 <= v || h.min.CompareAndSwap(m, v+1) {
			break
		}
	}
	for {
		m := h.max.Load()
		if m >= v || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count returns the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Snapshot returns a copy of the histogram's state.
func (h *Histogram) Snapshot() HistSnapshot {
	s := HistSnapshot{Count: h.count.Load(), Sum: h.sum.Load(), Max: h.max.Load()}
	if m := h.min.Load(); m > 0 {
		s.Min = m - 1
	}
	for i := range h.buckets {
		if n := h.buckets[i].Load(); n > 0 {
			s.Buckets = append(s.Buckets, Bucket{Index: i, Count: n})
		}
	}
	return s
}

// Bucket is one non-empty bucket of a HistSnapshot.
type Bucket struct {
	Index int
	Count uint64
}

// HistSnapshot is a histogram's content at one time: its non-empty buckets
// in increasing order. Values are nanoseconds.
type HistSnapshot struct {
	Count   uint64
	Sum     uint64
	Min     uint64
	Max     uint64
	Buckets []Bucket
}

// Quantile returns the q-quantile (0 <= q <= 1) of the recorded durations:
// the midpoint of the bucket holding the value of rank ceil(q*Count),
// clamped to [Min, Max]. It returns 0 for an empty histogram.
func (s HistSnapshot) Quantile(q float64) time.Duration {
	if s.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.Count)))
	rank = min(max(rank, 1), s.Count)
	var seen uint64
	for _, b := range s.Buckets {
		seen += b.Count
		if seen >= rank {
			lo, hi := bucketBounds(b.Index)
			v := lo + (hi-1-lo)/2
			if hi-lo == 1 {
				v = lo
			}
			return time.Duration(min(max(v, s.Min), s.Max))
		}
	}
	return time.Duration(s.Max)
}

// Mean returns the mean duration, 0 when empty.
func (s HistSnapshot) Mean() time.Duration {
	if s.Count == 0 {
		return 0
	}
	return time.Duration(s.Sum / s.Count)
}

// Merge adds o's counts to s.
func (s HistSnapshot) Merge(o HistSnapshot) HistSnapshot {
	if o.Count == 0 {
		return s
	}
	if s.Count == 0 {
		s.Min = o.Min
	} else {
		s.Min = min(s.Min, o.Min)
	}
	out := HistSnapshot{Count: s.Count + o.Count, Sum: s.Sum + o.Sum, Min: s.Min, Max: max(s.Max, o.Max)}
	i, j := 0, 0
	for i < len(s.Buckets) || j < len(o.Buckets) {
		switch {
		case j == len(o.Buckets) || i < len(s.Buckets) && s.Buckets[i].Index < o.Buckets[j].Index:
			out.Buckets = append(out.Buckets, s.Buckets[i])
			i++
		case i == len(s.Buckets) || o.Buckets[j].Index < s.Buckets[i].Index:
			out.Buckets = append(out.Buckets, o.Buckets[j])
			j++
		default:
			out.Buckets = append(out.Buckets, Bucket{Index: s.Buckets[i].Index, Count: s.Buckets[i].Count + o.Buckets[j].Count})
			i++
			j++
		}
	}
	return out
}

// Coarse groups the buckets into ranges of about 1/perOctave of a power of
// two (perOctave must divide subBuckets), for plotting: each range is
// [Lo, Hi) in nanoseconds with its count.
func (s HistSnapshot) Coarse(perOctave int) []Range {
	if perOctave <= 0 || perOctave > subBuckets {
		perOctave = subBuckets
	}
	var out []Range
	for _, b := range s.Buckets {
		lo, _ := bucketBounds(b.Index)
		// Widen to the coarse range holding lo.
		var clo, chi uint64
		if lo < 1024 {
			clo, chi = lo/64*64, lo/64*64+64 // below 1 µs nobody cares
		} else {
			l := bits.Len64(lo) - 1 // lo in [2^l, 2^(l+1))
			w := (uint64(1) << uint(l)) / uint64(perOctave)
			clo = lo / w * w
			chi = clo + w
		}
		if n := len(out); n > 0 && out[n-1].Lo == clo {
			out[n-1].Count += b.Count
			continue
		}
		out = append(out, Range{Lo: clo, Hi: chi, Count: b.Count})
	}
	return out
}

// Range is a range of a coarse histogram.
type Range struct {
	Lo, Hi uint64 // nanoseconds
	Count  uint64
}

// Summary is the digest of a histogram that reports carry.
type Summary struct {
	Count uint64        `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	Min   time.Duration `json:"min_ns"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summary returns the snapshot's digest.
func (s HistSnapshot) Summary() Summary {
	return Summary{
		Count: s.Count, Mean: s.Mean(), Min: time.Duration(s.Min), Max: time.Duration(s.Max),
		P50: s.Quantile(0.5), P90: s.Quantile(0.9), P99: s.Quantile(0.99), P999: s.Quantile(0.999),
	}
}

// histJSON is the JSON form of a HistSnapshot: the summary and the
// non-empty buckets as [lower bound ns, upper bound ns, count].
type histJSON struct {
	Summary
	Buckets [][3]uint64 `json:"buckets,omitempty"`
}

// MarshalJSON encodes the summary and the buckets with their bounds.
func (s HistSnapshot) MarshalJSON() ([]byte, error) {
	j := histJSON{Summary: s.Summary()}
	for _, b := range s.Buckets {
		lo, hi := bucketBounds(b.Index)
		j.Buckets = append(j.Buckets, [3]uint64{lo, hi, b.Count})
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON wrote.
func (s *HistSnapshot) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = HistSnapshot{Count: j.Count, Min: uint64(j.Min), Max: uint64(j.Max), Sum: uint64(j.Mean) * j.Count}
	for _, b := range j.Buckets {
		s.Buckets = append(s.Buckets, Bucket{Index: bucketOf(b[0]), Count: b[2]})
	}
	return nil
}
