// Package simdevice is a simulated LwM2M 1.1 client (a device) speaking
// CoAP over UDP, plain or secured with DTLS 1.2 PSK, built on go-coap and
// pion/dtls.
//
// A Device registers with a server (POST /rd), keeps its registration up to
// date (POST /rd/{id}) and answers the server's device-management requests
// on the same UDP connection: Read (GET, in every LwM2M content format),
// Discover (GET with Accept 40), Write (PUT replace, POST partial update),
// Execute (POST on an executable resource), Create (POST on an object),
// Delete, Write-Attributes (PUT with Uri-Query and no payload), Observe and
// Cancel Observation (GET with Observe 0 or 1, or a reset in reply to a
// notification), Read-Composite and Observe-Composite (FETCH), and
// Write-Composite (iPATCH). It also sends data with Send (POST /dp).
//
// The device's data is a small tree of node.Object values (by default
// objects 0, 1, 3 and 3303, see DefaultObjects) guarded by a mutex. Tests
// change values with Set, which notifies the observations of the changed
// path, and inspect what the server did with the accessors (Value,
// Executions, Observations, Count, LastRequest).
//
// Notifications are confirmable and always go to the address the device
// dialed; Rebind moves the device to a new local UDP port, as a NAT
// rebinding would, keeping its registration and its observations, whose
// tokens do not change.
//
// With Config.PSK the device runs a DTLS handshake at Start and speaks
// CoAP over DTLS; the same handler answers the server. With Config.CID it
// asks for a Connection ID (RFC 9146), and Rebind moves the DTLS session
// itself to the new port, without a handshake; without one, Rebind opens a
// new session, resuming the previous one from Config.SessionStore.
// Handshakes counts full and resumed handshakes, HandshakeFailures the
// failed ones.
//
// A Device keeps no goroutine of its own while idle: go-coap runs the
// connection, notifications are sent by short-lived goroutines and pmin/pmax
// use timers. Close (or the end of the context given to Start) stops
// everything.
package simdevice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
)

// Errors returned by the Device's methods (wrapped).
var (
	ErrNotStarted    = errors.New("simdevice: device not started")
	ErrClosed        = errors.New("simdevice: device closed")
	ErrNotRegistered = errors.New("simdevice: device not registered")
	ErrUnexpected    = errors.New("simdevice: unexpected response")
	ErrNoSuchPath    = errors.New("simdevice: no such path")
)

