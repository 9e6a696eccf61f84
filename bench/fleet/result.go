package fleet

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"slices"
	"syscall"
	"time"
)

// Sample is the fleet's cumulative counters at one time; a timeline is one
// sample per second.
type Sample struct {
	At            time.Duration `json:"at_ns"` // since the start
	Up            int           `json:"up"`
	Sent          uint64        `json:"sent"`
	OK            uint64        `json:"ok"`
	Lost          uint64        `json:"lost"`
	Errors        uint64        `json:"errors"`
	Registrations uint64        `json:"registrations"`
	Updates       uint64        `json:"updates"`
	Reads         uint64        `json:"reads_ok"`
	Notifications uint64        `json:"notifications"`
	Handshakes    uint64        `json:"handshakes"`
	Rebinds       uint64        `json:"rebinds"`
}

func (f *Fleet) snapshot() Sample {
	return Sample{
		At:            time.Since(f.start),
		Up:            f.Up(),
		Sent:          f.c.sent.Load(),
		OK:            f.c.ok.Load(),
		Lost:          f.c.lost.Load(),
		Errors:        f.c.errors.Load(),
		Registrations: f.c.registrations.Load(),
		Updates:       f.c.updates.Load(),
		Reads:         f.c.readOK.Load(),
		Notifications: f.c.notifications.Load(),
		Handshakes:    f.c.handshakesFull.Load() + f.c.handshakesResumed.Load(),
		Rebinds:       f.c.rebinds.Load(),
	}
}

// Latest returns the most recent sample (taken every second) and the one
// before it, for progress displays; ok is false before the first.
func (f *Fleet) Latest() (cur, prev Sample, ok bool) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	n := len(f.series)
	switch n {
	case 0:
		return Sample{}, Sample{}, false
	case 1:
		return f.series[0], Sample{}, true
	}
	return f.series[n-1], f.series[n-2], true
}

// sample appends a sample every second until ctx is done.
func (f *Fleet) sample(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s := f.snapshot()
			f.errMu.Lock()
			f.series = append(f.series, s)
			f.errMu.Unlock()
		}
	}
}

// Result is what a run measured. Durations are in nanoseconds in JSON.
type Result struct {
	Target  string    `json:"target"`
	Devices int       `json:"devices"`
	DTLS    bool      `json:"dtls,omitempty"`
	CID     bool      `json:"cid,omitempty"`
	Started time.Time `json:"started"`
	// Elapsed is the whole run; Ramp the time until every device had
	// registered once; Steady the time from then to the end, over which
	// the rates are computed.
	Elapsed time.Duration `json:"elapsed_ns"`
	Ramp    time.Duration `json:"ramp_ns"`
	Steady  time.Duration `json:"steady_ns"`
	// Up is the number of devices registered at the end.
	Up int `json:"up"`

	// Device requests (register and update).
	Sent        uint64  `json:"sent"`
	OK          uint64  `json:"ok"`
	Lost        uint64  `json:"lost"`
	Errors      uint64  `json:"errors"`
	LossPercent float64 `json:"loss_percent"`
	// RequestsPerSec is the answered device requests per second over the
	// steady part.
	RequestsPerSec float64 `json:"requests_per_sec"`
	// Retransmissions are inferred from the answers' round-trip times
	// (an answer later than ACK_TIMEOUT was retransmitted at least once);
	// requests that were lost are not included.
	Retransmissions uint64 `json:"retransmissions_inferred"`

	Registrations uint64 `json:"registrations"`
	// RegistrationsPerSec is the first registrations of the devices over
	// the ramp's time.
	RegistrationsPerSec float64 `json:"registrations_per_sec"`
	Reregistrations     uint64  `json:"reregistrations"`
	Updates             uint64  `json:"updates"`
	ValueChanges        uint64  `json:"value_changes"`

	// DTLS handshakes: full and resumed, per second over the run.
	HandshakesFull    uint64  `json:"handshakes_full"`
	HandshakesResumed uint64  `json:"handshakes_resumed"`
	HandshakesFailed  uint64  `json:"handshakes_failed"`
	HandshakesPerSec  float64 `json:"handshakes_per_sec"`

	Rebinds uint64 `json:"rebinds"`
	// RebindKept counts rebinds after which the next update succeeded on
	// the same registration (and, with DTLS, without a new handshake);
	// RebindLost those after which it did not.
	RebindKept uint64 `json:"rebind_kept"`
	RebindLost uint64 `json:"rebind_lost"`
	// RebindResumed and RebindFull count rebinds after which the device
	// needed a new DTLS session, resumed or from a full handshake.
	RebindResumed uint64 `json:"rebind_resumed,omitempty"`
	RebindFull    uint64 `json:"rebind_full_handshake,omitempty"`
	SocketReopens uint64 `json:"socket_reopens,omitempty"`
	// SessionRestarts counts DTLS devices that started over (new session,
	// new registration) after two lost updates in a row.
	SessionRestarts uint64 `json:"session_restarts,omitempty"`

	// Northbound.
	Reads         uint64 `json:"reads"`
	ReadOK        uint64 `json:"read_ok"`
	ReadLost      uint64 `json:"read_lost"`
	ReadErrors    uint64 `json:"read_errors"`
	ReadSkipped   uint64 `json:"read_skipped,omitempty"`
	Observes      uint64 `json:"observes"`
	ObserveOK     uint64 `json:"observe_ok"`
	ObserveErrors uint64 `json:"observe_errors"`
	Notifications uint64 `json:"notifications"`

	// Registrations lost: devices that believe they are registered but
	// whose endpoint the server does not hold (stale: it holds another
	// registration id).
	RegistrationsChecked bool     `json:"registrations_checked"`
	RegisteredAtEnd      int      `json:"registered_at_end"`
	RegistrationsLost    int      `json:"registrations_lost"`
	RegistrationsStale   int      `json:"registrations_stale"`
	LostEndpoints        []string `json:"lost_endpoints,omitempty"`

	Errs map[string]uint64 `json:"errors_by_kind,omitempty"`

	// Latency histograms: device-side round trips of register and update,
	// northbound read and observe round trips, and notification delivery
	// (value set on the device to notification received northbound).
	Register HistSnapshot `json:"register"`
	Update   HistSnapshot `json:"update"`
	Read     HistSnapshot `json:"nb_read"`
	Observe  HistSnapshot `json:"nb_observe"`
	Notify   HistSnapshot `json:"notify"`

	// CPU is the process's user+system CPU time over the run, RSS its
	// peak resident set (bytes), both of the whole process.
	CPU    time.Duration `json:"cpu_ns"`
	MaxRSS int64         `json:"max_rss_bytes"`

	Marks    []Mark   `json:"marks,omitempty"`
	Timeline []Sample `json:"timeline"`
	Notes    []string `json:"notes,omitempty"`
}

