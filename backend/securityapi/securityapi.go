// Package securityapi serves the DTLS-PSK security info of a cluster over an
// instance's admin HTTP endpoint:
//
//	GET    /security       every entry, keys redacted: [{"ep","pskIdentity","pskKeyFingerprint"}]
//	GET    /security/{ep}  one entry, key redacted (404 if none)
//	PUT    /security/{ep}  body {"pskIdentity":"..","pskKey":"<hex>"}: set or replace
//	                       (200 with the redacted entry; 400 on a bad body,
//	                       409 when the identity belongs to another endpoint)
//	DELETE /security/{ep}  remove (204; 404 if none)
//
// Errors are JSON {"error":"..."}. Keys are accepted but never returned or
// logged; a "sha256:xxxx" fingerprint (the first 4 hex digits of the key's
// SHA-256) identifies them. The admin endpoint has no authentication of its
// own: bind it to loopback or a management network.
package securityapi

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Defaults of Options.
const (
	DefaultTimeout = 5 * time.Second
	// MaxBodyBytes bounds a PUT body.
	MaxBodyBytes = 8 << 10
)

// Options configure a Handler.
type Options struct {
	// Logger receives changes (never keys); nil means slog.Default().
	Logger *slog.Logger
	// Timeout bounds each store call (DefaultTimeout when zero).
	Timeout time.Duration
}

// API is the security API's http.Handler.
type API struct {
	s       store.Security
	log     *slog.Logger
	timeout time.Duration
	mux     *http.ServeMux
}

// Patterns the API serves, for mounting it on another mux (such as
// internal/admin's Config.Handlers) with Routes. Mounting it under
// "/security" and "/security/" works as well.
var Patterns = []string{
	"GET /security",
	"GET /security/{ep}",
	"PUT /security/{ep}",
	"DELETE /security/{ep}",
}

// Handler returns New(s, Options{}): the API with the default logger and
// timeout.
func Handler(s store.Security) http.Handler { return New(s, Options{}) }

// New returns the API over s.
func New(s store.Security, o Options) *API {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	h := &API{s: s, log: o.Logger, timeout: o.Timeout, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /security", h.list)
	h.mux.HandleFunc("GET /security/{ep}", h.get)
	h.mux.HandleFunc("PUT /security/{ep}", h.put)
	h.mux.HandleFunc("DELETE /security/{ep}", h.remove)
	return h
}

// Routes maps each of Patterns to h, the shape of internal/admin's
// Config.Handlers.
func (h *API) Routes() map[string]http.Handler {
	m := make(map[string]http.Handler, len(Patterns))
	for _, p := range Patterns {
		m[p] = h
	}
	return m
}

// ServeHTTP implements http.Handler.
func (h *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *API) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.timeout)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func (h *API) storeError(w http.ResponseWriter, op string, err error) {
	h.log.Error("security API: store failed", "op", op, "err", err)
	writeError(w, http.StatusInternalServerError, "store: "+err.Error())
}

func (h *API) list(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	l, err := h.s.ListSecurity(ctx)
	if err != nil {
		h.storeError(w, "list", err)
		return
	}
	out := make([]store.SecuritySummary, len(l))
	for i, s := range l {
		out[i] = s.Summary()
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *API) get(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	ep := r.PathValue("ep")
	s, err := h.s.SecurityByEndpoint(ctx, ep)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no security info for endpoint %q", ep))
		return
	}
	if err != nil {
		h.storeError(w, "get", err)
		return
	}
	writeJSON(w, http.StatusOK, s.Summary())
}

// PutRequest is the body of PUT /security/{ep}. Ep may be left out; when
// present it must equal the path's endpoint.
type PutRequest struct {
	Endpoint string `json:"ep,omitempty"`
	Identity string `json:"pskIdentity"`
	Key      string `json:"pskKey"`
}

// ParseKey decodes a hex PSK (either case) without quoting any of it in
// its error.
func ParseKey(s string) ([]byte, error) {
	if len(s)%2 != 0 {
		return nil, errors.New("odd number of hex digits")
	}
	k, err := hex.DecodeString(s)
	if err != nil {
		return nil, errors.New("not a hex string")
	}
	return k, nil
}

func (h *API) put(w http.ResponseWriter, r *http.Request) {
	ep := r.PathValue("ep")
	var req PutRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", MaxBodyBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "invalid JSON body: data after the object")
		return
	}
	if req.Endpoint != "" && req.Endpoint != ep {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("body's ep %q differs from the path's %q", req.Endpoint, ep))
		return
	}
	key, err := ParseKey(req.Key)
	if err != nil {
		writeError(w, http.StatusBadRequest, "pskKey: "+err.Error())
		return
	}
	info := store.SecurityInfo{Endpoint: ep, Identity: req.Identity, Key: key}
	if err := info.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	switch err := h.s.PutSecurity(ctx, info); {
	case errors.Is(err, store.ErrIdentityTaken):
		writeError(w, http.StatusConflict, fmt.Sprintf("psk identity %q already bound to another endpoint", info.Identity))
		return
	case errors.Is(err, store.ErrInvalidSecurity):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		h.storeError(w, "put", err)
		return
	}
	h.log.Info("security info set", "sec", info, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, info.Summary())
}

func (h *API) remove(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	ep := r.PathValue("ep")
	err := h.s.RemoveSecurity(ctx, ep)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no security info for endpoint %q", ep))
		return
	}
	if err != nil {
		h.storeError(w, "remove", err)
		return
	}
	h.log.Info("security info removed", "ep", ep, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}