// Config configures a Device.
type Config struct {
	// Endpoint is the endpoint client name (ep). Required.
	Endpoint string
	// Server is the server's host:port (the balancer's, in a cluster).
	// Required unless Conn is set.
	Server string
	// Lifetime is the registration lifetime (lt), in whole seconds;
	// default 300 s.
	Lifetime time.Duration
	// Version is the LwM2M version (lwm2m); default "1.1".
	Version string
	// Binding is the binding mode (b); default "U".
	Binding string
	// Objects is the initial data of the device. Default:
	// DefaultObjects(Endpoint, "coap://"+Server, Lifetime, Binding). The
	// slice is copied.
	Objects []node.Object
	// Registry holds the definitions of Objects. Default: a registry
	// like Registry() shared by the devices that have none, so that
	// thousands of devices do not hold thousands of copies; it must not
	// be modified.
	Registry *model.Registry
	// Formats are the content formats announced in the registration's ct
	// attribute; default SenML CBOR, SenML JSON, TLV, LwM2M JSON and CBOR.
	Formats []uint16
	// Logger receives the device's logs; default slog.Default().
	Logger *slog.Logger
	// Conn, if set, is the UDP socket Start uses instead of dialing
	// Server. It must be connected to the server (net.DialUDP); the
	// Device owns it and closes it (also when the DTLS handshake fails;
	// a later Start then dials).
	Conn *net.UDPConn
	// Dial, if set, opens the device's sockets: at Start when Conn is
	// nil, and at every Rebind (also with DTLS, where the session runs
	// over them). Default: net.DialUDP to Server.
	Dial func(ctx context.Context, server string) (*net.UDPConn, error)
	// NonConfirmable makes notifications non-confirmable. By default they
	// are confirmable, retransmitted by go-coap until acknowledged.
	NonConfirmable bool
	// MaxObservations bounds the number of observations; default 64.
	// Further Observe requests get 5.03.
	MaxObservations int
	// ACKTimeout is the CoAP ACK_TIMEOUT for the device's confirmable
	// messages; default 2 s (go-coap's default).
	ACKTimeout time.Duration
	// BlockSize, when not zero, makes the device send representations
	// larger than BlockSize bytes block-wise (RFC 7959): answers to GET
	// and FETCH and notifications carry the first block with Block2 (NUM
	// 0, M set), and the server gets the later blocks with GET or FETCH
	// and Block2 NUM 1, 2, ..., answered from the current value. It is
	// rounded down to a power of two between 16 and 1024. By default a
	// representation goes in one datagram, whatever its size.
	BlockSize int

	// PSK, when not nil, makes the device speak CoAP over DTLS 1.2 with
	// this pre-shared key and PSKIdentity (the server's security info of
	// the endpoint must match). The sockets still come from Conn and Dial.
	// Without Objects, the default Security object holds the identity and
	// the key, in PSK mode, and the URI coaps://Server.
	PSK         []byte
	PSKIdentity string
	// CipherSuites are the PSK cipher suites offered; default
	// DefaultCipherSuites.
	CipherSuites []piondtls.CipherSuiteID
	// CID asks the server for a DTLS Connection ID (RFC 9146) that the
	// device sends in its records (it asks for none in return). With one,
	// Rebind keeps the DTLS session on the new socket.
	CID bool
	// SessionStore keeps the client side of DTLS sessions for resumption:
	// a device offers its last session when it opens a new one (at a
	// Rebind without CID, or a new Start of a fleet's device), and the
	// server, which shares its sessions across the cluster, answers with
	// an abbreviated handshake. Keys are prefixed with PSKIdentity, so
	// one store can serve many devices. Default: a SessionCache of the
	// device's own; see NoResumption.
	SessionStore piondtls.SessionStore
	// NoResumption disables session resumption: every handshake is a
	// full one.
	NoResumption bool
	// HandshakeTimeout bounds a DTLS handshake; default
	// DefaultHandshakeTimeout. A wrong key shows as a timeout, since the
	// server drops the Finished it cannot decrypt.
	HandshakeTimeout time.Duration
}

// Op is a kind of request the device handles.
type Op uint8

// Kinds of server requests.
const (
	OpUnknown Op = iota
	OpRead
	OpDiscover
	OpWrite
	OpWriteAttributes
	OpExecute
	OpCreate
	OpDelete
	OpObserve
	OpCancelObserve
	OpReadComposite
	OpObserveComposite
	OpWriteComposite
	OpReset // a reset in reply to a notification
	numOps
)

