// Package storetest is the conformance suite every store.Store
// implementation must pass. Implementations call Run from their tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/linkformat"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// Factory returns a fresh, empty store whose registrations expire with the
// given grace. Calling it twice in one test must return two handles on the
// same shared state when Shared is true (two instances of a cluster).
type Factory func(t *testing.T, grace time.Duration) store.Store

// Run runs the conformance suite. newStore must return stores that share
// state when called more than once within the same subtest, so that the
// suite can play two instances.
func Run(t *testing.T, newStore Factory) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore Factory)
	}{
		{"AddGet", testAddGet},
		{"Replace", testReplace},
		{"Update", testUpdate},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"RemoveOnce", testRemoveOnce},
		{"ExpireOnce", testExpireOnce},
		{"List", testList},
		{"Ownership", testOwnership},
		{"Membership", testMembership},
		{"SecurityPutGet", testSecurityPutGet},
		{"SecurityReplace", testSecurityReplace},
		{"SecurityIdentityUnique", testSecurityIdentityUnique},
		{"SecurityConcurrentIdentity", testSecurityConcurrentIdentity},
		{"SecurityRemove", testSecurityRemove},
		{"SecurityList", testSecurityList},
		{"NodeIDSticky", testNodeIDSticky},
		{"NodeIDConcurrent", testNodeIDConcurrent},
		{"NodeIDClaim", testNodeIDClaim},
		{"DTLSSessions", testDTLSSessions},
		{"DTLSSessionTTL", testDTLSSessionTTL},
		{"TicketClaimOnce", testTicketClaimOnce},
		{"TicketClaimTTL", testTicketClaimTTL},
		{"TicketClaimInvalid", testTicketClaimInvalid},
		{"ObservationIndexes", testObservationIndexes},
		{"ObservationInvalid", testObservationInvalid},
		{"ObservationReplace", testObservationReplace},
		{"ObservationRemoveOnce", testObservationRemoveOnce},
		{"ObservationsRemoveOnce", testObservationsRemoveOnce},
		{"ObservationsGoWithRegistration", testObservationsGoWithRegistration},
		{"ObservationNeedsRegistration", testObservationNeedsRegistration},
		{"ObservationRegistrationRace", testObservationRegistrationRace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore) })
	}
}

