-- renew.lua: extend a lease we own.
-- KEYS[1] = the lease key
-- ARGV[1] = owner, ARGV[2] = ttl in ms
-- returns 1 if renewed, 0 if we no longer own it
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
