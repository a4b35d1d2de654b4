-- The feed as a reader sees it, read atomically with its head: its metadata, the newest
-- `limit` live entries created before `before`, then (first page only) every older
-- pinned one.
-- KEYS: meta, entries, live, pinned
-- ARGV: epoch candidate, limit, before ('' = none), touch ('1': write once, so that the
-- caller's WAIT proves replicas hold all that this read saw), metadata candidate (a
-- new feed's)
local meta, entries, live, pinned = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, before = tonumber(ARGV[2]), ARGV[3]
redis.call('HSETNX', meta, 'epoch', ARGV[1])
redis.call('HSETNX', meta, 'about', ARGV[5])
local epoch = redis.call('HGET', meta, 'epoch')
if ARGV[4] == '1' then redis.call('HSET', meta, 'epoch', epoch) end
local head = tonumber(redis.call('HGET', meta, 'head') or '0')
local max = '+inf'
if before ~= '' then max = '(' .. before end
local rows = redis.call('ZREVRANGEBYSCORE', live, max, '-inf', 'WITHSCORES', 'LIMIT', 0, limit)
local ids, oldest = {}, head + 1
for i = 1, #rows, 2 do
  ids[#ids + 1] = rows[i]
  oldest = tonumber(rows[i + 1])
end
if before == '' then
  local pins = redis.call('ZREVRANGEBYSCORE', pinned, '(' .. oldest, '-inf')
  for _, id in ipairs(pins) do ids[#ids + 1] = id end
end
local out = {epoch, head, redis.call('HGET', meta, 'about')}
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGET', entries, id) end
return out
