package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/net/responsewriter"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

type responseWriter = responsewriter.ResponseWriter[*udpClient.Conn]

// handle dispatches a device request. Only the registration interface is
// served here: POST /rd, POST /rd/{id}, DELETE /rd/{id}; anything else is
// 4.04 Not Found.
func (s *Server) handle(w *responseWriter, r *pool.Message) {
	if c := r.Code(); c >= 64 && c < 192 {
		// A response that matched no request of this session: an
		// observe notification.
		s.notification(w, r)
		return
	}
	if c := r.Code(); c < codes.GET || c > 31 {
		return // signals are go-coap's business
	}
	path, _ := r.Options().Path()
	path = strings.TrimSuffix(path, "/")
	op := "unknown"
	start := time.Now()
	var code codes.Code
	var diag string
	switch {
	case path == "/rd" && r.Code() == codes.POST:
		op = "register"
		code, diag = s.register(w, r)
	case strings.HasPrefix(path, "/rd/") && r.Code() == codes.POST:
		op = "update"
		code, diag = s.update(w, r, path[len("/rd/"):])
	case path == "/dp" && r.Code() == codes.POST:
		op = "send"
		code, diag = s.send(w, r)
	case strings.HasPrefix(path, "/rd/") && r.Code() == codes.DELETE:
		op = "deregister"
		code, diag = s.deregister(w, path[len("/rd/"):])
	default:
		code, diag = codes.NotFound, "no such resource"
	}
	s.m.handleDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	s.m.responses.WithLabelValues(code.String()).Inc()
	if code >= codes.BadRequest {
		s.log.Debug("request refused", "op", op, "path", path, "code", code.String(), "reason", diag,
			"peer", w.Conn().RemoteAddr().String())
		_ = w.SetResponse(code, message.TextPlain, strings.NewReader(diag))
	}
}

