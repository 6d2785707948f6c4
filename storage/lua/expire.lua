-- The server's clock: finish a session whose deadline plus grace has passed. Idempotent, so any number
-- of sweepers in any number of processes may race on it; exactly one of them finishes the session.
-- KEYS[1] meta, KEYS[2] due, KEYS[3] outbox
-- ARGV[1] sid
-- Returns {'OK', now} | {'NOT_DUE', now, deadline_ms} | {'NOT_ACTIVE', now, status} | {'NO_SESSION'}
local meta, due, outbox, sid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local m = redis.call('HMGET', meta, 'status', 'deadline_ms', 'grace_ms')
if not m[1] then
  redis.call('ZREM', due, sid)
  return {'NO_SESSION'}
end
local now = now_ms()
if m[1] ~= 'active' then
  redis.call('ZREM', due, sid)
  return {'NOT_ACTIVE', now, m[1]}
end
if now <= tonumber(m[2]) + tonumber(m[3]) then return {'NOT_DUE', now, m[2]} end
finish(meta, due, outbox, sid, 'expired', 'timeout', now)
return {'OK', now}
