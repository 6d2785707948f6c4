-- The tail of a "many" script (storage/scripts.py, load_many): the script above it, wrapped as
-- `one(KEYS, ARGV)`, run for several callers in turn, so that a pipeline carries one call, not one per caller
-- (storage/writer.py merges them).
-- ARGV[1] n, then per call: its key count, its argument count, its arguments; KEYS: the calls' keys in turn.
-- Returns n replies, one per call, as the script alone would have returned them; a call that raised an error
-- gets {'ERR', message} and the others still run.
local out, ki, ai = {}, 1, 2
for i = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  local keys, args = {unpack(KEYS, ki, ki + nk - 1)}, {unpack(ARGV, ai + 2, ai + 1 + na)}
  ki, ai = ki + nk, ai + 2 + na
  local ok, reply = pcall(one, keys, args)
  if ok then
    out[i] = reply
  else
    out[i] = {'ERR', type(reply) == 'table' and tostring(reply.err) or tostring(reply)}
  end
end
return out
