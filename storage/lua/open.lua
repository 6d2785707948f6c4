-- A connection takes the session over: bump the fencing epoch and return the whole state.
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] ev
-- Returns {'OK', now_ms, epoch, meta (flat field/value list), answers (flat), events (list)}
--      or {'NO_SESSION'}.
local meta, ans, ev = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', meta) == 0 then return {'NO_SESSION'} end
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
return {'OK', now_ms(), epoch, redis.call('HGETALL', meta), redis.call('HGETALL', ans),
        redis.call('LRANGE', ev, 0, -1)}
