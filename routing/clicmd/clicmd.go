// Package clicmd is lwm2m-cli: an operator's command line over the
// cluster's shared state in Redis. cmd/lwm2m-cli is a thin main around
// Program.Run.
//
//	lwm2m-cli --redis URL [--key-prefix P] [--json] <command> [flags]
//
// Commands form a tree (Command); each leaf declares its flags and returns
// the function that runs it with an Env, which holds the output writers,
// the --json switch and a lazily opened store. The work itself is done by
// plain functions taking an io.Writer and a store interface (SecurityAdd,
// SecurityList, List, Members, ...), which tests call directly.
//
// Device commands (read, write, observe, ...) send requests through the
// northbound API with an nbclient.Client that Env.Client opens lazily on
// the store's Redis connection (Program.Bus replaces the bus in tests).
//
// Flags of a leaf command may follow its positional arguments
// ("read dev1 /3/0 --format tlv"); after "--" everything is positional
// (for values that start with "-").
package clicmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// Name is the program's name in messages.
const Name = "lwm2m-cli"

// RedisEnv is the environment variable --redis defaults to.
const RedisEnv = "LWM2M_REDIS"

// DefaultTimeout bounds a whole command.
const DefaultTimeout = 10 * time.Second

// Opener opens the shared store at url with key prefix.
type Opener func(ctx context.Context, url, prefix string) (store.Store, error)

// OpenRedis is the default Opener.
func OpenRedis(ctx context.Context, url, prefix string) (store.Store, error) {
	return redisstore.Open(ctx, url, redisstore.Options{Prefix: prefix})
}

// BusOpener returns the northbound bus of the cluster whose shared store is
// s.
type BusOpener func(ctx context.Context, s store.Store) (northbound.Bus, error)

// RedisBus is the default BusOpener: a northbound.RedisBus on the Redis
// connection of a redisstore.Store.
func RedisBus(_ context.Context, s store.Store) (northbound.Bus, error) {
	rc, ok := s.(interface{ Client() redis.UniversalClient })
	if !ok {
		return nil, fmt.Errorf("the store (%T) has no Redis connection for the northbound API", s)
	}
	return northbound.NewRedisBus(rc.Client()), nil
}

// Env is what a command runs with.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// JSON selects machine-readable output.
	JSON bool
	// RedisURL and KeyPrefix locate the shared store.
	RedisURL  string
	KeyPrefix string
	// Now is the clock for ages in tables.
	Now func() time.Time
	// Timeout is the --timeout flag. Device commands use it as the
	// request's timeout.
	Timeout time.Duration

	open       Opener
	getenv     func(string) string
	store      store.Store
	openBus    BusOpener
	clientOpts nbclient.Options
	client     *nbclient.Client
}

