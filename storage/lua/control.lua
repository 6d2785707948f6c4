-- A proctor's action on a session, from any process (no fencing epoch: proctors are not the student's
-- connection). The checks that race with the student and the clock are repeated here atomically.
-- KEYS[1] meta, KEYS[2] due, KEYS[3] outbox
-- ARGV[1] op: pause | resume | extend | credit | flag | finish
-- ARGV[2] sid
--   extend: ARGV[3] delta in ms (may be negative); credit: the same, counted as time given back for disconnects
--   flag:   ARGV[3] 0|1
--   finish: ARGV[3] status, ARGV[4] reason
-- Returns {'OK', now_ms, status, deadline_ms or '', remaining_ms or ''} | {'NOT_ACTIVE', now_ms, status}
--       | {'TOO_LATE', now_ms} | {'NO_SESSION'}
local meta, due, outbox = KEYS[1], KEYS[2], KEYS[3]
local op, sid = ARGV[1], ARGV[2]
local m = redis.call('HMGET', meta, 'status', 'deadline_ms', 'grace_ms', 'remaining_ms', 'duration_ms')
local status = m[1]
if not status then return {'NO_SESSION'} end
local now = now_ms()
if status ~= 'active' and status ~= 'paused' and status ~= 'created' then return {'NOT_ACTIVE', now, status} end
if status == 'active' and now > tonumber(m[2]) + tonumber(m[3]) then
  finish(meta, due, outbox, sid, 'expired', 'timeout', now)
  return {'TOO_LATE', now}
end

if op == 'pause' then
  if status ~= 'active' then return {'NOT_ACTIVE', now, status} end
  local left = math.max(0, tonumber(m[2]) - now)
  redis.call('HSET', meta, 'status', 'paused', 'remaining_ms', left)
  redis.call('ZREM', due, sid)
elseif op == 'resume' then
  if status ~= 'paused' then return {'NOT_ACTIVE', now, status} end
  local deadline = now + tonumber(m[4])
  redis.call('HSET', meta, 'status', 'active', 'deadline_ms', deadline)
  redis.call('HDEL', meta, 'remaining_ms')
  redis.call('ZADD', due, deadline, sid)
elseif op == 'extend' or op == 'credit' then
  local delta = tonumber(ARGV[3])
  if status == 'created' then
    redis.call('HSET', meta, 'duration_ms', math.max(1000, tonumber(m[5]) + delta))
  elseif status == 'paused' then
    redis.call('HSET', meta, 'remaining_ms', math.max(0, tonumber(m[4]) + delta))
  else
    local deadline = math.max(now, tonumber(m[2]) + delta)
    redis.call('HSET', meta, 'deadline_ms', deadline)
    redis.call('ZADD', due, deadline, sid)
  end
  redis.call('HINCRBY', meta, op == 'credit' and 'credited_ms' or 'extended_ms', delta)
elseif op == 'flag' then
  redis.call('HSET', meta, 'flagged', ARGV[3])
elseif op == 'finish' then
  if ARGV[3] == 'submitted' and status == 'created' then return {'NOT_ACTIVE', now, status} end
  finish(meta, due, outbox, sid, ARGV[3], ARGV[4], now)
else
  return redis.error_reply('control.lua: unknown op ' .. tostring(op))
end
local after = redis.call('HMGET', meta, 'status', 'deadline_ms', 'remaining_ms')
return {'OK', now, after[1], after[2] or '', after[3] or ''}
