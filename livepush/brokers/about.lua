-- A feed's epoch, head and metadata, read in one atomic step. Creates the epoch and the
-- metadata on first use, like every script that may be a feed's first.
-- KEYS: meta    ARGV: epoch candidate, metadata candidate
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('HSETNX', KEYS[1], 'about', ARGV[2])
local fields = redis.call('HMGET', KEYS[1], 'epoch', 'head', 'about')
return {fields[1], fields[2] or '0', fields[3]}
