package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func sec(ep, identity string, key ...byte) store.SecurityInfo {
	if len(key) == 0 {
		key = []byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0x01}
	}
	return store.SecurityInfo{Endpoint: ep, Identity: identity, Key: key}
}

func sameSec(a, b store.SecurityInfo) bool {
	return a.Endpoint == b.Endpoint && a.Identity == b.Identity && bytes.Equal(a.Key, b.Key)
}

func testSecurityPutGet(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	want := sec("dev-s", "id-s", 0x00, 0x11, 0xff, 0x00)
	if err := a.PutSecurity(c, want); err != nil {
		t.Fatal(err)
	}
	got, err := b.SecurityByEndpoint(c, "dev-s")
	if err != nil || !sameSec(got, want) {
		t.Fatalf("SecurityByEndpoint = %+v, %v; want %+v", got, err, want)
	}
	got, err = b.SecurityByIdentity(c, "id-s")
	if err != nil || !sameSec(got, want) {
		t.Fatalf("SecurityByIdentity = %+v, %v; want %+v", got, err, want)
	}
	if _, err := a.SecurityByEndpoint(c, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SecurityByEndpoint(unknown) err = %v", err)
	}
	if _, err := a.SecurityByIdentity(c, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SecurityByIdentity(unknown) err = %v", err)
	}
	for _, bad := range []store.SecurityInfo{
		sec("", "id"), sec("dev", ""), {Endpoint: "dev", Identity: "id"},
		sec("dev", string(make([]byte, store.MaxPSKIdentityLength+1))),
		sec("dev", "id", make([]byte, store.MaxPSKKeyLength+1)...),
	} {
		if err := a.PutSecurity(c, bad); !errors.Is(err, store.ErrInvalidSecurity) {
			t.Fatalf("PutSecurity(%v) err = %v, want ErrInvalidSecurity", bad, err)
		}
	}
	// Identities and endpoints may hold characters special elsewhere.
	odd := sec("urn:dev/ä b*?", "id:[x]*")
	if err := a.PutSecurity(c, odd); err != nil {
		t.Fatal(err)
	}
	if got, err := b.SecurityByIdentity(c, odd.Identity); err != nil || !sameSec(got, odd) {
		t.Fatalf("SecurityByIdentity(odd) = %+v, %v", got, err)
	}
}

