package lbbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Load defaults.
const (
	DefaultClients     = 1000
	DefaultSize        = 60
	DefaultWindow      = 1
	DefaultWorkers     = 2
	DefaultWarmup      = time.Second
	DefaultDuration    = 5 * time.Second
	DefaultLossTimeout = 500 * time.Millisecond
)

// minSize is the smallest datagram Load sends: a sequence number.
const minSize = 8

// maxWindow bounds Load.Window.
const maxWindow = 1024

// Engine selects how [Load] drives its sockets.
type Engine string

// Engines.
const (
	// EngineEpoll drives the sockets from Load.Workers goroutines, each
	// with its own epoll instance, reading with recvmmsg and writing with
	// sendmmsg. It is the default: on a 2-core VM it spends about 5 µs of
	// CPU per response with a window of 1, close to the cost of the two
	// system calls themselves.
	EngineEpoll Engine = "epoll"
	// EngineGoroutines drives each socket from its own goroutine through
	// the Go runtime's network poller (net.UDPConn Read and Write, with a
	// read deadline). It is kept to compare against: it spends about 8.5
	// µs of CPU per response on the same machine, CPU the system under
	// test then lacks.
	EngineGoroutines Engine = "goroutines"
)

// Load is a UDP load generator. Each of Clients sockets has its own source
// port, is connected to Target and keeps Window datagrams outstanding: every
// answer is replaced by a new datagram at once (a closed loop when Window is
// 1), and a datagram unanswered after LossTimeout is counted lost and
// replaced. Datagrams are Size bytes: a big-endian sequence number per
// socket, then a fixed pattern that answers must carry back intact.
//
// Run first warms up for Warmup, then counts for Duration, then stops
// sending and waits for the outstanding datagrams. The zero value of every
// field but Target means its default.
type Load struct {
	// Target is the address the clients send to.
	Target netip.AddrPort
	// Clients is the number of client sockets (default DefaultClients).
	Clients int
	// Size is the datagram size in bytes, at least 8 (default
	// DefaultSize).
	Size int
	// Window is the number of outstanding datagrams per socket (default
	// DefaultWindow).
	Window int
	// Engine drives the sockets (default EngineEpoll).
	Engine Engine
	// Workers is the number of goroutines sharing the sockets with
	// EngineEpoll (default DefaultWorkers, which did at least as well as
	// 1 on 2 cores); EngineGoroutines ignores it.
	Workers int
	// Warmup is the time spent before counting (default DefaultWarmup; a
	// negative value means none).
	Warmup time.Duration
	// Duration is the time spent counting (default DefaultDuration).
	Duration time.Duration
	// LossTimeout is how long a datagram may stay unanswered before it is
	// counted lost (default DefaultLossTimeout).
	LossTimeout time.Duration
	// OnCount, when set, is called when the counting period starts
	// (true) and when it ends (false), for measurements of the same
	// period elsewhere (such as the proxy's CPU time).
	OnCount func(started bool) `json:"-"`
}

// LoadResult is what a [Load] run measured. Counts other than Late,
// Invalid and Errors cover the counting period only.
type LoadResult struct {
	// Elapsed is the length of the counting period.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Responses counts the valid answers received during the counting
	// period, and ResponsesPerSec is Responses over Elapsed.
	Responses       uint64  `json:"responses"`
	ResponsesPerSec float64 `json:"responses_per_sec"`
	// Sent counts the datagrams sent during the counting period, and Lost
	// those of them that were not answered within LossTimeout.
	// LossPercent is Lost over Sent, in percent.
	Sent        uint64  `json:"sent"`
	Lost        uint64  `json:"lost"`
	LossPercent float64 `json:"loss_percent"`
	// Late counts answers that arrived after their datagram had been
	// counted lost, or twice, over the whole run.
	Late uint64 `json:"late"`
	// Invalid counts answers of the wrong size or content or with a
	// sequence number never sent, over the whole run.
	Invalid uint64 `json:"invalid"`
	// Errors counts failed send and receive calls over the whole run,
	// other than "would block" (for example ECONNREFUSED after an ICMP
	// port unreachable).
	Errors uint64 `json:"errors"`
	// RTTP50, RTTP99 and RTTMax are round-trip time percentiles of the
	// answers received during the counting period (to within 1/8th).
	RTTP50 time.Duration `json:"rtt_p50_ns"`
	RTTP99 time.Duration `json:"rtt_p99_ns"`
	RTTMax time.Duration `json:"rtt_max_ns"`
}

// Phases of a run, shared by the coordinator and the workers.
const (
	phaseWarmup int32 = iota // sending, not counting
	phaseCount               // sending and counting
	phaseDrain               // not sending, waiting for outstanding answers
	phaseAbort               // give up at once
)

