-- steal.lua: replace a lease whose owner is known dead (compare-and-set).
-- KEYS[1] = the lease key
-- KEYS[2] = its fencing counter (same hash slot)
-- ARGV[1] = the dead owner as observed, ARGV[2] = new owner, ARGV[3] = ttl in ms
-- returns {1, fencing_token} or {0} if the lease changed since it was observed
--
-- The caller saw ARGV[1]'s instance heartbeat gone (a key in the {sched} slot, which this
-- script cannot read in Redis Cluster). An expired heartbeat is never re-created, so the
-- owner is still dead now; the lease is replaced only if it still names that owner.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  return {1, redis.call('INCR', KEYS[2])}
end
return {0}