func testSecurityReplace(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if err := a.PutSecurity(c, sec("dev-r", "id-old", 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	// New key, same identity.
	if err := b.PutSecurity(c, sec("dev-r", "id-old", 4, 5, 6)); err != nil {
		t.Fatal(err)
	}
	if got, err := a.SecurityByIdentity(c, "id-old"); err != nil || !bytes.Equal(got.Key, []byte{4, 5, 6}) {
		t.Fatalf("after key change: %+v, %v", got, err)
	}
	// New identity: the old one is freed.
	want := sec("dev-r", "id-new", 7, 8)
	if err := b.PutSecurity(c, want); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SecurityByIdentity(c, "id-old"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old identity still resolves: %v", err)
	}
	if got, err := a.SecurityByIdentity(c, "id-new"); err != nil || !sameSec(got, want) {
		t.Fatalf("SecurityByIdentity(new) = %+v, %v", got, err)
	}
	if got, err := a.SecurityByEndpoint(c, "dev-r"); err != nil || !sameSec(got, want) {
		t.Fatalf("SecurityByEndpoint = %+v, %v", got, err)
	}
	if err := a.PutSecurity(c, sec("dev-other", "id-old")); err != nil {
		t.Fatalf("freed identity not reusable by another endpoint: %v", err)
	}
}

func testSecurityIdentityUnique(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	first := sec("dev-u1", "shared-id", 1)
	if err := a.PutSecurity(c, first); err != nil {
		t.Fatal(err)
	}
	if err := b.PutSecurity(c, sec("dev-u2", "shared-id", 2)); !errors.Is(err, store.ErrIdentityTaken) {
		t.Fatalf("second endpoint with the same identity: err = %v, want ErrIdentityTaken", err)
	}
	if got, err := a.SecurityByIdentity(c, "shared-id"); err != nil || !sameSec(got, first) {
		t.Fatalf("identity owner changed: %+v, %v", got, err)
	}
	if _, err := a.SecurityByEndpoint(c, "dev-u2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused entry stored: %v", err)
	}
	// An endpoint that already has credentials keeps them when refused.
	if err := b.PutSecurity(c, sec("dev-u3", "own-id", 3)); err != nil {
		t.Fatal(err)
	}
	if err := b.PutSecurity(c, sec("dev-u3", "shared-id", 3)); !errors.Is(err, store.ErrIdentityTaken) {
		t.Fatalf("err = %v, want ErrIdentityTaken", err)
	}
	if got, err := a.SecurityByIdentity(c, "own-id"); err != nil || got.Endpoint != "dev-u3" {
		t.Fatalf("refused replacement dropped the old identity: %+v, %v", got, err)
	}
}

func testSecurityConcurrentIdentity(t *testing.T, newStore Factory) {
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
			ep := fmt.Sprintf("dev-c%d", i)
			switch err := s.PutSecurity(c, sec(ep, "contested", byte(i+1))); {
			case err == nil:
				mu.Lock()
				winners = append(winners, ep)
				mu.Unlock()
			case !errors.Is(err, store.ErrIdentityTaken):
				t.Errorf("PutSecurity(%s): %v", ep, err)
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d endpoints bound the identity (%v), want exactly 1", len(winners), winners)
	}
	got, err := a.SecurityByIdentity(c, "contested")
	if err != nil || got.Endpoint != winners[0] {
		t.Fatalf("SecurityByIdentity = %+v, %v; want %s", got, err, winners[0])
	}
	l, err := a.ListSecurity(c)
	if err != nil || len(l) != 1 {
		t.Fatalf("ListSecurity = %v, %v; want only the winner", l, err)
	}
}

func testSecurityRemove(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if err := a.PutSecurity(c, sec("dev-rm", "id-rm")); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveSecurity(c, "dev-rm"); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveSecurity(c, "dev-rm"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second RemoveSecurity err = %v, want ErrNotFound", err)
	}
	if err := a.RemoveSecurity(c, "never"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("RemoveSecurity(unknown) err = %v, want ErrNotFound", err)
	}
	if _, err := a.SecurityByEndpoint(c, "dev-rm"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SecurityByEndpoint after remove: %v", err)
	}
	if _, err := a.SecurityByIdentity(c, "id-rm"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SecurityByIdentity after remove: %v", err)
	}
	if err := a.PutSecurity(c, sec("dev-rm2", "id-rm")); err != nil {
		t.Fatalf("identity not freed by remove: %v", err)
	}
}

func testSecurityList(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if l, err := a.ListSecurity(c); err != nil || len(l) != 0 {
		t.Fatalf("ListSecurity(empty) = %v, %v", l, err)
	}
	var want []store.SecurityInfo
	for _, i := range []int{3, 1, 2, 0} {
		s := sec(fmt.Sprintf("dev-l%d", i), fmt.Sprintf("id-l%d", i), byte(i), 0xaa)
		if err := a.PutSecurity(c, s); err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	if err := a.RemoveSecurity(c, "dev-l2"); err != nil {
		t.Fatal(err)
	}
	want = append(want[:2], want[3:]...)
	sort.Slice(want, func(i, j int) bool { return want[i].Endpoint < want[j].Endpoint })
	l, err := b.ListSecurity(c)
	if err != nil || len(l) != len(want) {
		t.Fatalf("ListSecurity = %v, %v; want %v", l, err, want)
	}
	for i := range want {
		if !sameSec(l[i], want[i]) {
			t.Fatalf("ListSecurity[%d] = %+v, want %+v", i, l[i], want[i])
		}
	}
}

func testNodeIDSticky(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	id, err := a.AllocateNodeID(c, "inst-a")
	if err != nil || id != 1 {
		t.Fatalf("first AllocateNodeID = %d, %v; want 1", id, err)
	}
	// The same instance again (a restart, through another handle).
	if again, err := b.AllocateNodeID(c, "inst-a"); err != nil || again != id {
		t.Fatalf("AllocateNodeID again = %d, %v; want %d", again, err, id)
	}
	if other, err := b.AllocateNodeID(c, "inst-b"); err != nil || other != 2 {
		t.Fatalf("AllocateNodeID(other) = %d, %v; want 2", other, err)
	}
	if again, err := a.AllocateNodeID(c, "inst-a"); err != nil || again != id {
		t.Fatalf("AllocateNodeID after another = %d, %v; want %d", again, err, id)
	}
}

func testNodeIDConcurrent(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	const n = 20
	ids := make([]uint16, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			id, err := s.AllocateNodeID(c, fmt.Sprintf("inst-%d", i))
			if err != nil {
				t.Errorf("AllocateNodeID: %v", err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	seen := map[uint16]int{}
	for i, id := range ids {
		if prev, dup := seen[id]; dup {
			t.Fatalf("instances %d and %d both got node id %d", prev, i, id)
		}
		seen[id] = i
		if id < 1 || id > n {
			t.Fatalf("instance %d got id %d; want the lowest free ids 1..%d", i, id, n)
		}
	}
	for i, id := range ids {
		if again, err := b.AllocateNodeID(c, fmt.Sprintf("inst-%d", i)); err != nil || again != id {
			t.Fatalf("inst-%d: AllocateNodeID again = %d, %v; want %d", i, again, err, id)
		}
	}
}

func testNodeIDClaim(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if err := a.ClaimNodeID(c, "inst-x", 1); err != nil {
		t.Fatal(err)
	}
	if err := a.ClaimNodeID(c, "inst-x", 1); err != nil {
		t.Fatalf("claiming one's own id again: %v", err)
	}
	if err := b.ClaimNodeID(c, "inst-y", 1); !errors.Is(err, store.ErrNodeIDTaken) {
		t.Fatalf("ClaimNodeID(held) err = %v, want ErrNodeIDTaken", err)
	}
	if err := b.ClaimNodeID(c, "inst-y", 0); err == nil {
		t.Fatal("ClaimNodeID(0) succeeded")
	}
	// Allocation skips claimed ids and returns a claimed id to its holder.
	if id, err := b.AllocateNodeID(c, "inst-y"); err != nil || id != 2 {
		t.Fatalf("AllocateNodeID(inst-y) = %d, %v; want 2", id, err)
	}
	if id, err := b.AllocateNodeID(c, "inst-x"); err != nil || id != 1 {
		t.Fatalf("AllocateNodeID(inst-x) = %d, %v; want its claimed 1", id, err)
	}
	if err := a.ClaimNodeID(c, "inst-y", 65535); err != nil {
		t.Fatal(err)
	}
	if id, err := b.AllocateNodeID(c, "inst-y"); err != nil || id != 65535 {
		t.Fatalf("AllocateNodeID after claim = %d, %v; want 65535", id, err)
	}
	// inst-y's previous id 2 was released by the claim.
	if err := a.ClaimNodeID(c, "inst-z", 2); err != nil {
		t.Fatalf("id released by a claim elsewhere is not free: %v", err)
	}
	if id, err := a.AllocateNodeID(c, "inst-w"); err != nil || id != 3 {
		t.Fatalf("AllocateNodeID(inst-w) = %d, %v; want 3", id, err)
	}
}

func testDTLSSessions(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	id := []byte{0x00, 0xff, 0x10, 0x20}
	data := []byte{0x00, 'x', 0xff, 0x00}
	if err := a.PutDTLSSession(c, id, data, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, err := b.GetDTLSSession(c, id)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetDTLSSession = %x, %v; want %x", got, err, data)
	}
	if _, err := b.GetDTLSSession(c, []byte{1, 2, 3}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetDTLSSession(unknown) err = %v", err)
	}
	if _, err := b.GetDTLSSession(c, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetDTLSSession(nil) err = %v", err)
	}
	if err := b.PutDTLSSession(c, id, []byte("replaced"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got, err := a.GetDTLSSession(c, id); err != nil || string(got) != "replaced" {
		t.Fatalf("after replace: %q, %v", got, err)
	}
	if err := b.DeleteDTLSSession(c, id); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetDTLSSession(c, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetDTLSSession after delete err = %v", err)
	}
	if err := a.DeleteDTLSSession(c, id); err != nil {
		t.Fatalf("DeleteDTLSSession(missing) = %v", err)
	}
	if err := a.PutDTLSSession(c, id, data, 0); err == nil {
		t.Fatal("PutDTLSSession(ttl 0) succeeded")
	}
	if err := a.PutDTLSSession(c, nil, data, time.Hour); err == nil {
		t.Fatal("PutDTLSSession(empty id) succeeded")
	}
}

func testDTLSSessionTTL(t *testing.T, newStore Factory) {
	a, b := newStore(t, time.Second), newStore(t, time.Second)
	c := ctx(t)
	if err := a.PutDTLSSession(c, []byte("short"), []byte("s"), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := a.PutDTLSSession(c, []byte("long"), []byte("l"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetDTLSSession(c, []byte("short")); err != nil {
		t.Fatalf("session gone before its ttl: %v", err)
	}
	time.Sleep(600 * time.Millisecond)
	if _, err := b.GetDTLSSession(c, []byte("short")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("session after its ttl: err = %v, want ErrNotFound", err)
	}
	if got, err := b.GetDTLSSession(c, []byte("long")); err != nil || string(got) != "l" {
		t.Fatalf("long-lived session: %q, %v", got, err)
	}
}
