-- sched.lua: the scheduler's every decision, as a batch of operations in one atomic call.
--
-- KEYS[1] = $P:inflight  (declared for routing; every key below shares the {sched} tag)
-- ARGV[1] = $P, the key prefix "$ns:{sched}"
-- ARGV[2] = the Redis state generation the caller knows from SQL (0: any)
-- ARGV[3..] = operations, each an opcode and its arguments:
--   E item [base_ms]   enqueue a ready item (idempotent: skipped if queued/in flight/delayed)
--   D item due_ms      delay an item until due_ms (e.g. a rate-limited step)
--   C item             complete: the item no longer holds its slots
--   Z item             drop the item wherever it is (queued, delayed or in flight)
--   R item ttl_ms      renew the item's slot leases
--   X max              dispatch up to max items (weighted fair queuing across tenants)
--   P max              promote up to max due delayed items to their ready queues
--   L max every_ms     dead workers: hand back up to max running steps whose owner
--                      instance's heartbeat is gone (at most once per every_ms across all
--                      callers); then expire up to max slot leases: free and re-queue
--   H worker n ttl_ms  worker heartbeat: n processes, forget it after ttl_ms
--   U                  unpark every parked tenant (after new limits were published)
-- returns {dispatched items, expired items, state known (1) or not (0), handed-back items,
--          dead instances, steps in flight not started yet (dispatched ones included)}
--   (a handed-back item keeps its slots and is in the dispatched list: publish it again)
--
-- Fail closed: the state marker $P:state (written when recovery or the first start built
-- this state from SQL) must exist, belong to this server run and be at least ARGV[2]. If it
-- is missing (Redis lost its data), from another run (Redis restarted, from a snapshot or
-- not) or older (SQL knows a newer state), the state is unknown:
-- only heartbeats are recorded; nothing is queued, dispatched, expired, handed back or
-- released, and the caller learns it (0) so that recovery runs. A route or tenant missing
-- from the published limits is never unlimited: its steps wait until limits are published.
--
-- Items are "run|step|tenant|route|prio" (prio 0 critical .. 3 low).
-- Per tenant:  $P:q:<tenant>      zset item -> enqueue_ms + offset[prio] (ageing order)
--              $P:pass (hash)     tenant -> virtual pass (stride scheduling, stride 1e6/weight)
--              $P:tband (hash)    tenant -> band its head is indexed in
-- Indexes:     $P:band:<b>        zset tenant -> pass, tenants whose head has priority b
--              $P:heads           zset tenant -> enqueue_ms + max_wait[prio] of its head
--              $P:blocked:r:<rt>  zset tenant -> pass, parked: next items need route <rt>
--              $P:blocked:t       zset tenant -> pass, parked: tenant at its concurrency cap
--              $P:parked (hash)   tenant -> "r:<route>" | "t"
-- Slots:       $P:inflight, $P:inf:r:<route>, $P:inf:t:<tenant>   zset item -> lease expiry
-- Others:      $P:delayed zset item -> due; $P:depth:t / :r / :tp hashes of queued counts;
--              $P:conf, $P:rlimit, $P:rttl, $P:weight, $P:tcap hashes (from config);
--              $P:workers hash worker -> "n|expiry"; $P:capacity live process count
-- Levers:      $P:lever:rlimit hash route -> live concurrency limit (overrides rlimit);
--              $P:lever:drain:r set of drained routes (limit 0: nothing new dispatched);
--              $P:lever:drain:t, $P:lever:pause:t sets of tenants not dispatched (parked
--              like a tenant at its cap); runtime.levers writes them and publishes U+X
-- Owners:      $P:owner (hash) item -> "<instance>|<nonce>" of the copy running it (start.lua
--              records it when the step starts; a dispatched step not yet started has none)
--              $P:owned:<instance> set of items; $P:owners set of instances owning items;
--              $P:alive:<instance> the instance's heartbeat (runtime.locks.identity)
local P = ARGV[1]
local known_gen = state_gen(P .. ':state')  -- state_marker.lua, prepended
local state_known = known_gen > 0 and known_gen >= tonumber(ARGV[2] or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local conf = {}
do
  local raw = redis.call('HGETALL', P .. ':conf')
  for i = 1, #raw, 2 do conf[raw[i]] = tonumber(raw[i + 1]) end
end
local function c(name, default) return conf[name] or default end

local function parse(item)
  local run, step, tenant, route, prio = string.match(item, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(%d)$')
  return run, step, tenant, route, tonumber(prio)
end

local function depth(tenant, route, prio, delta)
  redis.call('HINCRBY', P .. ':depth:t', tenant, delta)
  redis.call('HINCRBY', P .. ':depth:r', route, delta)
  redis.call('HINCRBY', P .. ':depth:tp', tenant .. '|' .. prio, delta)
end

local function unindex(tenant)
  local b = redis.call('HGET', P .. ':tband', tenant)
  if b then
    redis.call('ZREM', P .. ':band:' .. b, tenant)
    redis.call('HDEL', P .. ':tband', tenant)
  end
  redis.call('ZREM', P .. ':heads', tenant)
  local where = redis.call('HGET', P .. ':parked', tenant)
  if where then
    redis.call('ZREM', P .. ':blocked:' .. where, tenant)
    redis.call('HDEL', P .. ':parked', tenant)
  end
end

local function pass_of(tenant)
  return tonumber(redis.call('HGET', P .. ':pass', tenant) or '0')
end

-- put a tenant back in the band of its head, catching its pass up to virtual time so a
-- tenant returning from idle neither jumps the queue nor pays for its idle time
local function reindex(tenant)
  unindex(tenant)
  local head = redis.call('ZRANGE', P .. ':q:' .. tenant, 0, 0, 'WITHSCORES')
  if #head == 0 then return end
  local _, _, _, _, prio = parse(head[1])
  local pass = pass_of(tenant)
  local vtime = tonumber(redis.call('GET', P .. ':vtime') or '0')
  if pass < vtime then
    pass = vtime
    redis.call('HSET', P .. ':pass', tenant, pass)
  end
  redis.call('ZADD', P .. ':band:' .. prio, pass, tenant)
  redis.call('HSET', P .. ':tband', tenant, prio)
  local enqueued = tonumber(head[2]) - c('off' .. prio, 0)
  redis.call('ZADD', P .. ':heads', enqueued + c('wait' .. prio, 60000), tenant)
end

local function park(tenant, where)
  unindex(tenant)
  redis.call('ZADD', P .. ':blocked:' .. where, pass_of(tenant), tenant)
  redis.call('HSET', P .. ':parked', tenant, where)
end

local function enqueue(item, base)
  if redis.call('ZSCORE', P .. ':inflight', item) or redis.call('ZSCORE', P .. ':delayed', item) then
    return 0
  end
  local _, _, tenant, route, prio = parse(item)
  if not prio then return redis.error_reply('bad scheduler item: ' .. item) end
  local added = redis.call('ZADD', P .. ':q:' .. tenant, 'NX', base + c('off' .. prio, 0), item)
  if added == 1 then
    depth(tenant, route, prio, 1)
    reindex(tenant)
  end
  return added
end

local function instance_of(owner) return string.match(owner, '^(.*)|[^|]*$') end

-- forget which instance runs the item (see start.lua)
local function disown(item)
  local owner = redis.call('HGET', P .. ':owner', item)
  if not owner then return end
  redis.call('HDEL', P .. ':owner', item)
  local inst = instance_of(owner)
  if inst then
    redis.call('SREM', P .. ':owned:' .. inst, item)
    if redis.call('SCARD', P .. ':owned:' .. inst) == 0 then
      redis.call('SREM', P .. ':owners', inst)
    end
  end
end

local function release(item)
  local _, _, tenant, route, prio = parse(item)
  if not prio then return 0 end
  disown(item)
  redis.call('HDEL', P .. ':deaths', item)
  local removed = redis.call('ZREM', P .. ':inflight', item)
  redis.call('ZREM', P .. ':inf:r:' .. route, item)
  redis.call('ZREM', P .. ':inf:t:' .. tenant, item)
  if removed == 1 then
    -- a slot of this route (and of this tenant) is free: let one parked tenant retry
    local waiting = redis.call('ZRANGE', P .. ':blocked:r:' .. route, 0, 0)
    if #waiting > 0 then reindex(waiting[1]) end
    if redis.call('HGET', P .. ':parked', tenant) == 't' then reindex(tenant) end
  end
  return removed
end

local function drop(item)
  local _, _, tenant, route, prio = parse(item)
  if not prio then return 0 end
  if redis.call('ZREM', P .. ':q:' .. tenant, item) == 1 then
    depth(tenant, route, prio, -1)
    reindex(tenant)
  end
  if redis.call('ZREM', P .. ':delayed', item) == 1 then depth(tenant, route, prio, -1) end
  return release(item)
end

local function delay(item, due)
  if redis.call('ZSCORE', P .. ':delayed', item) then return 0 end
  local _, _, tenant, route, prio = parse(item)
  if not prio then return 0 end
  if redis.call('ZSCORE', P .. ':q:' .. tenant, item) then return 0 end
  redis.call('ZADD', P .. ':delayed', due, item)
  depth(tenant, route, prio, 1)
  return 1
end

local function promote(max)
  local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, max)
  for _, item in ipairs(due) do
    redis.call('ZREM', P .. ':delayed', item)
    local _, _, tenant, route, prio = parse(item)
    depth(tenant, route, prio, -1)
    enqueue(item, now)
  end
  return #due
end

local function renew(item, ttl)
  if not redis.call('ZSCORE', P .. ':inflight', item) then return 0 end
  local _, _, tenant, route = parse(item)
  redis.call('ZADD', P .. ':inflight', 'XX', now + ttl, item)
  redis.call('ZADD', P .. ':inf:r:' .. route, 'XX', now + ttl, item)
  redis.call('ZADD', P .. ':inf:t:' .. tenant, 'XX', now + ttl, item)
  return 1
end

local function expire(max, out)
  local dead = redis.call('ZRANGEBYSCORE', P .. ':inflight', '-inf', now, 'LIMIT', 0, max)
  for _, item in ipairs(dead) do
    release(item)
    enqueue(item, now)
    table.insert(out, item)
  end
end

-- steps whose owner instance is dead (its heartbeat key gone; an expired heartbeat is never
-- re-created, so dead stays dead): they keep their slots, get the dispatch lease again and
-- go back out as new messages. Their old messages come back from Celery only after the
-- visibility timeout, and the step loop drops them (the step is done, or its run lease is
-- held by the live copy). A step dispatched but not started has no owner: its slot lease
-- expires as before.
local function handback(max, every, out, handed, dead)
  if redis.call('EXISTS', P .. ':paused') == 1 then return end
  if every > 0 and not redis.call('SET', P .. ':handback', '1', 'NX', 'PX', every) then
    return
  end
  local n = 0
  for _, inst in ipairs(redis.call('SMEMBERS', P .. ':owners')) do
    if redis.call('EXISTS', P .. ':alive:' .. inst) == 0 then
      table.insert(dead, inst)
      for _, item in ipairs(redis.call('SMEMBERS', P .. ':owned:' .. inst)) do
        if n >= max then return end
        disown(item)
        if redis.call('ZSCORE', P .. ':inflight', item) then
          local _, _, tenant, route = parse(item)
          local ttl = tonumber(redis.call('HGET', P .. ':rttl', route) or c('ttl', 120000))
          redis.call('ZADD', P .. ':inflight', 'XX', now + ttl, item)
          redis.call('ZADD', P .. ':inf:r:' .. route, 'XX', now + ttl, item)
          redis.call('ZADD', P .. ':inf:t:' .. tenant, 'XX', now + ttl, item)
          -- how often this step's owner died running it (the caller dead-letters a step
          -- that keeps killing its workers, instead of handing it back forever)
          redis.call('HINCRBY', P .. ':deaths', item, 1)
          table.insert(out, item)
          table.insert(handed, item)
          n = n + 1
        end
      end
    end
  end
