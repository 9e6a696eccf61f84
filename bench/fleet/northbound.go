package fleet

import (
	"context"
	"errors"
	"math/rand/v2"
	"regexp"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Northbound is the part of the northbound client (routing/nbclient) the
// fleet drives; *nbclient.Client satisfies it.
type Northbound interface {
	Do(ctx context.Context, ep string, req northbound.Req) (*northbound.Resp, error)
	Observe(ctx context.Context, ep string, req northbound.Req) (*nbclient.Observation, error)
}

// observeWorkers is the number of observations set up concurrently.
const observeWorkers = 8

func (f *Fleet) startNorthbound(ctx context.Context) {
	for range observeWorkers {
		f.nbWG.Add(1)
		go func() {
			defer f.nbWG.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case dv := <-f.obsQ:
					f.observe(ctx, dv)
				}
			}
		}()
	}
	if f.cfg.ReadRate > 0 {
		f.nbWG.Add(1)
		go func() {
			defer f.nbWG.Done()
			f.readLoop(ctx)
		}()
	}
}

func (f *Fleet) stopNorthbound() { f.nbWG.Wait() }

// observe observes dv's TempPath and follows the notifications until ctx
// is done.
func (f *Fleet) observe(ctx context.Context, dv *dev) {
	f.c.observes.Add(1)
	rctx, cancel := context.WithTimeout(ctx, f.cfg.RequestTimeout+2*time.Second)
	t0 := time.Now()
	// The observation lives until the run ends; only the first answer is
	// bounded by the timeout.
	type answer struct {
		o   *nbclient.Observation
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		o, err := f.cfg.Northbound.Observe(ctx, dv.ep, northbound.Req{Kind: northbound.KindObserve, Path: TempPath.String()})
		ch <- answer{o, err}
	}()
	var a answer
	select {
	case a = <-ch:
	case <-rctx.Done():
		a.err = context.DeadlineExceeded
		go func() {
			if late := <-ch; late.o != nil {
				_ = late.o.Cancel(context.WithoutCancel(ctx))
			}
		}()
	}
	cancel()
	if a.err != nil {
		if ctx.Err() == nil {
			f.c.observeErrors.Add(1)
			f.countError("nb observe: "+nbErrorKind(a.err), a.err)
		}
		return
	}
	f.observeH.Record(time.Since(t0))
	f.c.observeOK.Add(1)
	f.nbWG.Add(1)
	go func() {
		defer f.nbWG.Done()
		for r := range a.o.C() {
			f.notification(r)
		}
	}()
}

// notification records the delivery latency of a notification whose value
// is the time it was set (changeValue).
func (f *Fleet) notification(r *northbound.Resp) {
	f.c.notifications.Add(1)
	if r == nil || r.Node == nil {
		return
	}
	res, ok := r.Node.Node.(node.Resource)
	if !ok || res.Multiple {
		return
	}
	v, ok := res.Value.AsFloat()
	if !ok || v <= 0 {
		return // the initial value, not one the fleet set
	}
	set := time.Duration(v * float64(time.Millisecond))
	f.notifyH.Record(time.Since(f.start) - set)
}

// readLoop reads ManufacturerPath on random registered devices at
// ReadRate per second.
func (f *Fleet) readLoop(ctx context.Context) {
	interval := time.Duration(float64(time.Second) / f.cfg.ReadRate)
	next := time.Now()
	for {
		next = next.Add(interval)
		if !sleepCtx(ctx, time.Until(next)) {
			return
		}
		dv := f.randomUp()
		if dv == nil {
			continue
		}
		select {
		case f.readSem <- struct{}{}:
		default:
			f.c.readSkipped.Add(1)
			continue
		}
		f.nbWG.Add(1)
		go func() {
			defer f.nbWG.Done()
			defer func() { <-f.readSem }()
			f.read(ctx, dv)
		}()
	}
}

// randomUp returns a random registered device, nil if none is found
// quickly.
func (f *Fleet) randomUp() *dev {
	for range 8 {
		dv := f.devs[rand.N(len(f.devs))]
		dv.mu.Lock()
		up := dv.up
		dv.mu.Unlock()
		if up {
			return dv
		}
	}
	return nil
}

func (f *Fleet) read(ctx context.Context, dv *dev) {
	rctx, cancel := context.WithTimeout(ctx, f.cfg.RequestTimeout+2*time.Second)
	defer cancel()
	f.c.reads.Add(1)
	t0 := time.Now()
	resp, err := f.cfg.Northbound.Do(rctx, dv.ep, northbound.Req{Kind: northbound.KindRead, Path: ManufacturerPath})
	switch {
	case ctx.Err() != nil:
		f.c.reads.Add(^uint64(0))
	case err == nil && nbclient.IsSuccess(resp.Code):
		f.readH.Record(time.Since(t0))
		f.c.readOK.Add(1)
	case err == nil:
		f.c.readErrors.Add(1)
		f.countError("nb read: device answered "+resp.Code, nil)
	case isNBLoss(err):
		f.c.readLost.Add(1)
		f.countError("nb read: "+nbErrorKind(err), err)
	default:
		f.c.readErrors.Add(1)
		f.countError("nb read: "+nbErrorKind(err), err)
	}
}

func isNBLoss(err error) bool {
	return errors.Is(err, nbclient.ErrNoAck) || errors.Is(err, nbclient.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}

var quoted = regexp.MustCompile(`"[^"]*"`)

// nbErrorKind names a northbound error for the errors-by-kind table.
func nbErrorKind(err error) string {
	var re *nbclient.RemoteError
	var ce *nbclient.CodeError
	switch {
	case errors.Is(err, nbclient.ErrNoAck):
		return "no ack"
	case errors.Is(err, nbclient.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ce):
		return "device answered " + ce.Resp.Code
	case errors.As(err, &re):
		// Keep the kind, not the endpoint or ticket in it.
		msg := quoted.ReplaceAllString(re.Message, "<ep>")
		if i := strings.IndexAny(msg, ":("); i > 0 {
			msg = msg[:i]
		}
		if len(msg) > 60 {
			msg = msg[:60]
		}
		return "server: " + strings.TrimSpace(msg)
	}
	return "other"
}
