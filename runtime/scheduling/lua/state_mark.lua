-- state_mark.lua: write a state marker for the server run it is written on.
-- KEYS[1] = $ns:{sched}:state or $ns:{ledger}:state
-- ARGV[1] = the generation recovery (or the first start) just built from SQL
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'server', run_id)
return 1
