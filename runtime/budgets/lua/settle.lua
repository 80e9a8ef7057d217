-- settle.lua: turn a hold into actual spend in every scope it reserved in; idempotent.
-- KEYS[1]   = $ns:{ledger}:hold:$run:$step  (as written by reserve.lua; lists its scopes)
-- KEYS[2]   = $ns:{ledger}:holds            zset of open holds
-- ARGV[1]   = number of dimensions D
-- ARGV[2..] = D dimension names, then D actual amounts (0 everywhere = release)
-- Scope keys are read from the hold; they share its {ledger} hash slot.
-- returns 1 if settled now, 0 if there was no open hold (already settled or never reserved)
local hold = KEYS[1]
if redis.call('EXISTS', hold) == 0 then
  return 0
end
local nd = tonumber(ARGV[1])
local raw = redis.call('HGETALL', hold)
local fields = {}
for i = 1, #raw, 2 do
  fields[raw[i]] = raw[i + 1]
end
for scope in string.gmatch(fields['scopes'] or '', '[^\n]+') do
  for d = 1, nd do
    local dim = ARGV[1 + d]
    local actual = tonumber(ARGV[1 + nd + d])
    local reserved = tonumber(fields['a:' .. dim] or '0')
    if reserved ~= 0 then
      redis.call('HINCRBY', scope, 'r:' .. dim, -reserved)
    end
    if actual ~= 0 then
      redis.call('HINCRBY', scope, 'u:' .. dim, actual)
    end
  end
end
redis.call('DEL', hold)
redis.call('ZREM', KEYS[2], hold)
return 1
