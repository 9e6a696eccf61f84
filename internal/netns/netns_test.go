package netns_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lwm2mcluster/lwm2m/internal/netns"
)

func requireNetns(t *testing.T) {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Fatalf("network namespaces unavailable (tests need root and iproute2): %v", err)
	}
}

// echoServer listens on addr:0 inside h and answers every datagram with
// "<tag> <sender ip> <payload>".
func echoServer(t *testing.T, h *netns.Host, addr netip.Addr, tag string) netip.AddrPort {
	t.Helper()
	var c *net.UDPConn
	err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", h.Name, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// The goroutine runs on any thread; the socket stays in h's namespace.
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			reply := fmt.Sprintf("%s %s %s", tag, from.Addr(), buf[:n])
			_, _ = c.WriteToUDPAddrPort([]byte(reply), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// dial opens a UDP socket connected to to, inside h.
func dial(t *testing.T, h *netns.Host, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := h.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, h.Name, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ask(t *testing.T, c *net.UDPConn, msg string, timeout time.Duration) string {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write to %s: %v", c.RemoteAddr(), err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read from %s: %v", c.RemoteAddr(), err)
	}
	return string(buf[:n])
}

func nsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	return string(out)
}

func TestUDPAcrossBridge(t *testing.T) {
	requireNetns(t)
	l := netns.New(t, "10.77.0.0/24")
	a, b := l.AddHost("a"), l.AddHost("b")
	if a.IP != netip.MustParseAddr("10.77.0.1") || b.IP != netip.MustParseAddr("10.77.0.2") {
		t.Fatalf("addresses: a=%s b=%s, want 10.77.0.1 and 10.77.0.2", a.IP, b.IP)
	}
	if out := a.Run(t, "ip", "-4", "-o", "addr", "show", "dev", netns.Dev); !strings.Contains(out, "10.77.0.1/24") {
		t.Fatalf("a's eth0:\n%s", out)
	}
	if out := b.Run(t, "cat", "/proc/sys/net/ipv4/conf/all/rp_filter"); strings.TrimSpace(out) != "0" {
		t.Fatalf("rp_filter in b = %q, want 0", out)
	}

	srv := echoServer(t, a, a.IP, "a")
	c := dial(t, b, srv)
	want := "a 10.77.0.2 hello"
	for i := range 3 {
		if got := ask(t, c, "hello", 3*time.Second); got != want {
			t.Fatalf("exchange %d: got %q, want %q", i, got, want)
		}
	}
	// Loopback is up inside the hosts.
	lo := echoServer(t, a, netip.MustParseAddr("127.0.0.1"), "lo")
	if got := ask(t, dial(t, a, lo), "x", 3*time.Second); got != "lo 127.0.0.1 x" {
		t.Fatalf("loopback in a: got %q", got)
	}
}

func TestVIPMoves(t *testing.T) {
	requireNetns(t)
	l := netns.New(t, "10.77.1.0/24")
	a, b, c := l.AddHost("a"), l.AddHost("b"), l.AddHost("c")
	vip := l.FreeAddr()
	if vip != netip.MustParseAddr("10.77.1.4") {
		t.Fatalf("FreeAddr = %s, want 10.77.1.4", vip)
	}
	if d := l.AddHost("d"); d.IP != netip.MustParseAddr("10.77.1.5") {
		t.Fatalf("host after FreeAddr got %s, want 10.77.1.5", d.IP)
	}

	a.AddAddr(vip)
	const port = 5683
	// A fixed port makes the move transparent to the client's connected
	// socket; servers bind the VIP itself so replies come from it.
	to := netip.AddrPortFrom(vip, port)
	closeA := listenOn(t, a, to, "a")
	cl := dial(t, c, to)
	if got := ask(t, cl, "1", 3*time.Second); got != "a 10.77.1.3 1" {
		t.Fatalf("via VIP on a: got %q", got)
	}

	// Move the VIP to b. c's ARP cache holds a's MAC for the VIP; the
	// gratuitous ARP sent by AddAddr must switch it at once (without it
	// c would keep sending to a for tens of seconds).
	closeA()
	a.DelAddr(vip)
	b.AddAddr(vip)
	listenOn(t, b, to, "b")
	if got := ask(t, cl, "2", 2*time.Second); got != "b 10.77.1.3 2" {
		t.Fatalf("via VIP on b: got %q", got)
	}
	if out := c.Run(t, "ip", "neigh", "show", vip.String()); !strings.Contains(out, b.MAC.String()) {
		t.Fatalf("c's neighbour entry for %s is not b's MAC %s:\n%s", vip, b.MAC, out)
	}
}

