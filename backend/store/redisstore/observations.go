package redisstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func (s *Store) ticketKey(ticket string) string     { return s.prefix + "ticket:" + ticket }
func (s *Store) obsTokenKey(hexToken string) string { return s.prefix + "obs:tok:" + hexToken }
func (s *Store) obsRegKey(regID string) string      { return s.prefix + "obs:reg:" + regID }
func (s *Store) obsTicketKey(ticket string) string  { return s.prefix + "obs:ticket:" + ticket }

// observationsLua holds the functions that delete observations with their
// indexes: an observation is the hash obs:tok:<hex token> {data, regId,
// ticket}, indexed by the set obs:reg:<regId> of hex tokens and the string
// obs:ticket:<ticket> = hex token. unindexObs(prefix, hex, cur) deletes the
// indexes of the record whose {regId, ticket} is cur (the ticket index only
// while it points at hex); removeRegObs(prefix, regId) deletes every
// observation of a registration and returns their data.
const observationsLua = `
local function unindexObs(prefix, hex, cur)
  if cur[1] then redis.call('SREM', prefix .. 'obs:reg:' .. cur[1], hex) end
  if cur[2] then
    local tk = prefix .. 'obs:ticket:' .. cur[2]
    if redis.call('GET', tk) == hex then redis.call('DEL', tk) end
  end
end
local function removeRegObs(prefix, regId)
  local rk = prefix .. 'obs:reg:' .. regId
  local out = {}
  for _, hex in ipairs(redis.call('SMEMBERS', rk)) do
    local ok = prefix .. 'obs:tok:' .. hex
    local cur = redis.call('HMGET', ok, 'data', 'regId', 'ticket')
    if cur[1] and cur[2] == regId then
      redis.call('DEL', ok)
      unindexObs(prefix, hex, {cur[2], cur[3]})
      table.insert(out, cur[1])
    end
  end
  redis.call('DEL', rk)
  return out
end
`

// notRegisteredReply is the prefix of addObservationScript's error reply
// when the observation's registration does not exist (store.ErrNotRegistered).
const notRegisteredReply = "NOTREG"

// addObservationScript: KEYS[1]=obs:tok:<hex>, KEYS[2]=reg:id:<regId>;
// ARGV: prefix, hex token, data, regId, ticket, endpoint. Unless regId is
// the current registration of endpoint (reg:id:<regId> names the endpoint,
// whose record has that id), stores nothing and returns the error
// notRegisteredReply: the registration scripts delete a registration and its
// observations in one step, so an observation is either refused or deleted
// with its registration. Else replaces the token's previous observation (and
// its indexes) and indexes the new one.
var addObservationScript = redis.NewScript(observationsLua + `
if redis.call('GET', KEYS[2]) ~= ARGV[6] or
   redis.call('HGET', ARGV[1] .. 'reg:ep:' .. ARGV[6], 'id') ~= ARGV[4] then
  return redis.error_reply('` + notRegisteredReply + ` registration ' .. ARGV[4] .. ' of endpoint ' .. ARGV[6] .. ' not found')
end
local cur = redis.call('HMGET', KEYS[1], 'regId', 'ticket')
if cur[1] or cur[2] then unindexObs(ARGV[1], ARGV[2], cur) end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'regId', ARGV[4], 'ticket', ARGV[5])
redis.call('SADD', ARGV[1] .. 'obs:reg:' .. ARGV[4], ARGV[2])
redis.call('SET', ARGV[1] .. 'obs:ticket:' .. ARGV[5], ARGV[2])
return 1
`)

// removeObservationScript: KEYS[1]=obs:tok:<hex>; ARGV: prefix, hex token.
// Deletes the observation and its indexes and returns its data (nil when
// there is none).
var removeObservationScript = redis.NewScript(observationsLua + `
local cur = redis.call('HMGET', KEYS[1], 'data', 'regId', 'ticket')
if not cur[1] then return false end
redis.call('DEL', KEYS[1])
unindexObs(ARGV[1], ARGV[2], {cur[2], cur[3]})
return cur[1]
`)

// removeObservationsScript: ARGV: prefix, regId. Deletes a registration's
// observations and returns their data.
var removeObservationsScript = redis.NewScript(observationsLua + `
return removeRegObs(ARGV[1], ARGV[2])
`)

// ClaimTicket implements store.Tickets with SET NX PX.
func (s *Store) ClaimTicket(ctx context.Context, ticket, instance string, ttl time.Duration) (bool, error) {
	if err := store.CheckTicketClaim(ticket, instance, ttl); err != nil {
		return false, err
	}
	ttl = max(ttl, time.Millisecond) // PX granularity
	ok, err := s.c.SetNX(ctx, s.ticketKey(ticket), instance, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("redisstore: claim ticket %s: %w", ticket, err)
	}
	return ok, nil
}

