-- GCRA rate limit check (the generic cell rate algorithm; storage/ratelimit.py has the same arithmetic in
-- Python for in-process buckets). The bucket is one number: its theoretical arrival time (TAT) on Redis'
-- clock. Loaded on its own (no _lib.lua): it touches no session key.
-- KEYS[1] the limiter key, <prefix>:rl:<scope>:<id>; it expires when the bucket would be full again
-- ARGV[1] emission interval in ms: the time one request is worth (may be fractional)
-- ARGV[2] burst tolerance in ms: (burst - 1) * emission interval
-- Returns {allowed (0/1), retry_after_ms (0 when allowed), remaining (requests still allowed right now)}
--
-- The arithmetic runs in whole microseconds: below 2^53 a Lua number is an exact integer, so no rounding
-- can refuse the last request of a burst or let one more through.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = math.max(1, math.floor(tonumber(ARGV[1]) * 1000 + 0.5))
local tolerance = math.floor(tonumber(ARGV[2]) * 1000 + 0.5)

local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local new_tat = tat + interval
local diff = now - (new_tat - tolerance - interval)
if diff < 0 then
  return {0, math.ceil(-diff / 1000), 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0, math.floor(diff / interval)}
