// Package devmgmt carries out LwM2M device management and information
// reporting operations on a registered device (OMA LwM2M 1.1 transport,
// CoAP mapping): it turns a northbound request (Read, Write, Execute,
// Discover, Create, Delete, Write-Attributes, Observe, the composite
// operations) into a CoAP request on the device's session, and the device's
// answer into a northbound response with nodes decoded from the content
// format.
//
// Sessions are go-coap connections (the Conn interface); the caller picks
// the device's session and keeps observation state.
package devmgmt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/linkformat"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// MaxResponse bounds the payload read from a device's answer.
const MaxResponse = 1 << 20

// Conn is a device's CoAP session: go-coap's *udp/client.Conn.
type Conn interface {
	Do(req *pool.Message) (*pool.Message, error)
	AcquireMessage(ctx context.Context) *pool.Message
	ReleaseMessage(m *pool.Message)
}

// ErrDevice wraps failures to get an answer from the device (no answer,
// session closed), as opposed to answers with an error code.
var ErrDevice = errors.New("device did not answer")

// Target is the device a request goes to.
type Target struct {
	Conn Conn
	Reg  *registration.Registration
}

// Result is what an operation produced: the northbound resp, and for
// observe requests the token the device's notifications will carry.
type Result struct {
	// Code is the device's answer code.
	Code  codes.Code
	Resp  *northbound.Resp
	Token message.Token
	// Format is the content format the device answered in.
	Format uint16
	// Observed is true when an observe request's answer carried the
	// Observe option: the device established the observation (RFC 7641
	// section 4.1). A success without it is a plain read.
	Observed bool
}

// Executor carries out requests, decoding values with the object model of
// Registry.
type Executor struct {
	Registry *model.Registry
	// HoldBlocks, when set, is called with the token of each request
	// whose block-wise answer (RFC 7959 Block2) the Executor completes
	// itself, before the request is sent; the function it returns is
	// called once the exchange is over. Until then the caller's session
	// must hide the Block2 option of the answers carrying that token from
	// go-coap's block-wise layer (HoldBlock2). These are the FETCH
	// requests of Read- and Observe-Composite and their requests for
	// later blocks: go-coap would ask for the later blocks of a FETCH
	// answer without the request's payload (RFC 8132 section 2.3.2 and
	// RFC 7959 section 2.4 want it repeated), which a device refuses.
	// Without HoldBlocks go-coap completes those answers, as it does
	// for every other request.
	HoldBlocks func(token message.Token) (release func())
}

// hold marks token with HoldBlocks, when set.
func (e *Executor) hold(token message.Token) (release func()) {
	if e.HoldBlocks == nil {
		return func() {}
	}
	return e.HoldBlocks(token)
}

// Do carries out req on the device. ctx bounds the whole exchange. token,
// when not nil, is used as the CoAP token (observe and cancel requests need
// a token the caller keeps); otherwise a random one is made. An answer with
// an error code is a Result whose Resp has that code and the device's
// diagnostic; errors are failures to get an answer (wrapping ErrDevice or
// ctx's error) or to encode the request.
func (e *Executor) Do(ctx context.Context, t Target, req *northbound.Req, token message.Token) (*Result, error) {
	format := PickFormat(t.Reg, req)
	switch req.Kind {
	case northbound.KindRead:
		return e.read(ctx, t, req, format, token, false)
	case northbound.KindObserve:
		return e.read(ctx, t, req, format, token, true)
	case northbound.KindDiscover:
		return e.discover(ctx, t, req, token)
	case northbound.KindWrite:
		return e.write(ctx, t, req, format, token)
	case northbound.KindCreate:
		return e.create(ctx, t, req, format, token)
	case northbound.KindExecute:
		return e.exchange(ctx, t, req, token, codes.POST, req.Path, nil, func(m *pool.Message) {
			if req.Arguments != "" {
				m.SetContentFormat(message.TextPlain)
				m.SetBody(bytes.NewReader([]byte(req.Arguments)))
			}
		})
	case northbound.KindDelete:
		return e.exchange(ctx, t, req, token, codes.DELETE, req.Path, nil, nil)
	case northbound.KindWriteAttributes:
		return e.exchange(ctx, t, req, token, codes.PUT, req.Path, nil, func(m *pool.Message) {
			for _, q := range req.Attributes.Query() {
				m.AddQuery(q)
			}
		})
	case northbound.KindReadComposite:
		return e.composite(ctx, t, req, format, token, false)
	case northbound.KindObserveComposite:
		return e.composite(ctx, t, req, format, token, true)
	case northbound.KindWriteComposite:
		return e.writeComposite(ctx, t, req, format, token)
	case northbound.KindCancelObserve:
		return e.cancel(ctx, t, req, token)
	}
	return nil, fmt.Errorf("devmgmt: unsupported request kind %q", req.Kind)
}

