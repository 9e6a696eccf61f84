// Package redisstore implements the store interfaces on Redis, shared by
// every instance of a cluster.
//
// Every operation that reads and then writes more than one key runs as a Lua
// script, so it is atomic on the Redis server: two instances removing the
// same registration, or sweeping the same expired one, cannot both get it.
// The key schema is documented in docs/redis-keys.md.
package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/backend/store"
)

// DefaultPrefix is prepended to every key.
const DefaultPrefix = "lwm2m:"

// Store is a store.Store on Redis.
type Store struct {
	c      redis.UniversalClient
	prefix string
	grace  time.Duration
	owned  bool // Close closes c
}

var _ store.Store = (*Store)(nil)

// Options configure a Store.
type Options struct {
	// Prefix is prepended to every key (DefaultPrefix when empty).
	Prefix string
	// Grace is added to lifetimes before registrations expire.
	Grace time.Duration
}

// Open connects to the Redis server named by url and checks the
// connection. A plain URL (redis://[user:pass@]host:port/db, or rediss://
// for TLS) names one server; a URL with a master_name parameter names
// Sentinels (redis://sentinel1:26379/0?master_name=mymaster&addr=sentinel2:26379),
// and the client follows fail-overs. Redis Cluster is not supported: the
// scripts touch keys of several hash slots.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	var c redis.UniversalClient
	where := url
	if strings.Contains(url, "master_name=") {
		fo, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("redisstore: parse sentinel URL: %w", err)
		}
		c = redis.NewFailoverClient(fo)
		where = fmt.Sprintf("master %s via sentinels %v", fo.MasterName, fo.SentinelAddrs)
	} else {
		opts, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("redisstore: parse URL: %w", err)
		}
		c = redis.NewClient(opts)
		where = opts.Addr
	}
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redisstore: connect to %s: %w", where, err)
	}
	s := New(c, o)
	s.owned = true
	return s, nil
}

// New returns a Store on an existing client; Close leaves the client open.
func New(c redis.UniversalClient, o Options) *Store {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	return &Store{c: c, prefix: o.Prefix, grace: o.Grace}
}

// Client returns the underlying Redis client.
func (s *Store) Client() redis.UniversalClient { return s.c }

// Prefix returns the key prefix.
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) epKey(ep string) string    { return s.prefix + "reg:ep:" + ep }
func (s *Store) idKey(id string) string    { return s.prefix + "reg:id:" + id }
func (s *Store) addrKey(a string) string   { return s.prefix + "reg:addr:" + a }
func (s *Store) expiryKey() string         { return s.prefix + "reg:expiry" }
func (s *Store) ownerKey(ep string) string { return s.prefix + "owner:" + ep }
func (s *Store) memberKey(id string) string {
	return s.prefix + "member:" + id
}
func (s *Store) membersKey() string { return s.prefix + "members" }

// unindexLua deletes a registration's record and every index that still
// points at it, and (unless its id is keepID) its observations
// (observationsLua). It expects prefix in ARGV[1], the endpoint in ep and the
// record's fields in cur ({data, id, addr}).
const unindexLua = observationsLua + `
local function unindex(prefix, ep, cur, keepID)
  redis.call('DEL', prefix .. 'reg:ep:' .. ep)
  if cur[2] then
    local ik = prefix .. 'reg:id:' .. cur[2]
    if redis.call('GET', ik) == ep then redis.call('DEL', ik) end
    if cur[2] ~= keepID then removeRegObs(prefix, cur[2]) end
  end
  if cur[3] then
    local ak = prefix .. 'reg:addr:' .. cur[3]
    if redis.call('GET', ak) == ep then redis.call('DEL', ak) end
  end
end
`

