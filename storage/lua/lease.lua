-- A hub process renews its lease in one partition: "I am alive" (open.lua reads it to tell a crashed process's
-- connections, which never said goodbye, from live ones). Fields silent for longer than ARGV[2] are deleted.
-- KEYS[1] the partition's hosts hash
-- ARGV[1] this process' host id, ARGV[2] forget a host after this many ms of silence
-- Returns now_ms.
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], now)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) > tonumber(ARGV[2]) then redis.call('HDEL', KEYS[1], all[i]) end
end
return now
