package clicmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/model"
	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// deviceHelp is appended to every device command's help.
const deviceHelp = `The request goes through the northbound API (LESHAN_REQ, docs/northbound.md) to
the instance that holds the device's session. --timeout is the time the device
has to answer (the request's "timeout"). Output: "path = value" lines, or the
response code; with --json, the "resp" JSON. A device error code (NOT_FOUND, ...)
or a cluster error (endpoint not registered, device timeout) exits with status 1.`

// formatNames maps --format names to content formats.
var formatNames = map[string]uint16{
	"text": codec.TextPlain, "opaque": codec.Opaque, "cbor": codec.CBOR,
	"senml-json": codec.SenMLJSON, "senml+json": codec.SenMLJSON,
	"senml-cbor": codec.SenMLCBOR, "senml+cbor": codec.SenMLCBOR,
	"tlv": codec.TLV, "lwm2m-json": codec.LwM2MJSON, "lwm2m+json": codec.LwM2MJSON,
	"link": codec.LinkFormat, "link-format": codec.LinkFormat,
}

const formatUsage = "content format: text, opaque, cbor, senml-json, senml-cbor, tlv, lwm2m-json, link, or a number (default: the server's choice)"

// ParseFormat parses a --format value: a name (text, opaque, cbor,
// senml-json, senml-cbor, tlv, lwm2m-json, link, or codec.FormatName's
// spelling) or a content-format number.
func ParseFormat(s string) (uint16, error) {
	if f, ok := formatNames[strings.ToLower(s)]; ok {
		return f, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("unknown content format %q (text, opaque, cbor, senml-json, senml-cbor, tlv, lwm2m-json, link, or a number)", s)
	}
	return uint16(n), nil
}

// formatFlag is an optional --format.
type formatFlag struct{ v *uint16 }

func (f *formatFlag) String() string {
	if f == nil || f.v == nil {
		return ""
	}
	return codec.FormatName(*f.v)
}

func (f *formatFlag) Set(s string) error {
	v, err := ParseFormat(s)
	if err != nil {
		return err
	}
	f.v = &v
	return nil
}

// optUint32 and optFloat are optional numeric flags: nil until set.
type optUint32 struct{ v *uint32 }

func (o *optUint32) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*o.v), 10)
}

func (o *optUint32) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("not a non-negative integer")
	}
	v := uint32(n)
	o.v = &v
	return nil
}

type optFloat struct{ v *float64 }

func (o *optFloat) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatFloat(*o.v, 'g', -1, 64)
}

func (o *optFloat) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("not a number")
	}
	o.v = &f
	return nil
}

// deviceCommands returns the commands that send requests to devices.
func deviceCommands() []*Command {
	return []*Command{readCmd(), writeCmd(), executeCmd(), discoverCmd(), createCmd(), deleteCmd(),
		writeAttributesCmd(), observeCmd(), readCompositeCmd()}
}

// deviceCmd builds a device command: prepare checks the arguments and
// returns the endpoint and request, sent with Env.Client.
func deviceCmd(name, summary, args, help string, setup func(fs *flag.FlagSet) func(env *Env, args []string) (string, northbound.Req, error)) *Command {
	return &Command{
		Name: name, Summary: summary, Args: args, SelfTimed: true,
		Help: strings.TrimSpace(help + "\n\n" + deviceHelp),
		Setup: func(fs *flag.FlagSet) RunFunc {
			prepare := setup(fs)
			return func(ctx context.Context, env *Env, args []string) error {
				ep, req, err := prepare(env, args)
				if err != nil {
					return err
				}
				return Request(ctx, env, ep, req)
			}
		},
	}
}

// positional checks the count of positional arguments: n exactly, or at
// least n when more is true.
func positional(args []string, n int, more bool, synopsis string) error {
	if len(args) < n {
		return usageErrorf("missing arguments: want %s", synopsis)
	}
	if !more && len(args) > n {
		return usageErrorf("unexpected argument %q", args[n])
	}
	for _, a := range args[:1] {
		if a == "" {
			return usageErrorf("empty endpoint name")
		}
	}
	return nil
}

