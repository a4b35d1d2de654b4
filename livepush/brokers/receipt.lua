-- Add one node's delivery figures for an event and publish the running totals,
-- so every editor console sees the sum over all nodes.
-- KEYS: receipts, channel    ARGV: seq, delivered, fan-out ms, publish command
local key, channel, seq = KEYS[1], KEYS[2], ARGV[1]
local delivered = redis.call('HINCRBY', key, seq .. ':d', ARGV[2])
local nodes = redis.call('HINCRBY', key, seq .. ':n', 1)
local slowest = tonumber(redis.call('HGET', key, seq .. ':f') or '0')
if tonumber(ARGV[3]) > slowest then
  slowest = tonumber(ARGV[3])
  redis.call('HSET', key, seq .. ':f', ARGV[3])
end
redis.call('EXPIRE', key, 3600)
redis.call(ARGV[4], channel, 'R ' .. seq .. ' ' .. delivered .. ' ' .. nodes .. ' ' .. slowest)
return nodes
