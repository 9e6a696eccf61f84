package lbbench

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	line := []byte("4242 (nginx: worker) (x)) S 1 4240 4240 0 -1 4194624 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10\n")
	g, ticks, ok := parseStat(line)
	if !ok || g != 4240 || ticks != 300 {
		t.Fatalf("parseStat = %d, %d, %v; want 4240, 300, true", g, ticks, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1", "1 (x) S 1 notanumber 0 0 0 0 0 0 0 0 1 2"} {
		if _, _, ok := parseStat([]byte(bad)); ok {
			t.Fatalf("parseStat(%q) ok", bad)
		}
	}
}

// TestGroupCPU: this test's own process group shows the CPU it burns.
func TestGroupCPU(t *testing.T) {
	pgid, err := syscall.Getpgid(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	before, err := groupCPU(pgid)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
	}
	after, err := groupCPU(pgid)
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 3*clockTick {
		t.Fatalf("100 ms of spinning counted as %v", after-before)
	}
	if _, err := groupCPU(1 << 30); err == nil {
		t.Fatal("a process group that does not exist has CPU time")
	}
}
