package simdevice

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/net/responsewriter"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// request is a server request, parsed.
type request struct {
	code    codes.Code
	rawPath string
	path    node.Path
	accept  int // -1: none
	cf      int // -1: none
	observe int // -1: none
	queries []string
	body    []byte
	token   string
}

// response is the device's answer.
type response struct {
	code     codes.Code
	cf       int // -1: none
	body     []byte
	observe  int64 // -1: none
	location []string
}

func answer(code codes.Code) response { return response{code: code, cf: -1, observe: -1} }

func content(cf uint16, body []byte) response {
	return response{code: codes.Content, cf: int(cf), body: body, observe: -1}
}

// readFormats are the content formats the device can answer a Read in.
var readFormats = []uint16{codec.TextPlain, codec.Opaque, codec.CBOR, codec.SenMLJSON,
	codec.SenMLCBOR, codec.TLV, codec.LwM2MJSON}

func isSenML(f int) bool { return f == int(codec.SenMLJSON) || f == int(codec.SenMLCBOR) }

// handle is the go-coap handler of the device's connection: it answers the
// server's requests and ends observations the server resets.
func (d *Device) handle(w *responsewriter.ResponseWriter[*client.Conn], r *pool.Message) {
	if r.Type() == message.Reset {
		d.handleReset(r.MessageID())
		return
	}
	if r.Code() < codes.GET || r.Code() > codes.IPATCH {
		return // a response or an empty message: nothing to answer
	}
	var resp response
	func() {
		defer func() {
			if v := recover(); v != nil {
				d.log.Error("simdevice: panic handling request", "panic", v)
				resp = answer(codes.InternalServerError)
			}
		}()
		req, bad := parseRequest(r)
		if bad != nil {
			resp = *bad
			d.mu.Lock()
			d.recordLocked(OpUnknown, req, resp)
			d.mu.Unlock()
			return
		}
		resp = d.serve(req)
	}()
	var opts message.Options
	for _, seg := range resp.location {
		opts = append(opts, message.Option{ID: message.LocationPath, Value: []byte(seg)})
	}
	var part blockPart
	var blocks bool
	if resp.code == codes.Content && resp.cf >= 0 && (r.Code() == codes.GET || r.Code() == codes.FETCH) {
		var bad *response
		if part, blocks, bad = d.block(r, resp.body); bad != nil {
			resp = *bad
		} else if blocks {
			resp.body = part.payload
		}
	}
	var body *bytes.Reader
	if resp.cf >= 0 {
		body = bytes.NewReader(resp.body)
	}
	var err error
	if body != nil {
		err = w.SetResponse(resp.code, message.MediaType(resp.cf), body, opts...)
	} else {
		err = w.SetResponse(resp.code, message.TextPlain, nil, opts...)
	}
	if err != nil {
		d.log.Debug("simdevice: set response", "err", err)
		return
	}
	if resp.observe >= 0 {
		w.Message().SetObserve(uint32(resp.observe))
	}
	if blocks {
		setBlock(w.Message(), part)
	}
}

// parseRequest extracts what the device needs from a request. A non-nil
// response means the request is malformed.
func parseRequest(r *pool.Message) (request, *response) {
	req := request{code: r.Code(), accept: -1, cf: -1, observe: -1, token: string(r.Token())}
	p, err := r.Options().Path()
	switch {
	case errors.Is(err, message.ErrOptionNotFound):
		p = "/"
	case err != nil:
		a := answer(codes.BadOption)
		return req, &a
	}
	req.rawPath = p
	if req.path, err = node.ParsePath(p); err != nil {
		a := answer(codes.NotFound)
		return req, &a
	}
	if v, err := r.Options().Accept(); err == nil {
		req.accept = int(v)
	}
	if v, err := r.Options().ContentFormat(); err == nil {
		req.cf = int(v)
	}
	if v, err := r.Options().Observe(); err == nil {
		req.observe = int(v)
	}
	if r.Options().HasOption(message.URIQuery) {
		if req.queries, err = r.Options().Queries(); err != nil {
			a := answer(codes.BadOption)
			return req, &a
		}
	}
	if req.body, err = r.ReadBody(); err != nil {
		a := answer(codes.BadRequest)
		return req, &a
	}
	return req, nil
}

