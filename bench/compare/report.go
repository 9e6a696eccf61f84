package compare

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lwm2mcluster/lwm2m/bench/fleet"
)

// Report is the outcome of Run.
type Report struct {
	Scenario    string    `json:"scenario"`
	Started     time.Time `json:"started"`
	Devices     int       `json:"devices"`
	Ramp        string    `json:"ramp"`
	Duration    string    `json:"duration"`
	UpdateEvery string    `json:"update_every"`
	NotifyEvery string    `json:"notify_every"`
	RebindEvery string    `json:"nat_rebind_every"`
	ReadRate    float64   `json:"read_rate"`
	DTLS        bool      `json:"dtls"`
	CID         bool      `json:"cid"`
	Backends    int       `json:"backends"`
	NumCPU      int       `json:"num_cpu"`
	Kernel      string    `json:"kernel,omitempty"`
	Rows        []Row     `json:"rows"`
	Verdicts    []Verdict `json:"verdicts"`
}

// Row is one target's outcome.
type Row struct {
	Target  string        `json:"target"`
	Skipped string        `json:"skipped,omitempty"`
	Error   string        `json:"error,omitempty"`
	Notes   []string      `json:"notes,omitempty"`
	Result  *fleet.Result `json:"result,omitempty"`
	// Ratios of answered device requests per second and of the device
	// p99 round trip to those of the direct and nginx targets (0: not
	// available).
	RateVsDirect float64 `json:"rate_vs_direct,omitempty"`
	P99VsDirect  float64 `json:"p99_vs_direct,omitempty"`
	RateVsNginx  float64 `json:"rate_vs_nginx,omitempty"`
	P99VsNginx   float64 `json:"p99_vs_nginx,omitempty"`

	Rebind   *RebindResult   `json:"rebind,omitempty"`
	Failover *FailoverResult `json:"failover,omitempty"`
	Scaleout *ScaleoutResult `json:"scaleout,omitempty"`
}

func (r *Row) ok() bool { return r.Skipped == "" && r.Error == "" && r.Result != nil }

// RebindResult is the rebind scenario's outcome; the counts are in the
// row's Result (RebindKept, RebindResumed, RebindFull, RebindLost).
type RebindResult struct {
	// KeptPercent is the share of rebinds after which the session
	// survived (same registration, and with DTLS no new handshake).
	KeptPercent float64 `json:"kept_percent"`
}

// FailoverResult is the failover scenario's outcome.
type FailoverResult struct {
	Victim string `json:"victim"`
	// VictimDevices is the number of devices the victim owned when it was
	// killed.
	VictimDevices int `json:"victim_devices"`
	// Disrupted devices had a failed request after the kill;
	// DisruptedVictim of them were the victim's, DisruptedOthers not.
	Disrupted       int `json:"disrupted"`
	DisruptedVictim int `json:"disrupted_victim"`
	DisruptedOthers int `json:"disrupted_others"`
	// Recovery: time from the kill to each disrupted device's next
	// success; Unrecovered devices had none by the end.
	RecoveryP50 time.Duration `json:"recovery_p50_ns"`
	RecoveryMax time.Duration `json:"recovery_max_ns"`
	Unrecovered int           `json:"unrecovered"`
}

// ScaleoutResult is the scaleout scenario's outcome.
type ScaleoutResult struct {
	Added string `json:"added"`
	// Existing devices had an owner before the new backend joined; Moved
	// of them had another one at the end (MovedToNew: the new backend).
	Existing   int `json:"existing"`
	Moved      int `json:"moved"`
	MovedToNew int `json:"moved_to_new"`
	OnNew      int `json:"on_new"`
}

// Verdict is a goal of the issue and whether a row met it.
type Verdict struct {
	Target string `json:"target"`
	Goal   string `json:"goal"`
	Met    bool   `json:"met"`
	Detail string `json:"detail"`
}

func (r *Report) row(target string) *Row {
	for i := range r.Rows {
		if r.Rows[i].Target == target && r.Rows[i].ok() {
			return &r.Rows[i]
		}
	}
	return nil
}

