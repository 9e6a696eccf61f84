package northbound

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/internal/strictjson"
)

// Request kinds (the "kind" of a LESHAN_REQ's "req").
const (
	KindRead             = "read"
	KindWrite            = "write"
	KindExecute          = "execute"
	KindDiscover         = "discover"
	KindCreate           = "create"
	KindDelete           = "delete"
	KindWriteAttributes  = "writeAttributes"
	KindObserve          = "observe"
	KindCancelObserve    = "cancelObserve"
	KindReadComposite    = "readComposite"
	KindWriteComposite   = "writeComposite"
	KindObserveComposite = "observeComposite"
)

// Kinds lists every request kind.
var kinds = []string{
	KindRead, KindWrite, KindExecute, KindDiscover, KindCreate, KindDelete,
	KindWriteAttributes, KindObserve, KindCancelObserve, KindReadComposite,
	KindWriteComposite, KindObserveComposite,
}

// Kinds returns every request kind.
func Kinds() []string { return append([]string(nil), kinds...) }

// Write modes.
const (
	ModeReplace = "replace" // CoAP PUT: the target is replaced
	ModeUpdate  = "update"  // CoAP POST/iPATCH: a partial update
)

// Limits on requests.
const (
	// MaxTicketLen bounds a ticket.
	MaxTicketLen = 128
	// MaxEndpointLen bounds an endpoint name.
	MaxEndpointLen = 256
	// MaxPaths bounds the paths of a composite request.
	MaxPaths = 256
	// DefaultTimeoutMs is a request's timeout when it carries none.
	DefaultTimeoutMs = 5000
	// MaxTimeoutMs bounds a request's timeout (one day).
	MaxTimeoutMs = 24 * 3600 * 1000
)

// ErrBadRequest is wrapped by every error of ParseRequest.
var ErrBadRequest = errors.New("bad request")

// Request is a LESHAN_REQ message:
//
//	{"ep":"myEndpoint","ticket":"8c90…","req":{"kind":"read","path":"/3/0/1","contentFormat":11542}}
type Request struct {
	Endpoint string `json:"ep"`
	Ticket   string `json:"ticket"`
	Req      Req    `json:"req"`
}

// Attributes are the notification attributes of a writeAttributes request
// (LwM2M 1.1 section 5.1.2). A nil field is not written; Unset names
// attributes to remove (written without a value, "?pmin").
type Attributes struct {
	Pmin  *uint32  `json:"pmin,omitempty"`
	Pmax  *uint32  `json:"pmax,omitempty"`
	Gt    *float64 `json:"gt,omitempty"`
	Lt    *float64 `json:"lt,omitempty"`
	St    *float64 `json:"st,omitempty"`
	Epmin *uint32  `json:"epmin,omitempty"`
	Epmax *uint32  `json:"epmax,omitempty"`
	Unset []string `json:"unset,omitempty"`
}

// Req is the "req" member of a Request. Which members a kind takes:
//
//	read, discover, delete, observe     path; read and observe: contentFormat
//	write                               path, node, mode ("replace", default, or "update"), contentFormat
//	create                              path (an object, or an object instance), node (an instance), contentFormat
//	execute                             path, arguments (optional)
//	writeAttributes                     path, attributes
//	cancelObserve                       path, or observeTicket (the ticket of the observe to end)
//	readComposite, observeComposite     paths, contentFormat (SenML JSON or CBOR)
//	writeComposite                      nodes (path -> node), contentFormat (SenML JSON or CBOR)
//
// Every kind takes timeout (ms, default 5000). contentFormat is optional:
// the server picks a format the device announced (or TLV for LwM2M 1.0,
// SenML CBOR for 1.1) when it is absent.
type Req struct {
	Kind          string              `json:"kind"`
	Path          string              `json:"path,omitempty"`
	Paths         []string            `json:"paths,omitempty"`
	ContentFormat *uint16             `json:"contentFormat,omitempty"`
	Node          *node.Any           `json:"node,omitempty"`
	Nodes         map[string]node.Any `json:"nodes,omitempty"`
	Mode          string              `json:"mode,omitempty"`
	Arguments     string              `json:"arguments,omitempty"`
	Attributes    *Attributes         `json:"attributes,omitempty"`
	ObserveTicket string              `json:"observeTicket,omitempty"`
	Timeout       *int64              `json:"timeout,omitempty"`
}

// Composite reports whether r is one of the composite kinds.
func (r *Req) Composite() bool {
	return r.Kind == KindReadComposite || r.Kind == KindObserveComposite || r.Kind == KindWriteComposite
}

// Targets returns the paths a request addresses: Paths for the composite
// kinds, else Path alone.
func (r *Req) Targets() []string {
	if r.Composite() {
		return r.Paths
	}
	return []string{r.Path}
}

