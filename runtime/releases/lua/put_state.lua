-- put_state.lua: write a route's live release state unless Redis already holds a newer one.
-- Writers (an operator's change, recovery, a reader that found the key missing and read SQL)
-- race; the generation (SQL's, bumped by every change) decides, so an older state read from
-- SQL never overwrites a newer one.
-- KEYS[1] = $ns:release:$route   hash: gen, state
-- ARGV[1] = generation of the state
-- ARGV[2] = the state (JSON)
-- returns 1 if written, 0 if Redis held this generation or a newer one
local held = tonumber(redis.call('HGET', KEYS[1], 'gen') or '-1')
if held >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'state', ARGV[2])
return 1