// PickFormat returns the content format of a request: the one it names, or
// one the device supports (SenML CBOR for LwM2M 1.1 and later, TLV for 1.0,
// unless the registration's root link announces its formats with "ct").
// Composite requests take SenML, CBOR unless the device announced JSON
// only.
func PickFormat(reg *registration.Registration, req *northbound.Req) uint16 {
	if req.ContentFormat != nil {
		return *req.ContentFormat
	}
	announced := announcedFormats(reg)
	prefer := []uint16{codec.SenMLCBOR, codec.TLV, codec.SenMLJSON, codec.LwM2MJSON}
	switch {
	case req.Composite():
		prefer = []uint16{codec.SenMLCBOR, codec.SenMLJSON}
	case reg == nil || reg.Version == "" || reg.Version == "1.0":
		prefer = []uint16{codec.TLV, codec.LwM2MJSON, codec.SenMLCBOR, codec.SenMLJSON}
	}
	if len(announced) > 0 {
		for _, f := range prefer {
			if announced[f] {
				return f
			}
		}
	}
	return prefer[0]
}

// announcedFormats reads the "ct" attribute of the registration's root
// link (`</>;rt="oma.lwm2m";ct="60 110 112 11542"`).
func announcedFormats(reg *registration.Registration) map[uint16]bool {
	if reg == nil {
		return nil
	}
	for _, l := range reg.ObjLinks {
		ct, ok := l.Attrs["ct"]
		if !ok || l.Attrs["rt"] != "oma.lwm2m" {
			continue
		}
		m := map[uint16]bool{}
		for _, f := range strings.Fields(ct) {
			var n uint16
			if _, err := fmt.Sscan(f, &n); err == nil {
				m[n] = true
			}
		}
		return m
	}
	return nil
}

// uriPath returns the CoAP path of an LwM2M path under the device's root
// path (alternate path, "/lwm2m").
func uriPath(reg *registration.Registration, p string) string {
	if reg == nil || reg.Root == "" || reg.Root == "/" {
		return p
	}
	return strings.TrimSuffix(reg.Root, "/") + p
}

// exchange sends one request and waits for the answer. prepare adds
// options and a body. A success code gives a Resp with the LwM2M code name;
// an error code gives one with errorMessage.
func (e *Executor) exchange(ctx context.Context, t Target, req *northbound.Req, token message.Token,
	code codes.Code, path string, accept *uint16, prepare func(*pool.Message)) (*Result, error) {
	resp, body, err := e.roundTrip(ctx, t, token, code, path, accept, prepare)
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	return &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body)}, nil
}

// roundTrip sends a request and returns the answer and its body (read in
// full, bounded). The caller releases the answer.
func (e *Executor) roundTrip(ctx context.Context, t Target, token message.Token, code codes.Code,
	path string, accept *uint16, prepare func(*pool.Message)) (*pool.Message, []byte, error) {
	if t.Conn == nil {
		return nil, nil, fmt.Errorf("%w: no session", ErrDevice)
	}
	m := t.Conn.AcquireMessage(ctx)
	defer t.Conn.ReleaseMessage(m)
	if token == nil {
		tok, err := message.GetToken()
		if err != nil {
			return nil, nil, fmt.Errorf("devmgmt: token: %w", err)
		}
		token = tok
	}
	m.SetCode(code)
	m.SetToken(token)
	m.SetType(message.Confirmable)
	if err := m.SetPath(uriPath(t.Reg, path)); err != nil {
		return nil, nil, fmt.Errorf("devmgmt: path %q: %w", path, err)
	}
	if accept != nil {
		m.SetAccept(message.MediaType(*accept))
	}
	if prepare != nil {
		prepare(m)
	}
	resp, err := t.Conn.Do(m)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("%w: %v", ErrDevice, err)
	}
	body, err := readBody(resp)
	if err != nil {
		t.Conn.ReleaseMessage(resp)
		return nil, nil, fmt.Errorf("%w: reading the answer: %v", ErrDevice, err)
	}
	return resp, body, nil
}