// TimeoutMs returns the request's timeout in milliseconds.
func (r *Req) TimeoutMs() int64 {
	if r.Timeout == nil {
		return DefaultTimeoutMs
	}
	return *r.Timeout
}

// RequestError is an error of ParseRequest. Ticket is the request's ticket
// when one could be read, so that the error can be answered with an err
// message; it is empty otherwise.
type RequestError struct {
	Ticket   string
	Endpoint string
	Err      error
}

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

// legacyFormats maps the content-format numbers of LwM2M 1.0 drafts (used
// by old Leshan clients, and in the seed's example) to the registered ones.
var legacyFormats = map[uint16]uint16{1541: 0, 1542: 11542, 1543: 11543, 1544: 42}

// NormalizeFormat maps a legacy LwM2M content-format number to the
// registered one and returns others unchanged.
func NormalizeFormat(f uint16) uint16 {
	if n, ok := legacyFormats[f]; ok {
		return n
	}
	return f
}

// ParseRequest decodes and validates a LESHAN_REQ payload. Errors wrap
// ErrBadRequest and are *RequestError, carrying the ticket when it could be
// read. Paths are checked and normalised ("/3/0/1"), legacy content formats
// mapped, and each kind's required members checked.
func ParseRequest(data []byte) (*Request, error) {
	var req Request
	var rawReq json.RawMessage
	fail := func(format string, args ...any) error {
		return &RequestError{Ticket: req.Ticket, Endpoint: req.Endpoint,
			Err: fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))}
	}
	err := strictjson.Members(data, func(name string, raw json.RawMessage) error {
		switch name {
		case "ep":
			return json.Unmarshal(raw, &req.Endpoint)
		case "ticket":
			return json.Unmarshal(raw, &req.Ticket)
		case "req":
			rawReq = raw
			return nil
		}
		return nil // unknown members are ignored, for forward compatibility
	})
	if err != nil {
		// The ticket may still be readable from a document that is
		// otherwise wrong (a bad "req" member).
		if req.Ticket == "" {
			var t struct {
				Ticket string `json:"ticket"`
			}
			if json.Unmarshal(data, &t) == nil {
				req.Ticket = t.Ticket
			}
		}
		if !validTicket(req.Ticket) {
			req.Ticket = "" // never answer with a ticket the valid path refuses
		}
		return nil, fail("not a valid request object: %v", err)
	}
	if !validTicket(req.Ticket) {
		t := req.Ticket
		req.Ticket = ""
		if t == "" {
			return nil, fail(`missing "ticket"`)
		}
		return nil, fail("invalid ticket")
	}
	if req.Endpoint == "" {
		return nil, fail(`missing "ep"`)
	}
	if len(req.Endpoint) > MaxEndpointLen || !utf8.ValidString(req.Endpoint) {
		return nil, fail("invalid endpoint name")
	}
	if rawReq == nil || string(rawReq) == "null" {
		return nil, fail(`missing "req"`)
	}
	dec := json.NewDecoder(strings.NewReader(string(rawReq)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req.Req); err != nil {
		return nil, fail(`invalid "req": %v`, err)
	}
	if err := req.Req.validate(); err != nil {
		return nil, fail("%v", err)
	}
	return &req, nil
}

// validTicket accepts 1 to MaxTicketLen printable ASCII characters.
func validTicket(t string) bool {
	if t == "" || len(t) > MaxTicketLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] > '~' {
			return false
		}
	}
	return true
}

