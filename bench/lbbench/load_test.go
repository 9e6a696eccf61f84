package lbbench

import (
	"context"
	"math"
	"net/netip"
	"testing"
	"time"
)

func TestLoadAgainstEcho(t *testing.T) {
	for _, tc := range []struct {
		engine  Engine
		workers int
		window  int
	}{
		{EngineEpoll, 1, 1},
		{EngineEpoll, 2, 4},
		{EngineGoroutines, 0, 2},
	} {
		t.Run(string(tc.engine), func(t *testing.T) {
			e := startEcho(t, EchoConfig{Workers: 2})
			l := Load{
				Target:   e.Addr(),
				Clients:  100,
				Window:   tc.window,
				Engine:   tc.engine,
				Workers:  tc.workers,
				Warmup:   50 * time.Millisecond,
				Duration: 200 * time.Millisecond,
				// Generous: the race detector and a busy machine slow
				// everything down, and a loss here would be a bug.
				LossTimeout: 3 * time.Second,
			}
			res, err := l.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", res)
			if res.Responses == 0 || res.ResponsesPerSec <= 0 {
				t.Errorf("no responses: %+v", res)
			}
			if res.Lost != 0 || res.LossPercent != 0 || res.Late != 0 || res.Invalid != 0 || res.Errors != 0 {
				t.Errorf("loss or errors against a local echo: %+v", res)
			}
			if res.Sent < res.Responses-uint64(l.Clients*l.Window) {
				t.Errorf("sent %d < responses %d minus the initial windows", res.Sent, res.Responses)
			}
			if res.Elapsed < l.Duration {
				t.Errorf("Elapsed = %v, want at least %v", res.Elapsed, l.Duration)
			}
			if res.RTTP50 <= 0 || res.RTTP50 > res.RTTP99 || res.RTTP99 > res.RTTMax {
				t.Errorf("RTT percentiles out of order: %v %v %v", res.RTTP50, res.RTTP99, res.RTTMax)
			}
			// Every datagram sent was echoed once, the probes aside.
			if st := settledStats(e); st.Received != st.Replied || st.Dropped != 0 {
				t.Errorf("echo stats %+v", st)
			}
		})
	}
}

func TestLoadCountsLoss(t *testing.T) {
	// An echo that has gone away: every datagram is lost.
	e, err := StartEcho(EchoConfig{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	addr := e.Addr()
	e.Close()
	res, err := Load{
		Target:      addr,
		Clients:     10,
		Warmup:      -1,
		Duration:    100 * time.Millisecond,
		LossTimeout: 20 * time.Millisecond,
	}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Responses != 0 || res.Sent == 0 || res.Lost != res.Sent || res.LossPercent != 100 {
		t.Errorf("against nothing: %+v, want every datagram sent lost", res)
	}
}

func TestLoadCancel(t *testing.T) {
	e := startEcho(t, EchoConfig{Workers: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Load{Target: e.Addr(), Clients: 10, Duration: time.Hour}.Run(ctx)
	if err == nil {
		t.Fatal("Run returned no error after its context was cancelled")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run took %v to notice cancellation", d)
	}
}

func TestLoadBadConfig(t *testing.T) {
	ok := netip.MustParseAddrPort("127.0.0.1:9")
	for _, l := range []Load{
		{},
		{Target: netip.MustParseAddrPort("[::1]:9")},
		{Target: ok, Size: 4},
		{Target: ok, Window: -1},
		{Target: ok, Clients: -1},
		{Target: ok, Engine: "io_uring"},
	} {
		if _, err := l.Run(context.Background()); err == nil {
			t.Errorf("Run(%+v) succeeded", l)
		}
	}
}

func TestHistogram(t *testing.T) {
	for _, v := range []uint64{0, 1, 15, 16, 17, 31, 32, 1000, 123456789, math.MaxUint64} {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("histIndex(%d) = %d out of range", v, i)
		}
		if lo := histLow(i); lo > v {
			t.Errorf("histLow(histIndex(%d)) = %d > value", v, lo)
		}
		if i+1 < histBuckets {
			if hi := histLow(i + 1); hi <= v {
				t.Errorf("histLow(histIndex(%d)+1) = %d <= value", v, hi)
			}
		}
	}
	var h histogram
	for v := uint64(1); v <= 100000; v++ {
		h.record(v * 1000)
	}
	for _, q := range []float64{0.5, 0.99} {
		want := q * 100000 * 1000
		if got := float64(h.quantile(q)); math.Abs(got-want)/want > 1.0/8 {
			t.Errorf("quantile(%v) = %v, want %v within 1/8", q, got, want)
		}
	}
	if h.max != 100000*1000 {
		t.Errorf("max = %d", h.max)
	}
}
