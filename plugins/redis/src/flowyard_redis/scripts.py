"""The Lua scripts of :class:`flowyard_redis.storage.RedisStorage`.

A Lua script runs atomically in Redis: no other client's command runs while it does, so each
compare-and-set below is safe across processes. The scripts never re-encode JSON (Lua's cjson
rounds numbers to 14 significant digits): records the scripts change are hashes of one JSON
value per field, and new field values are encoded by Python and passed as arguments. JSON
numbers are read with ``tonumber`` only to compare them.
"""

from __future__ import annotations

__all__ = ["SCRIPTS"]

# KEYS: run, runs index, idempotency hash. ARGV: run JSON, created_at, id, idempotency key
CREATE_RUN = """
if ARGV[4] ~= '' then
  local existing = redis.call('HGET', KEYS[3], ARGV[4])
  if existing then return {'existing', existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[3]) end
return {'created'}
"""

# KEYS: run, runs index. ARGV: run JSON, created_at, id
UPDATE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: run, lease. ARGV: owner (JSON), now, replace_owner (JSON or ''), field/value pairs
CLAIM_LEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local cur = redis.call('HMGET', KEYS[2], 'owner', 'expires_at')
if cur[1] and cur[1] ~= ARGV[1] and cur[1] ~= ARGV[3]
   and tonumber(cur[2]) > tonumber(ARGV[2]) then
  local held = redis.call('HGETALL', KEYS[2])
  table.insert(held, 1, 'held')
  return held
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
return {'claimed'}
"""

# KEYS: lease. ARGV: owner (JSON), heartbeat_at, expires_at
RENEW_LEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[2], 'expires_at', ARGV[3])
return 1
"""

# KEYS: lease. ARGV: owner (JSON)
RELEASE_LEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: task, queued zset, tenant zset, tenant idempotency hash.
# ARGV: idempotency key or '', id, -priority, queue member, created_at, field/value pairs
SUBMIT_TASK = """
if ARGV[1] ~= '' then
  local existing = redis.call('HGET', KEYS[4], ARGV[1])
  if existing then return {'existing', existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
if ARGV[1] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[2]) end
return {'created'}
"""

# KEYS: queued zset, leased zset. ARGV: now, worker (JSON), lease expiry, task key prefix.
# The queued zset orders by score (-priority) then member ('<created_at>|<id>'); expired
# running tasks compete with the queue's head by the same (score, member) order.
CLAIM_TASK = """
local best_id, best_score, best_member = nil, nil, nil
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[1] then
  best_member = head[1]
  best_score = tonumber(head[2])
  best_id = string.match(best_member, '|(.*)$')
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local f = redis.call('HMGET', ARGV[4] .. id, '_score', '_qkey', 'status')
  if f[3] == '"running"' then
    local score = tonumber(f[1])
    if best_id == nil or score < best_score
       or (score == best_score and f[2] < best_member) then
      best_id, best_score, best_member = id, score, f[2]
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
if best_id == nil then return false end
local key = ARGV[4] .. best_id
redis.call('ZREM', KEYS[1], best_member)
redis.call('ZADD', KEYS[2], ARGV[3], best_id)
redis.call('HSET', key, 'status', '"running"', 'worker', ARGV[2], 'lease_expires_at', ARGV[3])
redis.call('HINCRBY', key, 'attempts', 1)
if redis.call('HGET', key, 'started_at') == 'null' then
  redis.call('HSET', key, 'started_at', ARGV[1])
end
local task = redis.call('HGETALL', key)
table.insert(task, 1, best_id)
return task
"""

# KEYS: task, leased zset. ARGV: worker (JSON), lease expiry, id
RENEW_TASK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local f = redis.call('HMGET', KEYS[1], 'status', 'worker')
if f[1] ~= '"running"' or f[2] ~= ARGV[1] then return {'lost'} end
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local task = redis.call('HGETALL', KEYS[1])
table.insert(task, 1, 'renewed')
return task
"""

# KEYS: task, leased zset. ARGV: worker (JSON), status (JSON), outputs (JSON), error (JSON),
# finished_at, id
FINISH_TASK = """
local f = redis.call('HMGET', KEYS[1], 'status', 'worker')
if f[1] ~= '"running"' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'outputs', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'worker', 'null', 'lease_expires_at', 'null')
redis.call('ZREM', KEYS[2], ARGV[6])
return 1
"""

# KEYS: task, queued zset. ARGV: now
CANCEL_TASK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local f = redis.call('HMGET', KEYS[1], 'status', '_qkey')
if f[1] == '"queued"' then
  redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished_at', ARGV[1],
             'error', '"cancelled before it started"')
  redis.call('ZREM', KEYS[2], f[2])
elseif f[1] == '"running"' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: task, queued zset
RETRY_TASK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local f = redis.call('HMGET', KEYS[1], 'status', '_qkey', '_score')
if f[1] == '"failed"' or f[1] == '"cancelled"' then
  redis.call('HSET', KEYS[1], 'status', '"queued"', 'error', 'null', 'finished_at', 'null',
             'cancel_requested', 'false')
  redis.call('ZADD', KEYS[2], f[3], f[2])
end
return redis.call('HGETALL', KEYS[1])
"""

SCRIPTS: dict[str, str] = {
    "create_run": CREATE_RUN,
    "update_run": UPDATE_RUN,
    "claim_lease": CLAIM_LEASE,
    "renew_lease": RENEW_LEASE,
    "release_lease": RELEASE_LEASE,
    "submit_task": SUBMIT_TASK,
    "claim_task": CLAIM_TASK,
    "renew_task": RENEW_TASK,
    "finish_task": FINISH_TASK,
    "cancel_task": CANCEL_TASK,
    "retry_task": RETRY_TASK,
}
