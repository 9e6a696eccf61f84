package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--help"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"target", "devices", "dtls", "cid", "psk-prefix", "ramp", "duration", "update-every",
		"notify-every", "nat-rebind-every", "northbound", "read-rate", "report", "html", "compare", "scenario", "serve-stub", "redis"} {
		if !strings.Contains(out.String(), "-"+f+" ") {
			t.Errorf("--help does not document --%s", f)
		}
	}
}

func TestParse(t *testing.T) {
	var out bytes.Buffer
	for _, bad := range [][]string{{}, {"--target", "x:1", "--compare"}, {"--target", "x:1", "--cid"}, {"--compare", "extra"}} {
		if _, err := parse(bad, &out); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	o, err := parse([]string{"--target", "127.0.0.1:5683", "--northbound", "redis://r/0", "--observe-fraction", "0"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if o.redisURL != "redis://r/0" || o.fc.ObserveFraction >= 0 {
		t.Fatalf("redis %q, observe fraction %v", o.redisURL, o.fc.ObserveFraction)
	}
}
