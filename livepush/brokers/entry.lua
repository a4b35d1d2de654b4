-- An entry's current revision and whether it is still live, read in one atomic step.
-- KEYS: entries, live    ARGV: entry id
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('ZSCORE', KEYS[2], ARGV[1])}