// DeviceLatency returns the merged register and update round trips.
func (r *Result) DeviceLatency() HistSnapshot { return r.Register.Merge(r.Update) }

func (f *Fleet) result(end time.Time, final Sample) *Result {
	c := &f.c
	r := &Result{
		Target: f.cfg.Target, Devices: len(f.devs), DTLS: f.cfg.DTLS, CID: f.cfg.CID, Started: f.start.UTC(),
		Elapsed: end.Sub(f.start), Up: f.Up(),
		Sent: final.Sent, OK: final.OK, Lost: final.Lost, Errors: final.Errors,
		Retransmissions: c.retransmissions.Load(),
		Registrations:   final.Registrations, Reregistrations: c.reregistrations.Load(),
		Updates: final.Updates, ValueChanges: c.valueChanges.Load(),
		HandshakesFull: c.handshakesFull.Load(), HandshakesResumed: c.handshakesResumed.Load(),
		HandshakesFailed: c.handshakesFailed.Load(),
		Rebinds:          final.Rebinds, RebindKept: c.rebindKept.Load(), RebindLost: c.rebindLost.Load(),
		RebindResumed: c.rebindResumed.Load(), RebindFull: c.rebindFull.Load(),
		SocketReopens: c.socketReopen.Load(), SessionRestarts: c.sessionRestarts.Load(),
		Reads: c.reads.Load(), ReadOK: c.readOK.Load(), ReadLost: c.readLost.Load(),
		ReadErrors: c.readErrors.Load(), ReadSkipped: c.readSkipped.Load(),
		Observes: c.observes.Load(), ObserveOK: c.observeOK.Load(), ObserveErrors: c.observeErrors.Load(),
		Notifications: c.notifications.Load(),
		Register:      f.registerH.Snapshot(), Update: f.updateH.Snapshot(),
		Read: f.readH.Snapshot(), Observe: f.observeH.Snapshot(), Notify: f.notifyH.Snapshot(),
	}
	if r.Sent > 0 {
		r.LossPercent = 100 * float64(r.Lost) / float64(r.Sent)
	}
	f.rampMu.Lock()
	rampEnd := f.rampEnd
	f.rampMu.Unlock()
	at := f.atRamp
	if rampEnd.IsZero() || rampEnd.After(end) {
		rampEnd, at = end, final
	}
	r.Ramp = rampEnd.Sub(f.start)
	r.Steady = end.Sub(rampEnd)
	if r.Ramp > 0 {
		// The first registrations over the time they took.
		r.RegistrationsPerSec = float64(min(at.Registrations, uint64(len(f.devs)))) / r.Ramp.Seconds()
	}
	if r.Steady > 0 {
		r.RequestsPerSec = float64(final.OK-at.OK) / r.Steady.Seconds()
	}
	if r.Elapsed > 0 {
		r.HandshakesPerSec = float64(r.HandshakesFull+r.HandshakesResumed) / r.Elapsed.Seconds()
	}
	f.errMu.Lock()
	r.Errs = maps.Clone(f.errs)
	r.Marks = slices.Clone(f.marks)
	r.Timeline = slices.Clone(f.series)
	f.errMu.Unlock()
	r.CPU, r.MaxRSS = processUsage()
	r.CPU -= f.cpu0
	return r
}

// processUsage returns this process's CPU time so far and its peak RSS.
func processUsage() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Maxrss * 1024
}

// WriteJSON writes v (a Result or a report holding some) as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
