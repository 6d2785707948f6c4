"""Redis CPU per answer of the merged answer script (lua/apply.lua run by lua/_many.lua), and of variants of it:

    python -m loadtest.lua_variants [--batch 10] [--rounds 3000] [--repeat 3]

Starts its own durable redis-server (append-only, fsync always, as examhub demands), makes 2,000 active sessions'
meta hashes, then sends merged calls of --batch answers each (random sessions, rising seq), one call per round trip
as the hub's writer sends them, and reads the server's CPU (user + system, from /proc) per answer. The variants take
turns, --repeat times, so that drift on a shared machine falls on all of them alike. It prints each one's median.

Variants (the script's text, edited here; only `current` is what examhub runs):
- current:       the shipped script: HMGET meta, HSET ans, HSET meta last_seq.
- inline:        the same commands, an answer run inline in the merged loop (no two tables and pcall per call).
- no_last_seq:   without the last_seq write. NOT a valid design (a resent answer would be stored twice); the upper
                 bound of what moving last_seq anywhere else can save.
- seq_in_ans:    last_seq kept in the ans hash, written by the answer's own HSET; read by one more HGET.
- one_hash:      the answers kept in the meta hash: one HMGET, one HSET of the answer and last_seq together.

docs/performance.md, "Where examhub's Redis time goes", has its figures.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

from loadtest.driver import tree_cpu_s
from storage.embedded import EmbeddedRedis, free_port
from storage.keys import Keys
from storage.scripts import Scripts, lua_source, many_source

SESSIONS = 2000
_READ_META = (
    "local m = redis.call('HMGET', meta, 'epoch', 'status', 'last_seq', 'deadline_ms', 'grace_ms', 'duration_ms')"
)
_WRITE_ANSWER = "redis.call('HSET', ans, ARGV[5], ARGV[6])"
_WRITE_SEQ = "if seq then redis.call('HSET', meta, 'last_seq', seq) end\n"


def _edit(body: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        if old not in body:
            raise SystemExit(f"lua/apply.lua no longer holds {old!r}: update loadtest/lua_variants.py")
        body = body.replace(old, new)
    return body


# The merged loop with an answer's checks and writes inline, read from KEYS and ARGV at the call's offsets: no two
# tables and no pcall per call; any other op, and an answer past its deadline (it finishes the session), via one().
_INLINE_LOOP = """
local out, ki, ai = {}, 1, 2
for i = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  local late = false
  if ARGV[ai + 2] == 'answer' and na == 6 then
    local meta, ans, epoch, seq = KEYS[ki], KEYS[ki + 1], ARGV[ai + 4], tonumber(ARGV[ai + 5])
    local m = redis.call('HMGET', meta, 'epoch', 'status', 'last_seq', 'deadline_ms', 'grace_ms')
    local now = now_ms()
    if not m[1] then out[i] = {'NO_SESSION'}
    elseif m[1] ~= epoch then out[i] = {'FENCED', now}
    elseif seq <= tonumber(m[3]) then out[i] = {'DUP', now}
    elseif m[2] ~= 'active' then out[i] = {'NOT_ACTIVE', now, m[2]}
    elseif now > tonumber(m[4]) + tonumber(m[5]) then late = true
    else
      redis.call('HSET', ans, ARGV[ai + 6], ARGV[ai + 7])
      redis.call('HSET', meta, 'last_seq', seq)
      out[i] = {'OK', now}
    end
  end
  if late or out[i] == nil then
    local ok, reply = pcall(one, {unpack(KEYS, ki, ki + nk - 1)}, {unpack(ARGV, ai + 2, ai + 1 + na)})
    out[i] = ok and reply or {'ERR', tostring(reply)}
  end
  ki, ai = ki + nk, ai + 2 + na
