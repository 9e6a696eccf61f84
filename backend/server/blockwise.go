package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/options/config"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/devmgmt"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Block-wise notifications (RFC 7959 sections 2.6 and 3.4).
//
// A device whose notification does not fit a block sends its first block
// (Block2 NUM 0, M set) and expects the server to get the others with the
// observation's request, without Observe, and Block2 NUM 1, 2, ...
// Observations live in the shared store, not in go-coap's registry, so
// go-coap's block-wise layer knows no request for such a notification: it
// answers 4.08 in the ACK and never hands the block to the handler. And
// when asked for a block beyond the first, it re-fetches the representation
// from block 0 itself. So receive keeps the Block2 option of those
// messages out of its sight (devmgmt.HoldBlock2), notification sees the
// first block, acknowledges it at once, and fetchNotification gets the
// rest with devmgmt's RemainingBlocks. The first answer of an observe
// request of one path (GET), a request in flight, is left to go-coap.
//
// Answers to FETCH requests (Read-Composite, Observe-Composite) are
// another case: go-coap asks for their later blocks with the request's
// options but without its payload, the list of paths, which a device
// needs in every block request (RFC 8132 section 2.3.2, RFC 7959 section
// 2.4) and answers 4.00 without. devmgmt marks the tokens of those
// requests in blockTokens (Executor.HoldBlocks) while they are in flight,
// so receive holds the Block2 option of their answers too; go-coap hands
// the first block to the request as a whole answer, and devmgmt gets the
// others with RemainingBlocks (FETCH with the same payload and Accept).

// receive runs for every message a device sends, before go-coap's
// handler chain (deduplication, block-wise layer, request matching).
func (s *Server) receive(r *pool.Message, cc *udpClient.Conn, next config.HandlerFunc[*udpClient.Conn]) {
	if s.ownsBlocks(r) {
		devmgmt.HoldBlock2(r)
	}
	cc.ProcessReceivedMessageWithHandler(r, next)
}

// ownsBlocks reports whether the server, not go-coap, handles the Block2
// option of r: the answers to composite requests (FETCH) in flight and to
// its requests for later blocks (tokens in blockTokens), and
// notifications (responses with Observe) that do not answer an observe
// request of one path in flight.
func (s *Server) ownsBlocks(r *pool.Message) bool {
	if class := r.Code() >> 5; class < 2 || class > 5 || len(r.Token()) == 0 || !r.HasOption(message.Block2) {
		return false
	}
	if s.blockTokens.has(r.Token()) {
		return true
	}
	return r.HasOption(message.Observe) && !s.observing.has(r.Token())
}

// fetchNotification completes a notification of o that came block-wise:
// r carries its first block b (or a malformed Block2: berr). It fetches
// the other blocks on the device's session in the background, bounded by
// NotificationTimeout, and publishes the whole value; the handler returns
// at once, so the notification is acknowledged. A newer notification of
// the same observation cancels the fetch. Failures are counted in the
// observations metric and logged; nothing is published for them.
func (s *Server) fetchNotification(conn *udpClient.Conn, o *store.Observation, r *pool.Message, b devmgmt.Block, berr error) {
	drop := func(event string, err error) {
		s.m.observations.WithLabelValues(event).Inc()
		s.log.Warn("block-wise notification dropped", "ep", o.Endpoint, "ticket", o.Ticket, "event", event, "err", err)
	}
	if berr != nil {
		drop("blockwise-invalid", berr)
		return
	}
	if size, err := r.GetOptionUint32(message.Size2); err == nil && size > devmgmt.MaxResponse {
		drop("blockwise-too-large", fmt.Errorf("%w (Size2 %d)", devmgmt.ErrTooLarge, size))
		return
	}
	first, err := readAll(r)
	if err == nil && len(first) != b.Size() {
		err = fmt.Errorf("%w: first block of %d bytes, want %d", devmgmt.ErrBlock, len(first), b.Size())
	}
	if err != nil {
		drop("blockwise-invalid", err)
		return
	}
	var etag []byte
	if e, err := r.ETag(); err == nil {
		etag = bytes.Clone(e)
	}
	code, format := r.Code(), notificationFormat(o, r)
	obs := devmgmt.Observed{Paths: o.Paths, Composite: o.Composite, Format: o.ContentFormat}

	bg, _ := conn.Context().Value(backgroundKey{}).(*background)
	if !bg.start() {
		drop("blockwise-failed", errors.New("the server is stopping"))
		return
	}
	ctx, cancel := context.WithCancelCause(conn.Context())
	ctx, cancelTimeout := context.WithTimeout(ctx, s.cfg.NotificationTimeout)
	id := s.fetches.start(string(o.Token), cancel)
	go func() {
		defer bg.done()
		defer s.fetches.done(string(o.Token), id)
		defer cancelTimeout()
		body, err := s.remainingBlocks(ctx, conn, o, obs, b, first, etag)
		if err != nil {
			switch {
			case errors.Is(context.Cause(ctx), errSuperseded):
				s.m.observations.WithLabelValues("blockwise-superseded").Inc()
				s.log.Debug("block-wise notification superseded by a newer one", "ep", o.Endpoint, "ticket", o.Ticket)
			case errors.Is(err, devmgmt.ErrTooLarge):
				drop("blockwise-too-large", err)
			default:
				drop("blockwise-failed", err)
			}
			return
		}
		pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StoreTimeout)
		defer pcancel()
		s.publishBody(pctx, o, code, format, body)
	}()
}

