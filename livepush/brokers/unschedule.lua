-- Cancel a scheduled entry. KEYS: schedule, scheduled    ARGV: id
-- Returns 1, or 0 when it is not pending (released or cancelled already).
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