end

local function heartbeat(worker, n, ttl)
  redis.call('HSET', P .. ':workers', worker, n .. '|' .. (now + ttl))
  local total = 0
  local raw = redis.call('HGETALL', P .. ':workers')
  for i = 1, #raw, 2 do
    local procs, expiry = string.match(raw[i + 1], '^(%d+)|(%d+)$')
    if expiry and tonumber(expiry) > now then
      total = total + tonumber(procs)
    else
      redis.call('HDEL', P .. ':workers', raw[i])
    end
  end
  redis.call('SET', P .. ':capacity', total, 'PX', ttl)
end

local function unpark_all()
  local raw = redis.call('HKEYS', P .. ':parked')
  for _, tenant in ipairs(raw) do reindex(tenant) end
  return #raw
end

-- a route's concurrency limit now: 0 while drained, an operator's live limit, else the
-- published one (missing: 0, unknown - wait)
local function route_limit(route)
  if redis.call('SISMEMBER', P .. ':lever:drain:r', route) == 1 then return 0 end
  local live = redis.call('HGET', P .. ':lever:rlimit', route)
  if live then return tonumber(live) end
  return tonumber(redis.call('HGET', P .. ':rlimit', route) or '0')
end

local function tenant_held(tenant)
  return redis.call('SISMEMBER', P .. ':lever:drain:t', tenant) == 1
    or redis.call('SISMEMBER', P .. ':lever:pause:t', tenant) == 1
