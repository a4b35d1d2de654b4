-- An entry's revision trail and its purge's audit record, read in one atomic step.
-- KEYS: revisions (the entry's), purges    ARGV: entry id
-- Returns {purge record or false, revision, ...}.
local out = {redis.call('HGET', KEYS[2], ARGV[1])}
for _, stored in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do out[#out + 1] = stored end
return out