var opNames = [numOps]string{"unknown", "read", "discover", "write", "write-attributes", "execute",
	"create", "delete", "observe", "cancel-observe", "read-composite", "observe-composite",
	"write-composite", "reset"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Request describes a server request the device handled.
type Request struct {
	Op   Op
	Code codes.Code
	Path string
	// Accept and ContentFormat are the options of the request, -1 when
	// absent.
	Accept        int
	ContentFormat int
	// Response is the code the device answered.
	Response codes.Code
	// ResponseFormat is the content format of the answer, -1 if none.
	ResponseFormat int
}

// maxExecutions is the number of Execute arguments kept per path.
const maxExecutions = 16

// Device is a simulated LwM2M client. Its methods are safe for concurrent
// use.
type Device struct {
	cfg Config
	log *slog.Logger
	reg *model.Registry

	mu         sync.Mutex
	st         store
	attrs      map[node.Path]Attributes
	obs        map[string]*observation // by token
	executions map[node.Path][]string
	counts     [numOps]int
	last       Request
	cc         *client.Conn
	sec        *secureSession // the DTLS session of cc, nil in plain CoAP
	sessions   piondtls.SessionStore
	hsFull     int
	hsResumed  int
	hsFailed   int
	regID      string
	regLt      int64  // lifetime sent at the last Register/Update
	regBinding string // binding sent at the last Register/Update
	started    bool
	closed     bool
	ctx        context.Context // cancelled by Close
	cancel     context.CancelFunc
	stopCtx    func() bool // stops the AfterFunc of Start's context
	wg         sync.WaitGroup
}

// New returns a device configured by cfg. It does no I/O; call Start.
func New(cfg Config) *Device {
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 300 * time.Second
	}
	if cfg.Version == "" {
		cfg.Version = "1.1"
	}
	if cfg.Binding == "" {
		cfg.Binding = "U"
	}
	if cfg.Registry == nil {
		cfg.Registry = sharedRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Formats) == 0 {
		cfg.Formats = []uint16{codec.SenMLCBOR, codec.SenMLJSON, codec.TLV, codec.LwM2MJSON, codec.CBOR}
	}
	if cfg.MaxObservations <= 0 {
		cfg.MaxObservations = 64
	}
	cfg.BlockSize = blockSize(cfg.BlockSize)
	objs := cfg.Objects
	if objs == nil {
		if cfg.PSK != nil {
			objs = DefaultObjects(cfg.Endpoint, "coaps://"+cfg.Server, cfg.Lifetime, cfg.Binding)
			pskSecurity(objs, cfg.PSKIdentity, cfg.PSK)
		} else {
			objs = DefaultObjects(cfg.Endpoint, "coap://"+cfg.Server, cfg.Lifetime, cfg.Binding)
		}
	}
	d := &Device{
		cfg:  cfg,
		log:  cfg.Logger.With("ep", cfg.Endpoint),
		reg:  cfg.Registry,
		obs:  map[string]*observation{},
		last: Request{Accept: -1, ContentFormat: -1, ResponseFormat: -1},
	}
	d.st.objs = make([]node.Object, len(objs))
	for i, o := range objs {
		d.st.objs[i] = cloneObject(o)
		node.Sort(&d.st.objs[i])
	}
	if cfg.PSK != nil && !cfg.NoResumption {
		d.sessions = cfg.SessionStore
		if d.sessions == nil {
			d.sessions = NewSessionCache()
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// pskSecurity sets the Security instance /0/0 of objs to PSK mode with the
// identity and key.
func pskSecurity(objs []node.Object, identity string, key []byte) {
	for i := range objs {
		if objs[i].ID != 0 {
			continue
		}
		for j := range objs[i].Instances {
			in := &objs[i].Instances[j]
			setResource(in, node.NewSingle(2, node.IntValue(0))) // PSK
			setResource(in, node.NewSingle(3, node.OpaqueValue([]byte(identity))))
			setResource(in, node.NewSingle(5, node.OpaqueValue(key)))
		}
	}
}

// Endpoint returns the device's endpoint name.
func (d *Device) Endpoint() string { return d.cfg.Endpoint }

// Registry returns the object registry the device encodes and decodes with.
// It must not be modified.
func (d *Device) Registry() *model.Registry { return d.reg }

// Start opens the device's UDP socket and starts serving the server's
// requests on it. With a PSK, it first runs the DTLS handshake (resuming a
// session of the SessionStore if it can); ctx bounds it. The device closes
// itself when ctx is done.
func (d *Device) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	if d.started {
		d.mu.Unlock()
		return errors.New("simdevice: already started")
	}
	d.started = true
	d.mu.Unlock()

	conn := d.cfg.Conn
	if conn == nil {
		var err error
		if conn, err = d.dial(ctx); err != nil {
			d.mu.Lock()
			d.started = false
			d.mu.Unlock()
			return err
		}
	}
	cc, sec, err := d.session(ctx, conn)
	if err != nil {
		d.mu.Lock()
		d.started = false
		d.cfg.Conn = nil // closed by the failed handshake; a new Start dials
		d.mu.Unlock()
		return err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = cc.Close()
		return ErrClosed
	}
	d.cc, d.sec = cc, sec
	d.stopCtx = context.AfterFunc(ctx, func() { _ = d.Close() })
	d.mu.Unlock()
	d.log.Debug("simdevice started", "local", conn.LocalAddr(), "server", conn.RemoteAddr())
	return nil
}

// session opens the device's CoAP session over conn: a DTLS handshake
// first when the device is secure (sec is nil otherwise).
func (d *Device) session(ctx context.Context, conn *net.UDPConn) (cc *client.Conn, sec *secureSession, err error) {
	if !d.secure() {
		return d.newClient(conn), nil, nil
	}
	if sec, err = d.handshake(ctx, conn); err != nil {
		return nil, nil, err
	}
	return sec.cc, sec, nil
}

func (d *Device) dial(ctx context.Context) (*net.UDPConn, error) {
	if d.cfg.Dial != nil {
		c, err := d.cfg.Dial(ctx, d.cfg.Server)
		if err != nil {
			return nil, fmt.Errorf("simdevice: dial %s: %w", d.cfg.Server, err)
		}
		return c, nil
	}
	raddr, err := net.ResolveUDPAddr("udp", d.cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("simdevice: resolve %s: %w", d.cfg.Server, err)
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("simdevice: dial %s: %w", d.cfg.Server, err)
	}
	return c, nil
}

func (d *Device) newClient(conn *net.UDPConn) *client.Conn {
	return udp.Client(conn, d.clientOptions()...)
}

// clientOptions are the go-coap options of the device's connection, plain
// or DTLS.
func (d *Device) clientOptions() []udp.Option {
	ackTimeout := d.cfg.ACKTimeout
	if ackTimeout <= 0 {
		ackTimeout = 2 * time.Second
	}
	return []udp.Option{
		options.WithHandlerFunc(client.HandlerFunc(d.handle)),
		options.WithCloseSocket(),
		// Without blockwise, go-coap sends a notification with the
		// message ID the device chose, which a reset refers to. LwM2M
		// payloads of the simulated objects fit in one datagram.
		options.WithBlockwise(false, blockwise.SZX1024, 3*time.Second),
		options.WithContext(d.ctx),
		options.WithTransmission(1, ackTimeout, 4),
		options.WithErrors(func(err error) { d.log.Debug("simdevice: coap", "err", err) }),
	}
}

// conn returns the current connection.
func (d *Device) conn() (*client.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.cc == nil {
		return nil, ErrNotStarted
	}
	return d.cc, nil
}

// LocalAddr returns the address of the device's socket, nil before Start.
func (d *Device) LocalAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cc == nil {
		return nil
	}
	return d.cc.LocalAddr()
}

// Rebind closes the device's UDP socket and opens a new one (with a new
// local port), as a NAT rebinding would. The registration and the
// observations, with their tokens, are kept; the next message the device
// sends (a notification, an Update) comes from the new port.
//
// Over DTLS with a Connection ID (Config.CID, and the server gave one),
// the DTLS session moves to the new socket as it is: no handshake, the
// server finds the session by its CID and follows the new address once a
// record arrives from it. Datagrams in flight to the old port are lost, as
// behind a NAT (confirmable messages are retransmitted). Without a CID,
// Rebind opens a new session from the new socket, resuming the old one
// from the SessionStore when the server still has it (see Handshakes),
// then closes the old session (close_notify); if the handshake fails, the
// device stays on its old session and Rebind returns the error.
func (d *Device) Rebind(ctx context.Context) error {
	if _, err := d.conn(); err != nil {
		return err
	}
	conn, err := d.dial(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	sec := d.sec
	d.mu.Unlock()
	if sec != nil && sec.cid {
		if err := sec.rc.rebind(conn); err != nil {
			return ErrClosed
		}
		d.log.Debug("simdevice rebound, same DTLS session", "local", conn.LocalAddr())
		return nil
	}
	cc, sec, err := d.session(ctx, conn)
	if err != nil {
		return err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = cc.Close()
		return ErrClosed
	}
	old := d.cc
	d.cc, d.sec = cc, sec
	d.mu.Unlock()
	d.log.Debug("simdevice rebound", "local", conn.LocalAddr())
	if err := old.Close(); err != nil {
		d.log.Debug("simdevice: close old socket", "err", err)
	}
	return nil
}

// Close stops the device: it cancels its observations and closes its
// socket, without deregistering. It waits for the notifications in flight.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	cc := d.cc
	for tok, o := range d.obs {
		o.stopLocked()
		delete(d.obs, tok)
	}
	stop := d.stopCtx
	d.mu.Unlock()
	d.cancel()
	if stop != nil {
		stop()
	}
	var err error
	if cc != nil {
		err = cc.Close()
	}
	d.wg.Wait()
	if err != nil {
		return fmt.Errorf("simdevice: close: %w", err)
	}
	return nil
}

func queryOpt(k, v string) message.Option {
	return message.Option{ID: message.URIQuery, Value: []byte(k + "=" + v)}
}

// registrationPayload is the CoRE link-format list of the device's objects
// and instances, without the Security object.
func (d *Device) registrationPayload() string {
	var b strings.Builder
	b.WriteString(`</>;rt="oma.lwm2m";ct=`)
	if len(d.cfg.Formats) == 1 {
		b.WriteString(strconv.Itoa(int(d.cfg.Formats[0])))
	} else {
		b.WriteByte('"')
		for i, f := range d.cfg.Formats {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(strconv.Itoa(int(f)))
		}
		b.WriteByte('"')
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.st.objs {
		if o.ID == 0 {
			continue
		}
		if len(o.Instances) == 0 {
			fmt.Fprintf(&b, ",</%d>", o.ID)
			continue
		}
		for _, in := range o.Instances {
			fmt.Fprintf(&b, ",</%d/%d>", o.ID, in.ID)
		}
	}
	return b.String()
}

// lifetimeAndBinding returns the lifetime and binding of /1/0, or the
// configured ones.
func (d *Device) lifetimeAndBindingLocked() (int64, string) {
	lt := int64(d.cfg.Lifetime / time.Second)
	b := d.cfg.Binding
	if r := d.st.resource(1, 0, 1); r != nil && !r.Multiple {
		if v, ok := r.Value.AsInt(); ok {
			lt = v
		}
	}
	if r := d.st.resource(1, 0, 7); r != nil && !r.Multiple {
		if v, ok := r.Value.AsString(); ok && v != "" {
			b = v
		}
	}
	return lt, b
}

// Register registers the device (POST /rd) and returns the registration
// ID, the last segment of the Location-Path of the server's 2.01 answer.
// Observations from an earlier registration are dropped, as the server
// forgets them too.
func (d *Device) Register(ctx context.Context) (string, error) {
	cc, err := d.conn()
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	lt, binding := d.lifetimeAndBindingLocked()
	d.mu.Unlock()
	payload := d.registrationPayload()
	resp, err := cc.Post(ctx, "/rd", message.AppLinkFormat, bytes.NewReader([]byte(payload)),
		queryOpt("ep", d.cfg.Endpoint),
		queryOpt("lt", strconv.FormatInt(lt, 10)),
		queryOpt("lwm2m", d.cfg.Version),
		queryOpt("b", binding))
	if err != nil {
		return "", fmt.Errorf("simdevice: register %s: %w", d.cfg.Endpoint, err)
	}
	defer cc.ReleaseMessage(resp)
	if resp.Code() != codes.Created {
		return "", fmt.Errorf("simdevice: register %s: %w: %v", d.cfg.Endpoint, ErrUnexpected, resp.Code())
	}
	loc, err := resp.Options().LocationPath()
	if err != nil {
		return "", fmt.Errorf("simdevice: register %s: no Location-Path: %w", d.cfg.Endpoint, err)
	}
	id, ok := strings.CutPrefix(loc, "/rd/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", fmt.Errorf("simdevice: register %s: %w: Location-Path %q", d.cfg.Endpoint, ErrUnexpected, loc)
	}
	d.mu.Lock()
	d.regID = id
	d.regLt, d.regBinding = lt, binding
	d.dropObservationsLocked()
	d.mu.Unlock()
	d.log.Debug("simdevice registered", "regId", id)
	return id, nil
}

// Update sends a registration update (POST /rd/{id}). It carries lt and b
// when /1/0/1 or /1/0/7 changed since the last Register or Update, and no
// payload.
func (d *Device) Update(ctx context.Context) error {
	cc, err := d.conn()
	if err != nil {
		return err
	}
	d.mu.Lock()
	id := d.regID
	lt, binding := d.lifetimeAndBindingLocked()
	var opts message.Options
	if lt != d.regLt {
		opts = append(opts, queryOpt("lt", strconv.FormatInt(lt, 10)))
	}
	if binding != d.regBinding {
		opts = append(opts, queryOpt("b", binding))
	}
	d.mu.Unlock()
	if id == "" {
		return ErrNotRegistered
	}
	resp, err := cc.Post(ctx, "/rd/"+id, message.TextPlain, nil, opts...)
	if err != nil {
		return fmt.Errorf("simdevice: update %s: %w", d.cfg.Endpoint, err)
	}
	defer cc.ReleaseMessage(resp)
	if resp.Code() != codes.Changed {
		return fmt.Errorf("simdevice: update %s: %w: %v", d.cfg.Endpoint, ErrUnexpected, resp.Code())
	}
	d.mu.Lock()
	d.regLt, d.regBinding = lt, binding
	d.mu.Unlock()
	return nil
}

// Deregister deletes the registration (DELETE /rd/{id}) and drops the
// observations.
func (d *Device) Deregister(ctx context.Context) error {
	cc, err := d.conn()
	if err != nil {
		return err
	}
	d.mu.Lock()
	id := d.regID
	d.mu.Unlock()
	if id == "" {
		return ErrNotRegistered
	}
	resp, err := cc.Delete(ctx, "/rd/"+id)
	if err != nil {
		return fmt.Errorf("simdevice: deregister %s: %w", d.cfg.Endpoint, err)
	}
	defer cc.ReleaseMessage(resp)
	if resp.Code() != codes.Deleted {
		return fmt.Errorf("simdevice: deregister %s: %w: %v", d.cfg.Endpoint, ErrUnexpected, resp.Code())
	}
	d.mu.Lock()
	d.regID = ""
	d.dropObservationsLocked()
	d.mu.Unlock()
	return nil
}

// RunUpdates sends an Update every interval (default: 90% of the
// lifetime) until ctx is done or the device is closed. Failed updates are
// logged. It returns ctx's error or ErrClosed.
func (d *Device) RunUpdates(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = d.cfg.Lifetime * 9 / 10
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.ctx.Done():
			return ErrClosed
		case <-t.C:
			if err := d.Update(ctx); err != nil {
				d.log.Warn("simdevice: periodic update failed", "err", err)
			}
		}
	}
}

