package compare

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/bench/fleet"
)

func result(rate float64, p99 time.Duration, lost int) *fleet.Result {
	h := fleet.NewHistogram()
	for range 99 {
		h.Record(p99 / 10)
	}
	h.Record(p99)
	return &fleet.Result{
		Devices: 10, Up: 10, RequestsPerSec: rate, Update: h.Snapshot(),
		RegistrationsChecked: true, RegisteredAtEnd: 10, RegistrationsLost: lost,
		Timeline: []fleet.Sample{{At: time.Second, OK: 10, Up: 10}, {At: 2 * time.Second, OK: 30, Up: 10}},
		Marks:    []fleet.Mark{{Name: "kill s2", At: 1500 * time.Millisecond}},
		Errs:     map[string]uint64{"update: timeout": 2},
	}
}

func sampleReport() *Report {
	r := &Report{Scenario: ScenarioFailover, Devices: 10, Backends: 3, Rows: []Row{
		{Target: TargetDirect, Skipped: "one backend"},
		{Target: TargetLBProxy, Result: result(200, 10*time.Millisecond, 0),
			Failover: &FailoverResult{Victim: "s2", VictimDevices: 3, Disrupted: 2, DisruptedVictim: 2, RecoveryMax: time.Second}},
		{Target: TargetLBNAT, Error: "boom"},
		{Target: TargetNginx, Result: result(100, 20*time.Millisecond, 1),
			Failover: &FailoverResult{Victim: "s2", VictimDevices: 4, Disrupted: 5, DisruptedVictim: 3, DisruptedOthers: 2}},
	}}
	r.computeRatios()
	r.verdicts()
	return r
}

func TestRatiosAndVerdicts(t *testing.T) {
	r := sampleReport()
	lb := r.Rows[1]
	if lb.RateVsNginx != 2 || lb.P99VsNginx < 0.49 || lb.P99VsNginx > 0.51 || lb.RateVsDirect != 0 {
		t.Fatalf("ratios: %+v", lb)
	}
	met := map[string]bool{}
	for _, v := range r.Verdicts {
		met[v.Target+"/"+v.Goal] = v.Met
	}
	want := map[string]bool{
		"lb-proxy/registrations lost = 0":                              true,
		"lb-proxy/failover disrupts only the killed backend's devices": true,
		"nginx/registrations lost = 0":                                 false,
		"nginx/failover disrupts only the killed backend's devices":    false,
	}
	for k, w := range want {
		if got, ok := met[k]; !ok || got != w {
			t.Errorf("verdict %s: %v (present %v), want %v", k, got, ok, w)
		}
	}
	if !r.Failed() {
		t.Error("a failed target must make the report failed")
	}
}

func TestReportJSONAndTable(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := fleet.WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != 4 || back.Rows[1].Result.Update.Count != 100 ||
		back.Rows[1].Result.Update.Quantile(0.99) != r.Rows[1].Result.Update.Quantile(0.99) || back.Rows[3].Failover.DisruptedOthers != 2 {
		t.Fatalf("JSON round trip lost data: %s", buf.String())
	}
	for _, key := range []string{`"p999_ns"`, `"requests_per_sec"`, `"registrations_lost"`, `"timeline"`, `"verdicts"`} {
		if !strings.Contains(buf.String(), key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
	buf.Reset()
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{"lb-proxy", "2.00x", "FAILED: boom", "skipped", "MISSED nginx", "PASS   lb-proxy", "recovery p50"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
}

func TestHTML(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	if !strings.HasPrefix(page, "<!DOCTYPE html>") || strings.Count(page, "<svg") < 2 || !strings.Contains(page, "<polyline") {
		t.Fatalf("no inline SVG charts:\n%.2000s", page)
	}
	// Self-contained: nothing loaded from elsewhere.
	for _, s := range []string{"<script src", "<link", "http://", "https://", "url("} {
		if strings.Contains(strings.ReplaceAll(page, `xmlns="http://www.w3.org/2000/svg"`, ""), s) {
			t.Errorf("page refers to an external resource (%q)", s)
		}
	}
	if !strings.Contains(page, "kill s2") || !strings.Contains(page, "lb-proxy") {
		t.Error("marks or run names missing")
	}
}