// withDefaults returns l with its defaults filled in.
func (l Load) withDefaults() Load {
	if l.Clients == 0 {
		l.Clients = DefaultClients
	}
	if l.Size == 0 {
		l.Size = DefaultSize
	}
	if l.Window == 0 {
		l.Window = DefaultWindow
	}
	if l.Engine == "" {
		l.Engine = EngineEpoll
	}
	if l.Workers == 0 {
		l.Workers = DefaultWorkers
	}
	if l.Warmup == 0 {
		l.Warmup = DefaultWarmup
	} else if l.Warmup < 0 {
		l.Warmup = 0
	}
	if l.Duration == 0 {
		l.Duration = DefaultDuration
	}
	if l.LossTimeout == 0 {
		l.LossTimeout = DefaultLossTimeout
	}
	return l
}

// check reports the first field of l (with its defaults filled in) that is
// out of range, Target aside.
func (l Load) check() error {
	switch {
	case l.Clients < 1:
		return fmt.Errorf("load: %d clients", l.Clients)
	case l.Size < minSize || l.Size > maxDatagram:
		return fmt.Errorf("load: size %d out of range [%d, %d]", l.Size, minSize, maxDatagram)
	case l.Window < 1 || l.Window > maxWindow:
		return fmt.Errorf("load: window %d out of range [1, %d]", l.Window, maxWindow)
	case l.Workers < 1:
		return fmt.Errorf("load: %d workers", l.Workers)
	case l.Duration < 0 || l.LossTimeout < 0:
		return errors.New("load: negative duration")
	case l.Engine != EngineEpoll && l.Engine != EngineGoroutines:
		return fmt.Errorf("load: unknown engine %q", l.Engine)
	}
	return nil
}

// Run generates the load and returns what it measured. It returns early,
// with an error, when ctx is done.
func (l Load) Run(ctx context.Context) (LoadResult, error) {
	l = l.withDefaults()
	if err := l.check(); err != nil {
		return LoadResult{}, err
	}
	if !l.Target.IsValid() || !l.Target.Addr().Is4() {
		return LoadResult{}, fmt.Errorf("load: target %v is not an IPv4 address and port", l.Target)
	}
	l.Workers = min(l.Workers, l.Clients)
	r := &loadRun{Load: l, base: time.Now(), template: make([]byte, l.Size)}
	for i := minSize; i < l.Size; i++ {
		r.template[i] = byte(i)
	}
	var start func() (wait func() []*loadStats, err error)
	switch l.Engine {
	case EngineEpoll:
		start = r.startEpoll
	case EngineGoroutines:
		start = r.startGoroutines
	}
	wait, err := start()
	if err != nil {
		return LoadResult{}, err
	}
	done := make(chan []*loadStats, 1)
	go func() { done <- wait() }()

	elapsed, err := r.coordinate(ctx)
	var stats []*loadStats
	select {
	case stats = <-done:
	case <-time.After(l.LossTimeout + 5*time.Second):
		r.phase.Store(phaseAbort)
		stats = <-done
		if err == nil {
			err = errors.New("load: workers did not stop")
		}
	}
	if err != nil {
		return LoadResult{}, err
	}
	return r.result(elapsed, stats), nil
}

// coordinate moves the run through its phases and returns the length of
// the counting period.
func (r *loadRun) coordinate(ctx context.Context) (time.Duration, error) {
	sleep := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			r.phase.Store(phaseAbort)
			return fmt.Errorf("load: %w", context.Cause(ctx))
		case <-t.C:
			return nil
		}
	}
	if err := sleep(r.Warmup); err != nil {
		return 0, err
	}
	if r.OnCount != nil {
		r.OnCount(true)
	}
	t0 := time.Now()
	r.phase.Store(phaseCount)
	err := sleep(r.Duration)
	if err == nil {
		r.phase.Store(phaseDrain)
	}
	elapsed := time.Since(t0)
	if r.OnCount != nil {
		r.OnCount(false)
	}
	if err != nil {
		return 0, err
	}
	return elapsed, nil
}

// result merges the workers' statistics.
func (r *loadRun) result(elapsed time.Duration, stats []*loadStats) LoadResult {
	var total loadStats
	for _, s := range stats {
		total.add(s)
	}
	res := LoadResult{
		Elapsed:   elapsed,
		Responses: total.responses,
		Sent:      total.sent,
		Lost:      total.lost,
		Late:      total.late,
		Invalid:   total.invalid,
		Errors:    total.errors,
		RTTP50:    time.Duration(total.rtt.quantile(0.50)),
		RTTP99:    time.Duration(total.rtt.quantile(0.99)),
		RTTMax:    time.Duration(total.rtt.max),
	}
	if elapsed > 0 {
		res.ResponsesPerSec = float64(res.Responses) / elapsed.Seconds()
	}
	if res.Sent > 0 {
		res.LossPercent = 100 * float64(res.Lost) / float64(res.Sent)
	}
	return res
}

