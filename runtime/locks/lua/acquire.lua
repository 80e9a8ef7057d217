-- acquire.lua: take (or re-take) a lease and hand out a fencing token.
-- KEYS[1] = the lease key       ($ns:{lock:$name} or $ns:{run:$id}:lease)
-- KEYS[2] = its fencing counter ($ns:{lock:$name}:fence), same hash slot
-- ARGV[1] = owner (opaque string; the same owner may re-acquire)
-- ARGV[2] = ttl in ms
-- returns {1, fencing_token} or {0, current_owner, pttl_ms}
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return {1, redis.call('INCR', KEYS[2])}
