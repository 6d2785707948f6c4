-- Create a session in state "created".
-- KEYS[1] meta
-- ARGV[1] TTL in seconds until it is opened; ARGV[2..] field, value, field, value, ...
-- Returns 1, or 0 when the session already exists (nothing is changed).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
