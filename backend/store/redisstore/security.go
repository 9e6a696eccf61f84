package redisstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func (s *Store) secEPKey(ep string) string          { return s.prefix + "sec:ep:" + ep }
func (s *Store) secIDKey(identity string) string    { return s.prefix + "sec:id:" + identity }
func (s *Store) nodeInstKey(instance string) string { return s.prefix + "nodeid:inst:" + instance }
func (s *Store) nodeIDKey(id uint16) string {
	return s.prefix + "nodeid:" + strconv.Itoa(int(id))
}
func (s *Store) dtlsKey(id []byte) string { return s.prefix + "dtls:" + hex.EncodeToString(id) }

// putSecurityScript: KEYS[1]=sec:ep:<ep>, KEYS[2]=sec:id:<identity>;
// ARGV: prefix, ep, identity, key (hex). Returns 1, or 0 when the identity
// belongs to another endpoint (an index whose endpoint no longer has that
// identity is stale and does not count).
var putSecurityScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] and
   redis.call('HGET', ARGV[1] .. 'sec:ep:' .. holder, 'identity') == ARGV[3] then
  return 0
end
local old = redis.call('HGET', KEYS[1], 'identity')
if old and old ~= ARGV[3] then
  local ok = ARGV[1] .. 'sec:id:' .. old
  if redis.call('GET', ok) == ARGV[2] then redis.call('DEL', ok) end
end
redis.call('HSET', KEYS[1], 'identity', ARGV[3], 'key', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2])
return 1
`)

// removeSecurityScript: KEYS[1]=sec:ep:<ep>; ARGV: prefix, ep.
// Returns 1, or 0 when the endpoint has no entry.
var removeSecurityScript = redis.NewScript(`
local id = redis.call('HGET', KEYS[1], 'identity')
if not id then return 0 end
redis.call('DEL', KEYS[1])
local ik = ARGV[1] .. 'sec:id:' .. id
if redis.call('GET', ik) == ARGV[2] then redis.call('DEL', ik) end
return 1
`)

// PutSecurity implements store.Security.
func (s *Store) PutSecurity(ctx context.Context, info store.SecurityInfo) error {
	if err := info.Validate(); err != nil {
		return err
	}
	res, err := putSecurityScript.Run(ctx, s.c, []string{s.secEPKey(info.Endpoint), s.secIDKey(info.Identity)},
		s.prefix, info.Endpoint, info.Identity, hex.EncodeToString(info.Key)).Int()
	if err != nil {
		return fmt.Errorf("redisstore: put security of %s: %w", info.Endpoint, err)
	}
	if res == 0 {
		return store.ErrIdentityTaken
	}
	return nil
}

func decodeSecurity(ep string, h map[string]string) (store.SecurityInfo, error) {
	key, err := hex.DecodeString(h["key"])
	if err != nil || h["identity"] == "" {
		return store.SecurityInfo{}, fmt.Errorf("redisstore: corrupt security record of %s", ep)
	}
	return store.SecurityInfo{Endpoint: ep, Identity: h["identity"], Key: key}, nil
}

// SecurityByEndpoint implements store.Security.
func (s *Store) SecurityByEndpoint(ctx context.Context, ep string) (store.SecurityInfo, error) {
	h, err := s.c.HGetAll(ctx, s.secEPKey(ep)).Result()
	if err != nil {
		return store.SecurityInfo{}, fmt.Errorf("redisstore: security of %s: %w", ep, err)
	}
	if len(h) == 0 {
		return store.SecurityInfo{}, store.ErrNotFound
	}
	return decodeSecurity(ep, h)
}

// SecurityByIdentity implements store.Security.
func (s *Store) SecurityByIdentity(ctx context.Context, identity string) (store.SecurityInfo, error) {
	ep, err := s.c.Get(ctx, s.secIDKey(identity)).Result()
	if errors.Is(err, redis.Nil) {
		return store.SecurityInfo{}, store.ErrNotFound
	}
	if err != nil {
		return store.SecurityInfo{}, fmt.Errorf("redisstore: security by identity: %w", err)
	}
	info, err := s.SecurityByEndpoint(ctx, ep)
	if err != nil {
		return store.SecurityInfo{}, err
	}
	if info.Identity != identity {
		return store.SecurityInfo{}, store.ErrNotFound // stale index
	}
	return info, nil
}

// RemoveSecurity implements store.Security.
func (s *Store) RemoveSecurity(ctx context.Context, ep string) error {
	res, err := removeSecurityScript.Run(ctx, s.c, []string{s.secEPKey(ep)}, s.prefix, ep).Int()
	if err != nil {
		return fmt.Errorf("redisstore: remove security of %s: %w", ep, err)
	}
	if res == 0 {
		return store.ErrNotFound
	}
	return nil
}

// escapeGlob quotes the characters special in a Redis MATCH pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '\\', '*', '?', '[', ']':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ListSecurity implements store.Security. It SCANs the sec:ep: keys, so it
// costs a pass over the key space: an admin operation, not a hot path.
func (s *Store) ListSecurity(ctx context.Context) ([]store.SecurityInfo, error) {
	match := escapeGlob(s.prefix) + "sec:ep:*"
	var keys []string
	iter := s.c.Scan(ctx, 0, match, 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("redisstore: list security: %w", err)
	}
	sort.Strings(keys)
	keys = dedupSorted(keys) // SCAN may return a key twice
	out := make([]store.SecurityInfo, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), listBatch)
		cmds := make([]*redis.MapStringStringCmd, n)
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range keys[:n] {
				cmds[i] = p.HGetAll(ctx, k)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("redisstore: list security: %w", err)
		}
		for i, c := range cmds {
			h := c.Val()
			if len(h) == 0 {
				continue // removed meanwhile
			}
			info, err := decodeSecurity(strings.TrimPrefix(keys[i], s.prefix+"sec:ep:"), h)
			if err != nil {
				return nil, err
			}
			out = append(out, info)
		}
		keys = keys[n:]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint < out[j].Endpoint })
	return out, nil
}

func dedupSorted(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// allocateNodeIDScript: KEYS[1]=nodeid:inst:<instance>; ARGV: prefix,
// instance. Returns the instance's previous id if it still holds it (or
// nobody does), else binds and returns the lowest free id; 0 when none is
// free.
var allocateNodeIDScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) then
  local ck = ARGV[1] .. 'nodeid:' .. cur
  local holder = redis.call('GET', ck)
  if not holder then redis.call('SET', ck, ARGV[2]) end
  if not holder or holder == ARGV[2] then return tonumber(cur) end
end
for i = 1, 65535 do
  local k = ARGV[1] .. 'nodeid:' .. i
  local holder = redis.call('GET', k)
  if not holder or holder == ARGV[2] then
    redis.call('SET', k, ARGV[2])
    redis.call('SET', KEYS[1], i)
    return i
  end
end
return 0
`)

