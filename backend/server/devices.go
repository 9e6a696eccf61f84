package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/devmgmt"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/dispatch"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// ChannelSend carries the data devices push with the LwM2M 1.1 Send
// operation (POST /dp): {"ep","regId","instance","nodes":{path: node}}.
const ChannelSend = "LESHAN_SEND"

// SendEvent is a LESHAN_SEND message.
type SendEvent struct {
	Endpoint string              `json:"ep"`
	RegID    string              `json:"regId"`
	Instance string              `json:"instance"`
	Nodes    map[string]node.Any `json:"nodes"`
}

// sessions maps endpoints to the CoAP session this instance holds with
// each device: the session of its latest uplink here.
type sessions struct {
	mu   sync.Mutex
	byEP map[string]*udpClient.Conn
}

func (s *sessions) set(ep string, c *udpClient.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byEP == nil {
		s.byEP = make(map[string]*udpClient.Conn)
	}
	if s.byEP[ep] == c {
		return
	}
	s.byEP[ep] = c
	c.AddOnClose(func() { s.forget(ep, c) })
	if c.Context().Err() != nil {
		// Closed already: the callback above may never run.
		delete(s.byEP, ep)
	}
}

func (s *sessions) get(ep string) *udpClient.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byEP[ep]
}

func (s *sessions) forget(ep string, c *udpClient.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byEP[ep] == c {
		delete(s.byEP, ep)
	}
}

func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byEP)
}

// Execute carries a northbound request out on the device of registration
// reg, which this instance owns (dispatch.Executor). ctx bounds it.
func (s *Server) Execute(ctx context.Context, reg *registration.Registration, ticket string, req *northbound.Req) (*northbound.Resp, error) {
	ep := reg.Endpoint
	if req.Kind == northbound.KindCancelObserve {
		return s.cancelObserve(ctx, reg, req)
	}
	conn := s.sessions.get(ep)
	if conn == nil {
		return nil, dispatch.ErrNoSession
	}
	t := devmgmt.Target{Conn: conn, Reg: reg}
	observe := req.Kind == northbound.KindObserve || req.Kind == northbound.KindObserveComposite
	var token message.Token
	var obs *store.Observation
	if observe {
		var err error
		if token, err = message.GetToken(); err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		// Store the observation before the device can notify.
		obs = &store.Observation{
			Token: token, Endpoint: ep, RegID: reg.ID, Paths: req.Targets(),
			Composite: req.Composite(), ContentFormat: devmgmt.PickFormat(reg, req),
			Ticket: ticket, Instance: s.cfg.InstanceID, Created: s.now().UnixMilli(),
		}
		if err := s.cfg.Store.AddObservation(ctx, obs); err != nil {
			if errors.Is(err, store.ErrNotRegistered) {
				// De-registered (or expired, or registered anew) while
				// this request was on its way: no observation.
				return nil, fmt.Errorf("%s is no longer registered (registration %s): %w", ep, reg.ID, err)
			}
			s.m.storeErrors.Inc()
			return nil, fmt.Errorf("observation store: %w", err)
		}
	}
	done := func() {}
	if req.Kind == northbound.KindObserve {
		// go-coap assembles the answer to a GET if it comes block-wise.
		// That of a FETCH (Observe-Composite, Read-Composite) devmgmt
		// completes, its token marked in blockTokens (HoldBlocks).
		done = s.observing.add(token)
	}
	res, err := s.exec.Do(ctx, t, req, token)
	done()
	if observe && (err != nil || !res.Observed) {
		// No observation was established (an error, or a device that
		// answered without the Observe option: a plain read).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StoreTimeout)
		_, _ = s.cfg.Store.RemoveObservation(rctx, token)
		cancel()
	}
	if err != nil {
		return nil, err
	}
	if observe && res.Observed {
		s.m.observations.WithLabelValues("start").Inc()
		s.replaceOlderObservations(ctx, obs)
	}
	return res.Resp, nil
}

