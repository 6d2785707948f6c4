-- A hub process renews its lease in one partition: "I am alive" (open.lua reads it to tell a crashed process's
-- connections, which never said goodbye, from live ones). Fields silent for longer than ARGV[2] are deleted.
-- With ARGV[3] 'release' the process is known to have ended (its parent saw it exit: server/workers.py): a field
-- '<host>|gone' gets the time, so that its students' next connections count as dropped since then at once, rather
-- than LEASE_TTL_MS after its last renewal (and as second devices until then). The host's own field is left as it
-- was: a hub of an earlier version, which knows no '|gone', goes on reading it as before.
-- With ARGV[3] 'succeeded' the process ended at some time since its last renewal, no one knows when (its successor
-- on the same port took its place: server/succession.py): '<host>|gone' gets the time of that last renewal, the last
-- sign of life, as an expired lease gives (open.lua); nothing is written for a host with no lease left, nor over a
-- release (the parent of `serve --workers` saw the end itself: its time is the better one).
-- A renewal with ARGV[4] '1' also says that the process listens on its alive channel (open.lua): a field
-- '<host>|listens', renewed with the lease. A process of an earlier version, which has no such channel, never writes
-- it, and open.lua then does not take the silence of its channel for its death (a rolling upgrade).
-- KEYS[1] the partition's hosts hash
-- ARGV[1] the process' host id, ARGV[2] forget a host after this many ms of silence,
-- ARGV[3] 'renew' | 'release' | 'succeeded', ARGV[4] (renew) '1' when the process listens on its alive channel
-- Returns now_ms.
local now = now_ms()
if ARGV[3] == 'release' then
  redis.call('HSET', KEYS[1], ARGV[1] .. '|gone', now)
elseif ARGV[3] == 'succeeded' then
  local seen = redis.call('HGET', KEYS[1], ARGV[1])
  if seen then redis.call('HSETNX', KEYS[1], ARGV[1] .. '|gone', seen) end
else
  redis.call('HSET', KEYS[1], ARGV[1], now)
  redis.call('HDEL', KEYS[1], ARGV[1] .. '|gone')  -- a process that renews is alive (were its id ever reused)
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1] .. '|listens', now) end
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) > tonumber(ARGV[2]) then redis.call('HDEL', KEYS[1], all[i]) end
end
return now
