-- The connection holding the session went away: the student is offline from now (unless a newer
-- connection has already taken over, or the attempt is over).
-- KEYS[1] meta
-- ARGV[1] the leaving connection's epoch
local m = redis.call('HMGET', KEYS[1], 'epoch', 'status')
if not m[1] or m[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'online', 0)
if m[2] == 'active' or m[2] == 'paused' then
  redis.call('HSET', KEYS[1], 'offline_since_ms', now_ms())
end
return 1