func readCmd() *Command {
	return deviceCmd("read", "read a value, an instance or an object from a device", "EP PATH [--format F]", `Example: lwm2m-cli read dev1 /3/0/0
/3/0/0 = "Open Mobile Alliance"`,
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			var f formatFlag
			fs.Var(&f, "format", formatUsage)
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, false, "EP PATH"); err != nil {
					return "", northbound.Req{}, err
				}
				return args[0], northbound.Req{Kind: northbound.KindRead, Path: args[1], ContentFormat: f.v}, nil
			}
		})
}

func discoverCmd() *Command {
	return deviceCmd("discover", "list the objects, instances and resources a device has, with their attributes", "EP PATH", "",
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, false, "EP PATH"); err != nil {
					return "", northbound.Req{}, err
				}
				return args[0], northbound.Req{Kind: northbound.KindDiscover, Path: args[1]}, nil
			}
		})
}

func deleteCmd() *Command {
	return deviceCmd("delete", "delete an object instance on a device", "EP PATH", "",
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, false, "EP PATH"); err != nil {
					return "", northbound.Req{}, err
				}
				return args[0], northbound.Req{Kind: northbound.KindDelete, Path: args[1]}, nil
			}
		})
}

func executeCmd() *Command {
	return deviceCmd("execute", "execute a resource of a device (reboot: /3/0/4)", `EP PATH [--args "0='x',1"]`, "",
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			a := fs.String("args", "", `execute arguments: digits, each optionally ='text', separated by commas`)
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, false, "EP PATH"); err != nil {
					return "", northbound.Req{}, err
				}
				return args[0], northbound.Req{Kind: northbound.KindExecute, Path: args[1], Arguments: *a}, nil
			}
		})
}

// readNode reads a --node value: JSON, or "-" for standard input.
func readNode(s string, stdin io.Reader) (*node.Any, error) {
	b := []byte(s)
	if s == "-" {
		var err error
		if b, err = io.ReadAll(io.LimitReader(stdin, 1<<20)); err != nil {
			return nil, fmt.Errorf("read the node from standard input: %w", err)
		}
	}
	n, err := node.Unmarshal(b)
	if err != nil {
		return nil, usageErrorf("--node: %s", err)
	}
	return &node.Any{Node: n}, nil
}

// valueNode builds the node of a single value given on the command line
// for a resource or resource instance path.
func valueNode(path, typ, value string) (*node.Any, error) {
	p, err := node.ParsePath(path)
	if err != nil {
		return nil, usageErrorf("path %q: %s", path, err)
	}
	if p.Level() < node.LevelResource {
		return nil, usageErrorf("a value needs a resource or resource instance path; give an instance with --node")
	}
	t, err := model.ParseResourceType(typ)
	if err != nil || t == model.TypeNone {
		return nil, usageErrorf("--type %q: one of string, integer, unsigned_integer, float, boolean, opaque, time, objlnk, corelnk", typ)
	}
	var raw string
	switch t {
	case model.TypeString, model.TypeCorelnk, model.TypeObjlnk:
		b, _ := json.Marshal(value)
		raw = string(b)
	case model.TypeOpaque:
		v := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(value, "0x"), "0X"))
		b, _ := json.Marshal(v)
		raw = string(b)
	case model.TypeTime:
		raw = value
		if ts, err := time.Parse(time.RFC3339, value); err == nil {
			raw = strconv.FormatInt(ts.Unix(), 10)
		}
	default:
		raw = value
	}
	kind := "singleresource"
	if p.Level() == node.LevelResourceInstance {
		kind = "resourceinstance"
	}
	doc := fmt.Sprintf(`{"kind":%q,"id":%d,"type":%q,"value":%s}`, kind, p.Last(), t, raw)
	n, err := node.Unmarshal([]byte(doc))
	if err != nil || !json.Valid([]byte(raw)) {
		return nil, usageErrorf("value %q is not a valid %s", value, t)
	}
	return &node.Any{Node: n}, nil
}