// Client opens the northbound client on first use (on the store's Redis
// connection, with the store as the owner lookup) and returns it;
// Program.Run closes it.
func (e *Env) Client(ctx context.Context) (*nbclient.Client, error) {
	if e.client != nil {
		return e.client, nil
	}
	s, err := e.Store(ctx)
	if err != nil {
		return nil, err
	}
	bus, err := e.openBus(ctx, s)
	if err != nil {
		return nil, err
	}
	c := nbclient.New(bus, s, e.clientOpts)
	if err := c.Start(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	e.client = c
	return c, nil
}

// Store opens the shared store on first use and returns it; Program.Run
// closes it.
func (e *Env) Store(ctx context.Context) (store.Store, error) {
	if e.store != nil {
		return e.store, nil
	}
	if e.RedisURL == "" {
		return nil, usageErrorf("--redis is required (or set %s)", RedisEnv)
	}
	s, err := e.open(ctx, e.RedisURL, e.KeyPrefix)
	if err != nil {
		return nil, err
	}
	e.store = s
	return s, nil
}

// RunFunc runs a leaf command with its positional arguments.
type RunFunc func(ctx context.Context, env *Env, args []string) error

// Command is one node of the command tree: a group (Sub) or a leaf (Setup).
type Command struct {
	Name    string
	Summary string // one line, for the parent's help
	// Args is the synopsis after the command's path, for its help.
	Args string
	// Help is extra text for the command's help.
	Help string
	// Sub holds a group's commands.
	Sub []*Command
	// Setup defines a leaf's flags on fs and returns the function that
	// runs it (a closure over the flag values).
	Setup func(fs *flag.FlagSet) RunFunc
	// SelfTimed leaves the --timeout to the command (Env.Timeout) instead
	// of bounding the whole command with it: device commands give it to
	// the request, observe streams until interrupted.
	SelfTimed bool
}

// usageError is a command-line mistake: its message gets a pointer to help.
type usageError struct {
	msg  string
	path string // command path for the hint, set by the dispatcher
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// Program is lwm2m-cli with its environment.
type Program struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Open opens the store (OpenRedis when nil).
	Open Opener
	// Getenv reads the environment (os.Getenv when nil).
	Getenv func(string) string
	// Commands is the command tree (Commands() when nil).
	Commands []*Command
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Bus opens the northbound bus for device commands (RedisBus when
	// nil).
	Bus BusOpener
	// ClientOptions tune the northbound client of device commands.
	ClientOptions nbclient.Options
}

// quietRedis drops go-redis's own log lines (connection retries), which
// would break the one-line error a failed command prints.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// Main runs lwm2m-cli with the process's streams and returns its exit code.
// It silences go-redis's process-wide logger.
func Main(ctx context.Context, args []string) int {
	redis.SetLogger(quietRedis{})
	p := &Program{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	return p.Run(ctx, args)
}

type globals struct {
	redis, prefix string
	json          bool
	timeout       time.Duration
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.redis, "redis", g.redis, "Redis URL of the cluster (redis://[user:pass@]host:port/db, or a Sentinel URL with master_name); default $"+RedisEnv+", which keeps a password out of the process list")
	fs.StringVar(&g.prefix, "key-prefix", g.prefix, "prefix of every Redis key")
	fs.BoolVar(&g.json, "json", g.json, "print JSON instead of tables")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "time limit of the whole command; for device commands, the time the device has to answer")
}

// Run runs the command line args (without the program name) and returns
// the exit code: 0, or 1 after printing a one-line error to Stderr.
func (p *Program) Run(ctx context.Context, args []string) int {
	getenv := p.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	cmds := p.Commands
	if cmds == nil {
		cmds = Commands()
	}
	g := &globals{prefix: redisstore.DefaultPrefix, timeout: DefaultTimeout}
	env := &Env{Stdin: p.Stdin, Stdout: p.Stdout, Stderr: p.Stderr, Now: p.Now, open: p.Open,
		openBus: p.Bus, clientOpts: p.ClientOptions}
	if env.openBus == nil {
		env.openBus = RedisBus
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.open == nil {
		env.open = OpenRedis
	}
	root := &Command{Name: Name, Sub: cmds,
		Args: "[--redis URL] [--key-prefix P] [--json] <command> [flags]",
		Help: "Inspects and changes the shared state of an LwM2M server cluster in Redis."}
	env.getenv = getenv
	err := p.dispatch(ctx, g, env, root, Name, args)
	if env.client != nil {
		_ = env.client.Close()
	}
	if env.store != nil {
		_ = env.store.Close()
	}
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	msg := err.Error()
	var ue *usageError
	if errors.As(err, &ue) && ue.path != "" {
		msg += fmt.Sprintf(" (see '%s --help')", ue.path)
	}
	fmt.Fprintf(p.Stderr, "%s: %s\n", Name, oneLine(msg))
	return 1
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func (p *Program) dispatch(ctx context.Context, g *globals, env *Env, cmd *Command, path string, args []string) (err error) {
	defer func() {
		var ue *usageError
		if errors.As(err, &ue) && ue.path == "" {
			ue.path = path
		}
	}()
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var run RunFunc
	g.register(fs) // global flags are accepted at every level
	if cmd.Setup != nil {
		run = cmd.Setup(fs)
	}
	rest, err := parseFlags(fs, args, cmd.Sub == nil)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(env.Stdout, cmd, path)
			return flag.ErrHelp
		}
		return usageErrorf("%s", err)
	}
	if cmd.Sub != nil {
		if len(rest) == 0 {
			return usageErrorf("missing command")
		}
		name := rest[0]
		if name == "help" {
			return p.help(env, cmd, path, rest[1:])
		}
		for _, c := range cmd.Sub {
			if c.Name == name {
				return p.dispatch(ctx, g, env, c, path+" "+c.Name, rest[1:])
			}
		}
		return usageErrorf("unknown command %q", name)
	}
	env.JSON, env.RedisURL, env.KeyPrefix, env.Timeout = g.json, g.redis, g.prefix, g.timeout
	if env.RedisURL == "" {
		env.RedisURL = env.getenv(RedisEnv)
	}
	if !cmd.SelfTimed {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	return run(ctx, env, rest)
}

// parseFlags parses args on fs. With interspersed, flags may follow
// positional arguments, and "--" ends the flags.
func parseFlags(fs *flag.FlagSet, args []string, interspersed bool) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if !interspersed {
		return fs.Args(), nil
	}
	var pos []string
	for {
		rest := fs.Args()
		if len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil // "--": the rest is positional
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
	}
}

// help prints the help of the command named by args under cmd.
func (p *Program) help(env *Env, cmd *Command, path string, args []string) error {
	for _, name := range args {
		var next *Command
		for _, c := range cmd.Sub {
			if c.Name == name {
				next = c
			}
		}
		if next == nil {
			return usageErrorf("unknown command %q", name)
		}
		cmd, path = next, path+" "+name
	}
	printHelp(env.Stdout, cmd, path)
	return nil
}

func printHelp(w io.Writer, cmd *Command, path string) {
	args := cmd.Args
	if args == "" && cmd.Sub != nil {
		args = "<command> [flags]"
	}
	if args == "" {
		args = "[flags]"
	}
	fmt.Fprintf(w, "Usage: %s %s\n", path, args)
	if cmd.Summary != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.Summary)
	}
	if cmd.Help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.Help))
	}
	if len(cmd.Sub) > 0 {
		fmt.Fprintf(w, "\nCommands:\n")
		tw := newTable(w)
		for _, c := range cmd.Sub {
			fmt.Fprintf(tw, "  %s\t%s\n", c.Name, c.Summary)
		}
		_ = tw.Flush()
		fmt.Fprintf(w, "\nRun '%s <command> --help' for a command's flags.\n", path)
	}
	printFlags := func(title string, fs *flag.FlagSet) {
		has := false
		fs.VisitAll(func(*flag.Flag) { has = true })
		if has {
			fmt.Fprintf(w, "\n%s:\n", title)
			fs.SetOutput(w)
			fs.PrintDefaults()
		}
	}
	if cmd.Setup != nil {
		own := flag.NewFlagSet(path, flag.ContinueOnError)
		cmd.Setup(own)
		printFlags("Flags", own)
	}
	global := flag.NewFlagSet(path, flag.ContinueOnError)
	(&globals{prefix: redisstore.DefaultPrefix, timeout: DefaultTimeout}).register(global)
	printFlags("Global flags (accepted before or after the command)", global)
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q", args[0])
	}
	return nil
}