// loadRun is the state a run's workers share, all read-only but phase.
type loadRun struct {
	Load
	base     time.Time // the origin of the workers' clocks
	template []byte    // the datagram, sequence number aside
	phase    atomic.Int32
}

// now returns the time since r.base in nanoseconds.
func (r *loadRun) now() int64 { return int64(time.Since(r.base)) }

// loadStats are one worker's counters; see LoadResult.
type loadStats struct {
	sent, responses, lost uint64 // counting period
	late, invalid, errors uint64 // whole run
	outstanding           int    // datagrams awaiting an answer
	rtt                   histogram
}

func (s *loadStats) add(o *loadStats) {
	s.sent += o.sent
	s.responses += o.responses
	s.lost += o.lost
	s.late += o.late
	s.invalid += o.invalid
	s.errors += o.errors
	s.outstanding += o.outstanding
	s.rtt.merge(&o.rtt)
}

// slot is an outstanding datagram; seq 0 marks a free slot (sequence
// numbers start at 1).
type slot struct {
	seq     uint64
	sent    int64 // loadRun.now() when sent
	counted bool  // sent during the counting period
}

// flow is one client socket's window of outstanding datagrams.
type flow struct {
	slots   []slot // len Window
	out     int    // used slots
	nextSeq uint64
}

func newFlow(window int) flow { return flow{slots: make([]slot, window), nextSeq: 1} }

// answer accounts for the answer b received at now.
func (f *flow) answer(r *loadRun, st *loadStats, b []byte, now int64, phase int32) {
	if len(b) != len(r.template) || string(b[minSize:]) != string(r.template[minSize:]) {
		st.invalid++
		return
	}
	seq := binary.BigEndian.Uint64(b)
	for i := range f.slots {
		sl := &f.slots[i]
		if sl.seq != seq {
			continue
		}
		if phase == phaseCount {
			st.responses++
			st.rtt.record(uint64(max(now-sl.sent, 0)))
		}
		*sl = slot{}
		f.out--
		st.outstanding--
		return
	}
	if seq != 0 && seq < f.nextSeq {
		st.late++
	} else {
		st.invalid++
	}
}

// prepare writes into bufs the datagrams that would fill the window and
// returns how many; commit records the first n of them as sent.
func (f *flow) prepare(r *loadRun, bufs [][]byte) int {
	n := len(f.slots) - f.out
	for i := range n {
		b := bufs[i][:len(r.template)]
		copy(b, r.template)
		binary.BigEndian.PutUint64(b, f.nextSeq+uint64(i))
	}
	return n
}

// commit records as sent at now the first n datagrams prepare wrote.
func (f *flow) commit(st *loadStats, n int, now int64, phase int32) {
	for i := range f.slots {
		if n == 0 {
			return
		}
		if f.slots[i].seq != 0 {
			continue
		}
		f.slots[i] = slot{seq: f.nextSeq, sent: now, counted: phase == phaseCount}
		f.nextSeq++
		f.out++
		st.outstanding++
		if phase == phaseCount {
			st.sent++
		}
		n--
	}
}

// expire counts as lost the datagrams outstanding since before deadline.
func (f *flow) expire(st *loadStats, deadline int64) {
	if f.out == 0 {
		return
	}
	for i := range f.slots {
		sl := &f.slots[i]
		if sl.seq == 0 || sl.sent > deadline {
			continue
		}
		if sl.counted {
			st.lost++
		}
		*sl = slot{}
		f.out--
		st.outstanding--
	}
}

// histogram is a log-linear histogram of nanosecond durations with 8
// sub-buckets per power of two.
type histogram struct {
	counts [histBuckets]uint64
	n, max uint64
}

const (
	histSub     = 8 // sub-buckets per power of two
	histSubBits = 3
	histLinear  = 2 * histSub // values below are their own bucket
	histBuckets = histLinear + (64-histSubBits-1)*histSub
)

func histIndex(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	e := bits.Len64(v) // >= histSubBits+2
	sub := int(v>>(e-histSubBits-1)) & (histSub - 1)
	return histLinear + (e-histSubBits-2)*histSub + sub
}

// histLow returns the smallest value of bucket i.
func histLow(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	i -= histLinear
	e := i/histSub + histSubBits + 2
	return uint64(histSub+i%histSub) << (e - histSubBits - 1)
}

func (h *histogram) record(v uint64) {
	h.counts[histIndex(v)]++
	h.n++
	h.max = max(h.max, v)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the middle of the bucket holding quantile q, 0 when
// empty.
func (h *histogram) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			lo := histLow(i)
			hi := lo + 1
			if i+1 < histBuckets {
				hi = histLow(i + 1)
			}
			return min(lo+(hi-lo)/2, h.max)
		}
	}
	return h.max
}

// joinStats waits for the workers started on wg and returns their stats.
func joinStats(wg *sync.WaitGroup, stats []*loadStats) func() []*loadStats {
	return func() []*loadStats {
		wg.Wait()
		return stats
	}
}
