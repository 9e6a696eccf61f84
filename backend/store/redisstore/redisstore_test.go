package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/storetest"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
)

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	storetest.Run(t, func(t *testing.T, grace time.Duration) store.Store {
		// Each call is a separate client (a separate instance) on the
		// subtest's own prefix.
		s, err := redisstore.Open(context.Background(), srv.URL, redisstore.Options{
			Prefix: "test:" + t.Name() + ":", Grace: grace,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// TestKeySchema pins the documented key names (docs/redis-keys.md).
func TestKeySchema(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "p:"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := storetest.NewReg("ep1", 5000, 60, time.Now())
	if _, err := s.Add(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOwner(ctx, "ep1", "inst"); err != nil {
		t.Fatal(err)
	}
	if err := s.Announce(ctx, store.Member{ID: "inst", State: store.StateActive}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecurity(ctx, store.SecurityInfo{Endpoint: "ep1", Identity: "psk1", Key: []byte{0xab, 0xcd}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AllocateNodeID(ctx, "inst"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDTLSSession(ctx, []byte{0x01, 0xfe}, []byte("state"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.ClaimTicket(ctx, "tk1", "inst", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	o := &store.Observation{Token: []byte{0x0a, 0xff}, Endpoint: "ep1", RegID: r.ID, Paths: []string{"/3/0"}, Ticket: "tk2", Instance: "inst"}
	if err := s.AddObservation(ctx, o); err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"p:reg:ep:ep1":              "hash",
		"p:reg:id:" + r.ID:          "string",
		"p:reg:addr:192.0.2.1:5000": "string",
		"p:reg:expiry":              "zset",
		"p:owner:ep1":               "string",
		"p:member:inst":             "string",
		"p:members":                 "zset",
		"p:sec:ep:ep1":              "hash",
		"p:sec:id:psk1":             "string",
		"p:nodeid:inst:inst":        "string",
		"p:nodeid:1":                "string",
		"p:dtls:01fe":               "string",
		"p:ticket:tk1":              "string",
		"p:obs:tok:0aff":            "hash",
		"p:obs:reg:" + r.ID:         "set",
		"p:obs:ticket:tk2":          "string",
	}
	if len(keys) != len(want) {
		t.Errorf("keys = %v, want %d keys", keys, len(want))
	}
	for k, typ := range want {
		if got := c.Type(ctx, k).Val(); got != typ {
			t.Errorf("key %s: type %q, want %q", k, got, typ)
		}
	}
	if h := c.HGetAll(ctx, "p:reg:ep:ep1").Val(); h["id"] != r.ID || !strings.Contains(h["data"], `"ep":"ep1"`) {
		t.Errorf("record = %v", h)
	}
	if ttl := c.PTTL(ctx, "p:member:inst").Val(); ttl <= 0 {
		t.Errorf("member key has no TTL (%v)", ttl)
	}
	if h := c.HGetAll(ctx, "p:sec:ep:ep1").Val(); len(h) != 2 || h["identity"] != "psk1" || h["key"] != "abcd" {
		t.Errorf("security record = %v", h)
	}
	if h := c.HGetAll(ctx, "p:obs:tok:0aff").Val(); len(h) != 3 || h["regId"] != r.ID || h["ticket"] != "tk2" || !strings.Contains(h["data"], `"ticket":"tk2"`) {
		t.Errorf("observation record = %v", h)
	}
	if m := c.SMembers(ctx, "p:obs:reg:"+r.ID).Val(); len(m) != 1 || m[0] != "0aff" {
		t.Errorf("observation index of the registration = %v", m)
	}
	if ttl := c.PTTL(ctx, "p:ticket:tk1").Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("ticket claim TTL = %v, want (0, 1m]", ttl)
	}
	for k, v := range map[string]string{"p:sec:id:psk1": "ep1", "p:nodeid:inst:inst": "1", "p:nodeid:1": "inst", "p:dtls:01fe": "state",
		"p:ticket:tk1": "inst", "p:obs:ticket:tk2": "0aff"} {
		if got := c.Get(ctx, k).Val(); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if ttl := c.PTTL(ctx, "p:dtls:01fe").Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("DTLS session TTL = %v, want (0, 1h]", ttl)
	}
}

// TestListSecurityPrefixGlob checks that ListSecurity stays inside its
// prefix when the prefix holds glob characters.
func TestListSecurityPrefixGlob(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	open := func(prefix string) *redisstore.Store {
		s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	glob, plain := open("a*[1]?:"), open("ab[1]x:")
	if err := plain.PutSecurity(ctx, store.SecurityInfo{Endpoint: "other", Identity: "o", Key: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if err := glob.PutSecurity(ctx, store.SecurityInfo{Endpoint: "mine", Identity: "m", Key: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	l, err := glob.ListSecurity(ctx)
	if err != nil || len(l) != 1 || l[0].Endpoint != "mine" {
		t.Fatalf("ListSecurity = %v, %v; want only mine", l, err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := redisstore.Open(ctx, "not a url", redisstore.Options{}); err == nil {
		t.Fatal("Open(bad url) succeeded")
	}
	if _, err := redisstore.Open(ctx, "redis://127.0.0.1:1/0", redisstore.Options{}); err == nil {
		t.Fatal("Open(closed port) succeeded")
	}
}

// TestObservationKeysCleaned checks that removing observations, directly or
// with their registration, leaves no key behind.
func TestObservationKeysCleaned(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "p:"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := srv.Client(t)
	obsKeys := func() []string {
		t.Helper()
		keys, err := c.Keys(ctx, "p:obs:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	now := time.Now()
	for i, remove := range []func(i int, r *registration.Registration) error{
		func(i int, r *registration.Registration) error { _, err := s.Remove(ctx, r.ID); return err },
		func(i int, r *registration.Registration) error {
			_, err := s.Add(ctx, storetest.NewReg(r.Endpoint, 6000, 60, now))
			return err
		},
		func(i int, r *registration.Registration) error {
			_, err := s.RemoveExpired(ctx, now.Add(time.Hour), 100)
			return err
		},
		func(i int, r *registration.Registration) error { _, err := s.RemoveObservations(ctx, r.ID); return err },
		func(i int, r *registration.Registration) error {
			// Replacing each observation (other registration, other ticket)
			// moves its indexes; removing the replacements leaves nothing.
			other := storetest.NewReg("other", 6001, 60, now)
			other.ID = "reg-other"
			if _, err := s.Add(ctx, other); err != nil {
				return err
			}
			for j := range 3 {
				o := &store.Observation{Token: []byte{byte(i), byte(j)}, Endpoint: "other", RegID: "reg-other",
					Paths: []string{"/4/0"}, Ticket: fmt.Sprintf("u%d-%d", i, j)}
				if err := s.AddObservation(ctx, o); err != nil {
					return err
				}
			}
			if k := obsKeys(); len(k) != 3+3+1 {
				return fmt.Errorf("observation keys after replacement = %v, want 7", k)
			}
			_, err := s.RemoveObservations(ctx, "reg-other")
			return err
		},
		func(i int, r *registration.Registration) error {
			for j := range 3 {
				if _, err := s.RemoveObservation(ctx, []byte{byte(i), byte(j)}); err != nil {
					return err
				}
			}
			return nil
		},
	} {
		ep := fmt.Sprintf("ep%d", i)
		r := storetest.NewReg(ep, uint16(5000+i), 60, now)
		if _, err := s.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
		for j := range 3 {
			o := &store.Observation{Token: []byte{byte(i), byte(j)}, Endpoint: ep, RegID: r.ID,
				Paths: []string{"/3/0"}, Ticket: fmt.Sprintf("t%d-%d", i, j)}
			if err := s.AddObservation(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		if k := obsKeys(); len(k) != 3+3+1 {
			t.Fatalf("case %d: observation keys = %v, want 7", i, k)
		}
		if err := remove(i, r); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if k := obsKeys(); len(k) != 0 {
			t.Fatalf("case %d: keys left after removal: %v", i, k)
		}
		if _, err := s.RemoveExpired(ctx, now.Add(time.Hour), 100); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRefusedObservationsLeaveNoKeys checks that observations of a
// registration that does not exist, or that is removed while they are
// added, leave no obs: key behind.
func TestRefusedObservationsLeaveNoKeys(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	open := func() *redisstore.Store {
		s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "p:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(), open()
	c := srv.Client(t)
	obsKeys := func() []string {
		t.Helper()
		keys, err := c.Keys(ctx, "p:obs:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	o := &store.Observation{Token: []byte{1}, Endpoint: "ep", RegID: "reg-none", Paths: []string{"/3/0"}, Ticket: "t"}
	if err := a.AddObservation(ctx, o); !errors.Is(err, store.ErrNotRegistered) {
		t.Fatalf("AddObservation(unknown registration) err = %v, want ErrNotRegistered", err)
	}
	if k := obsKeys(); len(k) != 0 {
		t.Fatalf("keys after a refused observation: %v", k)
	}
	for round := range 5 {
		r := storetest.NewReg("ep", 7000, 60, time.Now())
		if _, err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := a
				if g%2 == 1 {
					s = b
				}
				for j := range 50 {
					o := &store.Observation{Token: []byte{byte(round), byte(g), byte(j)}, Endpoint: "ep", RegID: r.ID,
						Paths: []string{"/3/0"}, Ticket: fmt.Sprintf("t%d-%d-%d", round, g, j)}
					if err := s.AddObservation(ctx, o); err != nil && !errors.Is(err, store.ErrNotRegistered) {
						t.Errorf("AddObservation: %v", err)
					}
				}
			}()
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		if _, err := b.Remove(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if k := obsKeys(); len(k) != 0 {
			t.Fatalf("round %d: keys left after the race with Remove: %v", round, k)
		}
	}
}

// TestRegistrationAndOwner: the pipelined read agrees with GetByEndpoint
// and Owner: with an owner, without one, and for an unknown endpoint.
func TestRegistrationAndOwner(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s, err := redisstore.Open(ctx, srv.URL, redisstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := storetest.NewReg("ro-ep", 5000, 60, time.Now())
	if _, err := s.Add(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, owner, err := s.RegistrationAndOwner(ctx, "ro-ep")
	if err != nil || got.ID != r.ID || owner != "" {
		t.Fatalf("without owner: %+v %q %v", got, owner, err)
	}
	if err := s.SetOwner(ctx, "ro-ep", "inst-x"); err != nil {
		t.Fatal(err)
	}
	got, owner, err = s.RegistrationAndOwner(ctx, "ro-ep")
	if err != nil || got.ID != r.ID || got.Endpoint != "ro-ep" || owner != "inst-x" {
		t.Fatalf("with owner: %+v %q %v", got, owner, err)
	}
	if _, _, err := s.RegistrationAndOwner(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown endpoint: %v, want ErrNotFound", err)
	}
	s.Close()
	if _, _, err := s.RegistrationAndOwner(ctx, "ro-ep"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("closed client: %v, want an error that is not ErrNotFound", err)
	}
}