func writeCmd() *Command {
	return deviceCmd("write", "write a value, or a node given as JSON, to a device",
		"EP PATH (VALUE [--type T] | --node JSON) [--mode replace|update] [--format F]", `Examples:
  lwm2m-cli write dev1 /3/0/13 1700000000 --type time
  lwm2m-cli write dev1 /1/0/1 300 --type integer
  lwm2m-cli write dev1 /3/0 --mode update --node '{"kind":"instance","id":0,"resources":[...]}'
A value is for a resource or resource instance path; its --type defaults to
string (time also takes RFC 3339, opaque takes hex). --node takes the node JSON
of docs/northbound.md, or "-" to read it from standard input. A value that
starts with "-" goes after "--": write dev1 /3303/0/5700 --type float -- -4.5`,
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			var f formatFlag
			fs.Var(&f, "format", formatUsage)
			typ := fs.String("type", "string", "type of VALUE: string, integer, unsigned_integer, float, boolean, opaque, time, objlnk, corelnk")
			mode := fs.String("mode", northbound.ModeReplace, `"replace" (PUT) or "update" (partial update)`)
			nodeJSON := fs.String("node", "", `the node to write as JSON, or "-" for standard input`)
			return func(env *Env, args []string) (string, northbound.Req, error) {
				req := northbound.Req{Kind: northbound.KindWrite, Mode: *mode, ContentFormat: f.v}
				var err error
				switch {
				case *nodeJSON != "":
					if err := positional(args, 2, false, "EP PATH --node JSON"); err != nil {
						return "", req, err
					}
					req.Node, err = readNode(*nodeJSON, env.Stdin)
				default:
					if err := positional(args, 3, false, "EP PATH VALUE"); err != nil {
						return "", req, err
					}
					req.Node, err = valueNode(args[1], *typ, args[2])
				}
				req.Path = args[1]
				return args[0], req, err
			}
		})
}

func createCmd() *Command {
	return deviceCmd("create", "create an object instance on a device", "EP PATH --node JSON [--format F]", `PATH is the object ("/3303"), or the new instance ("/3303/1"). --node is an
"instance" node as JSON, or "-" to read it from standard input.`,
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			var f formatFlag
			fs.Var(&f, "format", formatUsage)
			nodeJSON := fs.String("node", "", `the instance to create as JSON, or "-" for standard input (required)`)
			return func(env *Env, args []string) (string, northbound.Req, error) {
				req := northbound.Req{Kind: northbound.KindCreate, ContentFormat: f.v}
				if err := positional(args, 2, false, "EP PATH --node JSON"); err != nil {
					return "", req, err
				}
				if *nodeJSON == "" {
					return "", req, usageErrorf("--node is required")
				}
				n, err := readNode(*nodeJSON, env.Stdin)
				req.Path, req.Node = args[1], n
				return args[0], req, err
			}
		})
}

func writeAttributesCmd() *Command {
	return deviceCmd("write-attributes", "set the notification attributes of an object, instance or resource",
		"EP PATH [--pmin N] [--pmax N] [--gt X] [--lt X] [--st X] [--epmin N] [--epmax N] [--unset pmin,st,...]", "",
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			var pmin, pmax, epmin, epmax optUint32
			var gt, lt, st optFloat
			fs.Var(&pmin, "pmin", "minimum period between notifications, seconds")
			fs.Var(&pmax, "pmax", "maximum period between notifications, seconds")
			fs.Var(&gt, "gt", "notify when the value rises above")
			fs.Var(&lt, "lt", "notify when the value falls below")
			fs.Var(&st, "st", "notify when the value changes by at least")
			fs.Var(&epmin, "epmin", "minimum evaluation period, seconds")
			fs.Var(&epmax, "epmax", "maximum evaluation period, seconds")
			unset := fs.String("unset", "", "attributes to remove, separated by commas")
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, false, "EP PATH"); err != nil {
					return "", northbound.Req{}, err
				}
				a := &northbound.Attributes{Pmin: pmin.v, Pmax: pmax.v, Gt: gt.v, Lt: lt.v, St: st.v, Epmin: epmin.v, Epmax: epmax.v}
				if *unset != "" {
					a.Unset = strings.Split(*unset, ",")
				}
				return args[0], northbound.Req{Kind: northbound.KindWriteAttributes, Path: args[1], Attributes: a}, nil
			}
		})
}

func readCompositeCmd() *Command {
	return deviceCmd("read-composite", "read several paths of a device in one request (LwM2M 1.1)", "EP PATH... [--format senml-json|senml-cbor]", "",
		func(fs *flag.FlagSet) func(*Env, []string) (string, northbound.Req, error) {
			var f formatFlag
			fs.Var(&f, "format", formatUsage)
			return func(env *Env, args []string) (string, northbound.Req, error) {
				if err := positional(args, 2, true, "EP PATH..."); err != nil {
					return "", northbound.Req{}, err
				}
				return args[0], northbound.Req{Kind: northbound.KindReadComposite, Paths: args[1:], ContentFormat: f.v}, nil
			}
		})
}

