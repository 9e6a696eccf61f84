package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func testTicketClaimOnce(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []string
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			inst := fmt.Sprintf("inst-%d", i)
			ok, err := s.ClaimTicket(c, "tkt-once", inst, time.Minute)
			if err != nil {
				t.Errorf("ClaimTicket(%s): %v", inst, err)
				return
			}
			if ok {
				mu.Lock()
				winners = append(winners, inst)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d instances claimed the ticket (%v), want exactly 1", len(winners), winners)
	}
	if ok, err := b.ClaimTicket(c, "tkt-once", "late", time.Minute); err != nil || ok {
		t.Fatalf("later ClaimTicket of a held ticket = %v, %v; want false", ok, err)
	}
	if ok, err := a.ClaimTicket(c, "tkt-other", "late", time.Minute); err != nil || !ok {
		t.Fatalf("ClaimTicket(another ticket) = %v, %v; want true", ok, err)
	}
}

func testTicketClaimTTL(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	const ttl = 200 * time.Millisecond
	if ok, err := a.ClaimTicket(c, "tkt-long", "inst-a", time.Hour); err != nil || !ok {
		t.Fatalf("ClaimTicket(long) = %v, %v", ok, err)
	}
	start := time.Now()
	if ok, err := a.ClaimTicket(c, "tkt-short", "inst-a", ttl); err != nil || !ok {
		t.Fatalf("ClaimTicket(short) = %v, %v", ok, err)
	}
	ok, err := b.ClaimTicket(c, "tkt-short", "inst-b", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if ok && time.Since(start) < ttl {
		t.Fatalf("ticket claimed twice within its ttl (after %v)", time.Since(start))
	}
	// Once the ttl has passed, the ticket can be claimed again.
	deadline := time.Now().Add(5 * time.Second)
	for !ok {
		if time.Now().After(deadline) {
			t.Fatalf("ticket still held %v after a claim for %v", time.Since(start), ttl)
		}
		time.Sleep(20 * time.Millisecond)
		if ok, err = b.ClaimTicket(c, "tkt-short", "inst-b", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < ttl*3/4 {
		t.Fatalf("ticket claimed again after %v, before its ttl %v", d, ttl)
	}
	if ok, err := a.ClaimTicket(c, "tkt-short", "inst-a", time.Minute); err != nil || ok {
		t.Fatalf("ClaimTicket after the re-claim = %v, %v; want false", ok, err)
	}
	if ok, err := b.ClaimTicket(c, "tkt-long", "inst-b", time.Minute); err != nil || ok {
		t.Fatalf("long-lived claim lapsed: ClaimTicket = %v, %v; want false", ok, err)
	}
}

func testTicketClaimInvalid(t *testing.T, newStore Factory) {
	s := newStore(t, time.Second)
	c := ctx(t)
	for _, tc := range []struct {
		ticket, instance string
		ttl              time.Duration
	}{
		{"", "inst", time.Minute},
		{"tkt-inv", "", time.Minute},
		{"tkt-inv", "inst", 0},
		{"tkt-inv", "inst", -time.Second},
	} {
		ok, err := s.ClaimTicket(c, tc.ticket, tc.instance, tc.ttl)
		if ok || !errors.Is(err, store.ErrInvalidTicket) {
			t.Fatalf("ClaimTicket(%q, %q, %v) = %v, %v; want false, ErrInvalidTicket", tc.ticket, tc.instance, tc.ttl, ok, err)
		}
	}
	if ok, err := s.ClaimTicket(c, "tkt-inv", "inst", time.Minute); err != nil || !ok {
		t.Fatalf("ClaimTicket after refused claims = %v, %v; want true", ok, err)
	}
}

func newObs(token []byte, ep, regID, ticket string, paths ...string) *store.Observation {
	return &store.Observation{
		Token: token, Endpoint: ep, RegID: regID, Paths: paths, ContentFormat: 110,
		Ticket: ticket, Instance: "inst-a", Created: time.Now().UnixMilli(),
	}
}

// regPorts gives each registration of register its own device port.
var regPorts atomic.Uint32

// register stores a registration of endpoint ep with the id regID (Add), so
// that observations of regID can be added.
func register(t *testing.T, c context.Context, s store.Store, ep, regID string) *registration.Registration {
	t.Helper()
	r := NewReg(ep, uint16(46000+regPorts.Add(1)%10000), 60, time.Now())
	r.ID = regID
	if _, err := s.Add(c, r); err != nil {
		t.Fatalf("Add(%s, %s): %v", ep, regID, err)
	}
	return r
}

func sameObs(a, b *store.Observation) bool {
	return a != nil && b != nil && bytes.Equal(a.Token, b.Token) && a.Endpoint == b.Endpoint &&
		a.RegID == b.RegID && slices.Equal(a.Paths, b.Paths) && a.Composite == b.Composite &&
		a.ContentFormat == b.ContentFormat && a.Ticket == b.Ticket && a.Instance == b.Instance &&
		a.Created == b.Created
}

// tokensOf returns the hex tokens of os, sorted.
func tokensOf(os []*store.Observation) []string {
	out := make([]string, len(os))
	for i, o := range os {
		out[i] = fmt.Sprintf("%x", o.Token)
	}
	sort.Strings(out)
	return out
}

func hexTokens(os ...*store.Observation) []string { return tokensOf(os) }

// checkObsGone fails unless o is gone by token and by ticket.
func checkObsGone(t *testing.T, c context.Context, s store.Store, o *store.Observation, why string) {
	t.Helper()
	if got, err := s.ObservationByToken(c, o.Token); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("%s: ObservationByToken(%x) = %+v, %v; want ErrNotFound", why, o.Token, got, err)
	}
	if got, err := s.ObservationByTicket(c, o.Ticket); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("%s: ObservationByTicket(%s) = %+v, %v; want ErrNotFound", why, o.Ticket, got, err)
	}
}

// checkObsThere fails unless o is found by token and by ticket.
func checkObsThere(t *testing.T, c context.Context, s store.Store, o *store.Observation, why string) {
	t.Helper()
	if got, err := s.ObservationByToken(c, o.Token); err != nil || !sameObs(got, o) {
		t.Fatalf("%s: ObservationByToken(%x) = %+v, %v; want %+v", why, o.Token, got, err, o)
	}
	if got, err := s.ObservationByTicket(c, o.Ticket); err != nil || !sameObs(got, o) {
		t.Fatalf("%s: ObservationByTicket(%s) = %+v, %v; want %+v", why, o.Ticket, got, err, o)
	}
}

// checkRegObs fails unless regID's observations are exactly want.
func checkRegObs(t *testing.T, c context.Context, s store.Store, regID string, want ...*store.Observation) {
	t.Helper()
	got, err := s.ObservationsByRegistration(c, regID)
	if err != nil {
		t.Fatalf("ObservationsByRegistration(%s): %v", regID, err)
	}
	if g, w := tokensOf(got), hexTokens(want...); !slices.Equal(g, w) {
		t.Fatalf("ObservationsByRegistration(%s) tokens = %v, want %v", regID, g, w)
	}
	for _, o := range got {
		for _, w := range want {
			if bytes.Equal(o.Token, w.Token) && !sameObs(o, w) {
				t.Fatalf("ObservationsByRegistration(%s): %+v, want %+v", regID, o, w)
			}
		}
	}
}

func testObservationIndexes(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	o1 := newObs([]byte{0x00, 0xff}, "dev-o", "reg-1", "t-1", "/3/0/1")
	o2 := newObs([]byte{0, 1, 2, 3, 4, 5, 6, 7}, "dev-o", "reg-1", "t-2", "/3/0/0", "/5/0")
	o2.Composite, o2.ContentFormat = true, 112
	o3 := newObs([]byte{0x00}, "dev-p", "reg-2", "urn:ticket/ä*?[x]", "/3303/0/5700")
	register(t, c, a, "dev-o", "reg-1")
	register(t, c, b, "dev-p", "reg-2")
	register(t, c, a, "dev-q", "reg-3")
	for _, o := range []*store.Observation{o1, o2, o3} {
		if err := a.AddObservation(c, o.Clone()); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []*store.Observation{o1, o2, o3} {
		checkObsThere(t, c, b, o, "added")
	}
	checkRegObs(t, c, b, "reg-1", o1, o2)
	checkRegObs(t, c, b, "reg-2", o3)
	checkRegObs(t, c, b, "reg-none")
	if _, err := b.ObservationByToken(c, []byte{0xff}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ObservationByToken(unknown) err = %v", err)
	}
	if _, err := b.ObservationByToken(c, []byte{0x00, 0xff, 0x00}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ObservationByToken(longer token) err = %v", err)
	}
	if _, err := b.ObservationByTicket(c, "t-unknown"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ObservationByTicket(unknown) err = %v", err)
	}
	// Callers own what they pass and what they get.
	in := newObs([]byte{0x77}, "dev-q", "reg-3", "t-3", "/1/0")
	want := in.Clone()
	if err := a.AddObservation(c, in); err != nil {
		t.Fatal(err)
	}
	in.Token[0], in.Paths[0] = 0x78, "/changed"
	got, err := b.ObservationByToken(c, want.Token)
	if err != nil || !sameObs(got, want) {
		t.Fatalf("stored observation changed with its argument: %+v, %v", got, err)
	}
	got.Token[0], got.Paths[0] = 0x79, "/changed"
	checkObsThere(t, c, b, want, "after changing a result")
}

func testObservationInvalid(t *testing.T, newStore Factory) {
	s := newStore(t, time.Second)
	c := ctx(t)
	register(t, c, s, "dev-i", "reg-i")
	for name, o := range map[string]*store.Observation{
		"nil":          nil,
		"no token":     newObs(nil, "dev-i", "reg-i", "t-i", "/3/0"),
		"empty token":  newObs([]byte{}, "dev-i", "reg-i", "t-i", "/3/0"),
		"9-byte token": newObs(make([]byte, 9), "dev-i", "reg-i", "t-i", "/3/0"),
		"no ticket":    newObs([]byte{1}, "dev-i", "reg-i", "", "/3/0"),
		"no regId":     newObs([]byte{1}, "dev-i", "", "t-i", "/3/0"),
	} {
		if err := s.AddObservation(c, o); !errors.Is(err, store.ErrInvalidObservation) {
			t.Fatalf("AddObservation(%s) err = %v, want ErrInvalidObservation", name, err)
		}
	}
	checkRegObs(t, c, s, "reg-i")
	if _, err := s.ObservationByTicket(c, "t-i"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused observation stored: %v", err)
	}
	for _, tok := range [][]byte{nil, {}, make([]byte, 9)} {
		if _, err := s.ObservationByToken(c, tok); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("ObservationByToken(%x) err = %v, want ErrNotFound", tok, err)
		}
		if _, err := s.RemoveObservation(c, tok); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("RemoveObservation(%x) err = %v, want ErrNotFound", tok, err)
		}
	}
	if _, err := s.ObservationByTicket(c, ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ObservationByTicket(\"\") err = %v, want ErrNotFound", err)
	}
	if l, err := s.ObservationsByRegistration(c, ""); err != nil || len(l) != 0 {
		t.Fatalf("ObservationsByRegistration(\"\") = %v, %v", l, err)
	}
	if l, err := s.RemoveObservations(c, ""); err != nil || len(l) != 0 {
		t.Fatalf("RemoveObservations(\"\") = %v, %v", l, err)
	}
}