// validate checks the members a kind needs and normalises paths and the
// content format.
func (r *Req) validate() error {
	if r.Timeout != nil && (*r.Timeout <= 0 || *r.Timeout > MaxTimeoutMs) {
		return fmt.Errorf("timeout must be between 1 and %d ms", MaxTimeoutMs)
	}
	if r.ContentFormat != nil {
		f := NormalizeFormat(*r.ContentFormat)
		r.ContentFormat = &f
	}
	needPath := func(min node.Level) (node.Path, error) {
		if r.Path == "" {
			return node.Path{}, errors.New(`missing "path"`)
		}
		p, err := node.ParsePath(r.Path)
		if err != nil {
			return p, fmt.Errorf("path %q: %w", r.Path, err)
		}
		if p.Level() < min {
			return p, fmt.Errorf("path %q: a %s needs at least a %s path", r.Path, r.Kind, min)
		}
		r.Path = p.String()
		return p, nil
	}
	needPaths := func() error {
		if len(r.Paths) == 0 {
			return errors.New(`missing "paths"`)
		}
		if len(r.Paths) > MaxPaths {
			return fmt.Errorf("more than %d paths", MaxPaths)
		}
		for i, s := range r.Paths {
			p, err := node.ParsePath(s)
			if err != nil {
				return fmt.Errorf("path %q: %w", s, err)
			}
			r.Paths[i] = p.String()
		}
		return nil
	}
	switch r.Kind {
	case KindRead, KindObserve, KindDiscover:
		_, err := needPath(node.LevelObject)
		return err
	case KindDelete:
		_, err := needPath(node.LevelInstance)
		return err
	case KindExecute:
		p, err := needPath(node.LevelResource)
		if err != nil {
			return err
		}
		if p.Level() != node.LevelResource {
			return fmt.Errorf("path %q: execute needs a resource path", r.Path)
		}
		return validArguments(r.Arguments)
	case KindWrite:
		p, err := needPath(node.LevelInstance)
		if err != nil {
			return err
		}
		switch r.Mode {
		case "":
			r.Mode = ModeReplace
		case ModeReplace, ModeUpdate:
		default:
			return fmt.Errorf(`mode must be %q or %q`, ModeReplace, ModeUpdate)
		}
		return r.checkNode(p)
	case KindCreate:
		p, err := needPath(node.LevelObject)
		if err != nil {
			return err
		}
		if p.Level() > node.LevelInstance {
			return fmt.Errorf("path %q: create needs an object or object instance path", r.Path)
		}
		if r.Node == nil || r.Node.Node == nil {
			return errors.New(`missing "node"`)
		}
		if r.Node.Node.Kind() != node.KindInstance {
			return errors.New(`create needs an "instance" node`)
		}
		return nil
	case KindWriteAttributes:
		if _, err := needPath(node.LevelObject); err != nil {
			return err
		}
		if r.Attributes == nil {
			return errors.New(`missing "attributes"`)
		}
		return r.Attributes.validate()
	case KindCancelObserve:
		if r.Path == "" && r.ObserveTicket == "" {
			return errors.New(`cancelObserve needs "path" or "observeTicket"`)
		}
		if r.ObserveTicket != "" && !validTicket(r.ObserveTicket) {
			return errors.New("invalid observeTicket")
		}
		if r.Path != "" {
			_, err := needPath(node.LevelObject)
			return err
		}
		return nil
	case KindReadComposite, KindObserveComposite:
		return needPaths()
	case KindWriteComposite:
		if len(r.Nodes) == 0 {
			return errors.New(`missing "nodes"`)
		}
		if len(r.Nodes) > MaxPaths {
			return fmt.Errorf("more than %d nodes", MaxPaths)
		}
		norm := make(map[string]node.Any, len(r.Nodes))
		for s, a := range r.Nodes {
			p, err := node.ParsePath(s)
			if err != nil {
				return fmt.Errorf("path %q: %w", s, err)
			}
			if p.Level() < node.LevelResource {
				return fmt.Errorf("path %q: writeComposite needs resource or resource instance paths", s)
			}
			if a.Node == nil {
				return fmt.Errorf("path %q: missing node", s)
			}
			if err := matchNode(p, a.Node); err != nil {
				return err
			}
			norm[p.String()] = a
		}
		r.Nodes = norm
		return nil
	case "":
		return errors.New(`missing "kind"`)
	}
	return fmt.Errorf("unknown kind %q (one of %s)", r.Kind, strings.Join(kinds, ", "))
}

func (r *Req) checkNode(p node.Path) error {
	if r.Node == nil || r.Node.Node == nil {
		return errors.New(`missing "node"`)
	}
	return matchNode(p, r.Node.Node)
}

// matchNode checks that n is the node a path addresses: its kind's level
// and its id match the path.
func matchNode(p node.Path, n node.Node) error {
	if err := node.Validate(n); err != nil {
		return fmt.Errorf("node for %s: %w", p, err)
	}
	if n.Kind().Level() != p.Level() {
		return fmt.Errorf("node for %s: a %s node does not fit a %s path", p, n.Kind(), p.Level())
	}
	if p.Len() > 0 && n.NodeID() != p.Last() {
		return fmt.Errorf("node for %s: id %d does not match the path", p, n.NodeID())
	}
	return nil
}

// validArguments checks Execute arguments (LwM2M 1.1 section 5.4.5):
// digits, optionally ='quoted text' without quotes, separated by commas.
func validArguments(a string) error {
	if a == "" {
		return nil
	}
	if len(a) > 1024 || !utf8.ValidString(a) {
		return errors.New("arguments too long or not UTF-8")
	}
	for _, arg := range strings.Split(a, ",") {
		name, val, hasVal := strings.Cut(arg, "=")
		if len(name) != 1 || name[0] < '0' || name[0] > '9' {
			return fmt.Errorf("argument %q: the name must be one digit", arg)
		}
		if hasVal && (len(val) < 2 || val[0] != '\'' || val[len(val)-1] != '\'' ||
			strings.ContainsRune(val[1:len(val)-1], '\'')) {
			return fmt.Errorf("argument %q: the value must be quoted with single quotes", arg)
		}
	}
	return nil
}

