-- Publish one change of a room's session to the room's proctors, numbered so that a subscriber that
-- misses one (pub/sub is lossy) can tell and resync from Redis.
-- KEYS[1] the room's sequence counter
-- ARGV[1] the room's channel, ARGV[2] the message (JSON)
-- Returns the message's sequence number.
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], seq .. '|' .. ARGV[2])
return seq
