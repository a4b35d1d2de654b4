-- Assign a feed's next seq, append the event to history, update the entry, publish.
-- One script, so history and the live stream can never disagree and two nodes can
-- never hand out the same seq. Every key is in the feed's hash slot ({feed}).
-- KEYS: meta, log, entries, live, pinned, idempotency, channel, schedule, scheduled,
--       revisions (the entry's), purges, log rewrite (a scratch key), idempotency keys
--       (entry id -> the key its creation's answer is remembered under)
-- ARGV: epoch candidate, type, entry id, feed, pinned (0/1), history size,
--       expected entry JSON ('' for none; for feed.updated the metadata it must still
--       be), idempotency ttl ('' for no key), publish command, accepted (Unix µs),
--       defer ('1': return the pub/sub message instead of publishing it), metadata
--       candidate (a new feed's), revision record ('' for none), claim (a scheduled
--       entry's record it must still be, '' for none), purge (its audit record, '' for
--       none), entry template parts (for feed.updated: the metadata JSON)...
-- Stories (SPEC): a claim publishes a scheduled entry only while it is scheduled as
-- that record and due by Redis's clock, and unschedules it here, so two nodes releasing
-- it publish it once. A purge rewrites the entry's events in history as entry.purged,
-- drops its text from the entries and its revisions, and keeps its audit record.
-- Deferred (LIVEPUSH_REDIS_MIN_REPLICAS): the caller publishes the message once WAIT
-- says enough replicas hold the write, so no subscriber sees an event a failover
-- could lose. A retry of a deferred write (its Idempotency-Key) writes once more
-- (rewrites the epoch) so that the caller's WAIT covers the first write too, and
-- gets the message again: the first attempt may never have published it.
local meta, log, entries, live, pinned, idem, channel =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local schedule, scheduled, revisions, purges, rewrite = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local remembered = KEYS[13]
local kind, id, feed, pin, size = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local expected, ttl, publish = ARGV[7], ARGV[8], ARGV[9]
local accepted, defer = ARGV[10], ARGV[11] == '1'
local revision, claim, purge = ARGV[13], ARGV[14], ARGV[15]

redis.call('HSETNX', meta, 'epoch', ARGV[1])
redis.call('HSETNX', meta, 'about', ARGV[12])
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

if claim ~= '' then
  if redis.call('HGET', scheduled, id) ~= claim then return {'not_found'} end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local at = redis.call('ZSCORE', schedule, id)
  if not at or tonumber(at) > now_ms then return {'not_found'} end
end

local created_seq = false
if kind == 'feed.updated' then
  if expected ~= '' and redis.call('HGET', meta, 'about') ~= expected then
    return {'conflict'}
  end
elseif purge ~= '' then
  -- A retracted entry may be purged (its text is still in history); a purged one is gone.
  if redis.call('HEXISTS', entries, id) == 0 then return {'not_found'} end
elseif kind ~= 'entry.created' then
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
  if purge ~= '' then
    event = head .. '"id":"' .. id .. '","purged":true}'
  else
    event = head .. '"id":"' .. id .. '"}'
  end
else
  local parts = {}
  for i = 16, #ARGV do parts[#parts + 1] = ARGV[i] end
  entry = table.concat(parts, tostring(seq))
  if kind == 'feed.updated' then
    event = head .. '"meta":' .. entry .. '}'
  else
    event = head .. '"entry":' .. entry .. '}'
  end
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

-- The events of `id` (as publish built them) become entry.purged at their seq. The new
-- history is written to a scratch key and renamed over the old one, so an error half
-- way leaves history as it was. Costs O(history): purges are rare.
local function purge_history()
  local rows = redis.call('XRANGE', log, '-', '+')
  local found = false
  for _, row in ipairs(rows) do
    local f = row[2]
    local at = string.match(row[1], '^(%d+)')
    local prefix = '{"type":"' .. f[2] .. '","feed":"' .. feed .. '","seq":' .. at .. ','
    local mine = false
    if f[2] == 'entry.created' or f[2] == 'entry.updated' then
      local own = prefix .. '"entry":{"id":"' .. id .. '"'
      mine = string.sub(f[4], 1, #own) == own
    elseif f[2] == 'entry.deleted' then
      mine = f[4] == prefix .. '"id":"' .. id .. '"}'
    end
    if mine then
      found = true
      f[2] = 'entry.purged'
      f[4] = '{"type":"entry.purged","feed":"' .. feed .. '","seq":' .. at .. ',"id":"' .. id .. '"}'
    end
  end
  if not found then return end
  redis.call('DEL', rewrite)
  for _, row in ipairs(rows) do redis.call('XADD', rewrite, row[1], unpack(row[2])) end
  redis.call('RENAME', rewrite, log)
end

if kind == 'feed.updated' then
  redis.call('HSET', meta, 'about', entry)
elseif kind == 'entry.deleted' then
  redis.call('ZREM', live, id)
  redis.call('ZREM', pinned, id)
  if purge ~= '' then
    purge_history()
    redis.call('HDEL', entries, id)
    local trail = redis.call('LRANGE', revisions, 0, -1)
    redis.call('DEL', revisions)
    for _, stored in ipairs(trail) do
      redis.call('RPUSH', revisions, string.match(stored, '^[^\n]*\n[^\n]*\n'))
    end
    redis.call('HSET', purges, id, seq .. '\n' .. purge)
    -- A retry of the entry's creation (its Idempotency-Key) gets its seq, not its text.
    local answer = redis.call('HGET', remembered, id)
    if answer and redis.call('EXISTS', answer) == 1 then
      local prior = redis.call('GET', answer)
      redis.call('SET', answer, string.match(prior, '^[^\n]*\n'), 'KEEPTTL')
    end
    redis.call('HDEL', remembered, id)
  end
else
  redis.call('HSET', entries, id, entry)
  local score = created_seq or seq
  if kind == 'entry.created' then redis.call('ZADD', live, score, id) end
  if pin == '1' then redis.call('ZADD', pinned, score, id) else redis.call('ZREM', pinned, id) end
  if revision ~= '' then redis.call('RPUSH', revisions, seq .. '\n' .. revision .. '\n' .. entry) end
end
if claim ~= '' then  -- a release: the entry is no longer scheduled
  redis.call('ZREM', schedule, id)
  redis.call('HDEL', scheduled, id)
end

local message = epoch .. ' ' .. seq .. ' ' .. kind .. ' ' .. accepted .. '\n' .. event
if not defer then
  redis.call(publish, channel, message)
  message = ''  -- published: nothing for the caller to publish after WAIT
end
local result = epoch .. ' ' .. seq .. '\n' .. entry
if ttl ~= '' then
  redis.call('SET', idem, result, 'EX', tonumber(ttl))
  if kind == 'entry.created' then redis.call('HSET', remembered, id, idem) end
end
return {'ok', result, message, renewed}
