"""The fault suite's judge: what the clients were told against what Redis and PostgreSQL hold.

For every session, with every message any of its clients sent (seqs are unique per session, see client.py):

- lost: an acknowledged answer whose question holds neither it nor a later answer (higher seq) that its
  client sent and did not see refused;
- phantom: a stored (question, choice, seq) that no client ever sent;
- refused_stored: a stored answer whose message was refused (fenced, too late, ...);
- duplicated (PostgreSQL): more than one test_attempts row for a session, or more response rows than the
  paper has questions, or a (session, question) twice;
- missing_attempts (PostgreSQL): a session a client saw finished with no test_attempts row.

`Report.ok` is true when all of those are zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from loadtest.faults.client import ACKED, REFUSED, UNKNOWN, FaultClient, Sent
from storage.keys import Keys

Stored = dict[int, tuple[str | None, int]]  # question -> (choice, seq)


@dataclass
class Report:
    where: str
    sessions: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0
    unknown: int = 0
    lost: int = 0
    phantom: int = 0
    refused_stored: int = 0
    duplicated: int = 0
    missing_attempts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.phantom or self.refused_stored or self.duplicated or self.missing_attempts)

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        keys = ("where", "sessions", "sent", "acked", "refused", "unknown", "lost", "phantom", "refused_stored",
                "duplicated", "missing_attempts")  # fmt: skip
        return {k: getattr(self, k) for k in keys} | {"problems": self.problems[:5]}


def by_session(clients: Iterable[FaultClient]) -> dict[str, list[Sent]]:
    sent: dict[str, list[Sent]] = defaultdict(list)
    for c in clients:
        sent[c.sid].extend(c.log)
    return sent


def judge(where: str, sent: dict[str, list[Sent]], stored: dict[str, Stored]) -> Report:
    report = Report(where, sessions=len(sent))
    for sid, messages in sent.items():
        have = stored.get(sid, {})
        by_key: dict[tuple[int, int, str | None], list[Sent]] = defaultdict(list)
        for m in messages:
            report.sent += 1
            report.acked += m.status == ACKED
            report.refused += m.status == REFUSED
            report.unknown += m.status == UNKNOWN
            by_key[(m.seq, m.q, m.choice)].append(m)
        for q, (choice, seq) in have.items():
            match = by_key.get((seq, q, choice))
            if not match:
                report.phantom += 1
                report.note(f"{sid} q{q}: stored {choice!r} seq {seq} was never sent")
            elif all(m.status == REFUSED for m in match):
                report.refused_stored += 1
                report.note(f"{sid} q{q}: stored {choice!r} seq {seq} was refused ({match[0].code})")
        for m in messages:
            if m.status != ACKED:
                continue
            got = have.get(m.q)
            if got is None or got[1] < m.seq or (got[1] == m.seq and got[0] != m.choice):
                report.lost += 1
                report.note(f"{sid} q{m.q}: acked {m.choice!r} seq {m.seq}, stored {got}")
    return report


async def redis_answers(redis_url: str, prefix: str, sids: list[str]) -> dict[str, Stored]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    out: dict[str, Stored] = {}
    try:
        for i in range(0, len(sids), 500):
            chunk = sids[i : i + 500]
            pipe = redis.pipeline(transaction=False)
            for sid in chunk:
                pipe.hgetall(keys.session(sid).ans)
            for sid, raw in zip(chunk, await pipe.execute(), strict=True):
                answers: Stored = {}
                for q, value in raw.items():
                    choice, _marked, _time_ms, seq, _at = value.split("|")
                    answers[int(q)] = (choice or None, int(seq))
                out[sid] = answers
    finally:
        await redis.aclose()
    return out


async def check_redis(redis_url: str, prefix: str, clients: list[FaultClient]) -> Report:
    sent = by_session(clients)
    return judge("redis", sent, await redis_answers(redis_url, prefix, list(sent)))


async def check_postgres(database_url: str, clients: list[FaultClient]) -> Report:
    """After every session finished and the flushers drained the outbox."""
    sent = by_session(clients)
    sids = list(sent)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT session_id, question_id, choice, seq FROM responses WHERE session_id = ANY($1::text[])", sids
        )
        attempts = {r["session_id"]: r["n"] for r in await conn.fetch(
            "SELECT session_id, count(*) AS n FROM test_attempts WHERE session_id = ANY($1::text[]) GROUP BY 1", sids
        )}  # fmt: skip
        shape = await conn.fetch(
            """SELECT r.session_id, count(*) AS n, count(DISTINCT r.question_id) AS d,
                      jsonb_array_length(s.paper -> 'q') AS paper
                 FROM responses r JOIN test_sessions s ON s.id = r.session_id
                WHERE r.session_id = ANY($1::text[]) GROUP BY r.session_id, s.paper""",
            sids,
        )
    finally:
        await conn.close()
    stored: dict[str, Stored] = defaultdict(dict)
    for r in rows:
        if r["choice"] is not None:
            stored[r["session_id"]][r["question_id"]] = (r["choice"], r["seq"])
    report = judge("postgres", sent, stored)
    finished = {c.sid for c in clients if c.finished}
    for sid in sids:
        n = attempts.get(sid, 0)
        if n > 1:
            report.duplicated += n - 1
            report.note(f"{sid}: {n} test_attempts rows")
        if sid in finished and n == 0:
            report.missing_attempts += 1
            report.note(f"{sid}: finished but no test_attempts row")
    for r in shape:
        extra = max(r["n"] - r["d"], r["n"] - (r["paper"] or r["n"]))
        if extra > 0:
            report.duplicated += extra
            report.note(f"{r['session_id']}: {r['n']} response rows for {r['d']} questions, paper {r['paper']}")
    return report