func (r *Report) computeRatios() {
	base := func(t string) (rate, p99 float64) {
		if b := r.row(t); b != nil {
			return b.Result.RequestsPerSec, float64(b.Result.DeviceLatency().Quantile(0.99))
		}
		return 0, 0
	}
	dRate, dP99 := base(TargetDirect)
	nRate, nP99 := base(TargetNginx)
	for i := range r.Rows {
		row := &r.Rows[i]
		if !row.ok() {
			continue
		}
		rate, p99 := row.Result.RequestsPerSec, float64(row.Result.DeviceLatency().Quantile(0.99))
		if dRate > 0 {
			row.RateVsDirect = rate / dRate
		}
		if dP99 > 0 {
			row.P99VsDirect = p99 / dP99
		}
		if nRate > 0 {
			row.RateVsNginx = rate / nRate
		}
		if nP99 > 0 {
			row.P99VsNginx = p99 / nP99
		}
		if row.Rebind != nil {
			res := row.Result
			if n := res.RebindKept + res.RebindLost + res.RebindResumed + res.RebindFull; n > 0 {
				row.Rebind.KeptPercent = 100 * float64(res.RebindKept) / float64(n)
			}
		}
	}
}

// verdicts judges the rows against the goals.
func (r *Report) verdicts() {
	r.Verdicts = nil
	add := func(t, goal string, met bool, format string, args ...any) {
		r.Verdicts = append(r.Verdicts, Verdict{Target: t, Goal: goal, Met: met, Detail: fmt.Sprintf(format, args...)})
	}
	for i := range r.Rows {
		row := &r.Rows[i]
		if !row.ok() {
			continue
		}
		res := row.Result
		if res.RegistrationsChecked {
			add(row.Target, "registrations lost = 0", res.RegistrationsLost == 0,
				"%d of %d registered devices missing from the store", res.RegistrationsLost, res.RegisteredAtEnd)
		}
		add(row.Target, "every device registered", res.Up == res.Devices, "%d/%d up at the end", res.Up, res.Devices)
		if fr := row.Failover; fr != nil {
			add(row.Target, "failover disrupts only the killed backend's devices", fr.DisruptedOthers == 0,
				"%d disrupted: %d of the victim's %d, %d others", fr.Disrupted, fr.DisruptedVictim, fr.VictimDevices, fr.DisruptedOthers)
			add(row.Target, "every disrupted device recovers", fr.Unrecovered == 0,
				"%d unrecovered; recovery p50 %v, max %v", fr.Unrecovered, round(fr.RecoveryP50), round(fr.RecoveryMax))
		}
		if rb := row.Rebind; rb != nil && r.DTLS && r.CID {
			add(row.Target, "rebind keeps 100% of DTLS sessions (CID)", rb.KeptPercent == 100,
				"%.1f%% kept, %d full handshakes caused", rb.KeptPercent, res.RebindFull)
		} else if rb != nil {
			add(row.Target, "rebind keeps every registration", res.RebindLost == 0,
				"%.1f%% kept without a new session, %d resumed, %d full handshakes caused, %d lost",
				rb.KeptPercent, res.RebindResumed, res.RebindFull, res.RebindLost)
		}
		if sr := row.Scaleout; sr != nil {
			add(row.Target, "scaleout moves no existing device", sr.Moved == 0,
				"%d of %d existing devices moved (%d to the new backend); %d on the new one at the end",
				sr.Moved, sr.Existing, sr.MovedToNew, sr.OnNew)
		}
	}
}

// Failed reports whether a target failed.
func (r *Report) Failed() bool {
	return slices.ContainsFunc(r.Rows, func(row Row) bool { return row.Error != "" })
}