// NewReg returns a registration for tests.
func NewReg(ep string, port uint16, lt uint32, now time.Time) *registration.Registration {
	return &registration.Registration{
		RegDate: now.UnixMilli(), Address: "192.0.2.1", Port: port, RegAddr: "0.0.0.0", RegPort: 5683,
		Lifetime: lt, Version: "1.1", Binding: "U", Endpoint: ep, ID: registration.NewID(),
		ObjLinks: []linkformat.Link{{URL: "/3/0", Attrs: map[string]string{}}},
		AddAttr:  map[string]string{}, Root: "/", LastUp: now.UnixMilli(),
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func testAddGet(t *testing.T, newStore Factory) {
	s := newStore(t, time.Second)
	c := ctx(t)
	now := time.Now()
	r := NewReg("dev-a", 40000, 60, now)
	old, err := s.Add(c, r)
	if err != nil || old != nil {
		t.Fatalf("Add = %v, %v; want nil, nil", old, err)
	}
	for name, get := range map[string]func() (*registration.Registration, error){
		"Get":           func() (*registration.Registration, error) { return s.Get(c, r.ID) },
		"GetByEndpoint": func() (*registration.Registration, error) { return s.GetByEndpoint(c, "dev-a") },
		"GetByAddr": func() (*registration.Registration, error) {
			return s.GetByAddr(c, netip.MustParseAddrPort("192.0.2.1:40000"))
		},
	} {
		got, err := get()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.ID != r.ID || got.Endpoint != "dev-a" || got.Port != 40000 || len(got.ObjLinks) != 1 || got.ObjLinks[0].URL != "/3/0" {
			t.Fatalf("%s = %+v", name, got)
		}
	}
	if _, err := s.Get(c, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(unknown) err = %v", err)
	}
	if _, err := s.GetByEndpoint(c, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetByEndpoint(unknown) err = %v", err)
	}
	if _, err := s.GetByAddr(c, netip.MustParseAddrPort("192.0.2.1:1")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetByAddr(unknown) err = %v", err)
	}
	// IPv6 addresses index too.
	r6 := NewReg("dev-6", 7, 60, now)
	r6.Address = "2001:db8::1"
	if _, err := s.Add(c, r6); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetByAddr(c, netip.MustParseAddrPort("[2001:db8::1]:7")); err != nil || got.Endpoint != "dev-6" {
		t.Fatalf("GetByAddr(v6) = %v, %v", got, err)
	}
}

func testReplace(t *testing.T, newStore Factory) {
	s := newStore(t, time.Second)
	c := ctx(t)
	now := time.Now()
	first := NewReg("dev-r", 40001, 60, now)
	if _, err := s.Add(c, first); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOwner(c, "dev-r", "a"); err != nil {
		t.Fatal(err)
	}
	second := NewReg("dev-r", 40002, 60, now)
	old, err := s.Add(c, second)
	if err != nil {
		t.Fatal(err)
	}
	if old == nil || old.ID != first.ID || old.Port != 40001 {
		t.Fatalf("Add(replacement) returned %+v, want the first registration", old)
	}
	if _, err := s.Get(c, first.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old id still found: %v", err)
	}
	if _, err := s.GetByAddr(c, netip.MustParseAddrPort("192.0.2.1:40001")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old address still indexed: %v", err)
	}
	if got, err := s.Get(c, second.ID); err != nil || got.Port != 40002 {
		t.Fatalf("new registration: %v, %v", got, err)
	}
	if _, err := s.Remove(c, first.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Remove(old id) err = %v; it must not remove the new registration", err)
	}
	if _, err := s.Get(c, second.ID); err != nil {
		t.Fatalf("new registration lost: %v", err)
	}
}

func testUpdate(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	now := time.Now()
	r := NewReg("dev-u", 40003, 60, now)
	if _, err := a.Add(c, r); err != nil {
		t.Fatal(err)
	}
	lt := uint32(120)
	later := now.Add(5 * time.Second)
	u := &registration.Update{ID: r.ID, Address: "192.0.2.9", Port: 50000, Lifetime: &lt,
		ObjLinks: []linkformat.Link{{URL: "/3/0"}, {URL: "/5/0"}}}
	got, err := b.Update(c, u, later) // through the other instance
	if err != nil {
		t.Fatal(err)
	}
	if got.Lifetime != 120 || got.Port != 50000 || got.LastUp != later.UnixMilli() || len(got.ObjLinks) != 2 || got.RegDate != r.RegDate {
		t.Fatalf("Update = %+v", got)
	}
	if _, err := a.GetByAddr(c, netip.MustParseAddrPort("192.0.2.1:40003")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old address still indexed after update: %v", err)
	}
	if g, err := a.GetByAddr(c, netip.MustParseAddrPort("192.0.2.9:50000")); err != nil || g.ID != r.ID {
		t.Fatalf("new address not indexed: %v, %v", g, err)
	}
	if _, err := a.Update(c, &registration.Update{ID: "unknown", Address: "192.0.2.1", Port: 1}, later); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Update(unknown) err = %v", err)
	}
	// An update pushes expiry: the registration does not expire at its old deadline.
	exp, err := a.RemoveExpired(c, now.Add(62*time.Second), 100)
	if err != nil || len(exp) != 0 {
		t.Fatalf("updated registration expired at its old deadline: %v, %v", exp, err)
	}
}

func testConcurrentUpdates(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	now := time.Now()
	r := NewReg("dev-cu", 40004, 60, now)
	r.AddAttr = map[string]string{}
	if _, err := a.Add(c, r); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			u := &registration.Update{ID: r.ID, Address: "192.0.2.1", Port: 40004,
				AddAttr: map[string]string{fmt.Sprintf("k%d", i): "v"}}
			if _, err := s.Update(c, u, now); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent update: %v", err)
	}
	got, err := a.Get(c, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.AddAttr) != n {
		t.Fatalf("lost updates: %d of %d attributes present", len(got.AddAttr), n)
	}
}

func testRemoveOnce(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	r := NewReg("dev-rm", 40005, 60, time.Now())
	if _, err := a.Add(c, r); err != nil {
		t.Fatal(err)
	}
	if err := a.SetOwner(c, "dev-rm", "a"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := 0
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			old, err := s.Remove(c, r.ID)
			if err == nil && old.ID == r.ID {
				mu.Lock()
				got++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Remove: %v", err)
			}
		}()
	}
	wg.Wait()
	if got != 1 {
		t.Fatalf("%d removers got the registration, want exactly 1", got)
	}
	if _, err := a.GetByEndpoint(c, "dev-rm"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("still there after Remove: %v", err)
	}
	if o, err := a.Owner(c, "dev-rm"); err != nil || o != "" {
		t.Fatalf("owner after Remove = %q, %v; want none", o, err)
	}
}

