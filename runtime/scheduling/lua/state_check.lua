-- state_check.lua: the generation of a state marker, 0 if the state is unknown.
-- KEYS[1] = $ns:{sched}:state or $ns:{ledger}:state
-- returns state_gen(KEYS[1]) (see state_marker.lua, prepended)
return state_gen(KEYS[1])
