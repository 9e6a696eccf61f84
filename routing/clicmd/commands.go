package clicmd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/securityapi"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Commands returns lwm2m-cli's command tree.
func Commands() []*Command {
	return append([]*Command{
		{
			Name:    "security",
			Summary: "manage the DTLS-PSK credentials of endpoints",
			Sub:     []*Command{securityAddCmd(), securityListCmd(), securityRemoveCmd()},
		},
		listCmd(),
		membersCmd(),
	}, deviceCommands()...)
}

func securityAddCmd() *Command {
	return &Command{
		Name:    "add",
		Summary: "set an endpoint's PSK identity and key (replacing its previous ones)",
		Args:    "--ep EP --psk-identity ID --psk-key HEX",
		Help: `The key is given in hex. "--psk-key -" reads it from standard input, which keeps
it out of the shell history and the process list. The key is never printed:
output shows a fingerprint, "sha256:" and the first 4 hex digits of its SHA-256.
Fails if another endpoint already uses the identity.`,
		Setup: func(fs *flag.FlagSet) RunFunc {
			ep := fs.String("ep", "", "endpoint name (required)")
			id := fs.String("psk-identity", "", "PSK identity (required)")
			key := fs.String("psk-key", "", `pre-shared key in hex, or "-" to read it from standard input (required)`)
			return func(ctx context.Context, env *Env, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				for _, f := range []struct{ name, v string }{{"ep", *ep}, {"psk-identity", *id}, {"psk-key", *key}} {
					if f.v == "" {
						return usageErrorf("--%s is required", f.name)
					}
				}
				hexKey := *key
				if hexKey == "-" {
					line, err := bufio.NewReader(env.Stdin).ReadString('\n')
					if err != nil && !errors.Is(err, io.EOF) {
						return fmt.Errorf("read the key from standard input: %w", err)
					}
					hexKey = strings.TrimSpace(line)
					if hexKey == "" {
						return usageErrorf("--psk-key -: no key on standard input")
					}
				}
				k, err := securityapi.ParseKey(hexKey)
				if err != nil {
					return usageErrorf("--psk-key: %s", err)
				}
				info := store.SecurityInfo{Endpoint: *ep, Identity: *id, Key: k}
				if err := info.Validate(); err != nil {
					return usageErrorf("%s", strings.TrimPrefix(err.Error(), store.ErrInvalidSecurity.Error()+": "))
				}
				s, err := env.Store(ctx)
				if err != nil {
					return err
				}
				return SecurityAdd(ctx, env.Stdout, s, info, env.JSON)
			}
		},
	}
}

func securityListCmd() *Command {
	return &Command{
		Name:    "list",
		Summary: "list endpoints' PSK identities (keys shown as fingerprints)",
		Setup: func(fs *flag.FlagSet) RunFunc {
			return func(ctx context.Context, env *Env, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				s, err := env.Store(ctx)
				if err != nil {
					return err
				}
				return SecurityList(ctx, env.Stdout, s, env.JSON)
			}
		},
	}
}

func securityRemoveCmd() *Command {
	return &Command{
		Name:    "remove",
		Summary: "remove an endpoint's PSK credentials",
		Args:    "--ep EP",
		Setup: func(fs *flag.FlagSet) RunFunc {
			ep := fs.String("ep", "", "endpoint name (required)")
			return func(ctx context.Context, env *Env, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				if *ep == "" {
					return usageErrorf("--ep is required")
				}
				s, err := env.Store(ctx)
				if err != nil {
					return err
				}
				return SecurityRemove(ctx, env.Stdout, s, *ep, env.JSON)
			}
		},
	}
}

func listCmd() *Command {
	return &Command{
		Name:    "list",
		Summary: "list registered endpoints with their owning instance, address, lifetime and last update",
		Help: `JSON output is an array of registrations in the northbound API's shape
(docs/northbound.md), with "instance" set to the owning instance.`,
		Setup: func(fs *flag.FlagSet) RunFunc {
			return func(ctx context.Context, env *Env, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				s, err := env.Store(ctx)
				if err != nil {
					return err
				}
				return List(ctx, env.Stdout, s, env.Now(), env.JSON)
			}
		},
	}
}