func testObservationReplace(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	register(t, c, a, "dev-r", "reg-r1")
	register(t, c, b, "dev-r2", "reg-r2")
	first := newObs([]byte{1, 2, 3}, "dev-r", "reg-r1", "t-r1", "/3/0")
	if err := a.AddObservation(c, first); err != nil {
		t.Fatal(err)
	}
	// The same token again, through another instance: replaces it and its indexes.
	second := newObs([]byte{1, 2, 3}, "dev-r2", "reg-r2", "t-r2", "/4/0", "/5/0")
	second.Composite, second.Instance = true, "inst-b"
	if err := b.AddObservation(c, second); err != nil {
		t.Fatal(err)
	}
	checkObsThere(t, c, a, second, "replacement")
	if _, err := a.ObservationByTicket(c, "t-r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replaced observation's ticket still resolves: %v", err)
	}
	checkRegObs(t, c, a, "reg-r1")
	checkRegObs(t, c, a, "reg-r2", second)
	// A ticket given to another token resolves to the newer one, and stays
	// when the older one is removed.
	other := newObs([]byte{4, 5}, "dev-r2", "reg-r2", "t-r2", "/6/0")
	if err := a.AddObservation(c, other); err != nil {
		t.Fatal(err)
	}
	if got, err := b.ObservationByTicket(c, "t-r2"); err != nil || !sameObs(got, other) {
		t.Fatalf("ObservationByTicket after reuse = %+v, %v; want %+v", got, err, other)
	}
	if got, err := b.RemoveObservation(c, second.Token); err != nil || !sameObs(got, second) {
		t.Fatalf("RemoveObservation = %+v, %v; want %+v", got, err, second)
	}
	checkObsThere(t, c, a, other, "after removing the older holder of its ticket")
	checkRegObs(t, c, a, "reg-r2", other)
	if l, err := a.RemoveObservations(c, "reg-r1"); err != nil || len(l) != 0 {
		t.Fatalf("RemoveObservations(reg without observations) = %v, %v", l, err)
	}
}