func observeCmd() *Command {
	return &Command{
		Name:      "observe",
		Summary:   "observe a value of a device: print it, then each notification, until interrupted",
		Args:      "EP PATH... [--format F]",
		SelfTimed: true,
		Help: `Prints the current value, then the value of each notification as it comes, until
Ctrl-C, when the observation is cancelled (a cancelObserve request). Several paths
make an observeComposite. --timeout bounds the first answer only. With --json,
each answer is one line of "resp" JSON.

` + deviceHelp,
		Setup: func(fs *flag.FlagSet) RunFunc {
			var f formatFlag
			fs.Var(&f, "format", formatUsage)
			return func(ctx context.Context, env *Env, args []string) error {
				if err := positional(args, 2, true, "EP PATH..."); err != nil {
					return err
				}
				req := northbound.Req{Kind: northbound.KindObserve, Path: args[1], ContentFormat: f.v}
				if len(args) > 2 {
					req = northbound.Req{Kind: northbound.KindObserveComposite, Paths: args[1:], ContentFormat: f.v}
				}
				return Observe(ctx, env, args[0], req)
			}
		},
	}
}

// withTimeout sets the request's timeout from --timeout and returns the
// bound of the whole exchange: the timeout plus the client's ack wait and
// margin.
func withTimeout(env *Env, req *northbound.Req) time.Duration {
	ms := env.Timeout.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	req.Timeout = &ms
	return env.Timeout + nbclient.DefaultAckTimeout + nbclient.DefaultResponseMargin + time.Second
}

// Request sends req for ep and prints the answer on env.Stdout.
func Request(ctx context.Context, env *Env, ep string, req northbound.Req) error {
	bound := withTimeout(env, &req)
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	if err := check(ep, req); err != nil {
		return err
	}
	c, err := env.Client(ctx)
	if err != nil {
		return err
	}
	resp, err := c.Do(ctx, ep, req)
	if err != nil {
		return err
	}
	if err := PrintResp(env.Stdout, req, resp, env.JSON); err != nil {
		return err
	}
	if !nbclient.IsSuccess(resp.Code) {
		return &nbclient.CodeError{Resp: resp}
	}
	return nil
}

// check validates a request before anything is opened, so that mistakes
// are usage errors.
func check(ep string, req northbound.Req) error {
	b, err := json.Marshal(northbound.Request{Endpoint: ep, Ticket: "check", Req: req})
	if err != nil {
		return err
	}
	if _, err := northbound.ParseRequest(b); err != nil {
		return usageErrorf("%s", strings.TrimPrefix(err.Error(), northbound.ErrBadRequest.Error()+": "))
	}
	return nil
}