// claimNodeIDScript: KEYS[1]=nodeid:inst:<instance>, KEYS[2]=nodeid:<id>;
// ARGV: prefix, instance, id. Returns the holder when another instance
// holds id; else binds it (releasing the instance's other id) and returns
// nil.
var claimNodeIDScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return holder end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[3] then
  local ck = ARGV[1] .. 'nodeid:' .. cur
  if redis.call('GET', ck) == ARGV[2] then redis.call('DEL', ck) end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[3])
return false
`)

// AllocateNodeID implements store.NodeIDs.
func (s *Store) AllocateNodeID(ctx context.Context, instance string) (uint16, error) {
	id, err := allocateNodeIDScript.Run(ctx, s.c, []string{s.nodeInstKey(instance)}, s.prefix, instance).Int()
	if err != nil {
		return 0, fmt.Errorf("redisstore: allocate node id for %s: %w", instance, err)
	}
	if id <= 0 || id > 0xffff {
		return 0, store.ErrNoNodeID
	}
	return uint16(id), nil
}

// ClaimNodeID implements store.NodeIDs.
func (s *Store) ClaimNodeID(ctx context.Context, instance string, id uint16) error {
	if id == 0 {
		return fmt.Errorf("node id 0 is invalid: want 1..65535")
	}
	holder, err := claimNodeIDScript.Run(ctx, s.c, []string{s.nodeInstKey(instance), s.nodeIDKey(id)},
		s.prefix, instance, int(id)).Text()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("redisstore: claim node id %d for %s: %w", id, instance, err)
	}
	return fmt.Errorf("%w: node id %d is held by instance %q", store.ErrNodeIDTaken, id, holder)
}

// PutDTLSSession implements store.DTLSSessions.
func (s *Store) PutDTLSSession(ctx context.Context, id, data []byte, ttl time.Duration) error {
	if err := store.CheckDTLSSession(id, ttl); err != nil {
		return err
	}
	ttl = max(ttl, time.Millisecond) // PX granularity
	if err := s.c.Set(ctx, s.dtlsKey(id), data, ttl).Err(); err != nil {
		return fmt.Errorf("redisstore: put DTLS session: %w", err)
	}
	return nil
}

// GetDTLSSession implements store.DTLSSessions.
func (s *Store) GetDTLSSession(ctx context.Context, id []byte) ([]byte, error) {
	if len(id) == 0 {
		return nil, store.ErrNotFound
	}
	b, err := s.c.Get(ctx, s.dtlsKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get DTLS session: %w", err)
	}
	return b, nil
}

// DeleteDTLSSession implements store.DTLSSessions.
func (s *Store) DeleteDTLSSession(ctx context.Context, id []byte) error {
	if err := s.c.Del(ctx, s.dtlsKey(id)).Err(); err != nil {
		return fmt.Errorf("redisstore: delete DTLS session: %w", err)
	}
	return nil
}