// replaceOlderObservations keeps one observation per target of a
// registration: of those on mine's paths it keeps the newest, by creation
// time then token, and removes the others (the device keeps one relation
// per target; a new observe replaces an old one). Every instance that
// establishes one decides the same way on what it sees after adding its
// own, so of two observes established at once exactly one stays, never
// none; the other ends as a replaced one does, without notice.
func (s *Server) replaceOlderObservations(ctx context.Context, mine *store.Observation) {
	all, err := s.cfg.Store.ObservationsByRegistration(ctx, mine.RegID)
	if err != nil {
		s.m.storeErrors.Inc()
		return
	}
	same := all[:0]
	for _, o := range all {
		if slices.Equal(o.Paths, mine.Paths) && o.Composite == mine.Composite {
			same = append(same, o)
		}
	}
	if len(same) < 2 {
		return
	}
	newest := same[0]
	for _, o := range same[1:] {
		if olderThan(newest, o) {
			newest = o
		}
	}
	for _, o := range same {
		if bytes.Equal(o.Token, newest.Token) {
			continue
		}
		if _, err := s.cfg.Store.RemoveObservation(ctx, o.Token); err == nil {
			s.m.observations.WithLabelValues("replaced").Inc()
		}
	}
}

// olderThan orders observations by creation time, then token.
func olderThan(a, b *store.Observation) bool {
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	return bytes.Compare(a.Token, b.Token) < 0
}

// cancelObserve ends an observation, found by its ticket or its path. The
// device is told (a GET, or for a composite one a FETCH of its paths, with
// Observe 1) when this instance holds its session; otherwise its next
// notification is refused.
func (s *Server) cancelObserve(ctx context.Context, reg *registration.Registration, req *northbound.Req) (*northbound.Resp, error) {
	ep := reg.Endpoint
	var found []*store.Observation
	if req.ObserveTicket != "" {
		o, err := s.cfg.Store.ObservationByTicket(ctx, req.ObserveTicket)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("observation store: %w", err)
		}
		if err == nil && o.Endpoint == ep {
			found = append(found, o)
		}
	} else {
		all, err := s.cfg.Store.ObservationsByRegistration(ctx, reg.ID)
		if err != nil {
			return nil, fmt.Errorf("observation store: %w", err)
		}
		for _, o := range all {
			if slices.Contains(o.Paths, req.Path) {
				found = append(found, o)
			}
		}
	}
	if len(found) == 0 {
		return &northbound.Resp{Kind: req.Kind, Code: "NOT_FOUND", ErrorMessage: "no such observation"}, nil
	}
	conn := s.sessions.get(ep)
	for _, o := range found {
		if _, err := s.cfg.Store.RemoveObservation(ctx, o.Token); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("observation store: %w", err)
		}
		s.m.observations.WithLabelValues("cancel").Inc()
		if conn != nil && (o.Composite || len(o.Paths) == 1) {
			creq := &northbound.Req{Kind: northbound.KindCancelObserve, ContentFormat: &o.ContentFormat}
			if o.Composite {
				creq.Paths = o.Paths // a FETCH of the paths with Observe 1
			} else {
				creq.Path = o.Paths[0]
			}
			done := s.observing.add(o.Token)
			if _, err := s.exec.Do(ctx, devmgmt.Target{Conn: conn, Reg: reg}, creq, o.Token); err != nil {
				s.log.Debug("proactive observe cancel not answered", "ep", ep, "err", err)
			}
			done()
		}
	}
	return &northbound.Resp{Kind: req.Kind, Code: "DELETED"}, nil
}

