-- The subscribers every other node reported on a feed and that are still fresh; a
-- node that stopped reporting (crashed) drops out when its report expires.
-- KEYS: nodes    ARGV: this node
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local count, expires = string.match(fields[i + 1], '^(%d+) (%d+)$')
  if fields[i] ~= ARGV[1] and tonumber(expires) > now_ms then
    total = total + tonumber(count)
  end
end
return total
