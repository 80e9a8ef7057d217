-- gcra.lua: take from several GCRA rate limiters at once, all or nothing.
-- KEYS[i]      = $ns:{sched}:rl:<name>   the limiter's theoretical arrival time (ms)
-- ARGV[3i-2]   = emission interval T in ms (period / limit)
-- ARGV[3i-1]   = burst tolerance in ms (T * (burst - 1))
-- ARGV[3i]     = quantity (1 per request; tokens for a token limiter; < 0 gives back)
-- returns {1, 0} if taken, or {0, retry_after_ms} (nothing taken)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local retry = 0
local new = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local quantity = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  -- allowed when the schedule, after this take, runs at most tolerance + one interval ahead
  local ahead = tat + quantity * interval - now
  if quantity > 0 and ahead > tolerance + interval then
    retry = math.max(retry, ahead - tolerance - interval)
  end
  new[i] = math.max(tat + quantity * interval, now)
end
if retry > 0 then
  return {0, math.ceil(retry)}
end
for i = 1, #KEYS do
  local ttl = math.ceil(new[i] - now + tonumber(ARGV[3 * i - 1])) + 1000
  redis.call('SET', KEYS[i], tostring(new[i]), 'PX', ttl)
end
return {1, 0}
