-- After the PostgreSQL commit that stored a finished session: acknowledge and delete its outbox entry
-- and give its keys their final TTL, atomically (so no key outlives its owner).
-- KEYS[1] outbox, KEYS[2] meta, KEYS[3] ans, KEYS[4] ev, KEYS[5] ledger
-- ARGV[1] consumer group, ARGV[2] entry id, ARGV[3] TTL in seconds
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
for i = 2, 5 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3])) end
return 1