// Observe observes req on ep and prints the first value and every
// notification until ctx is done, then cancels the observation.
func Observe(ctx context.Context, env *Env, ep string, req northbound.Req) error {
	bound := withTimeout(env, &req)
	if err := check(ep, req); err != nil {
		return err
	}
	octx, cancelObs := context.WithCancel(ctx)
	defer cancelObs()
	first, cancelFirst := context.WithTimeout(ctx, bound)
	defer cancelFirst()
	c, err := env.Client(first)
	if err != nil {
		return err
	}
	// The first answer is bounded; the observation lives until ctx ends.
	type result struct {
		obs *nbclient.Observation
		err error
	}
	res := make(chan result, 1)
	go func() {
		obs, err := c.Observe(octx, ep, req)
		res <- result{obs, err}
	}()
	var obs *nbclient.Observation
	select {
	case r := <-res:
		if r.err != nil {
			var ce *nbclient.CodeError
			if errors.As(r.err, &ce) && env.JSON {
				_ = printJSONLine(env.Stdout, ce.Resp)
			}
			return r.err
		}
		obs = r.obs
	case <-first.Done():
		cancelObs()
		if r := <-res; r.obs != nil {
			_ = r.obs.Cancel(context.Background())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("no answer within %v", bound)
	}
	cancelFirst()
	emit := func(resp *northbound.Resp) error {
		if env.JSON {
			return printJSONLine(env.Stdout, resp)
		}
		return PrintResp(env.Stdout, req, resp, false)
	}
	if err := emit(obs.First()); err != nil {
		_ = cancelWithin(obs, bound)
		return err
	}
	for resp := range obs.C() {
		if err := emit(resp); err != nil {
			_ = cancelWithin(obs, bound)
			return err
		}
	}
	if err := obs.Err(); err != nil && ctx.Err() == nil {
		return err // ended by the cluster
	}
	// Interrupted: cancel the observation before exiting.
	if err := cancelWithin(obs, bound); err != nil {
		var ce *nbclient.CodeError
		if !errors.As(err, &ce) { // NOT_FOUND: already gone
			return fmt.Errorf("cancel the observation: %w", err)
		}
	}
	return nil
}

func cancelWithin(obs *nbclient.Observation, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return obs.Cancel(ctx)
}

func printJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// PrintResp prints a resp: with asJSON its JSON; otherwise "path = value"
// lines for nodes, links for a discover, the code (and location, or error
// message) for the rest.
func PrintResp(w io.Writer, req northbound.Req, resp *northbound.Resp, asJSON bool) error {
	if asJSON {
		return writeJSON(w, resp)
	}
	var b strings.Builder
	switch {
	case !nbclient.IsSuccess(resp.Code):
		return nil // reported as the command's error
	case resp.Node != nil && resp.Node.Node != nil:
		p, _ := node.ParsePath(req.Path)
		if np, err := node.PathOf(p, resp.Node.Node); err == nil {
			p = np
		}
		nodeLines(&b, p, resp.Node.Node)
	case len(resp.Nodes) > 0:
		paths := make([]node.Path, 0, len(resp.Nodes))
		byPath := map[node.Path]node.Node{}
		for s, a := range resp.Nodes {
			p, err := node.ParsePath(s)
			if err != nil || a.Node == nil {
				continue
			}
			paths = append(paths, p)
			byPath[p] = a.Node
		}
		slices.SortFunc(paths, node.Path.Compare)
		for _, p := range paths {
			nodeLines(&b, p, byPath[p])
		}
	case req.Kind == northbound.KindDiscover:
		for _, l := range resp.ObjectLinks {
			b.WriteString("<" + l.URL + ">")
			names := make([]string, 0, len(l.Attributes))
			for k := range l.Attributes {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				if v := l.Attributes[k]; v != "" {
					fmt.Fprintf(&b, ";%s=%s", k, v)
				} else {
					fmt.Fprintf(&b, ";%s", k)
				}
			}
			b.WriteString("\n")
		}
	case resp.Location != "":
		fmt.Fprintf(&b, "%s %s\n", resp.Code, resp.Location)
	default:
		fmt.Fprintf(&b, "%s\n", resp.Code)
	}
	if resp.Observe && resp.Timestamp != 0 && b.Len() > 0 {
		s := strings.TrimSuffix(b.String(), "\n")
		at := time.UnixMilli(resp.Timestamp).UTC().Format(time.RFC3339Nano)
		b.Reset()
		for _, line := range strings.Split(s, "\n") {
			fmt.Fprintf(&b, "%s  (at %s)\n", line, at)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// nodeLines writes "path = value" lines for n at p, children in ID order.
func nodeLines(b *strings.Builder, p node.Path, n node.Node) {
	child := func(id uint16) node.Path {
		c, err := p.Child(id)
		if err != nil {
			return p
		}
		return c
	}
	switch n := n.(type) {
	case node.Object:
		for _, i := range n.Instances {
			nodeLines(b, child(i.ID), i)
		}
	case node.Instance:
		for _, r := range n.Resources {
			nodeLines(b, child(r.ID), r)
		}
	case node.Resource:
		if !n.Multiple {
			fmt.Fprintf(b, "%s = %s\n", p, n.Value)
			return
		}
		if len(n.Instances) == 0 {
			fmt.Fprintf(b, "%s = (no instances)\n", p)
		}
		ids := make([]uint16, 0, len(n.Instances))
		for id := range n.Instances {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			fmt.Fprintf(b, "%s = %s\n", child(id), n.Instances[id])
		}
	case node.ResourceInstance:
		fmt.Fprintf(b, "%s = %s\n", p, n.Value)
	}
}