func testObservationRemoveOnce(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	register(t, c, a, "dev-ro", "reg-ro")
	o := newObs([]byte{9, 9}, "dev-ro", "reg-ro", "t-ro", "/3/0/13")
	keep := newObs([]byte{9, 8}, "dev-ro", "reg-ro", "t-keep", "/3/0/9")
	for _, x := range []*store.Observation{o, keep} {
		if err := a.AddObservation(c, x); err != nil {
			t.Fatal(err)
		}
	}
	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			r, err := s.RemoveObservation(c, []byte{9, 9})
			switch {
			case err == nil:
				if !sameObs(r, o) {
					t.Errorf("RemoveObservation = %+v, want %+v", r, o)
				}
				mu.Lock()
				got++
				mu.Unlock()
			case !errors.Is(err, store.ErrNotFound):
				t.Errorf("RemoveObservation: %v", err)
			}
		}()
	}
	wg.Wait()
	if got != 1 {
		t.Fatalf("%d removers got the observation, want exactly 1", got)
	}
	checkObsGone(t, c, b, o, "after RemoveObservation")
	checkObsThere(t, c, b, keep, "the registration's other observation")
	checkRegObs(t, c, b, "reg-ro", keep)
	if _, err := a.RemoveObservation(c, o.Token); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second RemoveObservation err = %v, want ErrNotFound", err)
	}
	// The token can be used again.
	if err := b.AddObservation(c, o); err != nil {
		t.Fatal(err)
	}
	checkObsThere(t, c, a, o, "re-added")
	checkRegObs(t, c, a, "reg-ro", o, keep)
}

