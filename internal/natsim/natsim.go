// Package natsim simulates a NAT in front of a device that rebinds the
// device's public source port: a net.PacketConn whose outgoing socket can
// be replaced (Rebind) while the session above it (DTLS, CoAP) goes on.
// Datagrams still arriving on the old port are delivered for a grace
// period, as a real NAT would drop them only once the old binding expired.
package natsim

import (
	"net"
	"os"
	"sync"
	"time"
)

// Conn is a rebinding net.PacketConn.
type Conn struct {
	laddr string
	in    chan packet
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	cur      *net.UDPConn
	old      []*net.UDPConn
	deadline time.Time
	wake     chan struct{}
}

type packet struct {
	b    []byte
	from net.Addr
}

// Listen opens a Conn on a fresh port of the IP in laddr ("127.0.0.1:0").
func Listen(laddr string) (*Conn, error) {
	c := &Conn{laddr: laddr, in: make(chan packet, 256), done: make(chan struct{}), wake: make(chan struct{})}
	if err := c.Rebind(); err != nil {
		return nil, err
	}
	return c, nil
}

// Rebind moves the Conn to a new source port. The old socket keeps
// delivering what arrives for one second, then closes.
func (c *Conn) Rebind() error {
	ua, err := net.ResolveUDPAddr("udp", c.laddr)
	if err != nil {
		return err
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	go c.read(pc)
	c.mu.Lock()
	prev := c.cur
	c.cur = pc
	c.mu.Unlock()
	if prev != nil {
		time.AfterFunc(time.Second, func() { prev.Close() })
	}
	return nil
}

func (c *Conn) read(pc *net.UDPConn) {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		p := packet{b: append([]byte(nil), buf[:n]...), from: from}
		select {
		case c.in <- p:
		case <-c.done:
			return
		}
	}
}

// Port returns the current source port.
func (c *Conn) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.LocalAddr().(*net.UDPAddr).Port
}

// ReadFrom implements net.PacketConn.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl, wake := c.deadline, c.wake
		c.mu.Unlock()
		var timer *time.Timer
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			expired = timer.C
		}
		stop := func() {
			if timer != nil {
				timer.Stop()
			}
		}
		select {
		case p := <-c.in:
			stop()
			return copy(b, p.b), p.from, nil
		case <-c.done:
			stop()
			return 0, nil, net.ErrClosed
		case <-expired:
			return 0, nil, os.ErrDeadlineExceeded
		case <-wake: // deadline changed
			stop()
		}
	}
}

// WriteTo implements net.PacketConn: from the current port.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	pc := c.cur
	c.mu.Unlock()
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	return pc.WriteTo(b, addr)
}

// Close implements net.PacketConn.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		c.cur.Close()
		c.mu.Unlock()
	})
	return nil
}

// LocalAddr implements net.PacketConn: the current source address.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.LocalAddr()
}

// SetDeadline implements net.PacketConn (reads only; writes do not block).
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.PacketConn.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

var _ net.PacketConn = (*Conn)(nil)
