package fleet

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every value maps into a bucket whose bounds hold it, and buckets are
	// contiguous and increasing.
	var prevHi uint64
	for i := range numBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if hi <= lo {
			t.Fatalf("bucket %d empty: [%d, %d)", i, lo, hi)
		}
		if bucketOf(lo) != i || bucketOf(hi-1) != i {
			t.Fatalf("bucket %d [%d, %d): bucketOf(lo)=%d bucketOf(hi-1)=%d", i, lo, hi, bucketOf(lo), bucketOf(hi-1))
		}
		if lo >= linearLimit && float64(hi-lo)/float64(lo) > 1.0/subBuckets+1e-12 {
			t.Fatalf("bucket %d [%d, %d) wider than 1/%d", i, lo, hi, subBuckets)
		}
		prevHi = hi
	}
	if bucketOf(math.MaxUint64) != numBuckets-1 {
		t.Fatal("huge values must land in the last bucket")
	}
}

// exactQuantile is the value of rank ceil(q*n) of sorted.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func TestQuantilesOnSyntheticInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	inputs := map[string]func() time.Duration{
		// Uniform between 100 µs and 10 ms.
		"uniform": func() time.Duration {
			return 100*time.Microsecond + time.Duration(rng.Int64N(int64(9900*time.Microsecond)))
		},
		// Exponential with a 1 ms mean: a long tail for p999.
		"exponential": func() time.Duration {
			return time.Duration(rng.ExpFloat64() * float64(time.Millisecond))
		},
		// Bimodal: 99% near 200 µs, 1% near 2 s (retransmissions).
		"bimodal": func() time.Duration {
			if rng.IntN(100) == 0 {
				return 2*time.Second + time.Duration(rng.Int64N(int64(10*time.Millisecond)))
			}
			return 200*time.Microsecond + time.Duration(rng.Int64N(int64(20*time.Microsecond)))
		},
		// Tiny values in the linear range are exact.
		"nanoseconds": func() time.Duration { return time.Duration(rng.IntN(200)) },
	}
	for name, gen := range inputs {
		t.Run(name, func(t *testing.T) {
			h := NewHistogram()
			vals := make([]time.Duration, 200_000)
			var sum time.Duration
			for i := range vals {
				vals[i] = gen()
				sum += vals[i]
				h.Record(vals[i])
			}
			slices.Sort(vals)
			s := h.Snapshot()
			if s.Count != uint64(len(vals)) {
				t.Fatalf("count %d, want %d", s.Count, len(vals))
			}
			if time.Duration(s.Min) != vals[0] || time.Duration(s.Max) != vals[len(vals)-1] {
				t.Fatalf("min/max %v/%v, want %v/%v", s.Min, s.Max, vals[0], vals[len(vals)-1])
			}
			if s.Mean() != sum/time.Duration(len(vals)) {
				t.Fatalf("mean %v, want %v", s.Mean(), sum/time.Duration(len(vals)))
			}
			for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
				got, want := s.Quantile(q), exactQuantile(vals, q)
				tol := float64(want) / subBuckets / 2 // half a bucket
				if want < linearLimit {
					tol = 0
				}
				if math.Abs(float64(got-want)) > tol+1 {
					t.Errorf("q%v = %v, exact %v (tolerance %v)", q, got, want, time.Duration(tol))
				}
			}
		})
	}
}

func TestQuantileKnownValues(t *testing.T) {
	// 1000 values 1ms..1000ms: p50 is 500 ms, p99 990 ms, p999 999 ms.
	h := NewHistogram()
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	s := h.Snapshot()
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Millisecond, 0.99: 990 * time.Millisecond, 0.999: 999 * time.Millisecond, 1: time.Second} {
		got := s.Quantile(q)
		if d := math.Abs(float64(got-want)) / float64(want); d > 0.005 {
			t.Errorf("q%v = %v, want %v (off by %.2f%%)", q, got, want, 100*d)
		}
	}
	if got := NewHistogram().Snapshot().Quantile(0.5); got != 0 {
		t.Errorf("empty histogram quantile %v, want 0", got)
	}
	one := NewHistogram()
	one.Record(1234567 * time.Nanosecond)
	if got := one.Snapshot().Quantile(0.999); got != 1234567 {
		t.Errorf("single value: q0.999 = %v, want it exactly (clamped to min/max)", got)
	}
}

func TestRecordConcurrent(t *testing.T) {
	h := NewHistogram()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10_000 {
				h.Record(time.Duration(g*10_000+i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Count != 80_000 || s.Min != 0 || time.Duration(s.Max) != 79_999*time.Microsecond {
		t.Fatalf("count %d min %d max %d", s.Count, s.Min, s.Max)
	}
	var n uint64
	for _, b := range s.Buckets {
		n += b.Count
	}
	if n != s.Count {
		t.Fatalf("buckets hold %d, count %d", n, s.Count)
	}
}

func TestMergeAndJSON(t *testing.T) {
	a, b, all := NewHistogram(), NewHistogram(), NewHistogram()
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 10_000 {
		d := time.Duration(rng.ExpFloat64() * float64(time.Millisecond))
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
		all.Record(d)
	}
	m := a.Snapshot().Merge(b.Snapshot())
	want := all.Snapshot()
	if m.Count != want.Count || m.Min != want.Min || m.Max != want.Max || !slices.Equal(m.Buckets, want.Buckets) {
		t.Fatal("merge differs from recording everything in one histogram")
	}
	if e := (HistSnapshot{}).Merge(want); e.Min != want.Min || e.Count != want.Count {
		t.Fatal("merge into empty")
	}
	raw, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var back HistSnapshot
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Buckets, want.Buckets) || back.Quantile(0.999) != want.Quantile(0.999) {
		t.Fatal("JSON round trip changed the histogram")
	}
	var sum struct {
		P999 int64 `json:"p999_ns"`
	}
	if err := json.Unmarshal(raw, &sum); err != nil || time.Duration(sum.P999) != want.Quantile(0.999) {
		t.Fatalf("p999_ns in JSON: %v %v", sum.P999, err)
	}
	// Coarse ranges keep every count.
	var n uint64
	for _, r := range want.Coarse(8) {
		n += r.Count
	}
	if n != want.Count {
		t.Fatalf("coarse ranges hold %d of %d", n, want.Count)
	}
}

func TestInferredRetransmissions(t *testing.T) {
	ack := 2 * time.Second
	for rtt, want := range map[time.Duration]uint64{
		time.Millisecond: 0, 1999 * time.Millisecond: 0, 2001 * time.Millisecond: 1,
		5 * time.Second: 1, 6001 * time.Millisecond: 2, 15 * time.Second: 3,
	} {
		if got := inferredRetransmissions(rtt, ack); got != want {
			t.Errorf("rtt %v: %d retransmissions, want %d", rtt, got, want)
		}
	}
}