// notification handles a response message that matched no request of this
// session: an observe notification, possibly for an observation another
// instance set up before the device moved here. It is published with the
// observe's ticket; unknown tokens are answered with a reset. A
// notification sent block-wise is completed by fetchNotification.
func (s *Server) notification(w *responseWriter, r *pool.Message) {
	if len(r.Token()) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	o, err := s.cfg.Store.ObservationByToken(ctx, r.Token())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			s.m.observations.WithLabelValues("unknown-token").Inc()
			s.reset(w, r)
		} else {
			s.m.storeErrors.Inc()
		}
		return
	}
	if _, obsErr := r.Observe(); obsErr != nil && devmgmt.Success(r.Code()) {
		// A late answer to a request that is gone, not a notification.
		return
	}
	// The device's latest uplink reached this instance: it owns it now.
	s.sessions.set(o.Endpoint, w.Conn())
	if err := s.cfg.Store.SetOwner(ctx, o.Endpoint, s.cfg.InstanceID); err != nil {
		s.m.storeErrors.Inc()
	}
	if b, more, err := notificationBlock(r); more || err != nil {
		s.fetchNotification(w.Conn(), o, r, b, err)
		return
	}
	// A whole value supersedes an older one still being fetched.
	s.fetches.stop(string(o.Token))
	body, err := readAll(r)
	if err != nil {
		s.publishNotification(ctx, o, &northbound.Resp{Kind: observeKind(o), Code: "INTERNAL_SERVER_ERROR",
			Observe: true, ErrorMessage: "cannot read the notification: " + err.Error()})
		return
	}
	s.publishBody(ctx, o, r.Code(), notificationFormat(o, r), body)
}

func observeKind(o *store.Observation) string {
	if o.Composite {
		return northbound.KindObserveComposite
	}
	return northbound.KindObserve
}

// publishBody publishes a notification of o: the device's code and its
// whole payload, decoded from format.
func (s *Server) publishBody(ctx context.Context, o *store.Observation, code codes.Code, format uint16, body []byte) {
	resp := &northbound.Resp{Kind: observeKind(o), Code: devmgmt.CodeName(code), Observe: true}
	switch {
	case !devmgmt.Success(code):
		// The device ended the observation with an error code.
		resp.ErrorMessage = string(body)
		_, _ = s.cfg.Store.RemoveObservation(ctx, o.Token)
		s.m.observations.WithLabelValues("ended-by-device").Inc()
	default:
		if o.Composite {
			nodes, err := s.exec.DecodeComposite(format, body, o.Paths)
			if err != nil {
				resp.Code, resp.ErrorMessage = "INTERNAL_SERVER_ERROR", "cannot decode the notification: "+err.Error()
			} else {
				resp.Nodes = nodes
			}
		} else {
			p, _ := node.ParsePath(o.Paths[0])
			if timed := s.timestamped(format, body, p); len(timed) > 0 {
				// Values the device recorded at several times (or with
				// their time): one resp each, oldest first.
				for _, ts := range timed {
					r := *resp
					r.Node, r.Timestamp = &node.Any{Node: ts.Nodes[p]}, ts.Time.UnixMilli()
					s.publishNotification(ctx, o, &r)
				}
				return
			}
			n, err := s.exec.DecodeValue(format, body, p)
			if err != nil {
				resp.Code, resp.ErrorMessage = "INTERNAL_SERVER_ERROR", "cannot decode the notification: "+err.Error()
			} else {
				resp.Node = &node.Any{Node: n}
			}
		}
	}
	s.publishNotification(ctx, o, resp)
}

// timestamped decodes a notification that carries timestamps (SenML, LwM2M
// JSON); it returns nil when the payload has none.
func (s *Server) timestamped(format uint16, body []byte, p node.Path) []codec.Timestamped {
	if format != codec.SenMLJSON && format != codec.SenMLCBOR && format != codec.LwM2MJSON {
		return nil
	}
	entries, err := codec.DecodeTimestamped(format, body, p, s.exec.Registry)
	if err != nil || len(entries) == 0 {
		return nil
	}
	for _, e := range entries {
		if e.Time.IsZero() || e.Nodes[p] == nil {
			return nil
		}
	}
	return entries
}