// Send sends nodes to the server with the Send operation (POST /dp) in
// format, SenML JSON or SenML CBOR. The server must answer 2.04.
func (d *Device) Send(ctx context.Context, nodes map[node.Path]node.Node, format uint16) error {
	cc, err := d.conn()
	if err != nil {
		return err
	}
	payload, err := codec.EncodeComposite(format, nodes, d.reg)
	if err != nil {
		return fmt.Errorf("simdevice: send: %w", err)
	}
	resp, err := cc.Post(ctx, "/dp", message.MediaType(format), bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("simdevice: send: %w", err)
	}
	defer cc.ReleaseMessage(resp)
	if resp.Code() != codes.Changed {
		return fmt.Errorf("simdevice: send: %w: %v", ErrUnexpected, resp.Code())
	}
	return nil
}

// SendPaths reads the given paths of the device and sends them (see Send).
func (d *Device) SendPaths(ctx context.Context, format uint16, paths ...node.Path) error {
	nodes := make(map[node.Path]node.Node, len(paths))
	d.mu.Lock()
	for _, p := range paths {
		n, ok := d.st.get(p)
		if !ok {
			d.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrNoSuchPath, p)
		}
		nodes[p] = n
	}
	d.mu.Unlock()
	return d.Send(ctx, nodes, format)
}

