package udpio

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs open in a new network namespace whose loopback has the given
// MTU, on a thread moved there for the call: sockets open keeps stay in
// that namespace. It needs root and ip(8); without them the test fails.
func inNetns(t *testing.T, mtu int, open func()) {
	t.Helper()
	name := fmt.Sprintf("lwt-udpio-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s (this test needs root and iproute2; make test provides them)", args, err, out)
		}
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "mtu", fmt.Sprint(mtu), "up")

	ns, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}
	defer func() {
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(fmt.Sprintf("cannot return the thread to its namespace: %v", err))
		}
	}()
	open()
}

// TestGSOAboveMTU: a run of datagrams larger than the path MTU allows as
// segments is refused by the kernel (EMSGSIZE); WriteBatch sends them one
// by one instead (the kernel fragments them), stops coalescing datagrams
// that large, and every datagram arrives.
func TestGSOAboveMTU(t *testing.T) {
	var w, r *Conn
	var to net.UDPAddr
	inNetns(t, 1280, func() {
		a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		_ = b.SetReadBuffer(1 << 20)
		if w, err = NewConn(a, 64); err != nil {
			t.Fatal(err)
		}
		if r, err = NewConn(b, 64); err != nil {
			t.Fatal(err)
		}
		to = *b.LocalAddr().(*net.UDPAddr)
	})
	if err := w.EnableGSO(); err != nil {
		t.Fatal(err)
	}
	// 1260 bytes + 28 of headers > 1280, but under maxGSOSegment; then
	// small datagrams that still coalesce.
	out := msgs(10, 1300)
	for i := range out {
		out[i].N, out[i].Addr = 1260, to.AddrPort()
		if i >= 6 {
			out[i].N = 100
		}
		out[i].Buf[0] = byte(i)
	}
	for round := range 2 {
		if n, err := w.WriteBatch(out); err != nil || n != len(out) {
			t.Fatalf("round %d: WriteBatch = %d, %v; want all %d sent", round, n, err, len(out))
		}
		in := msgs(16, 2048)
		r.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
		for got := 0; got < len(out); {
			n, err := r.ReadBatch(in)
			if err != nil {
				t.Fatalf("round %d: %d of %d datagrams: %v", round, got, len(out), err)
			}
			for i := range n {
				if in[i].N != out[got].N || in[i].Payload()[0] != byte(got) {
					t.Fatalf("round %d: datagram %d: %d bytes starting %d, want %d bytes starting %d", round, got, in[i].N, in[i].Payload()[0], out[got].N, got)
				}
				got++
			}
		}
	}
	if w.g.maxSeg >= 1260 {
		t.Fatalf("largest coalesced datagram still %d after EMSGSIZE", w.g.maxSeg)
	}
	if !w.GSO() {
		t.Fatal("GSO turned off for a size problem")
	}
}