func (s *Server) publishNotification(ctx context.Context, o *store.Observation, resp *northbound.Resp) {
	s.m.observations.WithLabelValues("notify").Inc()
	if err := northbound.PublishJSON(ctx, s.cfg.Events, northbound.ChannelResp,
		&northbound.Response{Ticket: o.Ticket, Resp: resp}); err != nil {
		s.m.publishErrors.Inc()
		s.log.Warn("notification not published", "ep", o.Endpoint, "ticket", o.Ticket, "err", err)
	}
}

// reset answers a notification nobody observes with a CoAP reset, so the
// device ends the observation (reactive cancel, RFC 7641 section 3.6).
func (s *Server) reset(w *responseWriter, r *pool.Message) {
	if r.Type() != message.Confirmable && r.Type() != message.NonConfirmable {
		return
	}
	m := w.Conn().AcquireMessage(context.Background())
	defer w.Conn().ReleaseMessage(m)
	m.SetType(message.Reset)
	m.SetCode(codes.Empty)
	m.SetMessageID(r.MessageID())
	_ = w.Conn().WriteMessage(m)
}

func readAll(r *pool.Message) ([]byte, error) {
	b, err := r.ReadBody()
	if err != nil {
		return nil, err
	}
	if len(b) > devmgmt.MaxResponse {
		return nil, fmt.Errorf("larger than %d bytes", devmgmt.MaxResponse)
	}
	return b, nil
}

// send handles the LwM2M 1.1 Send operation (POST /dp) from a registered
// device and publishes the values on LESHAN_SEND.
func (s *Server) send(w *responseWriter, r *pool.Message) (codes.Code, string) {
	payload, code, diag := s.readBody(r)
	if code != 0 {
		return code, diag
	}
	cf, err := r.ContentFormat()
	if err != nil {
		return codes.BadRequest, "Send needs a Content-Format (SenML JSON or CBOR)"
	}
	ctx, cancel := s.storeCtx(r)
	defer cancel()
	reg, err := s.cfg.Store.GetByAddr(ctx, peer(w))
	if errors.Is(err, store.ErrNotFound) {
		return codes.Forbidden, "not registered"
	}
	if err != nil {
		s.m.storeErrors.Inc()
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	if code, diag := s.authorizeExisting(ctx, w, reg); code != 0 {
		return code, diag
	}
	format := uint16(cf)
	if format != codec.SenMLJSON && format != codec.SenMLCBOR {
		return codes.UnsupportedMediaType, "Send takes SenML JSON or CBOR"
	}
	nodes, err := codec.DecodeComposite(format, payload, nil, s.exec.Registry)
	if err != nil {
		return codes.BadRequest, "malformed payload: " + err.Error()
	}
	ev := SendEvent{Endpoint: reg.Endpoint, RegID: reg.ID, Instance: s.cfg.InstanceID, Nodes: make(map[string]node.Any, len(nodes))}
	for p, n := range nodes {
		ev.Nodes[p.String()] = node.Any{Node: n}
	}
	s.sessions.set(reg.Endpoint, w.Conn())
	if err := s.cfg.Store.SetOwner(ctx, reg.Endpoint, s.cfg.InstanceID); err != nil {
		s.m.storeErrors.Inc()
	}
	s.publish(r.Context(), ChannelSend, ev)
	_ = w.SetResponse(codes.Changed, message.TextPlain, bytes.NewReader(nil))
	return codes.Changed, ""
}

// endObservations removes a registration's observations before its
// de-registration. (Replacement and expiry remove them in the store, with
// the registration.)
func (s *Server) endObservations(regID string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	obs, err := s.cfg.Store.RemoveObservations(ctx, regID)
	if err != nil {
		s.m.storeErrors.Inc()
		return
	}
	if len(obs) > 0 {
		s.m.observations.WithLabelValues("deregistered").Add(float64(len(obs)))
	}
}

// Sessions returns the number of devices whose session this instance holds.
func (s *Server) Sessions() int { return s.sessions.len() }