func testObservationsRemoveOnce(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	register(t, c, a, "dev-m", "reg-m")
	register(t, c, b, "dev-n", "reg-n")
	const n = 10
	var all []*store.Observation
	for i := range n {
		o := newObs([]byte{0x10, byte(i)}, "dev-m", "reg-m", fmt.Sprintf("t-m%d", i), fmt.Sprintf("/3/0/%d", i))
		if err := a.AddObservation(c, o); err != nil {
			t.Fatal(err)
		}
		all = append(all, o)
	}
	other := newObs([]byte{0x11}, "dev-n", "reg-n", "t-n", "/3/0")
	if err := a.AddObservation(c, other); err != nil {
		t.Fatal(err)
	}
	// Whole-registration removals race single removals: every observation
	// is handed out exactly once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	record := func(os ...*store.Observation) {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range os {
			if o.RegID != "reg-m" {
				t.Errorf("removed %+v with reg-m", o)
			}
			seen[fmt.Sprintf("%x", o.Token)]++
		}
	}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			l, err := s.RemoveObservations(c, "reg-m")
			if err != nil {
				t.Errorf("RemoveObservations: %v", err)
				return
			}
			record(l...)
		}()
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := b
			if i%2 == 1 {
				s = a
			}
			o, err := s.RemoveObservation(c, []byte{0x10, byte(i)})
			switch {
			case err == nil:
				record(o)
			case !errors.Is(err, store.ErrNotFound):
				t.Errorf("RemoveObservation: %v", err)
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("%d observations removed (%v), want %d", len(seen), seen, n)
	}
	for tok, k := range seen {
		if k != 1 {
			t.Fatalf("observation %s handed out %d times, want exactly 1", tok, k)
		}
	}
	for _, o := range all {
		checkObsGone(t, c, b, o, "after RemoveObservations")
	}
	checkRegObs(t, c, a, "reg-m")
	checkRegObs(t, c, a, "reg-n", other)
	checkObsThere(t, c, a, other, "another registration's observation")
}

