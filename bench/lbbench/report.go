package lbbench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes the report as a table: one row per scenario with its
// responses per second, loss, round-trip times, ratios to the direct and
// nginx scenarios, and the target where there is one.
func (r *Report) WriteTable(w io.Writer) error {
	engine := fmt.Sprintf("%s engine with %d workers", r.Engine, r.Workers)
	if r.Engine == EngineGoroutines {
		engine = "goroutines engine (one per socket)"
	}
	rounds := "1 round"
	if r.Rounds > 1 {
		rounds = fmt.Sprintf("median of %d rounds", r.Rounds)
	}
	fmt.Fprintf(w, "%d clients, %d-byte datagrams, window %d, %s, %s after %s warm-up, %d backends, %s\n",
		r.Clients, r.Size, r.Window, engine, r.Duration, r.Warmup, r.Backends, rounds)
	fmt.Fprintf(w, "%d CPUs, GOMAXPROCS %d, kernel %s; CPU busy with other work before the runs: mean %.0f%%, max %.0f%%\n\n",
		r.NumCPU, r.GOMAXPROCS, r.Kernel, r.BusyBeforeMean, r.BusyBeforeMax)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tresponses/s\tspread\tloss %\trtt p50\trtt p99\tproxy cpu/resp\tvs direct\tvs nginx\ttarget\t")
	var notes []string
	for _, res := range r.Results {
		row := []string{res.Scenario, "-", "-", "-", "-", "-", "-", "-", "-", targetCell(res)}
		if res.ok() {
			l := res.Load
			row[1] = groupThousands(int64(l.ResponsesPerSec + 0.5))
			row[2] = spreadCell(res.Samples, l.ResponsesPerSec)
			row[3] = strconv.FormatFloat(l.LossPercent, 'f', 3, 64)
			row[4] = roundDuration(l.RTTP50)
			row[5] = roundDuration(l.RTTP99)
			if res.ProxyCPUPerResponse > 0 {
				row[6] = fmt.Sprintf("%.1fus", res.ProxyCPUPerResponse.Seconds()*1e6)
			}
			row[7] = ratioCell(res.VsDirect)
			row[8] = ratioCell(res.VsNginx)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		switch {
		case res.Skipped:
			notes = append(notes, fmt.Sprintf("%s: skipped, %s", res.Scenario, res.Note))
		case res.Error != "":
			// Run's errors start with the scenario's name.
			notes = append(notes, "FAILED: "+res.Error)
		case res.Note != "":
			notes = append(notes, fmt.Sprintf("%s: %s", res.Scenario, res.Note))
		}
		if res.ok() && (res.Load.Late > 0 || res.Load.Invalid > 0 || res.Load.Errors > 0) {
			notes = append(notes, fmt.Sprintf("%s: %d late, %d invalid answers, %d socket errors",
				res.Scenario, res.Load.Late, res.Load.Invalid, res.Load.Errors))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, "  "+n); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func targetCell(res Result) string {
	switch {
	case res.Target == "":
		return ""
	case res.TargetMet == nil:
		return res.Target + " (n/a)"
	case *res.TargetMet:
		return res.Target + " (met)"
	}
	return res.Target + " (MISSED)"
}

// spreadCell returns the range of the samples around their median m, in
// percent of m: "-" for a single run.
func spreadCell(samples []float64, m float64) string {
	if len(samples) < 2 || m <= 0 {
		return "-"
	}
	lo, hi := slices.Min(samples), slices.Max(samples)
	return fmt.Sprintf("-%.0f%%/+%.0f%%", 100*(m-lo)/m, 100*(hi-m)/m)
}

func ratioCell(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

// roundDuration formats d with three significant digits.
func roundDuration(d time.Duration) string {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	case d >= 100*time.Microsecond:
		return d.Round(time.Microsecond).String()
	}
	return d.Round(100 * time.Nanosecond).String()
}

// groupThousands formats n with commas between groups of three digits.
func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
