-- A feed's scheduled entries, soonest first: every one, or those due by Redis's clock
-- (the clock every node's release is checked against, whatever its own says).
-- KEYS: schedule, scheduled    ARGV: '1' for the due ones only
-- Returns {first due time or '', id, due time, record, ...}.
local schedule, scheduled = KEYS[1], KEYS[2]
local upto = '+inf'
if ARGV[1] == '1' then
  local now = redis.call('TIME')
  upto = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local rows = redis.call('ZRANGEBYSCORE', schedule, '-inf', upto, 'WITHSCORES')
local out = {redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')[2] or ''}
for i = 1, #rows, 2 do
  out[#out + 1] = rows[i]
  out[#out + 1] = rows[i + 1]
  out[#out + 1] = redis.call('HGET', scheduled, rows[i]) or ''
end
return out