func (d *Device) recordLocked(op Op, req request, resp response) {
	d.counts[op]++
	d.last = Request{Op: op, Code: req.code, Path: req.rawPath, Accept: req.accept,
		ContentFormat: req.cf, Response: resp.code, ResponseFormat: resp.cf}
}

// serve dispatches a request to its operation.
func (d *Device) serve(req request) response {
	d.mu.Lock()
	defer d.mu.Unlock()
	op, resp := d.serveLocked(req)
	d.recordLocked(op, req, resp)
	if resp.code != codes.Content && resp.code != codes.Changed && resp.code != codes.Created &&
		resp.code != codes.Deleted {
		d.log.Debug("simdevice: request refused", "code", req.code, "path", req.rawPath, "op", op, "resp", resp.code)
	}
	return resp
}

func (d *Device) serveLocked(req request) (Op, response) {
	p := req.path
	switch req.code {
	case codes.GET:
		switch {
		case req.observe == 0:
			return OpObserve, d.observeLocked(req)
		case req.accept == int(codec.LinkFormat):
			return OpDiscover, d.discoverLocked(p)
		case req.observe == 1:
			d.cancelLocked(req)
			return OpCancelObserve, d.readLocked(p, req.accept)
		}
		return OpRead, d.readLocked(p, req.accept)
	case codes.PUT:
		if len(req.body) == 0 && len(req.queries) > 0 {
			return OpWriteAttributes, d.writeAttributesLocked(p, req.queries)
		}
		return OpWrite, d.writeLocked(req, true)
	case codes.POST:
		switch p.Level() {
		case node.LevelObject:
			return OpCreate, d.createLocked(req)
		case node.LevelResource:
			if resourceExecutable(d.reg, p.ObjectID(), p.ResourceID()) {
				return OpExecute, d.executeLocked(req)
			}
		}
		return OpWrite, d.writeLocked(req, false)
	case codes.DELETE:
		return OpDelete, d.deleteLocked(p)
	case codes.FETCH:
		switch req.observe {
		case 0:
			return OpObserveComposite, d.observeCompositeLocked(req)
		case 1:
			d.cancelLocked(req)
			return OpCancelObserve, d.readCompositeLocked(req)
		}
		return OpReadComposite, d.readCompositeLocked(req)
	case codes.IPATCH:
		return OpWriteComposite, d.writeCompositeLocked(req)
	}
	return OpUnknown, answer(codes.MethodNotAllowed)
}

// checkTarget checks the path of a request that targets one node: not the
// root, not the Security object, and existing.
func (d *Device) checkTarget(p node.Path) (response, bool) {
	switch {
	case p.Level() == node.LevelRoot:
		return answer(codes.MethodNotAllowed), false
	case p.ObjectID() == 0:
		// Only a bootstrap server may touch the Security object.
		return answer(codes.Unauthorized), false
	case !d.st.exists(p):
		if p.Level() == node.LevelResource && d.st.instance(p.ObjectID(), p.InstanceID()) != nil &&
			resourceExecutable(d.reg, p.ObjectID(), p.ResourceID()) {
			return answer(codes.MethodNotAllowed), false
		}
		return answer(codes.NotFound), false
	}
	return response{}, true
}

// readFormat returns the content format for a Read of p with the given
// Accept option: the one asked for, or TLV for objects, instances and
// multiple resources and plain text for single values.
func readFormat(p node.Path, n node.Node, accept int) (uint16, bool) {
	if accept >= 0 {
		return uint16(accept), slices.Contains(readFormats, uint16(accept))
	}
	switch n := n.(type) {
	case node.Resource:
		if !n.Multiple {
			return codec.TextPlain, true
		}
	case node.ResourceInstance:
		return codec.TextPlain, true
	}
	return codec.TLV, true
}