func testObservationsGoWithRegistration(t *testing.T, newStore Factory) {
	a, b := newStore(t, 500*time.Millisecond), newStore(t, 500*time.Millisecond)
	c := ctx(t)
	now := time.Now()
	regs := map[string]*registration.Registration{
		"removed":  NewReg("dev-g-rm", 44001, 60, now),
		"replaced": NewReg("dev-g-rep", 44002, 60, now),
		"expired":  NewReg("dev-g-exp", 44003, 2, now),
		"kept":     NewReg("dev-g-keep", 44004, 60, now),
	}
	obs := map[string][]*store.Observation{}
	i := 0
	for name, r := range regs {
		if _, err := a.Add(c, r); err != nil {
			t.Fatal(err)
		}
		for j := range 2 {
			i++
			o := newObs([]byte{0x20, byte(i)}, r.Endpoint, r.ID, fmt.Sprintf("t-g-%s-%d", name, j), "/3/0")
			if err := b.AddObservation(c, o); err != nil {
				t.Fatal(err)
			}
			obs[name] = append(obs[name], o)
		}
	}
	checkRegObs(t, c, a, regs["removed"].ID, obs["removed"]...)

	if _, err := b.Remove(c, regs["removed"].ID); err != nil {
		t.Fatal(err)
	}
	for _, o := range obs["removed"] {
		checkObsGone(t, c, a, o, "after Remove of its registration")
	}
	checkRegObs(t, c, a, regs["removed"].ID)

	// A new registration of the endpoint replaces the old one and its observations.
	renewed := NewReg("dev-g-rep", 44005, 60, now)
	if old, err := b.Add(c, renewed); err != nil || old == nil || old.ID != regs["replaced"].ID {
		t.Fatalf("Add(replacement) = %v, %v", old, err)
	}
	for _, o := range obs["replaced"] {
		checkObsGone(t, c, a, o, "after its registration was replaced")
	}
	checkRegObs(t, c, a, regs["replaced"].ID)

	// An Update keeps them.
	lt := uint32(120)
	if _, err := a.Update(c, &registration.Update{ID: regs["kept"].ID, Address: "192.0.2.1", Port: 44004, Lifetime: &lt}, now); err != nil {
		t.Fatal(err)
	}

	exp, err := b.RemoveExpired(c, now.Add(3*time.Second), 100)
	if err != nil || len(exp) != 1 || exp[0].ID != regs["expired"].ID {
		t.Fatalf("RemoveExpired = %v, %v; want the expired registration", exp, err)
	}
	for _, o := range obs["expired"] {
		checkObsGone(t, c, a, o, "after its registration expired")
	}
	checkRegObs(t, c, a, regs["expired"].ID)

	for _, o := range obs["kept"] {
		checkObsThere(t, c, a, o, "observation of a registration that stays")
	}
	checkRegObs(t, c, a, regs["kept"].ID, obs["kept"]...)
	// The registration that replaced another starts without observations.
	checkRegObs(t, c, a, renewed.ID)
	if l, err := a.RemoveObservations(c, regs["removed"].ID); err != nil || len(l) != 0 {
		t.Fatalf("RemoveObservations after the registration's removal = %v, %v; want none", l, err)
	}
}

