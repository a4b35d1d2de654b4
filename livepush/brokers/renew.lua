-- Give a feed a new epoch if it still has `stale`: its history lost writes (a failover,
-- a restore from an older dump) and seqs would otherwise be handed out a second time.
-- KEYS: meta    ARGV: stale epoch, new epoch
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
end
return redis.call('HGET', KEYS[1], 'epoch')