end
return out
"""


def variants() -> dict[str, str]:
    body = lua_source("apply.lua")
    edited = {
        "no_last_seq": _edit(body, (_WRITE_SEQ, "")),
        "seq_in_ans": _edit(
            body,
            (
                _READ_META,
                _READ_META + "\nlocal in_ans = redis.call('HGET', ans, '_seq')\nif in_ans then m[3] = in_ans end",
            ),
            (_WRITE_ANSWER, "redis.call('HSET', ans, ARGV[5], ARGV[6], '_seq', seq)"),
            (_WRITE_SEQ, ""),
        ),
        "one_hash": _edit(
            body, (_WRITE_ANSWER, "redis.call('HSET', meta, ARGV[5], ARGV[6], 'last_seq', seq)"), (_WRITE_SEQ, "")
        ),
    }

    shipped = {"current": Scripts.load().apply_many.source, "inline": many_source(body, _INLINE_LOOP)}
    return shipped | {n: many_source(b) for n, b in edited.items()}


def run(redis: Redis, pid: int, sha: str, batch: int, rounds: int, sids: list[str], seqs: dict[str, int]) -> float:
    """Redis CPU (us) per answer over `rounds` merged calls of `batch` answers."""
    keys = Keys("lv")
    cpu0 = tree_cpu_s(pid)
    for _ in range(rounds):
        names: list[str] = []
        args: list[str | int] = [batch]
        for sid in random.sample(sids, batch):
            k = keys.session(sid)
            seqs[sid] += 1
            seq = seqs[sid]
            saved = f"B|0|{random.randint(1000, 90000)}|{seq}|{time.time_ns() // 10**6}"  # as SavedAnswer.encode
            head: list[str | int] = ["answer", sid, 1, seq, random.randint(1, 180), saved]
            names += [k.meta, k.ans, k.ev, k.due, k.outbox]
            args += [5, len(head), *head]
        replies = redis.evalsha(sha, len(names), *names, *args)
        if len(replies) != batch or any(r[0] != b"OK" for r in replies):
            raise SystemExit(f"the script refused an answer: {replies[:3]}")
    return (tree_cpu_s(pid) - cpu0) / (rounds * batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=10, help="answers per merged call (the hub's at ~9,000/s: ~10)")
    p.add_argument("--rounds", type=int, default=3000, help="merged calls per variant and repeat")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if min(args.batch, args.rounds, args.repeat) < 1 or args.batch > SESSIONS:
        p.error(f"--batch (1-{SESSIONS}), --rounds and --repeat must be positive")
    folder = Path(tempfile.mkdtemp(prefix="examhub-lua-variants-"))
    server = EmbeddedRedis(folder, port=free_port())
    url = server.start()
    try:
        assert server.process is not None
        redis = Redis.from_url(url)
        sids = [f"{random.getrandbits(128):032x}" for _ in range(SESSIONS)]
        keys = Keys("lv")
        pipe = redis.pipeline(transaction=False)
        for sid in sids:
            active: list[str | int] = [
                "epoch",
                1,
                "status",
                "active",
                "last_seq",
                0,
                "deadline_ms",
                2**52,
                "grace_ms",
                0,
            ]
            pipe.hset(keys.session(sid).meta, items=[*active, "duration_ms", 2**40])
        pipe.execute()
        shas = {name: str(redis.script_load(source)) for name, source in variants().items()}
        seqs = dict.fromkeys(sids, 0)
        got: dict[str, list[float]] = {name: [] for name in shas}
        for _ in range(args.repeat):
            for name, sha in shas.items():
                got[name].append(run(redis, server.process.pid, sha, args.batch, args.rounds, sids, seqs))
        print(f"Redis CPU per answer, merged calls of {args.batch}, {args.rounds} calls x {args.repeat} "
              f"(median, then each run), {os.cpu_count()} cores:")  # fmt: skip
        for name, runs in got.items():
            print(f"  {name:<12} {statistics.median(runs):5.1f} us   ({', '.join(f'{r:.1f}' for r in runs)})")
        redis.close()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
