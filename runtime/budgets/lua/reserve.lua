-- reserve.lua: reserve amounts in every scope of a step, all or nothing; idempotent per hold.
-- KEYS[1]      = $ns:{ledger}:hold:$run:$step   hash: a:<dim> = reserved amount, scopes, expires
-- KEYS[2]      = $ns:{ledger}:holds             zset: hold key -> expiry (ms), for the reaper
-- KEYS[3..n-1] = scope hashes ($ns:{ledger}:run:$id, tenant:$t:$day, route:$r:$day)
--                fields u:<dim> (settled spend) and r:<dim> (open reservations)
-- KEYS[n]      = $ns:{ledger}:state   the ledger's state marker (field gen)
-- ARGV[1]      = hold ttl (ms)
-- ARGV[2]      = number of dimensions D
-- ARGV[3..]    = D dimension names, then D amounts,
--                then for each scope D limits (-1 = unlimited), then for each scope its ttl (s),
--                then the state generation the caller knows from SQL
-- returns {1, "new"|"existing"} or {0, scope_index (0-based), dimension, used, reserved, limit}
--         or {-1, "state_unknown"}: the ledger was not built from SQL on this server run
--         (Redis lost its data, or restarted from whatever it had saved) or SQL knows a newer
--         state: nothing is reserved until recovery rebuilt it (fail closed)
local marker_gen = state_gen(KEYS[#KEYS])  -- state_marker.lua, prepended
if marker_gen == 0 or marker_gen < tonumber(ARGV[#ARGV]) then
  return {-1, 'state_unknown'}
end
local hold = KEYS[1]
if redis.call('EXISTS', hold) == 1 then
  -- a re-run of the step (its first worker died) owns the hold now: give it a full ttl,
  -- or the reaper would release it while the re-run still executes
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
  redis.call('HSET', hold, 'expires', expires)
  redis.call('ZADD', KEYS[2], expires, hold)
  return {1, 'existing'}
end
local ttl_ms = tonumber(ARGV[1])
local nd = tonumber(ARGV[2])
local nscopes = #KEYS - 3
local dims, amounts = {}, {}
for d = 1, nd do
  dims[d] = ARGV[2 + d]
  amounts[d] = tonumber(ARGV[2 + nd + d])
end
local limit_base = 2 + 2 * nd
local ttl_base = limit_base + nscopes * nd
for s = 1, nscopes do
  local scope = KEYS[2 + s]
  -- one HMGET per scope for the dimensions this reservation is limited on
  local fields, checked = {}, {}
  for d = 1, nd do
    local limit = tonumber(ARGV[limit_base + (s - 1) * nd + d])
    if amounts[d] > 0 and limit >= 0 then
      table.insert(fields, 'u:' .. dims[d])
      table.insert(fields, 'r:' .. dims[d])
      table.insert(checked, {d, limit})
    end
  end
  if #fields > 0 then
    local values = redis.call('HMGET', scope, unpack(fields))
    for i, entry in ipairs(checked) do
      local d, limit = entry[1], entry[2]
      local used = tonumber(values[2 * i - 1] or '0')
      local reserved = tonumber(values[2 * i] or '0')
      if used + reserved + amounts[d] > limit then
        return {0, s - 1, dims[d], used, reserved, limit}
      end
    end
  end
end
local scope_list = {}
for s = 1, nscopes do
  local scope = KEYS[2 + s]
  scope_list[s] = scope
  for d = 1, nd do
    if amounts[d] ~= 0 then
      redis.call('HINCRBY', scope, 'r:' .. dims[d], amounts[d])
    end
  end
  redis.call('EXPIRE', scope, tonumber(ARGV[ttl_base + s]))
end
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl_ms
local fields = {'scopes', table.concat(scope_list, '\n'), 'expires', expires}
for d = 1, nd do
  table.insert(fields, 'a:' .. dims[d])
  table.insert(fields, amounts[d])
end
redis.call('HSET', hold, unpack(fields))
redis.call('ZADD', KEYS[2], expires, hold)
return {1, 'new'}
