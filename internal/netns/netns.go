// Package netns provides helpers that build throwaway network topologies of
// namespaces for end-to-end tests.
//
// A [Lab] is one Linux bridge living in its own network namespace
// ("<prefix>-br") plus any number of hosts, each a network namespace
// ("<prefix>-<name>") with loopback up and a single interface, eth0, whose
// veth peer is a port of the bridge. Every host has one IPv4 address in the
// lab's subnet; more addresses (VIPs) can be added with [Host.AddAddr].
//
// Nothing is created in the root namespace: the veth pairs are created with
// one end directly in the bridge namespace and the other directly in the
// host namespace. A lab is therefore completely isolated: its hosts reach
// each other and nothing else (in particular not the root namespace's
// 127.0.0.1, so a redis-server started by redistest is not reachable from
// inside a lab), and two labs may use the same subnet at the same time.
//
// Everything needs root and iproute2's ip(8). Tests should call
// [Available] first and fail (not skip) when it returns an error.
//
// Lab and Host methods report errors through the testing.TB given to [New]
// and, like t.Fatal, must be called from the goroutine running that test.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// namePrefix starts every namespace this package creates. The full prefix
// of a lab is "lwt<pid>x<counter>", unique across concurrently running test
// binaries; stale namespaces of dead processes are removed by New.
const namePrefix = "lwt"

// Dev is the name of a host's interface into the bridge.
const Dev = "eth0"

const bridgeDev = "br0"