func decodeObservation(data string) (*store.Observation, error) {
	var o store.Observation
	if err := json.Unmarshal([]byte(data), &o); err != nil {
		return nil, fmt.Errorf("redisstore: corrupt observation record: %w", err)
	}
	return &o, nil
}

func decodeObservations(data []string) ([]*store.Observation, error) {
	out := make([]*store.Observation, 0, len(data))
	for _, d := range data {
		o, err := decodeObservation(d)
		if err != nil {
			return out, err
		}
		out = append(out, o)
	}
	return out, nil
}

// AddObservation implements store.Observations; the registration check is
// in the same script as the insert.
func (s *Store) AddObservation(ctx context.Context, o *store.Observation) error {
	if err := o.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("redisstore: encode observation: %w", err)
	}
	h := hex.EncodeToString(o.Token)
	err = addObservationScript.Run(ctx, s.c, []string{s.obsTokenKey(h), s.idKey(o.RegID)},
		s.prefix, h, data, o.RegID, o.Ticket, o.Endpoint).Err()
	if redis.HasErrorPrefix(err, notRegisteredReply) {
		return fmt.Errorf("redisstore: add observation %s: %w: %s of endpoint %q", h, store.ErrNotRegistered, o.RegID, o.Endpoint)
	}
	if err != nil {
		return fmt.Errorf("redisstore: add observation %s: %w", h, err)
	}
	return nil
}

// ObservationByToken implements store.Observations.
func (s *Store) ObservationByToken(ctx context.Context, token []byte) (*store.Observation, error) {
	if store.CheckToken(token) != nil {
		return nil, store.ErrNotFound
	}
	h := hex.EncodeToString(token)
	data, err := s.c.HGet(ctx, s.obsTokenKey(h), "data").Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: observation %s: %w", h, err)
	}
	return decodeObservation(data)
}

// ObservationByTicket implements store.Observations.
func (s *Store) ObservationByTicket(ctx context.Context, ticket string) (*store.Observation, error) {
	if ticket == "" {
		return nil, store.ErrNotFound
	}
	h, err := s.c.Get(ctx, s.obsTicketKey(ticket)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: observation of ticket %s: %w", ticket, err)
	}
	data, err := s.c.HGet(ctx, s.obsTokenKey(h), "data").Result()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound // removed between the two reads
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: observation of ticket %s: %w", ticket, err)
	}
	o, err := decodeObservation(data)
	if err != nil {
		return nil, err
	}
	if o.Ticket != ticket {
		return nil, store.ErrNotFound // replaced between the two reads
	}
	return o, nil
}

// ObservationsByRegistration implements store.Observations.
func (s *Store) ObservationsByRegistration(ctx context.Context, regID string) ([]*store.Observation, error) {
	out := []*store.Observation{}
	if regID == "" {
		return out, nil
	}
	tokens, err := s.c.SMembers(ctx, s.obsRegKey(regID)).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: observations of %s: %w", regID, err)
	}
	for len(tokens) > 0 {
		n := min(len(tokens), listBatch)
		cmds := make([]*redis.StringCmd, n)
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, h := range tokens[:n] {
				cmds[i] = p.HGet(ctx, s.obsTokenKey(h), "data")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("redisstore: observations of %s: %w", regID, err)
		}
		for _, c := range cmds {
			data, err := c.Result()
			if err != nil {
				continue // removed meanwhile
			}
			o, err := decodeObservation(data)
			if err != nil {
				return nil, err
			}
			if o.RegID == regID { // not replaced meanwhile
				out = append(out, o)
			}
		}
		tokens = tokens[n:]
	}
	return out, nil
}

// RemoveObservation implements store.Observations.
func (s *Store) RemoveObservation(ctx context.Context, token []byte) (*store.Observation, error) {
	if store.CheckToken(token) != nil {
		return nil, store.ErrNotFound
	}
	h := hex.EncodeToString(token)
	data, err := removeObservationScript.Run(ctx, s.c, []string{s.obsTokenKey(h)}, s.prefix, h).Text()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: remove observation %s: %w", h, err)
	}
	return decodeObservation(data)
}

// RemoveObservations implements store.Observations.
func (s *Store) RemoveObservations(ctx context.Context, regID string) ([]*store.Observation, error) {
	if regID == "" {
		return []*store.Observation{}, nil
	}
	data, err := removeObservationsScript.Run(ctx, s.c, []string{s.obsRegKey(regID)}, s.prefix, regID).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: remove observations of %s: %w", regID, err)
	}
	return decodeObservations(data)
}
