package udpio

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connectedFD returns a non-blocking socket connected to a peer, and the
// peer.
func connectedFD(t *testing.T) (int, *net.UDPConn) {
	t.Helper()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	pa := peer.LocalAddr().(*net.UDPAddr)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: pa.Port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	return fd, peer
}

func TestFDReader(t *testing.T) {
	fd, peer := connectedFD(t)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}
	r := NewFDReader(4)
	in := msgs(4, 16)
	if _, err := r.Read(fd, in); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("Read of an empty socket: %v, want EAGAIN", err)
	}
	for _, p := range []string{"one", "a datagram longer than sixteen bytes", "three"} {
		if _, err := peer.WriteToUDP([]byte(p), to); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	var seen []Msg
	for got < 3 && time.Now().Before(deadline) {
		n, err := r.Read(fd, in)
		if errors.Is(err, unix.EAGAIN) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			m := in[i]
			m.Buf = append([]byte(nil), in[i].Payload()...)
			m.Offset = 0
			seen = append(seen, m)
		}
		got += n
	}
	if len(seen) != 3 {
		t.Fatalf("read %d datagrams, want 3", len(seen))
	}
	if string(seen[0].Payload()) != "one" || seen[0].Trunc || !seen[1].Trunc || string(seen[2].Payload()) != "three" || seen[2].Trunc {
		t.Fatalf("read %q/%v %q/%v %q/%v", seen[0].Payload(), seen[0].Trunc, seen[1].Payload(), seen[1].Trunc, seen[2].Payload(), seen[2].Trunc)
	}
	toAP := to.AddrPort()
	x := []byte("x")
	allocs := testing.AllocsPerRun(50, func() {
		_, _ = peer.WriteToUDPAddrPort(x, toAP)
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
			if _, err := r.Read(fd, in); err == nil {
				return
			}
		}
		t.Fatal("a datagram sent on loopback never arrived")
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read, want 0", allocs)
	}
}