end

local function pick()
  -- weighted fair queuing within the best (highest-priority) band that has a tenant
  local best, best_band = nil, nil
  for b = 0, 3 do
    local first = redis.call('ZRANGE', P .. ':band:' .. b, 0, 0)
    if #first > 0 then best, best_band = first[1], b break end
  end
  -- ageing: a head that has waited past its priority's max wait is lifted over higher
  -- bands. Within its own band WFQ still decides, or a flooding tenant whose whole backlog
  -- is overdue would go before every newcomer.
  -- (the 16 longest-overdue heads are looked at: bounded work per decision)
  if best_band ~= nil then
    local due = redis.call('ZRANGEBYSCORE', P .. ':heads', '-inf', now, 'LIMIT', 0, 16)
    if #due > 0 then
      local bands = redis.call('HMGET', P .. ':tband', unpack(due))
      for i = 1, #due do
        if tonumber(bands[i] or '-1') > best_band then return due[i] end
      end
    end
  end
  return best
end

local function dispatch(max, out)
  -- `agentrt recover` pauses dispatching while it rebuilds the ledger from SQL
  if redis.call('EXISTS', P .. ':paused') == 1 then return end
  local capacity = tonumber(redis.call('GET', P .. ':capacity') or '0')
  local limit = capacity + math.ceil(capacity * c('headroom', 1))
  local inflight = redis.call('ZCARD', P .. ':inflight')
  local lookahead = c('lookahead', 8)
  local default_ttl = c('ttl', 120000)
  local budget = max * 4 + 16  -- bounds the work of one call when most tenants are parked
  local taken = 0
  while taken < max and inflight < limit and budget > 0 do
    budget = budget - 1
    local tenant = pick()
    if not tenant then break end
    -- published for every tenant (-1: no cap); a tenant missing from it is unknown: wait
    local cap = tonumber(redis.call('HGET', P .. ':tcap', tenant) or '0')
    if tenant_held(tenant) then
      park(tenant, 't')
    elseif cap >= 0 and redis.call('ZCARD', P .. ':inf:t:' .. tenant) >= cap then
      park(tenant, 't')
    else
      -- usually the head can go: look deeper only when it waits for a full route
      local items = redis.call('ZRANGE', P .. ':q:' .. tenant, 0, 0)
      local _, _, _, head_route = parse(items[1])
      local head_limit = route_limit(head_route)
      if head_limit >= 0 and redis.call('ZCARD', P .. ':inf:r:' .. head_route) >= head_limit then
        items = redis.call('ZRANGE', P .. ':q:' .. tenant, 0, lookahead - 1)
      end
      local chosen, chosen_route, chosen_prio, blocked_route
      for _, item in ipairs(items) do
        local _, _, _, route, prio = parse(item)
        local lim = route_limit(route)
        if lim < 0 or redis.call('ZCARD', P .. ':inf:r:' .. route) < lim then
          chosen, chosen_route, chosen_prio = item, route, prio
          break
        end
        blocked_route = blocked_route or route
      end
      if not chosen then
        park(tenant, 'r:' .. blocked_route)
      else
        redis.call('ZREM', P .. ':q:' .. tenant, chosen)
        depth(tenant, chosen_route, chosen_prio, -1)
        local expiry = now + tonumber(redis.call('HGET', P .. ':rttl', chosen_route) or default_ttl)
        redis.call('ZADD', P .. ':inflight', expiry, chosen)
        redis.call('ZADD', P .. ':inf:r:' .. chosen_route, expiry, chosen)
        redis.call('ZADD', P .. ':inf:t:' .. tenant, expiry, chosen)
        inflight = inflight + 1
        local pass = pass_of(tenant)
        redis.call('SET', P .. ':vtime', pass)
        local weight = tonumber(redis.call('HGET', P .. ':weight', tenant) or '1')
        redis.call('HSET', P .. ':pass', tenant, pass + math.floor(1000000 / weight))
        reindex(tenant)
        taken = taken + 1
        table.insert(out, chosen)
      end
    end
  end