// listenOn is echoServer on a fixed address; it returns a closer.
func listenOn(t *testing.T, h *netns.Host, ap netip.AddrPort, tag string) func() {
	t.Helper()
	var c *net.UDPConn
	if err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", ap, h.Name, err)
	}
	closer := func() { _ = c.Close() }
	t.Cleanup(closer)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte(fmt.Sprintf("%s %s %s", tag, from.Addr(), buf[:n])), from)
		}
	}()
	return closer
}

func TestCleanupRemovesEverything(t *testing.T) {
	requireNetns(t)
	var names []string
	var sleeper *exec.Cmd
	t.Run("lab", func(t *testing.T) {
		l := netns.New(t, "10.77.2.0/24")
		a, b := l.AddHost("a"), l.AddHost("b")
		names = []string{l.BridgeNS, a.NS, b.NS}
		list := nsList(t)
		for _, n := range names {
			if !strings.Contains(list, n) {
				t.Fatalf("namespace %s missing from ip netns list:\n%s", n, list)
			}
		}
		// A process left running inside a host must not outlive the lab.
		sleeper = a.Command(context.Background(), "sleep", "300")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		// Nor may a socket left open keep anything visible.
		echoServer(t, b, b.IP, "b")
	})
	list := nsList(t)
	for _, n := range names {
		if strings.Contains(list, n) {
			t.Errorf("namespace %s still listed after cleanup:\n%s", n, list)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/run/netns/%s: %v, want not exist", n, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- sleeper.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("sleep exited cleanly, want killed")
		}
	case <-time.After(5 * time.Second):
		_ = sleeper.Process.Kill()
		t.Errorf("sleep started in the lab still running after cleanup")
	}
}

func TestTwoLabsSameSubnet(t *testing.T) {
	requireNetns(t)
	l1 := netns.New(t, "10.77.3.0/24")
	l2 := netns.New(t, "10.77.3.0/24")
	if l1.Prefix == l2.Prefix {
		t.Fatalf("both labs have prefix %s", l1.Prefix)
	}
	a1, b1 := l1.AddHost("a"), l1.AddHost("b")
	a2, b2 := l2.AddHost("a"), l2.AddHost("b")
	if a1.NS == a2.NS || a1.IP != a2.IP {
		t.Fatalf("ns %s vs %s, ip %s vs %s", a1.NS, a2.NS, a1.IP, a2.IP)
	}
	s1 := echoServer(t, a1, a1.IP, "lab1")
	s2 := echoServer(t, a2, a2.IP, "lab2")
	c1, c2 := dial(t, b1, s1), dial(t, b2, s2)
	for range 2 {
		if got := ask(t, c1, "x", 3*time.Second); got != "lab1 10.77.3.2 x" {
			t.Fatalf("lab1: got %q", got)
		}
		if got := ask(t, c2, "y", 3*time.Second); got != "lab2 10.77.3.2 y" {
			t.Fatalf("lab2: got %q", got)
		}
	}
}

func nsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// threadNamespaces returns the set of network namespaces of this process's
// threads.
func threadNamespaces(t *testing.T) map[uint64]bool {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("glob tasks: %v", err)
	}
	set := map[uint64]bool{}
	for _, p := range tasks {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil { // threads may vanish
			set[st.Ino] = true
		}
	}
	return set
}

func TestDoRestoresNamespace(t *testing.T) {
	requireNetns(t)
	root := nsIno(t, "/proc/thread-self/ns/net")
	l := netns.New(t, "10.77.4.0/24")
	a := l.AddHost("a")
	want := nsIno(t, "/run/netns/"+a.NS)

	for range 20 {
		if err := a.Do(func() error {
			if got := nsIno(t, "/proc/thread-self/ns/net"); got != want {
				return fmt.Errorf("inside Do: namespace %d, want %d", got, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Do(func() error { return errors.New("boom") }); err == nil || err.Error() != "boom" {
		t.Fatalf("Do error = %v, want boom", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "panic inside" {
				t.Fatalf("recovered %v", r)
			}
		}()
		_ = a.Do(func() error { panic("panic inside") })
	}()
	if got := threadNamespaces(t); len(got) != 1 || !got[root] {
		t.Fatalf("thread namespaces after Do: %v, want only %d", got, root)
	}
}
