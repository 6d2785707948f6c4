-- Shared helpers. storage/scripts.py prepends this file to every other script.

-- Redis' own clock, in milliseconds: the one clock every hub process agrees on. Read once per script run:
-- a merged call (_many.lua) runs many callers' writes in one atomic step, and they share its instant.
local clock_ms
local function now_ms()
  if not clock_ms then
    local t = redis.call('TIME')
    clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock_ms
end

-- The only way a session ends: mark it, drop it from the deadline index and enqueue it for
-- PostgreSQL, all in the caller's atomic script.
local function finish(meta, due, outbox, sid, status, reason, now)
  redis.call('HSET', meta, 'status', status, 'reason', reason, 'finished_ms', now)
  redis.call('PERSIST', meta)  -- a created session ended by a proctor still had its "never opened" TTL
  redis.call('ZREM', due, sid)
  redis.call('XADD', outbox, '*', 'sid', sid)
end
