-- release.lua: drop a lease only if we still own it (compare-and-delete).
-- KEYS[1] = the lease key
-- ARGV[1] = owner
-- returns 1 if released, 0 if someone else owns it (or it expired)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