// checkRefused fails unless AddObservation(o) returns store.ErrNotRegistered
// and stores nothing: o is not found by token, ticket or registration.
func checkRefused(t *testing.T, c context.Context, s, other store.Store, o *store.Observation, why string) {
	t.Helper()
	if err := s.AddObservation(c, o.Clone()); !errors.Is(err, store.ErrNotRegistered) {
		t.Fatalf("%s: AddObservation(%s of %s) err = %v, want ErrNotRegistered", why, o.RegID, o.Endpoint, err)
	}
	checkObsGone(t, c, other, o, why)
	checkRegObs(t, c, other, o.RegID)
}

func testObservationNeedsRegistration(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)

	// (a) A registration id that was never registered.
	checkRefused(t, c, a, b, newObs([]byte{0x40, 1}, "dev-u", "reg-unknown", "t-u1", "/3/0"), "unknown registration")
	// A refused observation leaves the observation holding its token or
	// ticket alone.
	register(t, c, a, "dev-k", "reg-k")
	keep := newObs([]byte{0x40, 2}, "dev-k", "reg-k", "t-k", "/3/0")
	if err := b.AddObservation(c, keep); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*store.Observation{
		newObs([]byte{0x40, 2}, "dev-u", "reg-unknown", "t-u2", "/4/0"), // keep's token
		newObs([]byte{0x40, 3}, "dev-u", "reg-unknown", "t-k", "/4/0"),  // keep's ticket
	} {
		if err := a.AddObservation(c, o); !errors.Is(err, store.ErrNotRegistered) {
			t.Fatalf("AddObservation(%x, %s) err = %v, want ErrNotRegistered", o.Token, o.Ticket, err)
		}
	}
	checkObsThere(t, c, b, keep, "after refused observations with its token and ticket")
	checkRegObs(t, c, b, "reg-k", keep)
	checkRegObs(t, c, b, "reg-unknown")
	if _, err := b.ObservationByTicket(c, "t-u2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused observation's ticket resolves: %v", err)
	}
	if _, err := b.ObservationByToken(c, []byte{0x40, 3}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused observation's token resolves: %v", err)
	}

	// (b) A registration removed just before, by each of the three paths.
	register(t, c, a, "dev-gone", "reg-gone")
	if _, err := b.Remove(c, "reg-gone"); err != nil {
		t.Fatal(err)
	}
	checkRefused(t, c, a, b, newObs([]byte{0x41, 1}, "dev-gone", "reg-gone", "t-gone", "/3/0"), "removed registration")

	register(t, c, a, "dev-rep", "reg-rep-old")
	register(t, c, b, "dev-rep", "reg-rep-new")
	checkRefused(t, c, a, b, newObs([]byte{0x41, 2}, "dev-rep", "reg-rep-old", "t-rep-old", "/3/0"), "replaced registration")
	renewed := newObs([]byte{0x41, 3}, "dev-rep", "reg-rep-new", "t-rep-new", "/3/0")
	if err := a.AddObservation(c, renewed); err != nil {
		t.Fatalf("AddObservation(replacing registration): %v", err)
	}
	checkObsThere(t, c, b, renewed, "observation of the replacing registration")

	now := time.Now()
	exp := NewReg("dev-exp", 45999, 1, now)
	exp.ID = "reg-exp"
	if _, err := a.Add(c, exp); err != nil {
		t.Fatal(err)
	}
	if l, err := b.RemoveExpired(c, now.Add(10*time.Second), 100); err != nil || len(l) != 1 || l[0].ID != "reg-exp" {
		t.Fatalf("RemoveExpired = %v, %v; want reg-exp", l, err)
	}
	checkRefused(t, c, a, b, newObs([]byte{0x41, 4}, "dev-exp", "reg-exp", "t-exp", "/3/0"), "expired registration")

	// (c) The registration id of another endpoint.
	register(t, c, a, "dev-x", "reg-x")
	register(t, c, a, "dev-y", "reg-y")
	checkRefused(t, c, a, b, newObs([]byte{0x42, 1}, "dev-y", "reg-x", "t-xy", "/3/0"), "endpoint mismatch")
	checkRefused(t, c, a, b, newObs([]byte{0x42, 2}, "dev-unknown", "reg-x", "t-xu", "/3/0"), "unknown endpoint")
	checkRefused(t, c, a, b, newObs([]byte{0x42, 3}, "", "reg-x", "t-xe", "/3/0"), "no endpoint")
	ok := newObs([]byte{0x42, 4}, "dev-x", "reg-x", "t-xx", "/3/0")
	if err := b.AddObservation(c, ok); err != nil {
		t.Fatalf("AddObservation(matching endpoint): %v", err)
	}
	checkObsThere(t, c, a, ok, "observation with the right endpoint")
	checkRegObs(t, c, a, "reg-x", ok)
	checkRegObs(t, c, a, "reg-y")
}

