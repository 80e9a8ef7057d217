-- state_marker.lua: a prelude, prepended to the scripts that must not work on an unknown
-- state (sched.lua, reserve.lua, state_check.lua). See runtime/state.py.
--
-- A state marker is a hash {gen = <generation built from SQL>, server = <run_id of the
-- redis-server it was written on>}. state_gen(key) is the marker's generation, or 0 when
-- the state is unknown: the marker is missing (Redis lost its data) or was written on
-- another server run (Redis restarted: whatever it loaded - an old snapshot, an AOF missing
-- its last second - may be older than SQL).
local function state_gen(key)
  local marker = redis.call('HMGET', key, 'gen', 'server')
  if not marker[1] then return 0 end
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  if marker[2] ~= run_id then return 0 end
  return tonumber(marker[1])
end