func round(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

func dur(s fleet.HistSnapshot, q float64) string {
	if s.Count == 0 {
		return "-"
	}
	return round(s.Quantile(q))
}

// WriteTable prints the report as tables, with the verdicts.
func (r *Report) WriteTable(w io.Writer) error {
	sec := "plain CoAP"
	if r.DTLS {
		sec = "DTLS-PSK"
		if r.CID {
			sec += " with Connection ID"
		}
	}
	fmt.Fprintf(w, "scenario %s: %d devices (%s), ramp %s, %s after the ramp, update every %s, notify every %s, read rate %g/s, %d backends behind the balancers\n",
		r.Scenario, r.Devices, sec, r.Ramp, r.Duration, r.UpdateEvery, r.NotifyEvery, r.ReadRate, r.Backends)
	fmt.Fprintf(w, "%d CPUs, kernel %s; the fleet, the servers, Redis and the balancer share them\n\n", r.NumCPU, r.Kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tup\treg/s\treq/s\trtt p50\tp99\tp999\tloss %\terrors\tnb read p50\tp99\tnotify p50\tp99\treq/s vs direct\tp99 vs direct\treq/s vs nginx\tp99 vs nginx\t")
	var notes []string
	for _, row := range r.Rows {
		cells := []string{row.Target}
		switch {
		case row.Skipped != "":
			notes = append(notes, fmt.Sprintf("%s: skipped: %s", row.Target, row.Skipped))
			cells = append(cells, slices.Repeat([]string{"-"}, 16)...)
		case row.Error != "":
			notes = append(notes, fmt.Sprintf("%s: FAILED: %s", row.Target, row.Error))
			cells = append(cells, slices.Repeat([]string{"-"}, 16)...)
		default:
			res := row.Result
			dl := res.DeviceLatency()
			cells = append(cells,
				fmt.Sprintf("%d/%d", res.Up, res.Devices),
				fmt.Sprintf("%.0f", res.RegistrationsPerSec),
				fmt.Sprintf("%.0f", res.RequestsPerSec),
				dur(dl, 0.5), dur(dl, 0.99), dur(dl, 0.999),
				fmt.Sprintf("%.3f", res.LossPercent),
				strconv.FormatUint(res.Errors+res.Lost+res.ReadErrors+res.ReadLost+res.ObserveErrors, 10),
				dur(res.Read, 0.5), dur(res.Read, 0.99),
				dur(res.Notify, 0.5), dur(res.Notify, 0.99),
				ratio(row.RateVsDirect), ratio(row.P99VsDirect), ratio(row.RateVsNginx), ratio(row.P99VsNginx))
			if len(res.Errs) > 0 {
				notes = append(notes, fmt.Sprintf("%s: errors by kind: %s", row.Target, errsString(res.Errs)))
			}
			for _, n := range append(res.Notes, row.Notes...) {
				notes = append(notes, row.Target+": "+n)
			}
			if r.DTLS {
				notes = append(notes, fmt.Sprintf("%s: handshakes %d full, %d resumed, %d failed (%.0f/s)",
					row.Target, res.HandshakesFull, res.HandshakesResumed, res.HandshakesFailed, res.HandshakesPerSec))
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := r.writeScenarioTable(w); err != nil {
		return err
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
	if len(r.Verdicts) > 0 {
		fmt.Fprintln(w)
		for _, v := range r.Verdicts {
			word := "PASS  "
			if !v.Met {
				word = "MISSED"
			}
			fmt.Fprintf(w, "%s %-9s %s: %s\n", word, v.Target, v.Goal, v.Detail)
		}
	}
	return nil
}

func (r *Report) writeScenarioTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := ""
	var lines []string
	for _, row := range r.Rows {
		if !row.ok() {
			continue
		}
		res := row.Result
		switch {
		case row.Rebind != nil:
			header = "target\trebinds\tkept\tresumed\tfull handshakes\tlost\tkept %\t"
			lines = append(lines, fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%d\t%.1f\t", row.Target, res.Rebinds,
				res.RebindKept, res.RebindResumed, res.RebindFull, res.RebindLost, row.Rebind.KeptPercent))
		case row.Failover != nil:
			fr := row.Failover
			header = "target\tkilled\tits devices\tdisrupted\tof them its\tothers\trecovery p50\tmax\tunrecovered\tregistrations lost\t"
			lines = append(lines, fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t", row.Target, fr.Victim, fr.VictimDevices,
				fr.Disrupted, fr.DisruptedVictim, fr.DisruptedOthers, round(fr.RecoveryP50), round(fr.RecoveryMax), fr.Unrecovered, res.RegistrationsLost))
		case row.Scaleout != nil:
			sr := row.Scaleout
			header = "target\tadded\texisting devices\tmoved\tto the new backend\ton the new backend\t"
			lines = append(lines, fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%d\t", row.Target, sr.Added, sr.Existing, sr.Moved, sr.MovedToNew, sr.OnNew))
		}
	}
	if header == "" {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(tw, header)
	for _, l := range lines {
		fmt.Fprintln(tw, l)
	}
	return tw.Flush()
}

func errsString(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// WriteHTML writes a self-contained HTML report: the tables and verdicts,
// latency histograms and throughput timelines of every target.
func (r *Report) WriteHTML(w io.Writer) error {
	var sb strings.Builder
	if err := r.WriteTable(&sb); err != nil {
		return err
	}
	h := fleet.HTMLReport{Title: "lwm2m-bench: " + r.Scenario + " scenario, " + strconv.Itoa(r.Devices) + " devices", Summary: sb.String()}
	for _, row := range r.Rows {
		if row.ok() {
			h.Runs = append(h.Runs, fleet.HTMLRun{Name: row.Target, Result: row.Result})
		}
	}
	return h.WriteHTML(w)
}
