-- Assign a feed's next seq, append the event to history, update the entry, publish.
-- One script, so history and the live stream can never disagree and two nodes can
-- never hand out the same seq. Every key is in the feed's hash slot ({feed}).
-- KEYS: meta, log, entries, live, pinned, idempotency, channel
-- ARGV: epoch candidate, type, entry id, feed, pinned (0/1), history size,
--       expected entry JSON ('' for none), idempotency ttl ('' for no key),
--       publish command, accepted (Unix µs), defer ('1': return the pub/sub message
--       instead of publishing it), entry template parts...
-- Deferred (LIVEPUSH_REDIS_MIN_REPLICAS): the caller publishes the message once WAIT
-- says enough replicas hold the write, so no subscriber sees an event a failover
-- could lose. A retry of a deferred write (its Idempotency-Key) writes once more
-- (rewrites the epoch) so that the caller's WAIT covers the first write too, and
-- gets the message again: the first attempt may never have published it.
local meta, log, entries, live, pinned, idem, channel =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local kind, id, feed, pin, size = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local expected, ttl, publish = ARGV[7], ARGV[8], ARGV[9]
local accepted, defer = ARGV[10], ARGV[11] == '1'

redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')

if ttl ~= '' then
  local prior = redis.call('GET', idem)
  if prior then
    if not defer then return {'duplicate', prior} end
    redis.call('HSET', meta, 'epoch', epoch)
    local prior_epoch, prior_seq = string.match(prior, '^(%S+) (%d+)')
    local rows = redis.call('XRANGE', log, prior_seq .. '-1', prior_seq .. '-1')
    if prior_epoch ~= epoch or #rows == 0 then return {'duplicate', prior, ''} end
    local f = rows[1][2]
    return {'duplicate', prior,
      epoch .. ' ' .. prior_seq .. ' ' .. f[2] .. ' ' .. (f[6] or '0') .. '\n' .. f[4]}
  end
end

local created_seq = false
if kind ~= 'entry.created' then
  created_seq = redis.call('ZSCORE', live, id)
  if not created_seq then return {'not_found'} end
  if expected ~= '' and redis.call('HGET', entries, id) ~= expected then
    return {'conflict'}
  end
end

local seq = tonumber(redis.call('HGET', meta, 'head') or '0') + 1
local head = '{"type":"' .. kind .. '","feed":"' .. feed .. '","seq":' .. seq .. ','
local entry, event = '', ''
if kind == 'entry.deleted' then
  event = head .. '"id":"' .. id .. '"}'
else
  local parts = {}
  for i = 12, #ARGV do parts[#parts + 1] = ARGV[i] end
  entry = table.concat(parts, tostring(seq))
  event = head .. '"entry":' .. entry .. '}'
end

-- A script's writes are not rolled back when a later command fails, so the one
-- write that can fail goes first. It fails when the stream holds ids at or past this
-- seq: history from a life of the feed whose writes were lost (a failover). That
-- history cannot be trusted: drop it and start a new epoch, never reuse its seqs.
local renewed = ''
if size > 0 then
  local added = redis.pcall(
    'XADD', log, 'MAXLEN', size, seq .. '-1', 't', kind, 'd', event, 'a', accepted)
  if type(added) == 'table' and added.err then
    if not string.find(added.err, 'equal or smaller', 1, true) then
      return redis.error_reply(added.err)  -- out of memory, say: nothing was written
    end
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', ARGV[1])
    epoch, renewed = ARGV[1], '1'
    redis.call('XADD', log, 'MAXLEN', size, seq .. '-1', 't', kind, 'd', event, 'a', accepted)
  end
end
redis.call('HSET', meta, 'head', seq)

if kind == 'entry.deleted' then
  redis.call('ZREM', live, id)
  redis.call('ZREM', pinned, id)
else
  redis.call('HSET', entries, id, entry)
  local score = created_seq or seq
  if kind == 'entry.created' then redis.call('ZADD', live, score, id) end
  if pin == '1' then redis.call('ZADD', pinned, score, id) else redis.call('ZREM', pinned, id) end
end

local message = epoch .. ' ' .. seq .. ' ' .. kind .. ' ' .. accepted .. '\n' .. event
if not defer then
  redis.call(publish, channel, message)
  message = ''  -- published: nothing for the caller to publish after WAIT
end
local result = epoch .. ' ' .. seq .. '\n' .. entry
if ttl ~= '' then redis.call('SET', idem, result, 'EX', tonumber(ttl)) end
return {'ok', result, message, renewed}
