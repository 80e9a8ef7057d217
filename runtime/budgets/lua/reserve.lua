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
-- returns {1, "new"|"existing"|"recovered", ...} (below)
--         or {0, scope_index (0-based), dimension, used, reserved, limit}
--         or {-1, "state_unknown"}: the ledger was not built from SQL on this server run
--         (Redis lost its data, or restarted from whatever it had saved) or SQL knows a newer
--         state: nothing is reserved until recovery rebuilt it (fail closed)
local marker_gen = state_gen(KEYS[#KEYS])  -- state_marker.lua, prepended
if marker_gen == 0 or marker_gen < tonumber(ARGV[#ARGV]) then
  return {-1, 'state_unknown'}
end
local hold = KEYS[1]
local nscopes = #KEYS - 3
local scope_keys = {}
for s = 1, nscopes do scope_keys[s] = KEYS[2 + s] end
local recovered = false
if redis.call('EXISTS', hold) == 1 then
  if redis.call('HEXISTS', hold, 'rec') == 0 then
    -- a re-run of the step (its first worker died) owns the hold now: give it a full ttl,
    -- or the reaper would release it while the re-run still executes
    local t = redis.call('TIME')
    local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
    redis.call('HSET', hold, 'expires', expires)
    redis.call('ZADD', KEYS[2], expires, hold)
    return {1, 'existing'}
  end
  -- a hold recovery rebuilt from SQL (field rec): it covers only the tool executions an
  -- earlier copy of the step may have made before Redis lost its data. This copy reserves
  -- the rest as a new hold would, in the scopes that hold reserved in (as extend.lua does),
  -- and adds it to the hold (returned as "recovered").
  recovered = true
  local listed = {}
  for scope in string.gmatch(redis.call('HGET', hold, 'scopes') or '', '[^\n]+') do
    table.insert(listed, scope)
  end
  if #listed ~= nscopes then
    -- the deployment's scopes changed since the hold was made: refuse rather than guess
    return {0, 0, 'tool_calls', 0, 0, -1}
  end
  scope_keys = listed
end
-- A new hold (below). Between the scope ttls and the state generation, ARGV holds the model
-- call's output allowance: output cap (-1 = none), minimum output, fixed cost (nano-USD),
-- cost per output token (nano-USD), then the tool executions the hold covers (field x),
-- five values the ledger always sends (older callers sent none: read as none). With an allowance,
-- the tokens and cost amounts are the fixed part (the prompt's tokens; the cost without the
-- model's output); the script adds g = min(cap, what every scope can still hold) output
-- tokens and their cost (rounded up to micro-USD), or refuses if g < the minimum. The hold
-- records g and x (a re-run reads them from the hold). A new hold returns
-- {1, "new", g (-1 without allowance), tokens amount, cost amount}.
local ttl_ms = tonumber(ARGV[1])
local nd = tonumber(ARGV[2])
local dims, amounts = {}, {}
local tokens_d, cost_d, calls_d, retries_d = 0, 0, 0, 0
for d = 1, nd do
  dims[d] = ARGV[2 + d]
  amounts[d] = tonumber(ARGV[2 + nd + d])
  if dims[d] == 'tokens' then tokens_d = d elseif dims[d] == 'cost_micro_usd' then cost_d = d end
  if dims[d] == 'tool_calls' then calls_d = d elseif dims[d] == 'retries' then retries_d = d end
end
local limit_base = 2 + 2 * nd
local ttl_base = limit_base + nscopes * nd
-- after the scope ttls: the model call's output allowance (see above); the generation is last
local out_base = ttl_base + nscopes
local out_cap, tools = -1, 0
if #ARGV >= out_base + 6 then
  out_cap = tonumber(ARGV[out_base + 1])
  tools = tonumber(ARGV[out_base + 5])
end
if recovered and tools > 0 and calls_d > 0 and retries_d > 0 then
  -- a resumed call: the recovered hold's execution was its first, so this one is a retry
  local moved = math.min(tools, amounts[calls_d])
  amounts[calls_d] = amounts[calls_d] - moved
  amounts[retries_d] = amounts[retries_d] + moved
end
local function limit_of(s, d)
  return tonumber(ARGV[limit_base + (s - 1) * nd + d])
end
-- one HMGET per scope for the dimensions this reservation is limited on
local values = {}
for s = 1, nscopes do
  local fields, checked = {}, {}
  for d = 1, nd do
    local flexible = out_cap >= 0 and (d == tokens_d or d == cost_d)
    if (amounts[d] > 0 or flexible) and limit_of(s, d) >= 0 then
      table.insert(fields, 'u:' .. dims[d])
      table.insert(fields, 'r:' .. dims[d])
      table.insert(checked, d)
    end
  end
  local taken = {}
  if #fields > 0 then
    local raw = redis.call('HMGET', scope_keys[s], unpack(fields))
    for i, d in ipairs(checked) do
      taken[d] = {tonumber(raw[2 * i - 1] or '0'), tonumber(raw[2 * i] or '0')}
    end
  end
  values[s] = taken
end
local grant = -1
if out_cap >= 0 then
  -- the output cap, lowered to what every scope can still hold after the fixed part (the
  -- prompt's tokens, its input cost); below the minimum the call is not made at all
  local out_min = tonumber(ARGV[out_base + 2])
  local base_nano = tonumber(ARGV[out_base + 3])
  local per_nano = tonumber(ARGV[out_base + 4])
  grant = out_cap
  for s = 1, nscopes do
    local t = values[s][tokens_d]
    if t then
      local room = limit_of(s, tokens_d) - t[1] - t[2] - amounts[tokens_d]
      if room < grant then grant = room end
      if grant < out_min then
        return {0, s - 1, 'tokens', t[1], t[2], limit_of(s, tokens_d)}
      end
    end
    local c = values[s][cost_d]
    if c and (base_nano > 0 or per_nano > 0) then
      local room_nano = (limit_of(s, cost_d) - c[1] - c[2] - amounts[cost_d]) * 1000 - base_nano
      local fit = grant
      if room_nano < 0 then
        fit = -1
      elseif per_nano > 0 then
        fit = math.floor(room_nano / per_nano)
      end
      if fit < grant then grant = fit end
      if grant < out_min then
        return {0, s - 1, 'cost_micro_usd', c[1], c[2], limit_of(s, cost_d)}
      end
    end
  end
  amounts[tokens_d] = amounts[tokens_d] + grant
  amounts[cost_d] = amounts[cost_d] + math.ceil((base_nano + grant * per_nano) / 1000)
end
for s = 1, nscopes do
  for d = 1, nd do
    local v = values[s][d]
    if v and amounts[d] > 0 and v[1] + v[2] + amounts[d] > limit_of(s, d) then
      return {0, s - 1, dims[d], v[1], v[2], limit_of(s, d)}
    end
  end
end
local scope_list = {}
for s = 1, nscopes do
  local scope = scope_keys[s]
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
if recovered then
  for d = 1, nd do
    if amounts[d] ~= 0 then
      redis.call('HINCRBY', hold, 'a:' .. dims[d], amounts[d])
    end
  end
  redis.call('HINCRBY', hold, 'x', tools)
  redis.call('HDEL', hold, 'rec')
  redis.call('HSET', hold, 'expires', expires)
  if out_cap >= 0 then
    redis.call('HSET', hold, 'g', grant)
  end
  redis.call('ZADD', KEYS[2], expires, hold)
  return {1, 'recovered', grant, amounts[tokens_d], amounts[cost_d]}
end
local fields = {'scopes', table.concat(scope_list, '\n'), 'expires', expires, 'x', tools}
if out_cap >= 0 then
  table.insert(fields, 'g')
  table.insert(fields, grant)
end
for d = 1, nd do
  table.insert(fields, 'a:' .. dims[d])
  table.insert(fields, amounts[d])
end
redis.call('HSET', hold, unpack(fields))
redis.call('ZADD', KEYS[2], expires, hold)
return {1, 'new', grant, amounts[tokens_d], amounts[cost_d]}
