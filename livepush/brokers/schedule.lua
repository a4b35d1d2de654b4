-- Hold a scheduled entry until its time, or replace one that is still `expected`.
-- KEYS: schedule (ids by due time, Unix ms), scheduled (id -> record), idempotency
-- ARGV: id, due time (Unix ms), record, expected record ('' for a new entry),
--       idempotency ttl ('' for no key), most entries a feed may hold
-- Returns {'ok' | 'duplicate' | 'not_found' | 'conflict' | 'full', stored, first}:
-- stored is '<due> <id>\n<record>' (for a duplicate, what the first attempt stored),
-- first the feed's earliest due time, for the index of feeds with scheduled entries.
local schedule, scheduled, idem = KEYS[1], KEYS[2], KEYS[3]
local id, at, record, expected, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function first()
  return redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')[2] or ''
end

if ttl ~= '' then
  local prior = redis.call('GET', idem)
  if prior then return {'duplicate', prior, first()} end
end
local current = redis.call('HGET', scheduled, id)
if expected ~= '' then
  if not current then return {'not_found'} end
  if current ~= expected then return {'conflict'} end
elseif redis.call('ZCARD', schedule) >= tonumber(ARGV[6]) then
  return {'full'}
end
redis.call('ZADD', schedule, at, id)
redis.call('HSET', scheduled, id, record)
local stored = at .. ' ' .. id .. '\n' .. record
if ttl ~= '' then redis.call('SET', idem, stored, 'EX', tonumber(ttl)) end
return {'ok', stored, first()}
