-- step_time.lua: fold one step's duration into its route's step-time moving average.
--
-- KEYS[1] = $ns:{sched}:avg_ms   hash route -> exponentially weighted moving average (ms)
-- ARGV[1] = route
-- ARGV[2] = the step's duration (ms)
-- ARGV[3] = alpha: the weight of the new sample (0 < alpha <= 1)
-- returns the new average, as text (Redis would truncate a Lua number to an integer)
--
-- The first sample of a route is taken as it is. One script, so that two workers folding
-- in their steps at once both count (a read in Python and a write would lose one).
local sample = tonumber(ARGV[2])
local previous = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local average = sample
if previous then average = previous + tonumber(ARGV[3]) * (sample - previous) end
local text = string.format('%.3f', average)
redis.call('HSET', KEYS[1], ARGV[1], text)
return text