var errSuperseded = errors.New("superseded by a newer notification")

func (s *Server) remainingBlocks(ctx context.Context, conn *udpClient.Conn, o *store.Observation, obs devmgmt.Observed,
	b devmgmt.Block, first, etag []byte) ([]byte, error) {
	// The device's root path (alternate path) is in its registration.
	reg, err := s.cfg.Store.Get(ctx, o.RegID)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.m.storeErrors.Inc()
		}
		return nil, err
	}
	token, err := message.GetToken()
	if err != nil {
		return nil, err
	}
	defer s.blockTokens.add(token)()
	return s.exec.RemainingBlocks(ctx, devmgmt.Target{Conn: conn, Reg: reg}, obs, token, b, first, etag)
}

// background tracks the goroutines of one ServeCoAP, so that it returns
// after them. A nil *background tracks nothing.
type background struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

type backgroundKey struct{}

// start counts a goroutine about to start; false once close was called.
func (b *background) start() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	return true
}

func (b *background) done() {
	if b != nil {
		b.wg.Done()
	}
}

// close refuses new goroutines and waits for the running ones.
func (b *background) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.wg.Wait()
}

// tokenSet is a set of CoAP tokens.
type tokenSet struct {
	mu sync.Mutex
	m  map[string]int
}

// add adds tok and returns the function that removes it.
func (ts *tokenSet) add(tok message.Token) (remove func()) {
	k := string(tok)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = make(map[string]int)
	}
	ts.m[k]++
	return func() {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if ts.m[k]--; ts.m[k] <= 0 {
			delete(ts.m, k)
		}
	}
}

func (ts *tokenSet) has(tok message.Token) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.m[string(tok)] > 0
}

// fetches are the block-wise notifications being completed, one per
// observation token: a newer notification supersedes an older one.
type fetches struct {
	mu   sync.Mutex
	next uint64
	m    map[string]fetch
}

type fetch struct {
	id     uint64
	cancel context.CancelCauseFunc
}

// start records the fetch for observation token tok, cancelling the one
// in progress, and returns its id.
func (f *fetches) start(tok string, cancel context.CancelCauseFunc) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[string]fetch)
	}
	if old, ok := f.m[tok]; ok {
		old.cancel(errSuperseded)
	}
	f.next++
	f.m[tok] = fetch{id: f.next, cancel: cancel}
	return f.next
}

// stop cancels the fetch of tok in progress, if any: a newer notification
// came whole.
func (f *fetches) stop(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.m[tok]; ok {
		old.cancel(errSuperseded)
		delete(f.m, tok)
	}
}

// done ends fetch id of tok.
func (f *fetches) done(tok string, id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur, ok := f.m[tok]; ok && cur.id == id {
		cur.cancel(nil)
		delete(f.m, tok)
	}
}

// notificationFormat is the content format of a notification: its own, or
// the one the observation asked for.
func notificationFormat(o *store.Observation, r *pool.Message) uint16 {
	if cf, err := r.ContentFormat(); err == nil {
		return uint16(cf)
	}
	return o.ContentFormat
}

// notificationBlock returns the Block2 option of notification r and
// whether more blocks follow it, so that fetchNotification must complete
// it. A single block (NUM 0 without M) is a whole value; an error code
// ends the observation, its body is a diagnostic. err reports a malformed
// Block2, or a notification that does not carry the first block.
func notificationBlock(r *pool.Message) (b devmgmt.Block, more bool, err error) {
	if !devmgmt.Success(r.Code()) {
		return devmgmt.Block{}, false, nil
	}
	b, ok, err := devmgmt.Block2(r)
	switch {
	case !ok:
		return b, false, nil
	case err != nil:
		return b, false, err
	case b.Num != 0:
		return b, false, fmt.Errorf("%w: a notification with block %d, not the first", devmgmt.ErrBlock, b.Num)
	}
	return b, b.More, nil
}