func readBody(m *pool.Message) ([]byte, error) {
	b := m.Body()
	if b == nil {
		return nil, nil
	}
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(b, MaxResponse+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxResponse {
		return nil, fmt.Errorf("answer larger than %d bytes", MaxResponse)
	}
	return data, nil
}

// answer makes the Resp of an answer without a value to decode.
func answer(kind string, code codes.Code, body []byte) *northbound.Resp {
	r := &northbound.Resp{Kind: kind, Code: CodeName(code)}
	if !Success(code) {
		r.ErrorMessage = diagnostic(code, body)
	}
	return r
}

func diagnostic(code codes.Code, body []byte) string {
	if len(body) > 0 && len(body) <= 512 && isText(body) {
		return string(body)
	}
	return fmt.Sprintf("device answered %s", code)
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
			return false
		}
	}
	return true
}

// Success reports whether code is a 2.xx answer.
func Success(code codes.Code) bool { return code >= 64 && code < 96 }

func (e *Executor) read(ctx context.Context, t Target, req *northbound.Req, format uint16, token message.Token, observe bool) (*Result, error) {
	path, err := node.ParsePath(req.Path)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: %w", err)
	}
	var prepare func(*pool.Message)
	if observe {
		if token == nil {
			return nil, errors.New("devmgmt: observe needs a token")
		}
		prepare = func(m *pool.Message) { m.SetObserve(0) }
	}
	resp, body, err := e.roundTrip(ctx, t, token, codes.GET, req.Path, &format, prepare)
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	res := &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body), Token: token}
	if !Success(resp.Code()) {
		return res, nil
	}
	if _, err := resp.Observe(); observe && err == nil {
		res.Observed = true
	}
	got := format
	if cf, err := resp.ContentFormat(); err == nil {
		got = uint16(cf)
	}
	res.Format = got
	n, err := e.DecodeValue(got, body, path)
	if err != nil {
		res.Resp = &northbound.Resp{Kind: req.Kind, Code: "INTERNAL_SERVER_ERROR",
			ErrorMessage: fmt.Sprintf("cannot decode the device's %s answer: %v", codec.FormatName(got), err)}
		return res, nil
	}
	res.Resp.Node = &node.Any{Node: n}
	return res, nil
}

// DecodeValue decodes the payload of a read answer or a notification.
func (e *Executor) DecodeValue(format uint16, body []byte, path node.Path) (node.Node, error) {
	return codec.Decode(format, body, path, e.Registry)
}

// DecodeComposite decodes the payload of a composite answer or
// notification into path -> node.
func (e *Executor) DecodeComposite(format uint16, body []byte, paths []string) (map[string]node.Any, error) {
	requested := make([]node.Path, 0, len(paths))
	for _, s := range paths {
		p, err := node.ParsePath(s)
		if err != nil {
			return nil, err
		}
		requested = append(requested, p)
	}
	nodes, err := codec.DecodeComposite(format, body, requested, e.Registry)
	if err != nil {
		return nil, err
	}
	out := make(map[string]node.Any, len(nodes))
	for p, n := range nodes {
		out[p.String()] = node.Any{Node: n}
	}
	return out, nil
}

func (e *Executor) discover(ctx context.Context, t Target, req *northbound.Req, token message.Token) (*Result, error) {
	lf := codec.LinkFormat
	resp, body, err := e.roundTrip(ctx, t, token, codes.GET, req.Path, &lf, nil)
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	res := &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body)}
	if !Success(resp.Code()) {
		return res, nil
	}
	links, err := linkformat.Parse(string(body))
	if err != nil {
		res.Resp = &northbound.Resp{Kind: req.Kind, Code: "INTERNAL_SERVER_ERROR",
			ErrorMessage: fmt.Sprintf("cannot parse the device's link-format answer: %v", err)}
		return res, nil
	}
	res.Resp.ObjectLinks = make([]northbound.ObjectLink, 0, len(links))
	for _, l := range links {
		at := l.Attrs
		if at == nil {
			at = map[string]string{}
		}
		res.Resp.ObjectLinks = append(res.Resp.ObjectLinks, northbound.ObjectLink{URL: l.URL, Attributes: at})
	}
	return res, nil
}

func (e *Executor) write(ctx context.Context, t Target, req *northbound.Req, format uint16, token message.Token) (*Result, error) {
	path, err := node.ParsePath(req.Path)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: %w", err)
	}
	payload, err := codec.Encode(format, req.Node.Node, path, e.Registry)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: encode %s: %w", codec.FormatName(format), err)
	}
	code := codes.PUT
	if req.Mode == northbound.ModeUpdate {
		code = codes.POST
	}
	return e.exchange(ctx, t, req, token, code, req.Path, nil, func(m *pool.Message) {
		m.SetContentFormat(message.MediaType(format))
		m.SetBody(bytes.NewReader(payload))
	})
}

