-- A feed's epoch, head and first held seq, with up to `limit` events after `since`.
-- Creates the feed's epoch on first use, so a feed's epoch never changes while its
-- history lives, and an emptied Redis gives it a new one. Each event comes as its seq,
-- type, JSON and accept time (Unix µs, 0 when history predates it).
-- KEYS: meta, log    ARGV: epoch candidate, since, limit, touch ('1': write once, so
-- that the caller's WAIT proves replicas hold all that this read saw)
local meta, log = KEYS[1], KEYS[2]
local since, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
if ARGV[4] == '1' then redis.call('HSET', meta, 'epoch', epoch) end
local head = tonumber(redis.call('HGET', meta, 'head') or '0')
local first_seq = head + 1
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #first > 0 then first_seq = tonumber(string.match(first[1][1], '^(%d+)')) end
local out = {epoch, head, first_seq}
if limit > 0 and since < head then
  local rows = redis.call('XRANGE', log, '(' .. since .. '-1', '+', 'COUNT', limit)
  for _, row in ipairs(rows) do
    out[#out + 1] = string.match(row[1], '^(%d+)')
    out[#out + 1] = row[2][2]
    out[#out + 1] = row[2][4]
    out[#out + 1] = row[2][6] or '0'
  end
end
return out
