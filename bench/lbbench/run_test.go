package lbbench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func shortLoad() Load {
	return Load{Clients: 50, Warmup: 20 * time.Millisecond, Duration: 100 * time.Millisecond, LossTimeout: 3 * time.Second}
}

func TestRunDirect(t *testing.T) {
	res, err := Run(context.Background(), Scenario{Name: ScenarioDirect, Load: shortLoad()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.ok() || res.Load.Responses == 0 || len(res.Backends) != 1 {
		t.Errorf("direct: %+v", res)
	}
}

func TestRunSkipsMissingLB(t *testing.T) {
	// The test runs in bench/lbbench: there is no bin/lwm2m-lb or
	// cmd/lwm2m-lb relative to it.
	for _, name := range []string{ScenarioLBNAT, ScenarioLBProxy} {
		res, err := Run(context.Background(), Scenario{Name: name, Load: shortLoad()})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !res.Skipped || !strings.Contains(res.Note, "not built") {
			t.Errorf("%s: %+v, want skipped as not built", name, res)
		}
	}
	// An explicit binary that does not exist is an error, not a skip.
	_, err := Run(context.Background(), Scenario{Name: ScenarioLBNAT, Load: shortLoad(), LB: filepath.Join(t.TempDir(), "lwm2m-lb")})
	if err == nil {
		t.Error("Run with a missing --lb-bin succeeded")
	}
}

func TestRunUnknown(t *testing.T) {
	if _, err := Run(context.Background(), Scenario{Name: "haproxy"}); err == nil {
		t.Error("unknown scenario accepted")
	}
	if _, err := Bench(context.Background(), Options{Scenarios: []string{"direct", "haproxy"}}); err == nil {
		t.Error("Bench accepted an unknown scenario")
	}
}

func TestBench(t *testing.T) {
	rep, err := Bench(context.Background(), Options{
		Scenarios: []string{ScenarioDirect, ScenarioLBNAT},
		Scenario:  Scenario{Load: shortLoad()},
		Pause:     time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Failed() {
		t.Fatalf("report: %+v", rep)
	}
	if r := rep.Results[0]; r.VsDirect != 1 || r.VsNginx != 0 {
		t.Errorf("direct ratios: %+v", r)
	}
	if r := rep.Results[1]; !r.Skipped || r.TargetMet != nil || r.Target == "" {
		t.Errorf("lb-nat: %+v", r)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"responses/s", "direct", "1.00x", "lb-nat: skipped, lwm2m-lb not built"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestReport(t *testing.T) {
	rep := &Report{Results: []Result{
		{Scenario: ScenarioDirect, Load: LoadResult{ResponsesPerSec: 200000}},
		{Scenario: ScenarioNginx, Load: LoadResult{ResponsesPerSec: 100000}},
		{Scenario: ScenarioLBNAT, Load: LoadResult{ResponsesPerSec: 110000}},
		{Scenario: ScenarioLBProxy, Load: LoadResult{ResponsesPerSec: 150000, Lost: 3, Sent: 1000, LossPercent: 0.3}},
	}}
	rep.computeRatios()
	want := []struct {
		vsDirect, vsNginx float64
		met               *bool
	}{
		{1, 2, nil},
		{0.5, 1, nil},
		{0.55, 1.1, ptr(false)},
		{0.75, 1.5, ptr(true)},
	}
	for i, w := range want {
		r := rep.Results[i]
		if !near(r.VsDirect, w.vsDirect) || !near(r.VsNginx, w.vsNginx) {
			t.Errorf("%s: ratios %v %v, want %v %v", r.Scenario, r.VsDirect, r.VsNginx, w.vsDirect, w.vsNginx)
		}
		if (r.TargetMet == nil) != (w.met == nil) || r.TargetMet != nil && *r.TargetMet != *w.met {
			t.Errorf("%s: TargetMet %v, want %v", r.Scenario, r.TargetMet, w.met)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"200,000", "0.55x", ">= 1.2x nginx (MISSED)", ">= 0.6x direct (met)", "0.300"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Results) != 4 || back.Results[3].Load.ResponsesPerSec != 150000 || !*back.Results[3].TargetMet {
		t.Errorf("JSON round trip: %+v", back)
	}
}

func TestFindLB(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "lb")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := FindLB(context.Background(), bin, dir); err != nil || got != bin {
		t.Errorf("FindLB(%q) = %q, %v", bin, got, err)
	}
}

func ptr[T any](v T) *T { return &v }

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestMedian(t *testing.T) {
	rs := func(rates ...float64) []Result {
		var out []Result
		for _, r := range rates {
			out = append(out, Result{Scenario: ScenarioDirect, Load: LoadResult{ResponsesPerSec: r}})
		}
		return out
	}
	m := median(rs(300, 100, 200))
	if m.Load.ResponsesPerSec != 200 || !slices.Equal(m.Samples, []float64{300, 100, 200}) {
		t.Errorf("median of 3 = %+v", m)
	}
	if m := median(rs(100, 200)); m.Load.ResponsesPerSec != 100 {
		t.Errorf("median of 2 = %v, want the lower", m.Load.ResponsesPerSec)
	}
	if m := median(rs(100)); m.Samples != nil {
		t.Errorf("one round has samples %v", m.Samples)
	}
	failed := append(rs(100), Result{Scenario: ScenarioDirect, Error: "boom"})
	if m := median(failed); m.Error != "boom" {
		t.Errorf("a failed round did not fail the result: %+v", m)
	}
	var table bytes.Buffer
	rep := &Report{Rounds: 3, Results: []Result{median(rs(90, 100, 120))}}
	rep.computeRatios()
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "-10%/+20%") {
		t.Errorf("table lacks the spread:\n%s", table.String())
	}
}
