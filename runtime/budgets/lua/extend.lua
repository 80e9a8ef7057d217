-- extend.lua: add a tool call's reservation to a step's hold, in every scope or none.
-- A step reserves its model call first (reserve.lua); when the model proposes a tool call,
-- the call's reservation is added here, before the tool runs. The hold counts the tool
-- executions it covers (field x): the first one reserves ARGV's "first" amounts (a tool
-- call), every later one - a copy of the step run again after its worker died - the
-- "again" amounts (a retry), so each execution the tools may see is reserved.
-- KEYS[1]      = $ns:{ledger}:hold:$run:$step   (as written by reserve.lua)
-- KEYS[2]      = $ns:{ledger}:holds             zset: hold key -> expiry (ms), for the reaper
-- KEYS[3..n-1] = the step's scope hashes, in reserve.lua's order; when the hold exists its
--                own scope list is used (same slot; a re-run on the next day adds to the
--                scopes its hold reserved in), with KEYS' limits by position
-- KEYS[n]      = $ns:{ledger}:state   the ledger's state marker (field gen), as reserve.lua
-- ARGV[1]      = hold ttl (ms), used when the hold has to be created (it was reaped)
-- ARGV[2]      = number of dimensions D
-- ARGV[3..]    = D dimension names, D "first" amounts, D "again" amounts,
--                then for each scope D limits (-1 = unlimited), then for each scope its ttl (s),
--                then the number of executions to cover (n >= 1),
--                then the state generation the caller knows from SQL
-- returns {1, executions covered before, D amounts added}
--      or {0, scope_index (0-based), dimension, used, reserved, limit}
--      or {-1, "state_unknown"}: as reserve.lua, nothing is reserved (fail closed)
local marker_gen = state_gen(KEYS[#KEYS])  -- state_marker.lua, prepended
if marker_gen == 0 or marker_gen < tonumber(ARGV[#ARGV]) then
  return {-1, 'state_unknown'}
end
local hold = KEYS[1]
local nd = tonumber(ARGV[2])
local nscopes = #KEYS - 3
local limit_base = 2 + 3 * nd
local ttl_base = limit_base + nscopes * nd
local count = tonumber(ARGV[ttl_base + nscopes + 1])
local exists = redis.call('EXISTS', hold) == 1
local before = 0
local scopes = {}
if exists then
  before = tonumber(redis.call('HGET', hold, 'x') or '0')
  for scope in string.gmatch(redis.call('HGET', hold, 'scopes') or '', '[^\n]+') do
    table.insert(scopes, scope)
  end
  if #scopes ~= nscopes then
    -- the deployment's scopes changed since the hold was made: refuse rather than guess
    return {0, 0, 'tool_calls', 0, 0, -1}
  end
else
  for s = 1, nscopes do scopes[s] = KEYS[2 + s] end
end
local dims, amounts = {}, {}
for d = 1, nd do
  dims[d] = ARGV[2 + d]
  local first = tonumber(ARGV[2 + nd + d])
  local again = tonumber(ARGV[2 + 2 * nd + d])
  if before == 0 then
    amounts[d] = first + again * (count - 1)
  else
    amounts[d] = again * count
  end
end
for s = 1, nscopes do
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
    local values = redis.call('HMGET', scopes[s], unpack(fields))
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
for s = 1, nscopes do
  for d = 1, nd do
    if amounts[d] ~= 0 then
      redis.call('HINCRBY', scopes[s], 'r:' .. dims[d], amounts[d])
    end
  end
  redis.call('EXPIRE', scopes[s], tonumber(ARGV[ttl_base + s]))
end
for d = 1, nd do
  if amounts[d] ~= 0 then
    redis.call('HINCRBY', hold, 'a:' .. dims[d], amounts[d])
  end
end
redis.call('HINCRBY', hold, 'x', count)
if not exists then
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
  redis.call('HSET', hold, 'scopes', table.concat(scopes, '\n'), 'expires', expires)
  redis.call('ZADD', KEYS[2], expires, hold)
end
local out = {1, before}
for d = 1, nd do table.insert(out, amounts[d]) end
return out
