-- A connection takes the session over: bump the fencing epoch and return the whole state.
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] ev
-- ARGV[1] the user id the connection's token names (only the owner may take the session over)
-- Returns {'OK', now_ms, epoch, meta (flat field/value list), answers (flat), events (list)}
--      or {'NO_SESSION'} or {'FORBIDDEN'} (nothing is changed then).
local meta, ans, ev = KEYS[1], KEYS[2], KEYS[3]
local owner = redis.call('HGET', meta, 'uid')
if not owner then return {'NO_SESSION'} end
if owner ~= ARGV[1] then return {'FORBIDDEN'} end
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
return {'OK', now_ms(), epoch, redis.call('HGETALL', meta), redis.call('HGETALL', ans),
        redis.call('LRANGE', ev, 0, -1)}
