package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"golang.org/x/sys/unix"
)

// StubConfig configures a Stub.
type StubConfig struct {
	// Addr is the listen address (default "127.0.0.1:0").
	Addr string
	// Workers is the number of SO_REUSEPORT sockets, one goroutine each
	// (default GOMAXPROCS).
	Workers int
	// Silent makes the stub answer nothing at all: a black hole.
	Silent bool
	// DropUpdates makes it answer registrations but not updates.
	DropUpdates bool
}

// Stub is the cheapest possible LwM2M registration endpoint, for measuring
// the fleet itself: it answers a confirmable POST /rd with a piggybacked
// 2.01 and Location-Path rd/<n>, a POST /rd/<id> with 2.04, a CoAP ping
// with a reset, and any other request with 4.04. It keeps no state.
type Stub struct {
	cfg   StubConfig
	conns []*net.UDPConn
	wg    sync.WaitGroup
	next  atomic.Uint64

	// Received counts datagrams received; Answered those answered.
	Received, Answered atomic.Uint64
}

// StartStub starts a stub; Close stops it.
func StartStub(cfg StubConfig) (*Stub, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	s := &Stub{cfg: cfg}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	addr := cfg.Addr
	for i := range cfg.Workers {
		pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("stub: listen %s: %w", addr, err)
		}
		c := pc.(*net.UDPConn)
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		s.conns = append(s.conns, c)
		if i == 0 {
			addr = c.LocalAddr().String()
		}
	}
	for _, c := range s.conns {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
		}()
	}
	return s, nil
}

// Addr returns the address the stub listens on.
func (s *Stub) Addr() string { return s.conns[0].LocalAddr().String() }

// Close stops the stub.
func (s *Stub) Close() error {
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *Stub) serve(c *net.UDPConn) {
	in := make([]byte, 2048)
	out := make([]byte, 512)
	optBuf := make([]byte, 64)
	opts := make(message.Options, 0, 32)
	for {
		n, from, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.Received.Add(1)
		if s.cfg.Silent {
			continue
		}
		req := message.Message{Options: opts[:0]}
		if _, err := coder.DefaultCoder.Decode(in[:n], &req); err != nil || req.Type != message.Confirmable {
			continue
		}
		resp := message.Message{Type: message.Acknowledgement, MessageID: req.MessageID, Token: req.Token}
		switch {
		case req.Code == codes.Empty:
			resp.Type = message.Reset
		default:
			path, _ := req.Options.Path()
			switch {
			case req.Code == codes.POST && path == "/rd":
				resp.Code = codes.Created
				id := strconv.FormatUint(s.next.Add(1), 36)
				resp.Options, _, _ = resp.Options.SetLocationPath(optBuf, "/rd/"+id)
			case req.Code == codes.POST && strings.HasPrefix(path, "/rd/"):
				if s.cfg.DropUpdates {
					continue
				}
				resp.Code = codes.Changed
			case req.Code == codes.DELETE && strings.HasPrefix(path, "/rd/"):
				resp.Code = codes.Deleted
			default:
				resp.Code = codes.NotFound
			}
		}
		m, err := coder.DefaultCoder.Encode(resp, out)
		if err != nil {
			continue
		}
		if _, err := c.WriteToUDPAddrPort(out[:m], from); err == nil {
			s.Answered.Add(1)
		}
	}
}