func (e *Executor) create(ctx context.Context, t Target, req *northbound.Req, format uint16, token message.Token) (*Result, error) {
	path, err := node.ParsePath(req.Path)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: %w", err)
	}
	// The payload holds the new instance: under the object path, or the
	// instance itself when the path names it.
	target := path
	if path.Level() == node.LevelInstance {
		target = path.Parent()
	}
	inst := req.Node.Node
	instPath, err := node.PathOf(target, inst)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: %w", err)
	}
	payload, err := codec.Encode(format, inst, instPath, e.Registry)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: encode %s: %w", codec.FormatName(format), err)
	}
	resp, body, err := e.roundTrip(ctx, t, token, codes.POST, target.String(), nil, func(m *pool.Message) {
		m.SetContentFormat(message.MediaType(format))
		m.SetBody(bytes.NewReader(payload))
	})
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	res := &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body)}
	if Success(resp.Code()) {
		if loc, err := resp.Options().LocationPath(); err == nil && loc != "" {
			res.Resp.Location = "/" + strings.TrimPrefix(loc, "/")
		} else {
			res.Resp.Location = instPath.String()
		}
	}
	return res, nil
}

// encodePathList encodes the payload of a Read- or Observe-Composite
// request: the paths, in format.
func encodePathList(format uint16, list []string) ([]byte, error) {
	paths := make([]node.Path, 0, len(list))
	for _, s := range list {
		p, err := node.ParsePath(s)
		if err != nil {
			return nil, fmt.Errorf("devmgmt: %w", err)
		}
		paths = append(paths, p)
	}
	payload, err := codec.EncodePaths(format, paths)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: encode %s: %w", codec.FormatName(format), err)
	}
	return payload, nil
}

func (e *Executor) composite(ctx context.Context, t Target, req *northbound.Req, format uint16, token message.Token, observe bool) (*Result, error) {
	if observe && token == nil {
		return nil, errors.New("devmgmt: observe needs a token")
	}
	if token == nil {
		var err error
		if token, err = message.GetToken(); err != nil {
			return nil, fmt.Errorf("devmgmt: token: %w", err)
		}
	}
	// The answer may come block-wise: its Block2 option is held from
	// go-coap, and the later blocks asked for here (completeAnswer).
	defer e.hold(token)()
	obs := -1
	if observe {
		obs = 0
	}
	resp, body, err := e.fetchPaths(ctx, t, token, format, req.Paths, obs)
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	res := &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body), Token: token, Format: format}
	if !Success(resp.Code()) {
		return res, nil
	}
	body, err = e.completeAnswer(ctx, t, resp, body, Observed{Paths: req.Paths, Composite: true, Format: format})
	if err != nil {
		return nil, fmt.Errorf("%s: the device's answer came in blocks (RFC 7959) and could not be completed: %w", req.Kind, err)
	}
	if _, err := resp.Observe(); observe && err == nil {
		res.Observed = true
	}
	got := format
	if cf, err := resp.ContentFormat(); err == nil {
		got = uint16(cf)
	}
	res.Format = got
	nodes, err := e.DecodeComposite(got, body, req.Paths)
	if err != nil {
		res.Resp = &northbound.Resp{Kind: req.Kind, Code: "INTERNAL_SERVER_ERROR",
			ErrorMessage: fmt.Sprintf("cannot decode the device's %s answer: %v", codec.FormatName(got), err)}
		return res, nil
	}
	res.Resp.Nodes = nodes
	return res, nil
}

func (e *Executor) writeComposite(ctx context.Context, t Target, req *northbound.Req, format uint16, token message.Token) (*Result, error) {
	nodes := make(map[node.Path]node.Node, len(req.Nodes))
	for s, a := range req.Nodes {
		p, err := node.ParsePath(s)
		if err != nil {
			return nil, fmt.Errorf("devmgmt: %w", err)
		}
		nodes[p] = a.Node
	}
	payload, err := codec.EncodeComposite(format, nodes, e.Registry)
	if err != nil {
		return nil, fmt.Errorf("devmgmt: encode %s: %w", codec.FormatName(format), err)
	}
	return e.exchange(ctx, t, req, token, codes.IPATCH, "/", nil, func(m *pool.Message) {
		m.SetContentFormat(message.MediaType(format))
		m.SetBody(bytes.NewReader(payload))
	})
}