func testExpireOnce(t *testing.T, newStore Factory) {
	a, b := newStore(t, 500*time.Millisecond), newStore(t, 500*time.Millisecond)
	c := ctx(t)
	now := time.Now()
	const n = 50
	for i := range n {
		r := NewReg(fmt.Sprintf("dev-x%d", i), uint16(41000+i), 2, now)
		if _, err := a.Add(c, r); err != nil {
			t.Fatal(err)
		}
	}
	keep := NewReg("dev-keep", 42000, 3600, now)
	if _, err := a.Add(c, keep); err != nil {
		t.Fatal(err)
	}
	if exp, err := a.RemoveExpired(c, now.Add(2*time.Second), 100); err != nil || len(exp) != 0 {
		t.Fatalf("expired inside the grace: %d, %v", len(exp), err)
	}
	sweepAt := now.Add(3 * time.Second)
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			for {
				exp, err := s.RemoveExpired(c, sweepAt, 7)
				if err != nil {
					t.Errorf("RemoveExpired: %v", err)
					return
				}
				if len(exp) == 0 {
					return
				}
				mu.Lock()
				for _, r := range exp {
					seen[r.Endpoint]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("%d registrations expired, want %d", len(seen), n)
	}
	for ep, k := range seen {
		if k != 1 {
			t.Fatalf("%s returned by %d sweeps, want exactly 1", ep, k)
		}
	}
	if _, err := a.GetByEndpoint(c, "dev-keep"); err != nil {
		t.Fatalf("long-lived registration swept: %v", err)
	}
	if _, err := a.GetByEndpoint(c, "dev-x0"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired registration still there: %v", err)
	}
}

func testList(t *testing.T, newStore Factory) {
	s := newStore(t, time.Second)
	c := ctx(t)
	if l, err := s.List(c); err != nil || len(l) != 0 {
		t.Fatalf("List(empty) = %v, %v", l, err)
	}
	for i := range 3 {
		if _, err := s.Add(c, NewReg(fmt.Sprintf("dev-l%d", i), uint16(43000+i), 60, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.List(c)
	if err != nil || len(l) != 3 || l[0].Endpoint != "dev-l0" || l[2].Endpoint != "dev-l2" {
		t.Fatalf("List = %v, %v", l, err)
	}
}

func testOwnership(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if o, err := a.Owner(c, "dev-o"); err != nil || o != "" {
		t.Fatalf("Owner(unowned) = %q, %v", o, err)
	}
	if err := a.SetOwner(c, "dev-o", "instance-a"); err != nil {
		t.Fatal(err)
	}
	if o, _ := b.Owner(c, "dev-o"); o != "instance-a" {
		t.Fatalf("Owner seen by b = %q", o)
	}
	if err := b.SetOwner(c, "dev-o", "instance-b"); err != nil {
		t.Fatal(err)
	}
	if o, _ := a.Owner(c, "dev-o"); o != "instance-b" {
		t.Fatalf("Owner after move = %q", o)
	}
}

func testMembership(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if err := a.Announce(c, store.Member{ID: "a", NodeID: 1, Backend: "127.0.0.1:5683", State: store.StateActive}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Announce(c, store.Member{ID: "b", NodeID: 2, State: store.StateActive}, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ms, err := a.Members(c)
	if err != nil || len(ms) != 2 || ms[0].ID != "a" || ms[1].ID != "b" || ms[0].Backend != "127.0.0.1:5683" || ms[0].Seen == 0 {
		t.Fatalf("Members = %+v, %v", ms, err)
	}
	// b stops heartbeating: gone after its TTL.
	time.Sleep(600 * time.Millisecond)
	if ms, _ = a.Members(c); len(ms) != 1 || ms[0].ID != "a" {
		t.Fatalf("Members after b's TTL = %+v", ms)
	}
	// a drains, then leaves.
	if err := a.Announce(c, store.Member{ID: "a", NodeID: 1, State: store.StateDraining}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ms, _ = b.Members(c); len(ms) != 1 || ms[0].State != store.StateDraining {
		t.Fatalf("Members after drain = %+v", ms)
	}
	if err := a.Leave(c, "a"); err != nil {
		t.Fatal(err)
	}
	if ms, _ = b.Members(c); len(ms) != 0 {
		t.Fatalf("Members after leave = %+v", ms)
	}
}