end

local dispatched, expired, handed, dead = {}, {}, {}, {}
local i = 3
while i <= #ARGV do
  local op = ARGV[i]
  if not state_known and op ~= 'H' then
    -- skip the op and its arguments: the state it would change is unknown
    local widths = {E = 3, D = 3, C = 2, Z = 2, R = 3, X = 2, P = 2, L = 3, U = 1}
    local width = widths[op]
    if not width then return redis.error_reply('unknown scheduler op ' .. tostring(op)) end
    i = i + width
  elseif op == 'E' then
    local base = tonumber(ARGV[i + 2])
    if not base or base <= 0 then base = now end
    enqueue(ARGV[i + 1], base)
    i = i + 3
  elseif op == 'D' then
    delay(ARGV[i + 1], tonumber(ARGV[i + 2]))
    i = i + 3
  elseif op == 'C' then
    release(ARGV[i + 1])
    i = i + 2
  elseif op == 'Z' then
    drop(ARGV[i + 1])
    i = i + 2
  elseif op == 'R' then
    renew(ARGV[i + 1], tonumber(ARGV[i + 2]))
    i = i + 3
  elseif op == 'X' then
    dispatch(tonumber(ARGV[i + 1]), dispatched)
    i = i + 2
  elseif op == 'P' then
    promote(tonumber(ARGV[i + 1]))
    i = i + 2
  elseif op == 'L' then
    handback(tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), dispatched, handed, dead)
    expire(tonumber(ARGV[i + 1]), expired)
    i = i + 3
  elseif op == 'H' then
    heartbeat(ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
    i = i + 4
  elseif op == 'U' then
    unpark_all()
    i = i + 1
  else
    return redis.error_reply('unknown scheduler op ' .. tostring(op))
  end
end
-- in flight but not started (no owner): what a task may not overtake by chaining
local unstarted = 0
if state_known then
  unstarted = redis.call('ZCARD', P .. ':inflight') - redis.call('HLEN', P .. ':owner')
end
return {dispatched, expired, state_known and 1 or 0, handed, dead, unstarted}