var attributeNames = map[string]bool{"pmin": true, "pmax": true, "gt": true, "lt": true, "st": true, "epmin": true, "epmax": true}

func (a *Attributes) validate() error {
	for _, u := range a.Unset {
		if !attributeNames[u] {
			return fmt.Errorf("unknown attribute %q in unset", u)
		}
	}
	if a.Pmin == nil && a.Pmax == nil && a.Gt == nil && a.Lt == nil && a.St == nil &&
		a.Epmin == nil && a.Epmax == nil && len(a.Unset) == 0 {
		return errors.New("no attributes to write")
	}
	if a.St != nil && *a.St < 0 {
		return errors.New("st must not be negative")
	}
	if a.Pmin != nil && a.Pmax != nil && *a.Pmax < *a.Pmin {
		return errors.New("pmax must not be below pmin")
	}
	if a.Epmin != nil && a.Epmax != nil && *a.Epmax < *a.Epmin {
		return errors.New("epmax must not be below epmin")
	}
	return nil
}

// Query returns the attributes as CoAP Uri-Query values, in a fixed order.
func (a *Attributes) Query() []string {
	var q []string
	u := func(name string, v *uint32) {
		if v != nil {
			q = append(q, fmt.Sprintf("%s=%d", name, *v))
		}
	}
	f := func(name string, v *float64) {
		if v != nil {
			q = append(q, name+"="+formatFloat(*v))
		}
	}
	u("pmin", a.Pmin)
	u("pmax", a.Pmax)
	f("gt", a.Gt)
	f("lt", a.Lt)
	f("st", a.St)
	u("epmin", a.Epmin)
	u("epmax", a.Epmax)
	unset := append([]string(nil), a.Unset...)
	sort.Strings(unset)
	return append(q, unset...)
}

func formatFloat(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}

// Response is a LESHAN_RESP message: exactly one of Ack, Err and Resp is
// set.
//
//	{"ticket":"8c90…","ack":true}
//	{"ticket":"8c90…","err":{"errorMessage":"…"}}
//	{"ticket":"8c90…","resp":{"kind":"read","code":"CONTENT","node":{…}}}
type Response struct {
	Ticket string    `json:"ticket"`
	Ack    bool      `json:"ack,omitempty"`
	Err    *ErrorMsg `json:"err,omitempty"`
	Resp   *Resp     `json:"resp,omitempty"`
}

// ErrorMsg is the "err" member of a Response: the request could not be
// carried out (no such endpoint, device unreachable, timeout, bad request).
type ErrorMsg struct {
	ErrorMessage string `json:"errorMessage"`
}

// Resp is the "resp" member of a Response: what the device answered.
// Code is the LwM2M response code name in Leshan's spelling ("CONTENT",
// "CHANGED", "NOT_FOUND", …, see CodeName). Which members are set:
//
//	read, observe (first value and each notification)  node
//	readComposite, observeComposite                    nodes (path -> node)
//	discover                                           objectLinks
//	create                                             location ("/3303/1")
//	a device error code (4.xx, 5.xx)                   errorMessage
//
// Notifications carry "observe": true and, when the device sent one, the
// value's time "timestamp" (ms since the epoch).
type Resp struct {
	Kind         string              `json:"kind"`
	Code         string              `json:"code"`
	Node         *node.Any           `json:"node,omitempty"`
	Nodes        map[string]node.Any `json:"nodes,omitempty"`
	ObjectLinks  []ObjectLink        `json:"objectLinks,omitempty"`
	Location     string              `json:"location,omitempty"`
	ErrorMessage string              `json:"errorMessage,omitempty"`
	Observe      bool                `json:"observe,omitempty"`
	Timestamp    int64               `json:"timestamp,omitempty"`
}

// ObjectLink is one link of a Discover answer, shaped like the objLink of a
// registration: {"url":"/3/0/1","at":{"dim":"2"}}.
type ObjectLink struct {
	URL        string            `json:"url"`
	Attributes map[string]string `json:"at"`
}

// ParseResponse decodes a LESHAN_RESP payload and checks that exactly one
// of ack, err and resp is set.
func ParseResponse(data []byte) (*Response, error) {
	var r Response
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("northbound: response: %w", err)
	}
	n := 0
	if r.Ack {
		n++
	}
	if r.Err != nil {
		n++
	}
	if r.Resp != nil {
		n++
	}
	if r.Ticket == "" || n != 1 {
		return nil, errors.New(`northbound: response: needs a ticket and exactly one of "ack", "err", "resp"`)
	}
	return &r, nil
}
