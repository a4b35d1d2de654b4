-- Assign a feed's next seq, append the event to history, update the entry, publish.
-- One script, so history and the live stream can never disagree and two nodes can
-- never hand out the same seq. Every key is in the feed's hash slot ({feed}).
-- KEYS: meta, log, entries, live, pinned, idempotency, channel
-- ARGV: epoch candidate, type, entry id, feed, pinned (0/1), history size,
--       expected entry JSON ('' for none), idempotency ttl ('' for no key),
--       publish command, entry template parts...
local meta, log, entries, live, pinned, idem, channel =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local kind, id, feed, pin, size = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local expected, ttl, publish = ARGV[7], ARGV[8], ARGV[9]

redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')

if ttl ~= '' then
  local prior = redis.call('GET', idem)
  if prior then return {'duplicate', prior} end
end

local created_seq = false
if kind ~= 'entry.created' then
  created_seq = redis.call('ZSCORE', live, id)
  if not created_seq then return {'not_found'} end
  if expected ~= '' and redis.call('HGET', entries, id) ~= expected then
    return {'conflict'}
  end
end

local seq = redis.call('HINCRBY', meta, 'head', 1)
local head = '{"type":"' .. kind .. '","feed":"' .. feed .. '","seq":' .. seq .. ','
local entry, event = '', ''
if kind == 'entry.deleted' then
  event = head .. '"id":"' .. id .. '"}'
  redis.call('ZREM', live, id)
  redis.call('ZREM', pinned, id)
else
  local parts = {}
  for i = 10, #ARGV do parts[#parts + 1] = ARGV[i] end
  entry = table.concat(parts, tostring(seq))
  event = head .. '"entry":' .. entry .. '}'
  redis.call('HSET', entries, id, entry)
  local score = created_seq or seq
  if kind == 'entry.created' then redis.call('ZADD', live, score, id) end
  if pin == '1' then redis.call('ZADD', pinned, score, id) else redis.call('ZREM', pinned, id) end
end

if size > 0 then
  redis.call('XADD', log, 'MAXLEN', size, seq .. '-1', 't', kind, 'd', event)
end
redis.call(publish, channel, epoch .. ' ' .. seq .. ' ' .. kind .. '\n' .. event)
local result = epoch .. ' ' .. seq .. '\n' .. entry
if ttl ~= '' then redis.call('SET', idem, result, 'EX', tonumber(ttl)) end
return {'ok', result}
