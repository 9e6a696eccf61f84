package balancer

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"slices"
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

	// Proxy mode: the datagrams for each backend are queued together, so
	// that a GSO socket sends each backend's run in one go. fwdIDs are
	// the backends with queued datagrams in this batch, in first-queued
	// order, and fwd[i] the queue of fwdIDs[i]; the queues are reused, so
	// there are only as many as backends ever met in one batch.
	fwd    [][]udpio.Msg
	fwdIDs []int32
	// spill holds client datagrams that came coalesced (GRO) behind
	// another one, so they have no headroom for their PROXY header.
	spill  []byte
	spillN int
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
	if b.cfg.Mode == ModeProxy && !b.cfg.NoOffload {
		// Every datagram to a backend, and every reply from it, travels
		// over one 4-tuple per worker and backend: segmentation and receive
		// offload carry a batch of them through the kernel as one.
		if err := conn.EnableGSO(); err != nil {
			b.log.Warn("UDP segmentation offload unavailable; sending datagrams one by one", "err", err)
		}
		if err := conn.EnableGRO(); err != nil {
			b.log.Warn("UDP receive offload unavailable; reading datagrams one by one", "err", err)
		}
		w.spill = make([]byte, spillSize)
	}
	return w, nil
}

// spillSize is a proxy worker's room for coalesced client datagrams.
const spillSize = 64 << 10

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

// handle processes n received reads and sends what they produce.
func (w *worker) handle(n int, now time.Time) {
	s := w.b.snap.Load()
	w.out = w.out[:0]
	w.spillN = 0
	for i := 0; i < n; i++ {
		m := &w.in[i]
		if m.Seg == 0 {
			w.datagram(s, m, true, now)
			continue
		}
		// Several datagrams of one sender, coalesced by the kernel.
		w.c.coalesced.Add(1)
		for off := 0; off < m.N; off += m.Seg {
			d := udpio.Msg{Buf: m.Buf, Offset: m.Offset + off, N: min(m.Seg, m.N-off), Addr: m.Addr}
			w.datagram(s, &d, off == 0, now)
		}
	}
	w.flush()
}

// flush sends the queued datagrams: the replies to clients, then each
// backend's run. w.out keeps what was sent until the next handle.
func (w *worker) flush() {
	for i := range w.fwdIDs {
		w.out = append(w.out, w.fwd[i]...)
		w.fwd[i] = w.fwd[i][:0]
	}
	w.fwdIDs = w.fwdIDs[:0]
	if len(w.out) > 0 {
		// Not sent: what the kernel refused for its destination (skipped,
		// no error) and, on an error, the rest.
		sent, _ := w.conn.WriteBatch(w.out)
		w.c.tx.Add(uint64(sent))
		if lost := len(w.out) - sent; lost > 0 {
			w.c.writeErrors.Add(uint64(lost))
		}
	}
}

// datagram routes one datagram. headroom reports whether the bytes before
// it in m.Buf are free for a PROXY header.
func (w *worker) datagram(s *snapshot, m *udpio.Msg, headroom bool, now time.Time) {
	w.c.rx.Add(1)
	if _, fromBackend := s.byAddr[m.Addr]; fromBackend {
		if w.b.cfg.Mode == ModeProxy {
			w.reply(m)
		} else {
			w.c.dropped[dropStray].Add(1)
		}
		return
	}
	if bytes.HasPrefix(m.Payload(), proxySignature) {
		w.c.dropped[dropForged].Add(1)
		return
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
					w.forward(m, headroom, id, s.addrs[id])
				}
				return
			}
			w.c.cidUnknown.Add(1)
		}
	}
	id, ok := w.b.pick(s, key, m.Addr, now)
	if !ok {
		w.c.dropped[dropNoBackend].Add(1)
		return
	}
	if w.b.cfg.Mode == ModeNAT {
		w.b.nat.forward(w, s, id, m.Addr, m.Payload(), now)
		return
	}
	w.forward(m, headroom, id, s.addrs[id])
}

// forward prefixes the datagram with a PROXY v2 header, in the headroom
// before the payload (or, without headroom, in the spill space), and queues
// it to backend id at to.
func (w *worker) forward(m *udpio.Msg, headroom bool, id int32, to netip.AddrPort) {
	hl := proxyv2.IPv6Len
	if m.Addr.Addr().Is4() && w.vip.Addr().Is4() {
		hl = proxyv2.IPv4Len
	}
	buf, start := m.Buf, m.Offset-hl
	if !headroom {
		if w.spillN+hl+m.N > len(w.spill) {
			w.flush() // what is queued points into the spill space
			w.out, w.spillN = w.out[:0], 0
		}
		if hl+m.N > len(w.spill) {
			w.c.dropped[dropInternal].Add(1)
			return
		}
		buf, start = w.spill, w.spillN
		copy(buf[start+hl:], m.Payload())
		w.spillN += hl + m.N
	}
	h := proxyv2.AppendHeader(buf[start:start], proxyv2.Proxy, m.Addr, w.vip)
	if len(h) != hl {
		w.c.dropped[dropInternal].Add(1)
		return
	}
	q := slices.Index(w.fwdIDs, id) // a handful of backends per batch
	if q < 0 {
		q = len(w.fwdIDs)
		w.fwdIDs = append(w.fwdIDs, id)
		if q == len(w.fwd) {
			w.fwd = append(w.fwd, make([]udpio.Msg, 0, cap(w.out)))
		}
	}
	w.fwd[q] = append(w.fwd[q], udpio.Msg{Buf: buf, Offset: start, N: m.N + hl, Addr: to})
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