// RegistrationID returns the current registration ID, "" when not
// registered.
func (d *Device) RegistrationID() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.regID
}

// Value returns the value of the single resource or resource instance at
// p.
func (d *Device) Value(p node.Path) (node.Value, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.st.get(p)
	if !ok {
		return node.Value{}, false
	}
	switch n := n.(type) {
	case node.Resource:
		if !n.Multiple {
			return n.Value, true
		}
	case node.ResourceInstance:
		return n.Value, true
	}
	return node.Value{}, false
}

// Node returns a copy of the node at p.
func (d *Device) Node(p node.Path) (node.Node, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.get(p)
}

// Set sets the value of the single resource or resource instance at p and
// notifies the observations that cover p. The instance must exist; the
// resource is created if missing. The value's type must match the model.
func (d *Device) Set(p node.Path, v node.Value) error {
	if !v.IsValid() {
		return fmt.Errorf("simdevice: set %s: invalid value", p)
	}
	if def, ok := d.reg.Resource(p.ObjectID(), p.ResourceID()); ok && def.Type != v.Type() {
		return fmt.Errorf("simdevice: set %s: value of type %s, model says %s", p, v.Type(), def.Type)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch p.Level() {
	case node.LevelResource:
		in := d.st.instance(p.ObjectID(), p.InstanceID())
		if in == nil {
			return fmt.Errorf("%w: %s", ErrNoSuchPath, p.Parent())
		}
		if r := d.st.resource(p.ObjectID(), p.InstanceID(), p.ResourceID()); r != nil && r.Multiple {
			return fmt.Errorf("simdevice: set %s: multiple resource", p)
		}
		setResource(in, node.NewSingle(p.ResourceID(), v))
		if p.ObjectID() == 3303 && p.ResourceID() == TempSensorValue {
			d.updateMinMaxLocked(in, v)
		}
	case node.LevelResourceInstance:
		r := d.st.resource(p.ObjectID(), p.InstanceID(), p.ResourceID())
		if r == nil || !r.Multiple {
			return fmt.Errorf("%w: %s", ErrNoSuchPath, p.Parent())
		}
		r.Instances[p.ResourceInstanceID()] = v
	default:
		return fmt.Errorf("simdevice: set %s: not a resource path", p)
	}
	d.changedLocked(p)
	return nil
}

// updateMinMaxLocked tracks the min and max measured values of a
// temperature instance.
func (d *Device) updateMinMaxLocked(in *node.Instance, v node.Value) {
	f, ok := v.AsFloat()
	if !ok {
		return
	}
	if r, ok := in.Resource(TempMinMeasured); !ok || r.Value.Type() != model.TypeFloat || mustFloat(r.Value) > f {
		setResource(in, node.NewSingle(TempMinMeasured, v))
	}
	if r, ok := in.Resource(TempMaxMeasured); !ok || r.Value.Type() != model.TypeFloat || mustFloat(r.Value) < f {
		setResource(in, node.NewSingle(TempMaxMeasured, v))
	}
}

func mustFloat(v node.Value) float64 {
	f, _ := v.AsFloat()
	return f
}

// Executions returns the arguments of the Execute requests on p, oldest
// first (at most the last 16).
func (d *Device) Executions(p node.Path) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.executions[p]...)
}

// Observations returns the number of active observations.
func (d *Device) Observations() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.obs)
}

// Count returns the number of requests of kind op the device handled.
func (d *Device) Count(op Op) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if op >= numOps {
		return 0
	}
	return d.counts[op]
}

// LastRequest returns the last server request the device handled.
func (d *Device) LastRequest() Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// Attributes returns the Write-Attributes attributes set on p.
func (d *Device) Attributes(p node.Path) Attributes {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attrs[p]
}