func membersCmd() *Command {
	return &Command{
		Name:    "members",
		Summary: "list the live instances of the cluster (membership)",
		Setup: func(fs *flag.FlagSet) RunFunc {
			return func(ctx context.Context, env *Env, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				s, err := env.Store(ctx)
				if err != nil {
					return err
				}
				return Members(ctx, env.Stdout, s, env.Now(), env.JSON)
			}
		},
	}
}

// SecurityAdd stores info and reports it, without the key, on w.
func SecurityAdd(ctx context.Context, w io.Writer, s store.Security, info store.SecurityInfo, asJSON bool) error {
	switch err := s.PutSecurity(ctx, info); {
	case errors.Is(err, store.ErrIdentityTaken):
		if other, oerr := s.SecurityByIdentity(ctx, info.Identity); oerr == nil {
			return fmt.Errorf("psk identity %q already bound to endpoint %q", info.Identity, other.Endpoint)
		}
		return fmt.Errorf("psk identity %q already bound to another endpoint", info.Identity)
	case err != nil:
		return err
	}
	if asJSON {
		return writeJSON(w, info.Summary())
	}
	_, err := fmt.Fprintf(w, "set security info of %s: identity %s, key %s\n",
		cell(info.Endpoint), cell(info.Identity), info.KeyFingerprint())
	return err
}

// SecurityList prints every security entry, keys as fingerprints.
func SecurityList(ctx context.Context, w io.Writer, s store.Security, asJSON bool) error {
	l, err := s.ListSecurity(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		out := make([]store.SecuritySummary, len(l))
		for i, info := range l {
			out[i] = info.Summary()
		}
		return writeJSON(w, out)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ENDPOINT\tPSK IDENTITY\tKEY")
	for _, info := range l {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", cell(info.Endpoint), cell(info.Identity), info.KeyFingerprint())
	}
	return tw.Flush()
}

// SecurityRemove deletes ep's security entry.
func SecurityRemove(ctx context.Context, w io.Writer, s store.Security, ep string, asJSON bool) error {
	err := s.RemoveSecurity(ctx, ep)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no security info for endpoint %q", ep)
	}
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(w, map[string]any{"ep": ep, "removed": true})
	}
	_, err = fmt.Fprintf(w, "removed security info of %s\n", cell(ep))
	return err
}

// RegistrationStore is what List reads.
type RegistrationStore interface {
	store.Registrations
	store.Ownership
}

// List prints the registered endpoints with their owning instance.
func List(ctx context.Context, w io.Writer, s RegistrationStore, now time.Time, asJSON bool) error {
	regs, err := s.List(ctx)
	if err != nil {
		return err
	}
	for _, r := range regs {
		if r.Instance, err = s.Owner(ctx, r.Endpoint); err != nil {
			return err
		}
	}
	if asJSON {
		if regs == nil {
			regs = []*registration.Registration{}
		}
		return writeJSON(w, regs)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ENDPOINT\tINSTANCE\tADDRESS\tLIFETIME\tLAST UPDATE")
	for _, r := range regs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%ds\t%s\n", cell(r.Endpoint), cell(r.Instance),
			cell(net.JoinHostPort(r.Address, strconv.Itoa(int(r.Port)))), r.Lifetime,
			when(time.UnixMilli(r.LastUp), now))
	}
	return tw.Flush()
}

// Members prints the cluster's live instances.
func Members(ctx context.Context, w io.Writer, s store.Membership, now time.Time, asJSON bool) error {
	ms, err := s.Members(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		if ms == nil {
			ms = []store.Member{}
		}
		return writeJSON(w, ms)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNODE\tSTATE\tBACKEND\tCOAP\tCOAPS\tADMIN\tUP\tSEEN")
	for _, m := range ms {
		up := "-"
		if m.Started > 0 {
			up = age(now.Sub(time.UnixMilli(m.Started)))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", cell(m.ID), m.NodeID, cell(m.State),
			cell(m.Backend), cell(m.CoAP), cell(m.CoAPS), cell(m.Admin), up, age(now.Sub(time.UnixMilli(m.Seen))))
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// cell makes s safe for a table: "-" when empty, quoted when it holds
// spaces or unprintable characters.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}

func when(t, now time.Time) string {
	return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), age(now.Sub(t)))
}