// addScript: KEYS[1]=ep record, KEYS[2]=expiry zset;
// ARGV: prefix, ep, id, addr, data, expiry(ms).
var addScript = redis.NewScript(unindexLua + `
local cur = redis.call('HMGET', KEYS[1], 'data', 'id', 'addr')
if cur[1] then unindex(ARGV[1], ARGV[2], cur, ARGV[3]) end
redis.call('HSET', KEYS[1], 'data', ARGV[5], 'id', ARGV[3], 'addr', ARGV[4])
redis.call('SET', ARGV[1] .. 'reg:id:' .. ARGV[3], ARGV[2])
redis.call('SET', ARGV[1] .. 'reg:addr:' .. ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
return cur[1]
`)

// casScript replaces a record if its data is still what the caller read.
// KEYS[1]=ep record, KEYS[2]=expiry zset;
// ARGV: prefix, ep, id, old data, new data, new addr, expiry(ms).
// Returns 1 on success, 0 when the record changed, -1 when it is gone.
var casScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'data', 'id', 'addr')
if not cur[1] or cur[2] ~= ARGV[3] then return -1 end
if cur[1] ~= ARGV[4] then return 0 end
if cur[3] ~= ARGV[6] then
  local ak = ARGV[1] .. 'reg:addr:' .. cur[3]
  if redis.call('GET', ak) == ARGV[2] then redis.call('DEL', ak) end
  redis.call('SET', ARGV[1] .. 'reg:addr:' .. ARGV[6], ARGV[2])