// testObservationRegistrationRace adds observations of a registration from
// many goroutines (two instances) while the registration is removed: no
// observation outlives the removal, and every add after it is refused.
func testObservationRegistrationRace(t *testing.T, newStore Factory) {
	for _, tc := range []struct {
		name   string
		remove func(c context.Context, s store.Store, r *registration.Registration) error
	}{
		{"Remove", func(c context.Context, s store.Store, r *registration.Registration) error {
			_, err := s.Remove(c, r.ID)
			return err
		}},
		{"Replace", func(c context.Context, s store.Store, r *registration.Registration) error {
			old, err := s.Add(c, NewReg(r.Endpoint, r.Port+1, 60, time.Now()))
			if err == nil && (old == nil || old.ID != r.ID) {
				err = fmt.Errorf("Add(replacement) replaced %v, want %s", old, r.ID)
			}
			return err
		}},
		{"Expire", func(c context.Context, s store.Store, r *registration.Registration) error {
			l, err := s.RemoveExpired(c, time.Now().Add(time.Hour), 100)
			if err == nil && (len(l) != 1 || l[0].ID != r.ID) {
				err = fmt.Errorf("RemoveExpired = %v, want %s", l, r.ID)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newStore(t, time.Second), newStore(t, time.Second)
			c := ctx(t)
			r := register(t, c, a, "dev-race", "reg-race")
			const (
				adders   = 8
				after    = 3    // adds each adder makes once the removal is done
				maxAdds  = 2000 // adds before an adder waits for the removal
				minAdded = adders
			)
			var (
				removed  = make(chan struct{}) // closed once the removal is done
				added    atomic.Int64
				started  = make(chan struct{})
				startOne sync.Once
				mu       sync.Mutex
				tried    []*store.Observation
				wg       sync.WaitGroup
			)
			for g := range adders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := a
					if g%2 == 1 {
						s = b
					}
					left := after
					for j := 0; left > 0; j++ {
						if j == maxAdds {
							startOne.Do(func() { close(started) })
							<-removed
						}
						var done bool
						select {
						case <-removed:
							done = true
						default:
						}
						o := newObs([]byte{0x50, byte(g), byte(j >> 8), byte(j)}, "dev-race", "reg-race",
							fmt.Sprintf("t-race-%d-%d", g, j), "/3/0")
						mu.Lock()
						tried = append(tried, o)
						mu.Unlock()
						err := s.AddObservation(c, o)
						switch {
						case err == nil:
							if done {
								t.Errorf("AddObservation after the registration was removed succeeded (%x)", o.Token)
							}
							if added.Add(1) >= minAdded {
								startOne.Do(func() { close(started) })
							}
						case errors.Is(err, store.ErrNotRegistered):
						default:
							t.Errorf("AddObservation(%x): %v", o.Token, err)
						}
						if done {
							left--
						}
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(removed)
				<-started
				if err := tc.remove(c, b, r); err != nil {
					t.Errorf("removing the registration: %v", err)
				}
			}()
			wg.Wait()
			if t.Failed() {
				return
			}
			t.Logf("%d observations added, %d tried", added.Load(), len(tried))
			checkRegObs(t, c, a, "reg-race")
			checkRegObs(t, c, b, "reg-race")
			for _, o := range tried {
				checkObsGone(t, c, a, o, "after the race with the removal")
			}
		})
	}
}