// encodeRead encodes the node at p for a Read or an Observe.
func (d *Device) encodeReadLocked(p node.Path, accept int) (uint16, []byte, response, bool) {
	if resp, ok := d.checkTarget(p); !ok {
		return 0, nil, resp, false
	}
	n, _ := d.st.get(p)
	if p.Level() >= node.LevelResource && !resourceReadable(d.reg, p.ObjectID(), p.ResourceID()) {
		return 0, nil, answer(codes.MethodNotAllowed), false
	}
	format, ok := readFormat(p, n, accept)
	if !ok {
		return 0, nil, answer(codes.NotAcceptable), false
	}
	b, err := codec.Encode(format, n, p, d.reg)
	switch {
	case errors.Is(err, codec.ErrUnsupportedFormat):
		return 0, nil, answer(codes.NotAcceptable), false
	case errors.Is(err, codec.ErrMismatch) && accept >= 0:
		// The value has no form in the requested format (an integer
		// as opaque, ...).
		return 0, nil, answer(codes.NotAcceptable), false
	case err != nil:
		d.log.Warn("simdevice: encode", "path", p, "format", format, "err", err)
		return 0, nil, answer(codes.InternalServerError), false
	}
	return format, b, response{}, true
}

func (d *Device) readLocked(p node.Path, accept int) response {
	format, b, resp, ok := d.encodeReadLocked(p, accept)
	if !ok {
		return resp
	}
	return content(format, b)
}

// observeLocked registers an observation of one path.
func (d *Device) observeLocked(req request) response {
	format, b, resp, ok := d.encodeReadLocked(req.path, req.accept)
	if !ok {
		return resp
	}
	o, resp, ok := d.addObservationLocked(req, []node.Path{req.path}, false, format)
	if !ok {
		return resp
	}
	r := content(format, b)
	r.observe = int64(o.seq)
	return r
}

// addObservationLocked records an observation whose first answer is being
// sent now.
func (d *Device) addObservationLocked(req request, paths []node.Path, composite bool, format uint16) (*observation, response, bool) {
	if req.token == "" {
		return nil, answer(codes.BadRequest), false
	}
	if old, ok := d.obs[req.token]; ok {
		d.removeObservationLocked(old)
	} else if len(d.obs) >= d.cfg.MaxObservations {
		return nil, answer(codes.ServiceUnavailable), false
	}
	o := &observation{token: req.token, paths: paths, composite: composite, format: format,
		lastSent: time.Now(), lastMID: -1}
	o.nextSeq()
	d.obs[req.token] = o
	d.scheduleLocked(o, o.lastSent) // arms pmax
	return o, response{}, true
}

// cancelLocked ends the observation with the request's token or, if there
// is none, the observations of the request's path.
func (d *Device) cancelLocked(req request) {
	if o, ok := d.obs[req.token]; ok {
		d.removeObservationLocked(o)
		return
	}
	if req.code != codes.GET {
		return
	}
	for _, o := range d.obs {
		if !o.composite && o.paths[0] == req.path {
			d.removeObservationLocked(o)
		}
	}
}

