-- Record how many subscribers one node holds on a feed, valid for `ttl` ms, so that any
-- node can answer the feed's total. KEYS: nodes    ARGV: node, count, ttl ms
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now_ms + tonumber(ARGV[3])))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
