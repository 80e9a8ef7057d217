-- start.lua: a step starts running: renew its slot leases and record which process
-- instance owns it, so the scheduler can hand it back when that instance dies.
--
-- KEYS[1] = $P:inflight  (declared for routing; every key below shares the {sched} tag)
-- ARGV[1] = $P, the key prefix "$ns:{sched}"
-- ARGV[2] = item "run|step|tenant|route|prio"
-- ARGV[3] = ttl in ms of the slot leases (the step's hard limit + margin)
-- ARGV[4] = owner "<instance>|<nonce>" (the owner of the run lease this step takes)
-- ARGV[5] = mode:
--   own     renew and record, unless another instance that is alive owns the item
--   force   renew and record whoever owned it (the caller holds the run lease)
--   disown  drop the record if it names ARGV[4] (the caller did not get the run lease)
-- returns (own/force) 1 owned, slots renewed; 0 not in flight (nothing done: the step
--           runs on what it has, and its slots, if any, expire as before);
--           2 (own only) another live instance owns it: nothing done
--         (disown) 1 the record was dropped, 0 it names someone else (or nothing)
--
-- Ownership (sched.lua releases it with the slot, and hands back a dead instance's steps):
--   $P:owner (hash) item -> owner;  $P:owned:<instance> set of items;
--   $P:owners set of instances that own an item;  $P:alive:<instance> its heartbeat
local P, item, ttl, owner, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]

local function instance_of(o) return string.match(o, '^(.*)|[^|]*$') end

local function unrecord(current)
  redis.call('HDEL', P .. ':owner', item)
  local inst = instance_of(current)
  if inst then
    redis.call('SREM', P .. ':owned:' .. inst, item)
    if redis.call('SCARD', P .. ':owned:' .. inst) == 0 then
      redis.call('SREM', P .. ':owners', inst)
    end
  end
end

local current = redis.call('HGET', P .. ':owner', item)
if mode == 'disown' then
  if current == owner then
    unrecord(current)
    return 1
  end
  return 0
end
if mode ~= 'own' and mode ~= 'force' then
  return redis.error_reply('start.lua: unknown mode ' .. tostring(mode))
end
if not redis.call('ZSCORE', P .. ':inflight', item) then return 0 end
if current and current ~= owner and mode == 'own' then
  local inst = instance_of(current)
  if inst and redis.call('EXISTS', P .. ':alive:' .. inst) == 1 then return 2 end
end
local inst = instance_of(owner)
if not inst then return redis.error_reply('start.lua: bad owner ' .. owner) end
local _, _, tenant, route = string.match(item, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(%d)$')
if not route then return redis.error_reply('bad scheduler item: ' .. item) end
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
redis.call('ZADD', P .. ':inflight', 'XX', expiry, item)
redis.call('ZADD', P .. ':inf:r:' .. route, 'XX', expiry, item)
redis.call('ZADD', P .. ':inf:t:' .. tenant, 'XX', expiry, item)
if current then unrecord(current) end
redis.call('HSET', P .. ':owner', item, owner)
redis.call('SADD', P .. ':owned:' .. inst, item)
redis.call('SADD', P .. ':owners', inst)
return 1
