package balancer

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/lwm2mcluster/lwm2m/lb/flowtable"
	"github.com/lwm2mcluster/lwm2m/lb/peek"
	"github.com/lwm2mcluster/lwm2m/lb/proxyv2"
	"github.com/lwm2mcluster/lwm2m/lb/udpio"
)

// proxySignature starts every PROXY v2 header; a client datagram that
// starts with it is a forgery.
var proxySignature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// worker owns one SO_REUSEPORT socket of one service address.
type worker struct {
	b       *Balancer
	conn    *udpio.Conn
	vip     netip.AddrPort
	service uint16
	in      []udpio.Msg
	out     []udpio.Msg
	c       *counters
	relay   *natRelay // NAT mode: relays the replies of the flows this worker opens
}

func newWorker(b *Balancer, pc *net.UDPConn, vip netip.AddrPort, service uint16) (*worker, error) {
	conn, err := udpio.NewConn(pc, b.cfg.Batch)
	if err != nil {
		return nil, err
	}
	w := &worker{
		b: b, conn: conn, vip: vip, service: service,
		in:  make([]udpio.Msg, b.cfg.Batch),
		out: make([]udpio.Msg, 0, b.cfg.Batch),
		c:   b.m.newCounters(),
	}
	for i := range w.in {
		w.in[i].Buf = make([]byte, headroom+maxDatagram)
		w.in[i].Offset = headroom
	}
	if b.nat != nil {
		if w.relay, err = b.nat.newRelay(pc); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *worker) run() error {
	for {
		n, err := w.conn.ReadBatch(w.in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			w.c.readErrors.Add(1)
			continue
		}
		w.c.batches.Add(1)
		w.handle(n, time.Now())
	}
}

// handle processes n received datagrams and sends what they produce.
func (w *worker) handle(n int, now time.Time) {
	s := w.b.snap.Load()
	w.out = w.out[:0]
	for i := 0; i < n; i++ {
		m := &w.in[i]
		w.c.rx.Add(1)
		if _, fromBackend := s.byAddr[m.Addr]; fromBackend {
			if w.b.cfg.Mode == ModeProxy {
				w.reply(m)
			} else {
				w.c.dropped[dropStray].Add(1)
			}
			continue
		}
		if bytes.HasPrefix(m.Payload(), proxySignature) {
			w.c.dropped[dropForged].Add(1)
			continue
		}
		key := flowtable.MakeKey(m.Addr, w.service)
		if w.b.cfg.CIDLen > 0 {
			if node, ok := peek.DTLSCID(m.Payload(), w.b.cfg.CIDLen); ok {
				if id, ok := s.byNode[node]; ok && s.usable[id] {
					// The session's node, wherever the device now sends
					// from; its new address follows in the flow table.
					w.b.flows.Insert(key, id, now)
					w.c.cidRouted.Add(1)
					if w.b.cfg.Mode == ModeNAT {
						w.b.nat.forward(w, s, id, m.Addr, m.Payload(), now)
					} else {
						w.forward(m, s.addrs[id])
					}
					continue
				}
				w.c.cidUnknown.Add(1)
			}
		}
		id, ok := w.b.pick(s, key, m.Addr, now)
		if !ok {
			w.c.dropped[dropNoBackend].Add(1)
			continue
		}
		if w.b.cfg.Mode == ModeNAT {
			w.b.nat.forward(w, s, id, m.Addr, m.Payload(), now)
			continue
		}
		w.forward(m, s.addrs[id])
	}
	if len(w.out) > 0 {
		sent, err := w.conn.WriteBatch(w.out)
		w.c.tx.Add(uint64(sent))
		if err != nil {
			w.c.writeErrors.Add(uint64(len(w.out) - sent))
		}
	}
}

// forward prefixes the datagram with a PROXY v2 header, in the headroom
// before the payload, and queues it to the backend.
func (w *worker) forward(m *udpio.Msg, to netip.AddrPort) {
	hl := proxyv2.IPv6Len
	if m.Addr.Addr().Is4() && w.vip.Addr().Is4() {
		hl = proxyv2.IPv4Len
	}
	start := m.Offset - hl
	h := proxyv2.AppendHeader(m.Buf[start:start], proxyv2.Proxy, m.Addr, w.vip)
	if len(h) != hl {
		w.c.dropped[dropInternal].Add(1)
		return
	}
	w.out = append(w.out, udpio.Msg{Buf: m.Buf, Offset: start, N: m.N + hl, Addr: to})
}

// reply strips a backend's PROXY header and queues the payload to the
// client, from the service address the header names.
func (w *worker) reply(m *udpio.Msg) {
	h, payload, err := proxyv2.Parse(m.Payload())
	if err != nil || h.Command != proxyv2.Proxy {
		w.c.dropped[dropBadReply].Add(1)
		return
	}
	src := netip.AddrPortFrom(h.Src.Addr().Unmap(), h.Src.Port())
	dst := netip.AddrPortFrom(h.Dst.Addr().Unmap(), h.Dst.Port())
	if src != w.vip {
		c := w.b.connFor(src)
		if c == nil {
			w.c.dropped[dropBadReply].Add(1)
			return
		}
		if _, err := c.WriteToUDPAddrPort(payload, dst); err != nil {
			w.c.writeErrors.Add(1)
			return
		}
		w.c.tx.Add(1)
		w.c.replies.Add(1)
		return
	}
	off := m.Offset + (m.N - len(payload))
	w.out = append(w.out, udpio.Msg{Buf: m.Buf, Offset: off, N: len(payload), Addr: dst})
	w.c.replies.Add(1)
}