// cancel sends a proactive cancel (GET with Observe 1 and the
// observation's token) for an observation on req.Path.
func (e *Executor) cancel(ctx context.Context, t Target, req *northbound.Req, token message.Token) (*Result, error) {
	if token == nil {
		return nil, errors.New("devmgmt: cancel needs the observation's token")
	}
	if len(req.Paths) > 0 {
		return e.cancelComposite(ctx, t, req, token)
	}
	lf := uint16(0)
	accept := &lf
	if req.ContentFormat != nil {
		accept = req.ContentFormat
	}
	resp, body, err := e.roundTrip(ctx, t, token, codes.GET, req.Path, accept, func(m *pool.Message) { m.SetObserve(1) })
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	return &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body)}, nil
}

// cancelComposite ends an Observe-Composite proactively: a FETCH of the
// same paths with Observe 1 and the observation's token (RFC 7641 section
// 3.6, LwM2M 1.1 Cancel Observation-Composite). req.ContentFormat is the
// observation's format. The answer is a read of the paths; only its code
// matters, so the rest of a block-wise answer is not fetched.
func (e *Executor) cancelComposite(ctx context.Context, t Target, req *northbound.Req, token message.Token) (*Result, error) {
	format := uint16(codec.SenMLCBOR)
	if req.ContentFormat != nil {
		format = *req.ContentFormat
	}
	defer e.hold(token)()
	resp, body, err := e.fetchPaths(ctx, t, token, format, req.Paths, 1)
	if err != nil {
		return nil, err
	}
	defer t.Conn.ReleaseMessage(resp)
	return &Result{Code: resp.Code(), Resp: answer(req.Kind, resp.Code(), body)}, nil
}

// fetchPaths sends the FETCH of a composite request: paths in format, the
// same format accepted, and the Observe option observe (-1: none). The
// caller holds the token (e.hold) and releases the answer.
func (e *Executor) fetchPaths(ctx context.Context, t Target, token message.Token, format uint16, paths []string, observe int) (*pool.Message, []byte, error) {
	payload, err := encodePathList(format, paths)
	if err != nil {
		return nil, nil, err
	}
	return e.roundTrip(ctx, t, token, codes.FETCH, "/", &format, func(m *pool.Message) {
		if observe >= 0 {
			m.SetObserve(uint32(observe))
		}
		m.SetContentFormat(message.MediaType(format))
		m.SetBody(bytes.NewReader(payload))
	})
}

// CodeName returns the LwM2M response code name of a CoAP code, in
// Leshan's spelling ("CONTENT", "NOT_FOUND").
func CodeName(c codes.Code) string {
	switch c {
	case codes.Created:
		return "CREATED"
	case codes.Deleted:
		return "DELETED"
	case codes.Valid:
		return "VALID"
	case codes.Changed:
		return "CHANGED"
	case codes.Content:
		return "CONTENT"
	case codes.Continue:
		return "CONTINUE"
	case codes.BadRequest:
		return "BAD_REQUEST"
	case codes.Unauthorized:
		return "UNAUTHORIZED"
	case codes.BadOption:
		return "BAD_OPTION"
	case codes.Forbidden:
		return "FORBIDDEN"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.MethodNotAllowed:
		return "METHOD_NOT_ALLOWED"
	case codes.NotAcceptable:
		return "NOT_ACCEPTABLE"
	case codes.RequestEntityIncomplete:
		return "REQUEST_ENTITY_INCOMPLETE"
	case codes.Conflict:
		return "CONFLICT"
	case codes.PreconditionFailed:
		return "PRECONDITION_FAILED"
	case codes.RequestEntityTooLarge:
		return "REQUEST_ENTITY_TOO_LARGE"
	case codes.UnsupportedMediaType:
		return "UNSUPPORTED_CONTENT_FORMAT"
	case codes.UnprocessableEntity:
		return "UNPROCESSABLE_ENTITY"
	case codes.InternalServerError:
		return "INTERNAL_SERVER_ERROR"
	case codes.NotImplemented:
		return "NOT_IMPLEMENTED"
	case codes.BadGateway:
		return "BAD_GATEWAY"
	case codes.ServiceUnavailable:
		return "SERVICE_UNAVAILABLE"
	case codes.GatewayTimeout:
		return "GATEWAY_TIMEOUT"
	case codes.ProxyingNotSupported:
		return "PROXYING_NOT_SUPPORTED"
	}
	return fmt.Sprintf("CODE_%d_%02d", c>>5, c&31)
}