var (
	labCounter atomic.Uint64

	availOnce sync.Once
	availErr  error

	sweepOnce sync.Once

	hostNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_]{0,15}$`)
	staleRE    = regexp.MustCompile(`^` + namePrefix + `([0-9]+)x[0-9]+-`)
)

// Available reports whether labs can be built here: nil when the process
// runs as root, ip(8) is installed and `ip netns add` works. The result is
// computed once per process.
func Available() error {
	availOnce.Do(func() { availErr = available() })
	return availErr
}

func available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("netns: need root (euid %d)", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netns: ip(8) from iproute2 not found: %w", err)
	}
	probe := fmt.Sprintf("%s%dprobe", namePrefix, os.Getpid())
	_ = exec.Command("ip", "netns", "del", probe).Run() // leftover of a reused pid
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Errorf("netns: ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	err := doIn(probe, func() error { return nil })
	if out, derr := exec.Command("ip", "netns", "del", probe).CombinedOutput(); derr != nil && err == nil {
		err = fmt.Errorf("ip netns del: %v: %s", derr, bytes.TrimSpace(out))
	}
	if err != nil {
		return fmt.Errorf("netns: probe namespace: %w", err)
	}
	return nil
}

// Lab is a set of namespaces joined by one bridge that lives in its own
// namespace ("<prefix>-br"). Each host has one veth into the bridge and an
// IPv4 address in the lab's subnet, plus loopback up.
//
// Addresses are handed out in order from the first address after the
// network address (.1 in a /24) upward, skipping addresses already in use;
// the network and broadcast addresses are never used. There is no gateway
// and no route out of the lab. Use [Lab.FreeAddr] to pick a VIP that no
// later host will take.
type Lab struct {
	t        testing.TB
	Prefix   string       // namespace name prefix, e.g. "lwt1234x1"
	Subnet   netip.Prefix // the lab's subnet, e.g. 10.77.0.0/24
	BridgeNS string       // namespace holding the bridge br0 (for tcpdump and the like)

	mu    sync.Mutex
	hosts []*Host
	used  map[netip.Addr]bool
	next  netip.Addr
	nsAll []string // every namespace created, in creation order
}

// Host is one namespace of a lab.
type Host struct {
	Name string     // name given to AddHost
	NS   string     // network namespace name, usable with `ip netns exec`
	IP   netip.Addr // primary address, on Dev
	MAC  net.HardwareAddr

	lab  *Lab
	port string // bridge port (veth peer of Dev) in the bridge namespace
}

// New builds an empty lab (the bridge namespace only) on subnet, an IPv4
// prefix such as "10.77.0.0/24" with at most 30 bits. Any subnet is safe:
// it only ever exists inside the lab's namespaces. t.Cleanup removes
// everything the lab created, whether or not the test failed: processes
// still running in the hosts' namespaces are killed, the veth pairs and the
// namespaces are deleted.
func New(t testing.TB, subnet string) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Fatalf("netns unavailable: %v", err)
	}
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		t.Fatalf("netns: subnet %q: %v", subnet, err)
	}
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() > 30 {
		t.Fatalf("netns: subnet %s: need an IPv4 prefix of at most /30", p)
	}
	sweepOnce.Do(sweepStale)

	prefix := fmt.Sprintf("%s%dx%d", namePrefix, os.Getpid(), labCounter.Add(1))
	l := &Lab{
		t:        t,
		Prefix:   prefix,
		Subnet:   p,
		BridgeNS: prefix + "-br",
		used:     map[netip.Addr]bool{},
		next:     p.Addr().Next(),
	}
	t.Cleanup(l.cleanup)

	l.addNS(l.BridgeNS)
	l.sysctls(l.BridgeNS, map[string]string{
		// Nothing in the bridge namespace speaks IPv6: keep br0 and the
		// ports from sending router solicitations and MLD reports.
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	})
	l.ipBatch(l.BridgeNS,
		"link set lo up",
		"link add "+bridgeDev+" type bridge forward_delay 0 stp_state 0",
		"link set "+bridgeDev+" up",
	)
	return l
}

// AddHost creates a host namespace "<prefix>-<name>" with loopback up and
// interface Dev (eth0) plugged into the bridge, carrying the next free
// address of the subnet. Names are lower-case letters, digits and '_', at
// most 16 characters, unique within the lab.
func (l *Lab) AddHost(name string) *Host {
	l.t.Helper()
	if !hostNameRE.MatchString(name) || name == "br" {
		l.t.Fatalf("netns: bad host name %q (want [a-z0-9_], at most 16, not \"br\")", name)
	}
	l.mu.Lock()
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			l.t.Fatalf("netns: host %q already in lab %s", name, l.Prefix)
		}
	}
	ip, ok := l.allocLocked()
	h := &Host{Name: name, NS: l.Prefix + "-" + name, IP: ip, lab: l,
		port: "p" + strconv.Itoa(len(l.hosts)+1)}
	if ok {
		l.hosts = append(l.hosts, h)
	}
	l.mu.Unlock()
	if !ok {
		l.t.Fatalf("netns: subnet %s of lab %s is full", l.Subnet, l.Prefix)
	}

	l.addNS(h.NS)
	l.sysctls(h.NS, map[string]string{
		// Effective rp_filter is max(all, <dev>); "default" applies to
		// eth0, which is created below.
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
		// IPv6 link-local addresses usable at once, not after DAD.
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
	})
	l.ipBatch(l.BridgeNS,
		fmt.Sprintf("link add %s type veth peer name %s netns %s", h.port, Dev, h.NS),
		fmt.Sprintf("link set %s master %s up", h.port, bridgeDev),
	)
	l.ipBatch(h.NS,
		"link set lo up",
		fmt.Sprintf("addr add %s dev %s", netip.PrefixFrom(ip, l.Subnet.Bits()), Dev),
		fmt.Sprintf("link set %s up", Dev),
	)
	if err := h.Do(func() error {
		ifi, err := net.InterfaceByName(Dev)
		if err == nil {
			h.MAC = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		l.t.Fatalf("netns: host %s: %v", name, err)
	}
	return h
}

// Hosts returns the lab's hosts in creation order.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// FreeAddr reserves and returns the next free address of the subnet, for
// use as a VIP with [Host.AddAddr]; no host added later gets it.
func (l *Lab) FreeAddr() netip.Addr {
	l.t.Helper()
	l.mu.Lock()
	ip, ok := l.allocLocked()
	l.mu.Unlock()
	if !ok {
		l.t.Fatalf("netns: subnet %s of lab %s is full", l.Subnet, l.Prefix)
	}
	return ip
}

func (l *Lab) allocLocked() (netip.Addr, bool) {
	for ip := l.next; l.Subnet.Contains(ip); ip = ip.Next() {
		if l.used[ip] || !l.Subnet.Contains(ip.Next()) { // skip broadcast
			continue
		}
		l.used[ip] = true
		l.next = ip.Next()
		return ip, true
	}
	return netip.Addr{}, false
}

// AddAddr adds ip as a /32 to the host's Dev, e.g. a VIP, and sends a
// gratuitous ARP for it so that hosts which had it cached at another MAC
// (the VIP's previous owner) switch over at once. ip should lie in the
// lab's subnet: the other hosts have only the subnet's on-link route.
//
// Note for UDP servers: replies sent from a socket bound to 0.0.0.0 leave
// with the host's primary address (IP) as source, not the VIP the request
// was sent to; bind to the VIP (or use IP_PKTINFO) to answer from it.
func (h *Host) AddAddr(ip netip.Addr) {
	l := h.lab
	l.t.Helper()
	if !ip.Is4() {
		l.t.Fatalf("netns: AddAddr %s: IPv4 only", ip)
	}
	l.mu.Lock()
	if l.Subnet.Contains(ip) {
		l.used[ip] = true
	}
	l.mu.Unlock()
	l.ipBatch(h.NS, fmt.Sprintf("addr add %s/32 dev %s", ip, Dev))
	if err := h.Do(func() error { return gratuitousARP(ip) }); err != nil {
		l.t.Fatalf("netns: %s: gratuitous ARP for %s: %v", h.Name, ip, err)
	}
}

// DelAddr removes an address added with AddAddr, e.g. to move a VIP to
// another host.
func (h *Host) DelAddr(ip netip.Addr) {
	h.lab.t.Helper()
	h.lab.ipBatch(h.NS, fmt.Sprintf("addr del %s/32 dev %s", ip, Dev))
}

// Command returns a command running `ip netns exec <ns> name args...`, that
// is name inside the host's namespace (ip execs it, so the process is name
// itself). Processes still running when the lab is cleaned up are killed.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs name inside the host to completion and returns its combined
// output; it fails the test, showing the output, when the command fails.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("netns: %s: %s %s: %v\n%s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs f with the calling goroutine locked to its OS thread and that
// thread switched into the host's network namespace, then switches the
// thread back and unlocks it. Sockets created by f (net.ListenUDP,
// net.DialUDP, net.Listen, ...) belong to the host's namespace for their
// whole life, whichever goroutine or thread uses them afterwards.
//
// Only what f does synchronously on the calling goroutine happens inside
// the namespace: goroutines started by f run on other threads, in the
// original namespace. Use literal IP addresses inside f, as name
// resolution may run on other threads too. f may call t.Fatal (the
// namespace is restored on runtime.Goexit and on panic).
func (h *Host) Do(f func() error) error {
	return doIn(h.NS, f)
}

func doIn(ns string, f func() error) error {
	target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer unix.Close(target)

	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Keep the thread locked: Go ends a thread whose goroutine
			// exits locked, so it never serves other goroutines. Crash
			// loudly rather than run on in the wrong namespace.
			panic(fmt.Sprintf("netns: cannot restore network namespace after %s: %v", ns, err))
		}
		runtime.UnlockOSThread()
	}()
	return f()
}

// gratuitousARP broadcasts an ARP request "who has ip, tell ip" from Dev of
// the current namespace.
func gratuitousARP(ip netip.Addr) error {
	ifi, err := net.InterfaceByName(Dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	a := ip.As4()
	pkt := []byte{
		0, 1, // hardware type Ethernet
		8, 0, // protocol IPv4
		6, 4, // address lengths
		0, 1, // request
	}
	pkt = append(pkt, ifi.HardwareAddr...) // sender MAC
	pkt = append(pkt, a[:]...)             // sender IP
	pkt = append(pkt, 0, 0, 0, 0, 0, 0)    // target MAC
	pkt = append(pkt, a[:]...)             // target IP
	sa := &unix.SockaddrLinklayer{
		Protocol: htons(unix.ETH_P_ARP),
		Ifindex:  ifi.Index,
		Halen:    6,
		Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	return unix.Sendto(fd, pkt, 0, sa)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (l *Lab) addNS(ns string) {
	l.t.Helper()
	l.mu.Lock()
	l.nsAll = append(l.nsAll, ns) // before creating: cleanup tolerates absence
	l.mu.Unlock()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		l.t.Fatalf("netns: ip netns add %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
}

// ipBatch runs ip commands inside ns, failing the test on the first error.
func (l *Lab) ipBatch(ns string, cmds ...string) {
	l.t.Helper()
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("netns: ip -n %s: %v\n%s\ncommands:\n%s", ns, err, bytes.TrimSpace(out), strings.Join(cmds, "\n"))
	}
}

// sysctls writes /proc/sys entries inside ns. Missing entries (no IPv6
// support, say) are ignored.
func (l *Lab) sysctls(ns string, kv map[string]string) {
	l.t.Helper()
	err := doIn(ns, func() error {
		for k, v := range kv {
			err := os.WriteFile("/proc/sys/"+k, []byte(v), 0)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("netns: sysctl in %s: %v", ns, err)
	}
}

func (l *Lab) cleanup() {
	l.mu.Lock()
	hosts := append([]*Host(nil), l.hosts...)
	nsAll := append([]string(nil), l.nsAll...)
	l.mu.Unlock()

	var errs []string
	// Processes first: they may hold sockets, which keep a deleted
	// namespace (and its veth) alive.
	for _, ns := range nsAll {
		if err := killIn(ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	// Deleting a veth end deletes the pair at once; namespace teardown is
	// asynchronous, and a socket still open in a namespace would keep
	// its devices alive.
	for _, h := range hosts {
		out, err := exec.Command("ip", "-n", l.BridgeNS, "link", "del", h.port).CombinedOutput()
		if err != nil && exists(l.BridgeNS) && !bytes.Contains(out, []byte("Cannot find device")) {
			errs = append(errs, fmt.Sprintf("ip -n %s link del %s: %v: %s", l.BridgeNS, h.port, err, bytes.TrimSpace(out)))
		}
	}
	for i := len(nsAll) - 1; i >= 0; i-- {
		ns := nsAll[i]
		if !exists(ns) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("ip netns del %s: %v: %s", ns, err, bytes.TrimSpace(out)))
		}
	}
	if len(errs) > 0 {
		l.t.Errorf("netns: cleanup of lab %s:\n%s", l.Prefix, strings.Join(errs, "\n"))
	}
}

func exists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

// killIn SIGKILLs the processes whose network namespace is ns (except this
// one: a thread inside Do may make this process show up).
func killIn(ns string) error {
	if !exists(ns) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "pids", ns).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns pids %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("kill %d in %s: %v", pid, ns, err)
		}
	}
	return nil
}

// sweepStale deletes namespaces left by test binaries that died before
// their cleanups ran (killed by a timeout, say): those named after a pid
// that no longer exists, or after this process's own pid (a reused pid;
// this process has created none yet).
func sweepStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil {
			continue
		}
		if pid != os.Getpid() && syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		_ = killIn(e.Name())
		_ = exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}