// peer returns the device's address as the request's session sees it.
func peer(w *responseWriter) netip.AddrPort {
	if a, ok := w.Conn().RemoteAddr().(*net.UDPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(w.Conn().RemoteAddr().String())
	return ap
}

func local(w *responseWriter) netip.AddrPort {
	if a, ok := w.Conn().LocalAddr().(*net.UDPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// readPayload reads a registration request's body (link format), refusing
// more than MaxPayload bytes.
func (s *Server) readPayload(r *pool.Message) ([]byte, codes.Code, string) {
	b, code, diag := s.readBody(r)
	if code != 0 {
		return nil, code, diag
	}
	if len(b) > 0 {
		if cf, err := r.ContentFormat(); err == nil && cf != message.AppLinkFormat {
			return nil, codes.BadRequest, "payload must be application/link-format (40)"
		}
	}
	return b, 0, ""
}

// readBody reads the request body, refusing more than MaxPayload bytes.
func (s *Server) readBody(r *pool.Message) ([]byte, codes.Code, string) {
	if r.Body() == nil {
		return nil, 0, ""
	}
	b, err := io.ReadAll(io.LimitReader(r.Body(), int64(s.cfg.MaxPayload)+1))
	if err != nil {
		return nil, codes.BadRequest, "unreadable payload"
	}
	if len(b) > s.cfg.MaxPayload {
		return nil, codes.RequestEntityTooLarge, "payload larger than the server accepts"
	}
	return b, 0, ""
}

// queries returns the Uri-Query options; none is not an error.
func queries(r *pool.Message) ([]string, error) {
	q, err := r.Queries()
	if errors.Is(err, message.ErrOptionNotFound) {
		return nil, nil
	}
	return q, err
}

func (s *Server) storeCtx(r *pool.Message) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
}

func badRequest(err error) (codes.Code, string) {
	if errors.Is(err, registration.ErrUnsupportedVersion) {
		return codes.PreconditionFailed, err.Error()
	}
	return codes.BadRequest, err.Error()
}

func (s *Server) register(w *responseWriter, r *pool.Message) (codes.Code, string) {
	queries, err := queries(r)
	if err != nil {
		return codes.BadRequest, "malformed query"
	}
	params, err := registration.ParseRegisterQuery(queries)
	if err != nil {
		return badRequest(err)
	}
	payload, code, diag := s.readPayload(r)
	if code != 0 {
		return code, diag
	}
	links, root, err := registration.ObjectLinks(payload)
	if err != nil {
		return badRequest(err)
	}
	identity, secure := pskIdentity(w)
	actx, acancel := s.storeCtx(r)
	code, diag = s.authorize(actx, params.Endpoint, identity, secure)
	acancel()
	if code != 0 {
		return code, diag
	}
	now := s.now()
	from, to := peer(w), local(w)
	reg := &registration.Registration{
		RegDate: now.UnixMilli(), Address: from.Addr().String(), Port: from.Port(),
		RegAddr: to.Addr().String(), RegPort: to.Port(),
		Lifetime: params.Lifetime, Version: params.Version, Binding: params.Binding,
		SMS: params.SMS, Queue: params.Queue, Endpoint: params.Endpoint, ID: registration.NewID(),
		ObjLinks: links, AddAttr: params.AddAttr, Root: root, LastUp: now.UnixMilli(),
		Secure: secure,
	}
	if reg.AddAttr == nil {
		reg.AddAttr = map[string]string{}
	}
	ctx, cancel := s.storeCtx(r)
	defer cancel()
	replaced, err := s.cfg.Store.Add(ctx, reg)
	if err != nil {
		s.m.storeErrors.Inc()
		s.log.Error("register: store failed", "ep", reg.Endpoint, "err", err)
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	if err := s.cfg.Store.SetOwner(ctx, reg.Endpoint, s.cfg.InstanceID); err != nil {
		s.m.storeErrors.Inc()
		s.log.Warn("register: ownership not recorded", "ep", reg.Endpoint, "err", err)
	}
	s.sessions.set(reg.Endpoint, w.Conn())
	if replaced != nil {
		s.m.registrations.WithLabelValues("replace").Inc()
		s.log.Info("registration replaced", "ep", replaced.Endpoint, "oldRegId", replaced.ID)
		s.publish(r.Context(), northbound.ChannelRegDel, s.withInstance(replaced))
	}
	s.m.registrations.WithLabelValues("register").Inc()
	s.log.Info("registered", "ep", reg.Endpoint, "regId", reg.ID, "addr", from.String(), "lt", reg.Lifetime, "ver", reg.Version)
	s.publish(r.Context(), northbound.ChannelRegNew, s.withInstance(reg))
	_ = w.SetResponse(codes.Created, message.TextPlain, nil,
		message.Option{ID: message.LocationPath, Value: []byte("rd")},
		message.Option{ID: message.LocationPath, Value: []byte(reg.ID)})
	return codes.Created, ""
}

func (s *Server) update(w *responseWriter, r *pool.Message, id string) (codes.Code, string) {
	if !registration.ValidID(id) {
		return codes.NotFound, "no such registration"
	}
	queries, err := queries(r)
	if err != nil {
		return codes.BadRequest, "malformed query"
	}
	params, err := registration.ParseUpdateQuery(queries)
	if err != nil {
		return badRequest(err)
	}
	payload, code, diag := s.readPayload(r)
	if code != 0 {
		return code, diag
	}
	from := peer(w)
	u := &registration.Update{
		ID: id, Address: from.Addr().String(), Port: from.Port(),
		Lifetime: params.Lifetime, Binding: params.Binding, SMS: params.SMS, AddAttr: params.AddAttr,
	}
	ctx, cancel := s.storeCtx(r)
	defer cancel()
	cur, err := s.cfg.Store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return codes.NotFound, "no such registration"
	}
	if err != nil {
		s.m.storeErrors.Inc()
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	if code, diag := s.authorizeExisting(ctx, w, cur); code != 0 {
		return code, diag
	}
	if len(bytes.TrimSpace(payload)) > 0 {
		// Links are checked under the device's root path (alternate path).
		links, _, err := registration.ObjectLinksUnder(payload, cur.Root)
		if err != nil {
			return badRequest(err)
		}
		u.ObjLinks = links
	}
	updated, err := s.cfg.Store.Update(ctx, u, s.now())
	if errors.Is(err, store.ErrNotFound) {
		return codes.NotFound, "no such registration"
	}
	if err != nil {
		s.m.storeErrors.Inc()
		s.log.Error("update: store failed", "regId", id, "err", err)
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	if err := s.cfg.Store.SetOwner(ctx, updated.Endpoint, s.cfg.InstanceID); err != nil {
		s.m.storeErrors.Inc()
		s.log.Warn("update: ownership not recorded", "ep", updated.Endpoint, "err", err)
	}
	s.sessions.set(updated.Endpoint, w.Conn())
	s.m.registrations.WithLabelValues("update").Inc()
	s.log.Debug("registration updated", "ep", updated.Endpoint, "regId", id, "addr", from.String())
	s.publish(r.Context(), northbound.ChannelRegUp, registration.UpdateEvent{Update: *u, Updated: *s.withInstance(updated)})
	_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	return codes.Changed, ""
}

func (s *Server) deregister(w *responseWriter, id string) (codes.Code, string) {
	if !registration.ValidID(id) {
		return codes.NotFound, "no such registration"
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	cur, err := s.cfg.Store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return codes.NotFound, "no such registration"
	}
	if err != nil {
		s.m.storeErrors.Inc()
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	if code, diag := s.authorizeExisting(ctx, w, cur); code != 0 {
		return code, diag
	}
	// The store removes a registration's observations with it; removing
	// them first counts them.
	s.endObservations(id)
	old, err := s.cfg.Store.Remove(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return codes.NotFound, "no such registration"
	}
	if err != nil {
		s.m.storeErrors.Inc()
		s.log.Error("deregister: store failed", "regId", id, "err", err)
		return codes.ServiceUnavailable, "registration store unavailable"
	}
	s.m.registrations.WithLabelValues("deregister").Inc()
	s.log.Info("deregistered", "ep", old.Endpoint, "regId", id)
	s.publish(ctx, northbound.ChannelRegDel, s.withInstance(old))
	_ = w.SetResponse(codes.Deleted, message.TextPlain, nil)
	return codes.Deleted, ""
}

// pskIdentity returns the PSK identity of a DTLS session (secure.Conn).
func pskIdentity(w *responseWriter) (string, bool) {
	if c, ok := w.Conn().NetConn().(interface{ PSKIdentity() (string, bool) }); ok {
		return c.PSKIdentity()
	}
	return "", false
}

// authorize checks that a device may register as endpoint ep: over DTLS
// the PSK identity must be bound to ep; over plain CoAP ep must have no
// security info.
func (s *Server) authorize(ctx context.Context, ep, identity string, secure bool) (codes.Code, string) {
	if secure {
		info, err := s.cfg.Store.SecurityByIdentity(ctx, identity)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return codes.Forbidden, "PSK identity no longer provisioned"
		case err != nil:
			s.m.storeErrors.Inc()
			return codes.ServiceUnavailable, "security store unavailable"
		case info.Endpoint != ep:
			s.m.refused.WithLabelValues("identity_endpoint_mismatch").Inc()
			s.log.Warn("registration refused: PSK identity bound to another endpoint", "identity", identity, "ep", ep)
			return codes.Forbidden, "PSK identity is bound to another endpoint"
		}
		return 0, ""
	}
	_, err := s.cfg.Store.SecurityByEndpoint(ctx, ep)
	switch {
	case err == nil:
		s.m.refused.WithLabelValues("dtls_required").Inc()
		s.log.Warn("registration refused: endpoint has security info, plain CoAP not allowed", "ep", ep)
		return codes.Forbidden, "this endpoint must use DTLS"
	case !errors.Is(err, store.ErrNotFound):
		s.m.storeErrors.Inc()
		return codes.ServiceUnavailable, "security store unavailable"
	}
	return 0, ""
}

// authorizeExisting checks that a request about registration cur comes
// over the same kind of transport, and over DTLS from its identity.
func (s *Server) authorizeExisting(ctx context.Context, w *responseWriter, cur *registration.Registration) (codes.Code, string) {
	identity, secure := pskIdentity(w)
	if secure != cur.Secure {
		s.m.refused.WithLabelValues("transport_mismatch").Inc()
		return codes.Forbidden, "registration belongs to another transport"
	}
	if !secure {
		return 0, ""
	}
	return s.authorize(ctx, cur.Endpoint, identity, true)
}

func (s *Server) withInstance(r *registration.Registration) *registration.Registration {
	c := *r
	c.Instance = s.cfg.InstanceID
	return &c
}

// publish sends a northbound event; a failure is logged and counted, never
// returned to the device (the state change itself is stored).
func (s *Server) publish(ctx context.Context, channel string, v any) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StoreTimeout)
	defer cancel()
	if err := northbound.PublishJSON(ctx, s.cfg.Events, channel, v); err != nil {
		s.m.publishErrors.Inc()
		s.log.Error("northbound event lost", "channel", channel, "err", err)
	}
}