end
redis.call('HSET', KEYS[1], 'data', ARGV[5], 'addr', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
return 1
`)

// removeScript: KEYS[1]=id index, KEYS[2]=expiry zset; ARGV: prefix, id.
var removeScript = redis.NewScript(unindexLua + `
local ep = redis.call('GET', KEYS[1])
if not ep then return false end
local cur = redis.call('HMGET', ARGV[1] .. 'reg:ep:' .. ep, 'data', 'id', 'addr')
if cur[2] ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return false
end
unindex(ARGV[1], ep, cur)
redis.call('ZREM', KEYS[2], ep)
redis.call('DEL', ARGV[1] .. 'owner:' .. ep)
return cur[1]
`)

// expireScript: KEYS[1]=expiry zset; ARGV: prefix, now(ms), max.
// Removes up to max expired registrations and returns their data.
var expireScript = redis.NewScript(unindexLua + `
local eps = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, ep in ipairs(eps) do
  redis.call('ZREM', KEYS[1], ep)
  local cur = redis.call('HMGET', ARGV[1] .. 'reg:ep:' .. ep, 'data', 'id', 'addr')
  if cur[1] then
    unindex(ARGV[1], ep, cur)
    redis.call('DEL', ARGV[1] .. 'owner:' .. ep)
    table.insert(out, cur[1])
  end
end
return out
`)

func (s *Store) expiry(r *registration.Registration) int64 {
	return r.ExpiresAt(s.grace).UnixMilli()
}

func decode(data string) (*registration.Registration, error) {
	var r registration.Registration
	if err := json.Unmarshal([]byte(data), &r); err != nil {
		return nil, fmt.Errorf("redisstore: corrupt registration record: %w", err)
	}
	return &r, nil
}

// stored is the copy written to Redis: the owning instance lives in its own
// key, not in the record.
func encode(r *registration.Registration) (string, error) {
	c := *r
	c.Instance = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("redisstore: encode registration: %w", err)
	}
	return string(b), nil
}

// Add implements store.Registrations.
func (s *Store) Add(ctx context.Context, r *registration.Registration) (*registration.Registration, error) {
	data, err := encode(r)
	if err != nil {
		return nil, err
	}
	res, err := addScript.Run(ctx, s.c, []string{s.epKey(r.Endpoint), s.expiryKey()},
		s.prefix, r.Endpoint, r.ID, r.AddrPort().String(), data, s.expiry(r)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: add %s: %w", r.Endpoint, err)
	}
	old, ok := res.(string)
	if !ok {
		return nil, nil
	}
	return decode(old)
}

// Get implements store.Registrations.
func (s *Store) Get(ctx context.Context, id string) (*registration.Registration, error) {
	ep, err := s.c.Get(ctx, s.idKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get %s: %w", id, err)
	}
	r, err := s.GetByEndpoint(ctx, ep)
	if err != nil {
		return nil, err
	}
	if r.ID != id {
		return nil, store.ErrNotFound
	}
	return r, nil
}

// GetByEndpoint implements store.Registrations.
func (s *Store) GetByEndpoint(ctx context.Context, ep string) (*registration.Registration, error) {
	data, err := s.c.HGet(ctx, s.epKey(ep), "data").Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get endpoint %s: %w", ep, err)
	}
	return decode(data)
}

// RegistrationAndOwner returns an endpoint's registration and its owner
// ("" when none) in one round trip, or store.ErrNotFound. The two reads
// are pipelined, not atomic, like GetByEndpoint followed by Owner.
func (s *Store) RegistrationAndOwner(ctx context.Context, ep string) (*registration.Registration, string, error) {
	var data *redis.StringCmd
	var owner *redis.StringCmd
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		data = p.HGet(ctx, s.epKey(ep), "data")
		owner = p.Get(ctx, s.ownerKey(ep))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("redisstore: get endpoint %s and its owner: %w", ep, err)
	}
	d, err := data.Result()
	if errors.Is(err, redis.Nil) {
		return nil, "", store.ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("redisstore: get endpoint %s: %w", ep, err)
	}
	r, err := decode(d)
	if err != nil {
		return nil, "", err
	}
	o, err := owner.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("redisstore: owner of %s: %w", ep, err)
	}
	return r, o, nil
}

// GetByAddr implements store.Registrations.
func (s *Store) GetByAddr(ctx context.Context, a netip.AddrPort) (*registration.Registration, error) {
	ep, err := s.c.Get(ctx, s.addrKey(a.String())).Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get address %s: %w", a, err)
	}
	r, err := s.GetByEndpoint(ctx, ep)
	if err != nil {
		return nil, err
	}
	if r.AddrPort() != a {
		return nil, store.ErrNotFound
	}
	return r, nil
}

// maxCASRetries bounds optimistic update retries under contention.
const maxCASRetries = 16

// Update implements store.Registrations: an optimistic read-modify-write
// whose write is a compare-and-set script.
func (s *Store) Update(ctx context.Context, u *registration.Update, now time.Time) (*registration.Registration, error) {
	for range maxCASRetries {
		ep, err := s.c.Get(ctx, s.idKey(u.ID)).Result()
		if errors.Is(err, redis.Nil) {
			return nil, store.ErrNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("redisstore: update %s: %w", u.ID, err)
		}
		old, err := s.c.HGet(ctx, s.epKey(ep), "data").Result()
		if errors.Is(err, redis.Nil) {
			return nil, store.ErrNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("redisstore: update %s: %w", u.ID, err)
		}
		r, err := decode(old)
		if err != nil {
			return nil, err
		}
		if r.ID != u.ID {
			return nil, store.ErrNotFound
		}
		r.Apply(u, now)
		data, err := encode(r)
		if err != nil {
			return nil, err
		}
		res, err := casScript.Run(ctx, s.c, []string{s.epKey(ep), s.expiryKey()},
			s.prefix, ep, u.ID, old, data, r.AddrPort().String(), s.expiry(r)).Int()
		if err != nil {
			return nil, fmt.Errorf("redisstore: update %s: %w", u.ID, err)
		}
		switch res {
		case 1:
			return r, nil
		case -1:
			return nil, store.ErrNotFound
		}
	}
	return nil, fmt.Errorf("redisstore: update %s: too much contention", u.ID)
}

// Remove implements store.Registrations.
func (s *Store) Remove(ctx context.Context, id string) (*registration.Registration, error) {
	res, err := removeScript.Run(ctx, s.c, []string{s.idKey(id), s.expiryKey()}, s.prefix, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: remove %s: %w", id, err)
	}
	data, ok := res.(string)
	if !ok {
		return nil, store.ErrNotFound
	}
	return decode(data)
}

// RemoveExpired implements store.Registrations.
func (s *Store) RemoveExpired(ctx context.Context, now time.Time, max int) ([]*registration.Registration, error) {
	res, err := expireScript.Run(ctx, s.c, []string{s.expiryKey()}, s.prefix, now.UnixMilli(), max).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: sweep expired: %w", err)
	}
	out := make([]*registration.Registration, 0, len(res))
	for _, data := range res {
		r, err := decode(data)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// listBatch is how many records List fetches per round trip.
const listBatch = 500

// List implements store.Registrations.
func (s *Store) List(ctx context.Context) ([]*registration.Registration, error) {
	eps, err := s.c.ZRange(ctx, s.expiryKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: list: %w", err)
	}
	sort.Strings(eps)
	out := make([]*registration.Registration, 0, len(eps))
	for len(eps) > 0 {
		n := min(len(eps), listBatch)
		cmds := make([]*redis.StringCmd, n)
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, ep := range eps[:n] {
				cmds[i] = p.HGet(ctx, s.epKey(ep), "data")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("redisstore: list: %w", err)
		}
		for _, c := range cmds {
			data, err := c.Result()
			if err != nil {
				continue // removed meanwhile
			}
			r, err := decode(data)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		eps = eps[n:]
	}
	return out, nil
}

// SetOwner implements store.Ownership.
func (s *Store) SetOwner(ctx context.Context, ep, instance string) error {
	if err := s.c.Set(ctx, s.ownerKey(ep), instance, 0).Err(); err != nil {
		return fmt.Errorf("redisstore: set owner of %s: %w", ep, err)
	}
	return nil
}

// Owner implements store.Ownership.
func (s *Store) Owner(ctx context.Context, ep string) (string, error) {
	v, err := s.c.Get(ctx, s.ownerKey(ep)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("redisstore: owner of %s: %w", ep, err)
	}
	return v, nil
}

// Announce implements store.Membership.
func (s *Store) Announce(ctx context.Context, m store.Member, ttl time.Duration) error {
	now := time.Now()
	m.Seen = now.UnixMilli()
	b, err := json.Marshal(&m)
	if err != nil {
		return fmt.Errorf("redisstore: announce: %w", err)
	}
	_, err = s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.memberKey(m.ID), b, ttl)
		p.ZAdd(ctx, s.membersKey(), redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: m.ID})
		p.ZRemRangeByScore(ctx, s.membersKey(), "-inf", strconv.FormatInt(now.Add(-time.Hour).UnixMilli(), 10))
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: announce %s: %w", m.ID, err)
	}
	return nil
}

// Leave implements store.Membership.
func (s *Store) Leave(ctx context.Context, id string) error {
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.memberKey(id))
		p.ZRem(ctx, s.membersKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: leave %s: %w", id, err)
	}
	return nil
}

// Members implements store.Membership.
func (s *Store) Members(ctx context.Context) ([]store.Member, error) {
	ids, err := s.c.ZRangeByScore(ctx, s.membersKey(), &redis.ZRangeBy{
		Min: strconv.FormatInt(time.Now().UnixMilli(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: members: %w", err)
	}
	out := []store.Member{}
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.memberKey(id)
	}
	vals, err := s.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: members: %w", err)
	}
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // expired between the two reads
		}
		var m store.Member
		if err := json.Unmarshal([]byte(str), &m); err != nil {
			return nil, fmt.Errorf("redisstore: corrupt member record: %w", err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error { return s.c.Ping(ctx).Err() }

// Close implements store.Store.
func (s *Store) Close() error {
	if s.owned {
		return s.c.Close()
	}
	return nil
}