// discoverLocked answers a Discover: the target, its children down to
// resources (resource instances for a resource target), with dim for
// multiple resources and the attributes set by Write-Attributes.
func (d *Device) discoverLocked(p node.Path) response {
	if resp, ok := d.checkTarget(p); !ok {
		return resp
	}
	var b strings.Builder
	link := func(q node.Path, extra string) {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString("<")
		b.WriteString(q.String())
		b.WriteString(">")
		b.WriteString(extra)
		if a, ok := d.attrs[q]; ok {
			b.WriteString(a.links())
		}
	}
	resources := func(in node.Instance, ip node.Path) {
		ids := make([]uint16, 0, len(in.Resources)+4)
		dims := map[uint16]int{}
		for _, r := range in.Resources {
			ids = append(ids, r.ID)
			if r.Multiple {
				dims[r.ID] = len(r.Instances)
			}
		}
		if def, ok := d.reg.Object(ip.ObjectID()); ok {
			for id, rd := range def.Resources {
				if rd.Operations.Executable() && !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
		slices.Sort(ids)
		for _, id := range ids {
			rp, _ := ip.Child(id)
			extra := ""
			if n, ok := dims[id]; ok {
				extra = fmt.Sprintf(";dim=%d", n)
			}
			link(rp, extra)
		}
	}
	n, _ := d.st.get(p)
	switch n := n.(type) {
	case node.Object:
		link(p, "")
		for _, in := range n.Instances {
			ip, _ := p.Child(in.ID)
			link(ip, "")
			resources(in, ip)
		}
	case node.Instance:
		link(p, "")
		resources(n, p)
	case node.Resource:
		if !n.Multiple {
			link(p, "")
			break
		}
		link(p, fmt.Sprintf(";dim=%d", len(n.Instances)))
		ids := make([]uint16, 0, len(n.Instances))
		for id := range n.Instances {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			rip, _ := p.Child(id)
			link(rip, "")
		}
	case node.ResourceInstance:
		link(p, "")
	}
	return content(codec.LinkFormat, []byte(b.String()))
}

// decodeBody decodes a write payload for path p; the response is the error
// to answer.
func (d *Device) decodeBody(req request, p node.Path) (node.Node, response, bool) {
	if req.cf < 0 {
		return nil, answer(codes.BadRequest), false
	}
	n, err := codec.Decode(uint16(req.cf), req.body, p, d.reg)
	if err != nil {
		if errors.Is(err, codec.ErrUnsupportedFormat) {
			return nil, answer(codes.UnsupportedMediaType), false
		}
		return nil, answer(codes.BadRequest), false
	}
	return n, response{}, true
}

// writeLocked handles a Write: replace (PUT) or partial update (POST) of
// an object instance, a resource or a resource instance.
func (d *Device) writeLocked(req request, replace bool) response {
	p := req.path
	switch {
	case p.Level() == node.LevelRoot || p.Level() == node.LevelObject:
		if p.ObjectID() == 0 && p.Level() == node.LevelObject {
			return answer(codes.Unauthorized)
		}
		return answer(codes.MethodNotAllowed)
	case p.ObjectID() == 0:
		return answer(codes.Unauthorized)
	case d.st.instance(p.ObjectID(), p.InstanceID()) == nil:
		return answer(codes.NotFound)
	}
	if p.Level() >= node.LevelResource {
		def, known := d.reg.Resource(p.ObjectID(), p.ResourceID())
		if !known && p.Level() == node.LevelResource && !d.st.exists(p) {
			return answer(codes.NotFound)
		}
		if known && !def.Operations.Writable() {
			return answer(codes.MethodNotAllowed)
		}
	}
	n, resp, ok := d.decodeBody(req, p)
	if !ok {
		return resp
	}
	in := d.st.instance(p.ObjectID(), p.InstanceID())
	switch n := n.(type) {
	case node.Instance:
		for _, r := range n.Resources {
			if !resourceWritable(d.reg, p.ObjectID(), r.ID) {
				return answer(codes.MethodNotAllowed)
			}
		}
		if replace {
			kept := in.Resources[:0:0]
			for _, r := range in.Resources {
				if !resourceWritable(d.reg, p.ObjectID(), r.ID) {
					kept = append(kept, r)
				}
			}
			in.Resources = kept
		}
		for _, r := range n.Resources {
			d.writeResourceLocked(in, r, replace)
		}
	case node.Resource:
		if !replace && !n.Multiple {
			return answer(codes.MethodNotAllowed) // POST on a single resource is Execute
		}
		d.writeResourceLocked(in, n, replace)
	case node.ResourceInstance:
		r := d.st.resource(p.ObjectID(), p.InstanceID(), p.ResourceID())
		if r == nil || !r.Multiple {
			return answer(codes.NotFound)
		}
		if !replace {
			return answer(codes.MethodNotAllowed)
		}
		r.Instances[n.ID] = n.Value
	default:
		return answer(codes.BadRequest)
	}
	d.changedLocked(p)
	return answer(codes.Changed)
}

// writeResourceLocked writes r into instance in. A partial update of a
// multiple resource merges its resource instances.
func (d *Device) writeResourceLocked(in *node.Instance, r node.Resource, replace bool) {
	if r.Multiple && !replace {
		if old, ok := in.Resource(r.ID); ok && old.Multiple {
			merged := cloneResource(old)
			for id, v := range r.Instances {
				merged.Instances[id] = v
			}
			setResource(in, merged)
			return
		}
	}
	setResource(in, cloneResource(r))
}

// executeLocked handles an Execute. Arguments are recorded; a few
// resources have an effect.
func (d *Device) executeLocked(req request) response {
	p := req.path
	if p.ObjectID() == 0 {
		return answer(codes.Unauthorized)
	}
	in := d.st.instance(p.ObjectID(), p.InstanceID())
	if in == nil {
		return answer(codes.NotFound)
	}
	if req.cf >= 0 && req.cf != int(codec.TextPlain) {
		return answer(codes.BadRequest)
	}
	args := string(req.body)
	if d.executions == nil {
		d.executions = map[node.Path][]string{}
	}
	ex := append(d.executions[p], args)
	if len(ex) > maxExecutions {
		ex = ex[len(ex)-maxExecutions:]
	}
	d.executions[p] = ex
	switch {
	case p.ObjectID() == 3303 && p.ResourceID() == TempResetMinMax:
		if r, ok := in.Resource(TempSensorValue); ok {
			setResource(in, node.NewSingle(TempMinMeasured, r.Value))
			setResource(in, node.NewSingle(TempMaxMeasured, r.Value))
			d.changedLocked(p.Parent())
		}
	case p.ObjectID() == 3 && p.ResourceID() == 12: // Reset Error Code
		setResource(in, node.NewMultiple(11, model.TypeInteger, map[uint16]node.Value{0: node.IntValue(0)}))
		d.changedLocked(node.MustPath(3, p.InstanceID(), 11))
	case p.ObjectID() == 1 && p.ResourceID() == 8: // Registration Update Trigger
		if d.regID != "" && !d.closed {
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				if err := d.Update(d.ctx); err != nil {
					d.log.Warn("simdevice: triggered update failed", "err", err)
				}
			}()
		}
	}
	d.log.Debug("simdevice: executed", "path", p, "args", args)
	return answer(codes.Changed)
}

// createLocked handles a Create: POST on an object with the new instance.
func (d *Device) createLocked(req request) response {
	p := req.path
	if p.ObjectID() == 0 {
		return answer(codes.Unauthorized)
	}
	if d.st.object(p.ObjectID()) == nil {
		return answer(codes.NotFound)
	}
	if req.cf < 0 {
		return answer(codes.BadRequest)
	}
	var instances []node.Instance
	// A TLV payload of resources without an object instance TLV around
	// them (type bits not 00) lets the device pick the instance ID.
	bare := req.cf == int(codec.TLV) && len(req.body) > 0 && req.body[0]>>6 != 0
	if !bare {
		n, err := codec.Decode(uint16(req.cf), req.body, p, d.reg)
		if err != nil {
			if errors.Is(err, codec.ErrUnsupportedFormat) {
				return answer(codes.UnsupportedMediaType)
			}
			return answer(codes.BadRequest)
		}
		if o, ok := n.(node.Object); ok {
			instances = o.Instances
		}
	} else {
		// A payload with the resources only: the device picks the ID.
		id, ok := d.st.freeInstanceID(p.ObjectID())
		if !ok {
			return answer(codes.BadRequest)
		}
		ip, _ := p.Child(id)
		n, err := codec.Decode(uint16(req.cf), req.body, ip, d.reg)
		in, isInst := n.(node.Instance)
		if err != nil || !isInst {
			return answer(codes.BadRequest)
		}
		instances = []node.Instance{in}
	}
	if len(instances) == 0 {
		return answer(codes.BadRequest)
	}
	def, _ := d.reg.Object(p.ObjectID())
	obj := d.st.object(p.ObjectID())
	if def != nil && !def.Multiple && len(obj.Instances)+len(instances) > 1 {
		return answer(codes.BadRequest)
	}
	for _, in := range instances {
		if d.st.instance(p.ObjectID(), in.ID) != nil {
			return answer(codes.BadRequest)
		}
	}
	for _, in := range instances {
		in = cloneInstance(in)
		sort.Slice(in.Resources, func(i, j int) bool { return in.Resources[i].ID < in.Resources[j].ID })
		d.st.putInstance(p.ObjectID(), in)
		ip, _ := p.Child(in.ID)
		d.changedLocked(ip)
	}
	resp := answer(codes.Created)
	if len(instances) == 1 {
		resp.location = []string{fmt.Sprint(p.ObjectID()), fmt.Sprint(instances[0].ID)}
	}
	return resp
}

// deleteLocked handles a Delete of an object instance.
func (d *Device) deleteLocked(p node.Path) response {
	switch {
	case p.Level() != node.LevelInstance:
		if p.Level() != node.LevelRoot && p.ObjectID() == 0 {
			return answer(codes.Unauthorized)
		}
		return answer(codes.MethodNotAllowed)
	case p.ObjectID() == 0:
		return answer(codes.Unauthorized)
	case p.ObjectID() == 1 || p.ObjectID() == 3:
		if !d.st.exists(p) {
			return answer(codes.NotFound)
		}
		return answer(codes.MethodNotAllowed) // mandatory single instances
	}
	if !d.st.deleteInstance(p.ObjectID(), p.InstanceID()) {
		return answer(codes.NotFound)
	}
	for q := range d.attrs {
		if q.HasPrefix(p) {
			delete(d.attrs, q)
		}
	}
	d.changedLocked(p)
	return answer(codes.Deleted)
}

// writeAttributesLocked handles a Write-Attributes.
func (d *Device) writeAttributesLocked(p node.Path, queries []string) response {
	if resp, ok := d.checkTarget(p); !ok {
		if p.Level() == node.LevelResource && resp.code == codes.MethodNotAllowed {
			// Attributes on an executable resource make no sense, but
			// are harmless: accept them as real clients do.
		} else {
			return resp
		}
	}
	a, err := d.attrs[p].apply(queries)
	if err != nil {
		return answer(codes.BadRequest)
	}
	if d.attrs == nil {
		d.attrs = map[node.Path]Attributes{}
	}
	if a.Empty() {
		delete(d.attrs, p)
	} else {
		d.attrs[p] = a
	}
	now := time.Now()
	for _, o := range d.obs {
		if o.covers(p) {
			d.scheduleLocked(o, now)
		}
	}
	return answer(codes.Changed)
}

// compositeNodesLocked fills nodes with the existing nodes at paths. The
// root path stands for every object but Security. Missing paths are left
// out.
func (d *Device) compositeNodesLocked(paths []node.Path, nodes map[node.Path]node.Node) error {
	for _, p := range paths {
		if p.Level() == node.LevelRoot {
			for _, o := range d.st.objs {
				if o.ID != 0 {
					nodes[node.MustPath(o.ID)] = cloneObject(o)
				}
			}
			continue
		}
		if p.ObjectID() == 0 {
			return errUnauthorized
		}
		if n, ok := d.st.get(p); ok {
			nodes[p] = n
		}
	}
	return nil
}

var errUnauthorized = errors.New("security object")

// compositeRequestLocked decodes the paths of a Read- or Observe-Composite
// and picks the response format.
func (d *Device) compositeRequestLocked(req request) ([]node.Path, uint16, response, bool) {
	if req.path.Level() != node.LevelRoot {
		return nil, 0, answer(codes.MethodNotAllowed), false
	}
	if !isSenML(req.cf) {
		return nil, 0, answer(codes.UnsupportedMediaType), false
	}
	paths, err := codec.DecodePaths(uint16(req.cf), req.body)
	if err != nil || len(paths) == 0 {
		return nil, 0, answer(codes.BadRequest), false
	}
	format := uint16(req.cf)
	if req.accept >= 0 {
		if !isSenML(req.accept) {
			return nil, 0, answer(codes.NotAcceptable), false
		}
		format = uint16(req.accept)
	}
	return paths, format, response{}, true
}

func (d *Device) encodeCompositeLocked(paths []node.Path, format uint16) ([]byte, response, bool) {
	nodes := make(map[node.Path]node.Node, len(paths))
	if err := d.compositeNodesLocked(paths, nodes); err != nil {
		return nil, answer(codes.Unauthorized), false
	}
	if len(nodes) == 0 {
		return nil, answer(codes.NotFound), false
	}
	b, err := codec.EncodeComposite(format, nodes, d.reg)
	if err != nil {
		d.log.Warn("simdevice: encode composite", "err", err)
		return nil, answer(codes.InternalServerError), false
	}
	return b, response{}, true
}

// readCompositeLocked handles a Read-Composite (FETCH).
func (d *Device) readCompositeLocked(req request) response {
	paths, format, resp, ok := d.compositeRequestLocked(req)
	if !ok {
		return resp
	}
	b, resp, ok := d.encodeCompositeLocked(paths, format)
	if !ok {
		return resp
	}
	return content(format, b)
}

// observeCompositeLocked handles an Observe-Composite (FETCH, Observe 0).
func (d *Device) observeCompositeLocked(req request) response {
	paths, format, resp, ok := d.compositeRequestLocked(req)
	if !ok {
		return resp
	}
	b, resp, ok := d.encodeCompositeLocked(paths, format)
	if !ok {
		return resp
	}
	o, resp, ok := d.addObservationLocked(req, paths, true, format)
	if !ok {
		return resp
	}
	r := content(format, b)
	r.observe = int64(o.seq)
	return r
}

// writeCompositeLocked handles a Write-Composite (iPATCH): every value is
// checked before any is written.
func (d *Device) writeCompositeLocked(req request) response {
	if req.path.Level() != node.LevelRoot {
		return answer(codes.MethodNotAllowed)
	}
	if !isSenML(req.cf) {
		return answer(codes.UnsupportedMediaType)
	}
	nodes, err := codec.DecodeComposite(uint16(req.cf), req.body, nil, d.reg)
	if err != nil || len(nodes) == 0 {
		return answer(codes.BadRequest)
	}
	for p := range nodes {
		switch {
		case p.ObjectID() == 0:
			return answer(codes.Unauthorized)
		case p.Level() < node.LevelResource:
			return answer(codes.BadRequest)
		case d.st.instance(p.ObjectID(), p.InstanceID()) == nil:
			return answer(codes.NotFound)
		case !resourceWritable(d.reg, p.ObjectID(), p.ResourceID()):
			return answer(codes.MethodNotAllowed)
		}
		if p.Level() == node.LevelResourceInstance {
			r := d.st.resource(p.ObjectID(), p.InstanceID(), p.ResourceID())
			if r == nil || !r.Multiple {
				return answer(codes.NotFound)
			}
		}
	}
	for p, n := range nodes {
		in := d.st.instance(p.ObjectID(), p.InstanceID())
		switch n := n.(type) {
		case node.Resource:
			d.writeResourceLocked(in, n, true)
		case node.ResourceInstance:
			d.st.resource(p.ObjectID(), p.InstanceID(), p.ResourceID()).Instances[n.ID] = n.Value
		}
		d.changedLocked(p)
	}
	return answer(codes.Changed)
}
