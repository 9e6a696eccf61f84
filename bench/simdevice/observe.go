package simdevice

import (
	"bytes"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// observation is one Observe or Observe-Composite registration of the
// server. Its fields are guarded by the Device's mutex.
type observation struct {
	token     string
	paths     []node.Path // one path unless composite
	composite bool
	format    uint16
	seq       uint32 // last Observe sequence number used
	lastSent  time.Time
	lastMID   int32 // message ID of the last notification, -1 before the first
	pending   bool  // a change has not been notified yet
	sending   bool  // a goroutine is sending a notification
	stopped   bool
	timer     *time.Timer
}

// maxObserveSeq: Observe option values are 24 bits.
const maxObserveSeq = 1<<24 - 1

func (o *observation) nextSeq() uint32 {
	o.seq = (o.seq + 1) & maxObserveSeq
	return o.seq
}

func (o *observation) stopLocked() {
	o.stopped = true
	if o.timer != nil {
		o.timer.Stop()
	}
}

// covers reports whether a change at p concerns the observation.
func (o *observation) covers(p node.Path) bool {
	for _, op := range o.paths {
		if op.HasPrefix(p) || p.HasPrefix(op) {
			return true
		}
	}
	return false
}

// effectiveAttrsLocked returns the attributes in effect for an
// observation: those of its path, inherited from the object, instance and
// resource levels, the most specific winning. Composite observations use
// none.
func (d *Device) effectiveAttrsLocked(o *observation) Attributes {
	var a Attributes
	if o.composite || len(d.attrs) == 0 {
		return a
	}
	p := o.paths[0]
	chain := make([]node.Path, 0, 4)
	for q := p; q.Level() != node.LevelRoot; q = q.Parent() {
		chain = append(chain, q)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		b, ok := d.attrs[chain[i]]
		if !ok {
			continue
		}
		if b.Set&attrPmin != 0 {
			a.Pmin = b.Pmin
		}
		if b.Set&attrPmax != 0 {
			a.Pmax = b.Pmax
		}
		a.Set |= b.Set & (attrPmin | attrPmax)
	}
	return a
}

// changedLocked marks the observations that cover p as pending and
// schedules their notifications.
func (d *Device) changedLocked(p node.Path) {
	if len(d.obs) == 0 {
		return
	}
	now := time.Now()
	for _, o := range d.obs {
		if o.covers(p) {
			o.pending = true
			d.scheduleLocked(o, now)
		}
	}
}

// scheduleLocked sends a pending notification now if pmin allows it, or
// arms the observation's timer for the end of pmin or for pmax.
func (d *Device) scheduleLocked(o *observation, now time.Time) {
	if o.stopped || o.sending || d.closed {
		return
	}
	a := d.effectiveAttrsLocked(o)
	var due time.Time
	switch pmax := a.pmaxDur(); {
	case o.pending:
		due = o.lastSent.Add(a.pminDur())
	case pmax > 0:
		due = o.lastSent.Add(pmax)
		if !due.After(now) {
			o.pending = true
		}
	default:
		if o.timer != nil {
			o.timer.Stop()
		}
		return
	}
	if !due.After(now) {
		if o.timer != nil {
			o.timer.Stop()
		}
		o.sending = true
		d.wg.Add(1)
		go d.sendNotification(o)
		return
	}
	if o.timer == nil {
		o.timer = time.AfterFunc(due.Sub(now), func() { d.fire(o) })
	} else {
		o.timer.Reset(due.Sub(now))
	}
}

// fire runs when an observation's timer expires.
func (d *Device) fire(o *observation) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.scheduleLocked(o, time.Now())
}

// notificationLocked builds the payload of a notification of o. A code
// other than 2.05 ends the observation.
func (d *Device) notificationLocked(o *observation) (codes.Code, []byte) {
	if o.composite {
		nodes := make(map[node.Path]node.Node, len(o.paths))
		if err := d.compositeNodesLocked(o.paths, nodes); err != nil {
			return codes.InternalServerError, nil
		}
		b, err := codec.EncodeComposite(o.format, nodes, d.reg)
		if err != nil {
			d.log.Warn("simdevice: encode composite notification", "err", err)
			return codes.InternalServerError, nil
		}
		return codes.Content, b
	}
	n, ok := d.st.get(o.paths[0])
	if !ok {
		return codes.NotFound, nil
	}
	b, err := codec.Encode(o.format, n, o.paths[0], d.reg)
	if err != nil {
		d.log.Warn("simdevice: encode notification", "path", o.paths[0], "err", err)
		return codes.InternalServerError, nil
	}
	return codes.Content, b
}

// sendNotification sends one notification of o, then schedules the next
// one if a change happened meanwhile.
func (d *Device) sendNotification(o *observation) {
	defer d.wg.Done()
	d.mu.Lock()
	if o.stopped || d.closed || d.cc == nil {
		o.sending = false
		d.mu.Unlock()
		return
	}
	o.pending = false
	code, body := d.notificationLocked(o)
	terminal := code != codes.Content
	seq := o.nextSeq()
	o.lastSent = time.Now()
	cc := d.cc
	mid := cc.GetMessageID()
	o.lastMID = mid
	if terminal {
		d.removeObservationLocked(o)
	}
	format := o.format
	token := o.token
	d.mu.Unlock()

	msg := cc.AcquireMessage(d.ctx)
	msg.SetCode(code)
	msg.SetToken(message.Token(token))
	msg.SetMessageID(mid)
	if d.cfg.NonConfirmable {
		msg.SetType(message.NonConfirmable)
	} else {
		msg.SetType(message.Confirmable)
	}
	if !terminal {
		msg.SetObserve(seq)
		msg.SetContentFormat(message.MediaType(format))
		if part, ok, _ := d.block(nil, body); ok {
			// The first block; the server gets the others with GET or
			// FETCH (RFC 7959 section 2.6).
			body = part.payload
			setBlock(msg, part)
		}
		msg.SetBody(bytes.NewReader(body))
	}
	err := cc.WriteMessage(msg)
	cc.ReleaseMessage(msg)

	d.mu.Lock()
	defer d.mu.Unlock()
	o.sending = false
	if err != nil {
		d.log.Debug("simdevice: notification not delivered", "token", []byte(token), "err", err)
		if !d.closed && d.cc != cc {
			// Rebind closed the socket under us: send again on the new one.
			o.pending = true
		}
	}
	if terminal || o.stopped || d.closed {
		return
	}
	d.scheduleLocked(o, time.Now())
}

// removeObservationLocked ends observation o.
func (d *Device) removeObservationLocked(o *observation) {
	o.stopLocked()
	if d.obs[o.token] == o {
		delete(d.obs, o.token)
	}
}

// dropObservationsLocked ends every observation.
func (d *Device) dropObservationsLocked() {
	for _, o := range d.obs {
		d.removeObservationLocked(o)
	}
}

// handleReset ends the observation whose last notification the server
// reset.
func (d *Device) handleReset(mid int32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.obs {
		if o.lastMID == mid {
			d.removeObservationLocked(o)
			d.counts[OpReset]++
			d.log.Debug("simdevice: observation reset by server", "token", []byte(o.token))
			return
		}
	}
}
