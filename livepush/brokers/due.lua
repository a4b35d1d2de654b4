-- Feeds whose earliest scheduled entry falls due within `ahead` ms, by Redis's clock.
-- KEYS: the index of feeds with scheduled entries (scored by that time; a hint)
-- ARGV: ahead (ms), most feeds to return
-- Returns {now (Unix ms), feed, due time, ...}.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rows = redis.call(
  'ZRANGEBYSCORE', KEYS[1], '-inf', now_ms + tonumber(ARGV[1]), 'WITHSCORES', 'LIMIT', 0, ARGV[2])
table.insert(rows, 1, now_ms)
return rows
