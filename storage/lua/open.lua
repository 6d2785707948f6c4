-- A connection takes the session over: bump the fencing epoch, mark the student online, credit the time
-- the connection was down when the template says so, and return the whole state.
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] ev, KEYS[4] due, KEYS[5] ledger, KEYS[6] the partition's hosts hash
-- ARGV[1] the user id the connection's token names (only the owner may take the session over)
-- ARGV[2] the client's IP address ('' when unknown)
-- ARGV[3] this hub process' id ('' : no lease tracking), ARGV[4] how long a process' lease lasts (ms)
-- ARGV[5] the fence channel: '<sid> <epoch>' is published there, so that a process holding an older connection
--         of this session closes it (published here, not by the hub: one command less per connection)
-- ARGV[6] the alive channels' prefix ('' : not used): every hub process subscribes to '<prefix><its id>' while it
--         lives, so a holder whose lease still holds but whose channel has no subscriber was killed a moment ago
--         (its socket to Redis closed with it). Only a holder that says it listens (lease.lua, '<id>|listens'): one of
--         an earlier version has no channel. On a Redis Cluster the channel is sharded, in this session's partition's
--         slot: a node counts only its own subscribers, and this script runs on the node of that slot.
-- ARGV[7] how to count them: 'NUMSUB' (classic channels, a single Redis) or 'SHARDNUMSUB' (sharded, a Redis Cluster)
-- Returns {'OK', now_ms, epoch, meta (flat field/value list), answers (flat), events (list)}
--      or {'NO_SESSION'} or {'FORBIDDEN'} (nothing is changed then).
local meta, ans, ev, due, ledger, hosts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local owner = redis.call('HGET', meta, 'uid')
if not owner then return {'NO_SESSION'} end
if owner ~= ARGV[1] then return {'FORBIDDEN'} end
local now = now_ms()
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
local m = redis.call('HMGET', meta, 'status', 'offline_since_ms', 'deadline_ms', 'credit_cap_ms', 'credited_ms', 'ip',
                    'sid', 'offline_total_ms', 'online', 'host')
local status, since = m[1], tonumber(m[2])
local online = m[9] == '1'
if online and ARGV[3] ~= '' and m[10] then
  local lease = redis.call('HMGET', hosts, m[10], m[10] .. '|gone', m[10] .. '|listens')
  local seen, gone = tonumber(lease[1]), tonumber(lease[2])
  if gone then
    -- the process that held the connection has ended, and its parent said so when it saw it (lease.lua, release),
    -- or its successor on its port did (succeeded): the student has been offline since then; not a second device
    online = false
    since = since or gone
  elseif not seen or now - seen > tonumber(ARGV[4]) then
    -- the process that held the connection is gone (killed, crashed) and never said the student left: the
    -- student has been offline since its last sign of life; not a second device
    online = false
    since = since or seen or now
  elseif lease[3] and (ARGV[6] or '') ~= '' and m[10] ~= ARGV[3]
      and redis.call('PUBSUB', ARGV[7], ARGV[6] .. m[10])[2] == 0 then
    -- another process, whose lease holds, but nothing listens on its alive channel: killed within the lease's
    -- last seconds, before anyone could say so; as above
    online = false
    since = since or seen
  end
end
if since and status == 'active' then
  -- the time ledger: how long the student was away, and what was credited for it (time away while the
  -- clock stood still is not lost; a session paused now is credited by the proctor's resume instead)
  local gap = math.max(0, now - since)
  local credit = 0
  local cap, credited = tonumber(m[4]) or 0, tonumber(m[5]) or 0
  local uncredited = (tonumber(m[8]) or 0) + gap - credited  -- a proctor may have credited some already
  if cap > 0 then
    credit = math.max(0, math.min(gap, cap - credited, uncredited))
    if credit > 0 then
      local deadline = tonumber(m[3]) + credit
      redis.call('HSET', meta, 'deadline_ms', deadline)
      redis.call('HINCRBY', meta, 'credited_ms', credit)
      redis.call('ZADD', due, deadline, m[7])
    end
  end
  redis.call('HINCRBY', meta, 'offline_total_ms', gap)
  redis.call('RPUSH', ledger, since .. '|' .. now .. '|' .. gap .. '|' .. credit)
end
if online and (status == 'active' or status == 'paused') then
  -- taken over while the previous connection still held the session: a second device (or a drop the
  -- server has not noticed yet). Recorded for the proctor's risk score; not a policy violation.
  redis.call('RPUSH', ev, 'second_device|' .. now .. '|0')
end
redis.call('HSET', meta, 'online', 1)
if ARGV[3] ~= '' then redis.call('HSET', meta, 'host', ARGV[3]) end
redis.call('HDEL', meta, 'offline_since_ms')
if ARGV[2] ~= '' then
  if m[6] and m[6] ~= ARGV[2] then redis.call('HINCRBY', meta, 'ip_changes', 1) end
  redis.call('HSET', meta, 'ip', ARGV[2])
end
redis.call('PUBLISH', ARGV[5], m[7] .. ' ' .. epoch)
return {'OK', now, epoch, redis.call('HGETALL', meta), redis.call('HGETALL', ans),
        redis.call('LRANGE', ev, 0, -1)}
