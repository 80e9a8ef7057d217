-- bulkhead.lua: take a place in a tool's bulkhead (max concurrent calls across workers).
-- KEYS[1] = $ns:{sched}:bulkhead:<tool>   zset call -> lease expiry (ms)
-- ARGV[1] = call id, ARGV[2] = limit, ARGV[3] = lease ttl (ms)
-- returns {1, 0} if taken (or already held), {0, retry_after_ms} if full
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)  -- leases of dead callers
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(first[2]) - now)}
