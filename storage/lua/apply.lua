-- Persist one decision of the session state machine, repeating its race-sensitive checks atomically:
-- the caller still holds the session (fencing epoch), the message is new (sequence number), the session
-- is active and its deadline plus grace has not passed (on Redis' clock).
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] ev, KEYS[4] due, KEYS[5] outbox
-- ARGV[1] op: activate | answer | cheat | finish
-- ARGV[2] sid, ARGV[3] epoch, ARGV[4] seq ('' when the write carries none)
--   answer:   ARGV[5] question id, ARGV[6] encoded answer; adaptive tests add ARGV[7] the grown paper,
--             ARGV[8] the adaptive state, ARGV[9] '' or the finish reason when the test stops here
--   cheat:    ARGV[5] encoded event, ARGV[6] violation (0|1), ARGV[7] flag (0|1), ARGV[8] finish reason or ''
--   finish:   ARGV[5] status, ARGV[6] reason
-- Returns {'OK', now_ms[, deadline_ms]} | {'DUP', now_ms} | {'FENCED', now_ms}
--       | {'NOT_ACTIVE', now_ms, status} | {'TOO_LATE', now_ms} | {'NO_SESSION'}
local meta, ans, ev, due, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, sid, epoch, seq = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local m = redis.call('HMGET', meta, 'epoch', 'status', 'last_seq', 'deadline_ms', 'grace_ms', 'duration_ms')
if not m[1] then return {'NO_SESSION'} end
local now = now_ms()
if m[1] ~= epoch then return {'FENCED', now} end
if seq and seq <= tonumber(m[3]) then return {'DUP', now} end
local status = m[2]

if op == 'activate' then
  if status ~= 'created' then return {'NOT_ACTIVE', now, status} end
  local deadline = now + tonumber(m[6])
  redis.call('HSET', meta, 'status', 'active', 'started_ms', now, 'deadline_ms', deadline)
  redis.call('PERSIST', meta)
  redis.call('ZADD', due, deadline, sid)
  return {'OK', now, deadline}
end

if status ~= 'active' then return {'NOT_ACTIVE', now, status} end
if now > tonumber(m[4]) + tonumber(m[5]) then
  finish(meta, due, outbox, sid, 'expired', 'timeout', now)
  return {'TOO_LATE', now}
end

if op == 'answer' then
  redis.call('HSET', ans, ARGV[5], ARGV[6])
  if ARGV[7] then
    redis.call('HSET', meta, 'paper', ARGV[7], 'adaptive', ARGV[8])
    if ARGV[9] ~= '' then finish(meta, due, outbox, sid, 'submitted', ARGV[9], now) end
  end
elseif op == 'cheat' then
  redis.call('RPUSH', ev, ARGV[5])
  if ARGV[6] == '1' then redis.call('HINCRBY', meta, 'violations', 1) end
  if ARGV[7] == '1' then redis.call('HSET', meta, 'flagged', 1) end
  if ARGV[8] ~= '' then finish(meta, due, outbox, sid, 'submitted', ARGV[8], now) end
elseif op == 'finish' then
  finish(meta, due, outbox, sid, ARGV[5], ARGV[6], now)
else
  return redis.error_reply('apply.lua: unknown op ' .. tostring(op))
end
if seq then redis.call('HSET', meta, 'last_seq', seq) end
return {'OK', now}
