-- breaker.lua: a circuit breaker shared by every worker.
-- KEYS[1] = $ns:{sched}:breaker:<name>        hash: state, open_until (ms), probe
-- KEYS[2] = $ns:{sched}:breaker:<name>:fails  zset: failure id -> time (ms)
-- ARGV[1] = op: "allow" | "success" | "failure"
-- ARGV[2] = failures to open, ARGV[3] = window (ms), ARGV[4] = open for (ms), ARGV[5] = caller id
-- allow   -> {1, state} or {0, retry_after_ms}; an open breaker past open_until lets exactly
--            one caller through (half-open probe); others wait for its verdict
-- success -> {1, state}: a probe's success closes it
-- failure -> {1, state}: a probe's failure reopens it; enough failures in the window open it
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local threshold, window, open_for = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local ttl = window + open_for + 60000
if op == 'allow' then
  if state == 'closed' then return {1, 'closed'} end
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now < open_until then return {0, open_until - now} end
  -- half-open: one probe at a time; a probe that never reports frees its turn after open_for
  local probe = redis.call('HGET', KEYS[1], 'probe')
  local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
  if probe and probe ~= ARGV[5] and now < probe_until then return {0, probe_until - now} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', ARGV[5], 'probe_until', now + open_for)
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, 'half_open'}
elseif op == 'success' then
  if state ~= 'closed' then
    redis.call('DEL', KEYS[1], KEYS[2])
  end
  return {1, 'closed'}
else
  redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if state == 'half_open' or redis.call('ZCARD', KEYS[2]) >= threshold then
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + open_for)
    redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {1, 'open'}
  end
  return {1, state}
end
