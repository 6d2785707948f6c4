"""The batch flusher: finished sessions go from the Redis outbox streams to PostgreSQL, exactly once.

Each hub process runs one consumer of the `flushers` group on every partition's outbox. A pass:
  1. reads its own pending entries (a previous pass failed before acknowledging), new entries, and entries
     a dead consumer left pending for longer than `claim_idle_ms` (XAUTOCLAIM);
  2. loads those sessions' state from Redis and scores them with the pure core;
  3. writes attempts, per-topic analytics, responses and anti-cheat events in ONE transaction, by COPY into
     temporary staging tables and INSERT ... ON CONFLICT DO NOTHING (so a replayed entry adds nothing);
  4. only after the commit, records the scores on the leaderboards, tells the `on_committed` hook (the app
     invalidates the cached reads the new attempts made stale), then acknowledges and deletes each entry and
     sets its session keys' final TTL (flushed.lua), atomically per session.
A crash anywhere leaves the entry pending; whoever picks it up next writes nothing twice (and calls the hook
again, which only invalidates again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError

from sessions import adaptive, irt
from sessions.machine import SessionState
from sessions.model import Question
from sessions.scoring import mark, score
from storage import analytics, pg
from storage.catalog import Catalog
from storage.keys import FLUSH_GROUP, PARTITIONS, Keys
from storage.outage import Outage
from storage.scripts import AnyRedis, Scripts
from storage.session_store import RedisSessionStore, Stored

log = logging.getLogger(__name__)

_ATTEMPT_COLUMNS = (
    "session_id", "user_id", "template_id", "status", "reason", "score", "max_score", "min_score",
    "correct", "wrong", "skipped", "violations", "flagged", "started_at", "finished_at",
    "ability", "ability_se", "scaled_score",
)  # fmt: skip
_TOPIC_COLUMNS = ("session_id", "topic", "correct", "wrong", "skipped", "score", "max_score")
_RESPONSE_COLUMNS = (
    "session_id", "question_id", "user_id", "position", "choice", "is_correct", "marks",
    "marked_for_review", "time_spent_ms", "seq", "answered_at",
)  # fmt: skip
_EVENT_COLUMNS = ("session_id", "idx", "kind", "seq", "occurred_at")

_STAGING = [
    ("stage_attempts", "test_attempts", _ATTEMPT_COLUMNS),
    ("stage_topics", "attempt_analytics", _TOPIC_COLUMNS),
    ("stage_responses", "responses", _RESPONSE_COLUMNS),
    ("stage_events", "anticheat_events", _EVENT_COLUMNS),
]


@dataclass(slots=True)
class Rows:
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    topics: list[tuple[Any, ...]] = field(default_factory=list)
    responses: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[tuple[Any, ...]] = field(default_factory=list)  # the time ledger, as system audit entries
    papers: list[tuple[str, Any]] = field(default_factory=list)  # adaptive tests: the paper they ended with


def attempt_rows(stored: Stored, questions: dict[int, Question], rows: Rows) -> None:
    """Append one finished session's rows (pure: no I/O)."""
    s: SessionState = stored.state
    uid = s.user_id
    paper = [questions[q] for q in s.paper.question_ids]
    result = score([questions[q] for q in adaptive.scored_ids(s)], s.choices(), stored.scheme)
    assert s.finished_ms is not None and s.finish_reason is not None
    ability: tuple[Any, ...] = (None, None, None)
    if s.adaptive is not None:
        est = irt.estimate(s.adaptive)
        ability = (est.theta, est.se, est.scaled)
        rows.papers.append((s.id, {**s.paper.to_json(), "pretest": list(s.adaptive.pretest)}))
    rows.attempts.append(
        (s.id, uid, s.template_id, s.status.value, s.finish_reason.value, result.score, result.max_score,
         result.min_score, result.correct, result.wrong, result.skipped, s.violations, s.flagged,
         pg.ms_to_dt(s.started_ms), pg.ms_to_dt(s.finished_ms), *ability)
    )  # fmt: skip
    for topic, t in sorted(result.topics.items()):
        rows.topics.append((s.id, topic, t.correct, t.wrong, t.skipped, t.score, t.max_score))
    pretest = set(s.adaptive.pretest) if s.adaptive is not None else set()
    user = uuid.UUID(uid)  # once per attempt, not once per response row (a submit storm writes millions)
    for position, q in enumerate(paper):
        a = s.answers.get(q.id)
        choice = a.choice if a else None
        marks = 0 if q.id in pretest else mark(q, choice, stored.scheme)  # a pretest item is unscored
        rows.responses.append(
            (s.id, q.id, user, position, choice, None if choice is None else choice == q.correct,
             marks, bool(a and a.marked), a.time_ms if a else 0, a.seq if a else None,
             pg.ms_to_dt(a.at_ms) if a else None)
        )  # fmt: skip
    for idx, c in enumerate(s.cheats):
        rows.events.append((s.id, idx, c.kind.value, c.seq, pg.ms_to_dt(c.at_ms)))
    for idx, (since, back, gap, credited) in enumerate(stored.ledger):
        # every dropped connection, and the deadline change an automatic credit made, in the audit trail
        params = {"offline_since_ms": since, "back_at_ms": back, "gap_ms": gap, "credited_ms": credited}
        outcome = "credited" if credited else "recorded"
        rows.audit.append((s.id, s.template_id, "disconnect", params, outcome, f"ledger:{s.id}:{idx}",
                           pg.ms_to_dt(back)))  # fmt: skip


async def write_rows(conn: Any, rows: Rows) -> list[str]:
    """Idempotent bulk write; call inside a transaction. Returns the ids of attempts new in this call, whose
    responses are then added to the students' per-topic progress in the same transaction (exactly once)."""
    attempts = [(r[0], uuid.UUID(r[1]), *r[2:]) for r in rows.attempts]
    data = {"stage_attempts": attempts, "stage_topics": rows.topics, "stage_responses": rows.responses,
            "stage_events": rows.events}  # fmt: skip
    inserted: list[str] = []
    for stage, target, columns in _STAGING:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        if data[stage]:
            await conn.copy_records_to_table(stage, records=data[stage], columns=columns)
            cols = ", ".join(columns)
            sql = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
            if target == "test_attempts":
                inserted = [r["session_id"] for r in await conn.fetch(sql + " RETURNING session_id")]
            else:
                await conn.execute(sql)
    await conn.execute(
        """UPDATE test_sessions s
              SET status = a.status, started_at = a.started_at, finished_at = a.finished_at,
                  finish_reason = a.reason
             FROM stage_attempts a WHERE s.id = a.session_id"""
    )
    if rows.papers:  # idempotent: a replay writes the same paper
        await conn.executemany("UPDATE test_sessions SET paper = $2 WHERE id = $1", rows.papers)
    if rows.audit:  # a handful per attempt; idempotent by `source`
        await conn.executemany(
            """INSERT INTO audit_log (session_id, template_id, action, params, outcome, source, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source) DO NOTHING""",
            rows.audit,
        )
    await analytics.apply_progress(conn, inserted)  # after the responses it reads
    return inserted


OnCommitted = Callable[[list[analytics.ScoreEntry]], Awaitable[None]]
"""Called after each commit with the pass's attempts (template_id, session_id, user_id, score, finished_at),
replayed ones included; what it raises is logged and the pass goes on."""


class FlushObserver(Protocol):
    """Told what each pass saw and did (server/metrics.py exports it; storage/ does not import server/)."""

    def on_flushed(self, lags_s: Sequence[float]) -> None:
        """Attempts just committed: for each, seconds from its finish (Redis clock) to the commit."""

    def on_outbox(self, length: int) -> None:
        """Entries in the outbox streams at the start of a pass (pending ones included)."""


@dataclass(slots=True)
class Entry:
    stream: str
    entry_id: str
    sid: str


class Flusher:
    def __init__(
        self,
        redis: AnyRedis,
        pool: pg.Pool,
        store: RedisSessionStore,
        scripts: Scripts,
        catalog: Catalog,
        consumer: str,
        *,
        batch: int = 200,
        claim_idle_ms: int = 30_000,
        flushed_ttl_s: int = 3600,
        idle_sleep_s: float = 0.2,
        max_idle_sleep_s: float = 1.0,
        observer: FlushObserver | None = None,
        on_committed: OnCommitted | None = None,
        crash_point: tuple[str, int] | None = None,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._store = store
        self._scripts = scripts
        self._catalog = catalog
        self._crash_point = crash_point
        self._keys: Keys = store.keys
        self.consumer = consumer
        self._batch = batch
        self._claim_idle_ms = claim_idle_ms
        self._flushed_ttl_s = flushed_ttl_s
        self._idle_sleep_s = idle_sleep_s
        self._max_idle_sleep_s = max(idle_sleep_s, max_idle_sleep_s)
        self._last_claim = 0.0
        self.flushed = 0
        self._observer = observer
        self._on_committed = on_committed
        # test-only (settings.crash_point): exit like kill -9 after the Nth commit, before the acknowledgement
        self._crash_after = crash_point[1] if crash_point is not None and crash_point[0] == "after_commit" else 0
        self._commits = 0

    def lane(self, n: int) -> Flusher:
        """Another consumer of the same outboxes in this process (`<consumer>.<n>`), sharing everything else.
        One flusher writes one transaction at a time and, while PostgreSQL commits, has nothing to do; with two
        lanes one reads and scores the next batch meanwhile (a submit storm's 10,000 attempts: docs/performance.md).
        The consumer group hands each entry to one lane; a replay is idempotent whoever writes it."""
        return Flusher(
            self._redis, self._pool, self._store, self._scripts, self._catalog, f"{self.consumer}.{n}",
            batch=self._batch, claim_idle_ms=self._claim_idle_ms, flushed_ttl_s=self._flushed_ttl_s,
            idle_sleep_s=self._idle_sleep_s, max_idle_sleep_s=self._max_idle_sleep_s, observer=self._observer,
            on_committed=self._on_committed, crash_point=self._crash_point,
        )  # fmt: skip

    async def ensure_groups(self) -> None:
        for p in range(PARTITIONS):
            try:
                await self._redis.xgroup_create(self._keys.outbox(p), FLUSH_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        await self.ensure_groups()
        backoff = idle = self._idle_sleep_s
        outage = Outage(log, f"flusher {self.consumer}")
        while True:
            try:
                n = await self.flush_once()
                backoff = self._idle_sleep_s
                outage.recovered()
            except (TimeoutError, RedisError, OSError) as exc:
                outage.failed("storage unavailable (%s); retrying in %.1fs", exc, backoff)
                n = 0
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # A bug must not stop the flusher for good: log, back off, and try again.
                log.exception("flusher pass failed")
                n = 0
                backoff = min(backoff * 2, 5.0)
            if n:
                idle = self._idle_sleep_s
                continue
            # Nothing to flush: each pass reads every partition's outbox (a pipeline of 16 reads), so an idle one
            # waits longer after each empty pass, up to max_idle_sleep_s (two lanes polling every 0.2 s were ~10 ms
            # of a hub's CPU per second, during an exam when nothing finishes); work found resets it.
            await asyncio.sleep(max(backoff, idle))
            idle = min(idle * 2, self._max_idle_sleep_s)

    def _xreadgroup(self, pipe: Any, stream: str, after: str) -> None:
        where: dict[str, Any] = {}
        if isinstance(self._redis, RedisCluster):
            # redis-py cannot tell where XREADGROUP's keys are (they are "movable") and would ask the server with
            # a COMMAND GETKEYS round trip per command, one after another, before sending the pipeline.
            where = {"target_nodes": self._redis.get_node_from_key(stream)}
        pipe.execute_command(
            "XREADGROUP", "GROUP", FLUSH_GROUP, self.consumer, "COUNT", self._batch, "STREAMS", stream, after, **where
        )

    async def _read(self) -> list[Entry]:
        pipe = self._redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            stream = self._keys.outbox(p)
            self._xreadgroup(pipe, stream, "0")  # our own pending
            self._xreadgroup(pipe, stream, ">")
        claim = time.monotonic() - self._last_claim > self._claim_idle_ms / 2000
        if claim:
            self._last_claim = time.monotonic()
            for p in range(PARTITIONS):
                pipe.xautoclaim(
                    self._keys.outbox(p), FLUSH_GROUP, self.consumer, self._claim_idle_ms, "0-0", count=self._batch
                )
        if self._observer is not None:  # rides the same pipeline: the gauge costs no round trip
            for p in range(PARTITIONS):
                pipe.xlen(self._keys.outbox(p))
        results = await pipe.execute()
        if self._observer is not None:
            self._observer.on_outbox(sum(results[-PARTITIONS:]))
            del results[-PARTITIONS:]
        if claim:
            await self._forget_idle_consumers()
        seen: dict[str, Entry] = {}
        for res in results[: 2 * PARTITIONS]:
            for stream, messages in res or []:
                for entry_id, fields in messages:
                    if fields:  # a pending entry deleted meanwhile comes back with no fields
                        seen[entry_id + stream] = Entry(stream, entry_id, fields["sid"])
        if claim:
            for p, res in enumerate(results[2 * PARTITIONS :]):
                stream = self._keys.outbox(p)
                for entry_id, fields in res[1]:
                    if fields:
                        seen[entry_id + stream] = Entry(stream, entry_id, fields["sid"])
        return list(seen.values())[: self._batch * 4]

    async def _forget_idle_consumers(self) -> None:
        """Consumer names change with every process; drop those that own nothing and are long gone."""
        pipe = self._redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.xinfo_consumers(self._keys.outbox(p), FLUSH_GROUP)
        for p, consumers in enumerate(await pipe.execute()):
            for c in consumers:
                if c["name"] != self.consumer and c["pending"] == 0 and c["idle"] > 10 * self._claim_idle_ms:
                    await self._redis.xgroup_delconsumer(self._keys.outbox(p), FLUSH_GROUP, c["name"])

    async def flush_once(self) -> int:
        entries = await self._read()
        if not entries:
            return 0
        stored = await self._store.load_many(list(dict.fromkeys(e.sid for e in entries)))
        rows = Rows()
        finished_ms: list[int] = []
        done: list[Entry] = []
        written: set[str] = set()  # a session whose entry was replayed may appear twice in one pass
        needed = {q for s in stored.values() for q in s.state.paper.question_ids}
        questions = await self._catalog.questions(needed)
        for e in entries:
            s = stored.get(e.sid)
            if s is None or not s.state.status.finished:
                # Keys gone (already flushed and expired) or not finished: nothing to write, drop the entry.
                log.error("outbox entry %s for session %s has no finished state; dropping it", e.entry_id, e.sid)
                done.append(e)
                continue
            if any(q not in questions for q in s.state.paper.question_ids):
                log.error("session %s references unknown questions; leaving it pending", e.sid)
                continue
            if e.sid not in written:
                written.add(e.sid)
                attempt_rows(s, questions, rows)
                finished_ms.append(s.state.finished_ms or 0)
            done.append(e)
        async with self._pool.acquire() as conn, conn.transaction():
            await write_rows(conn, rows)
        self._commits += 1
        if self._commits == self._crash_after:
            log.critical("crash point after_commit reached (%d): exiting with 137", self._crash_after)
            os._exit(137)
        committed_ms = time.time() * 1000
        # Leaderboards after the commit, before the acknowledgement: a crash in between replays the entry,
        # and ZADD GT makes recording a score twice harmless.
        scores: list[analytics.ScoreEntry] = [(r[2], r[0], r[1], r[5], r[14]) for r in rows.attempts]
        await analytics.record_scores(self._redis, self._keys.prefix, scores)
        if scores and self._on_committed is not None:
            await self._tell(self._on_committed, scores)
        await self._acknowledge(done)
        self.flushed += len(rows.attempts)
        if self._observer is not None and finished_ms:
            self._observer.on_flushed([(committed_ms - f) / 1000 for f in finished_ms])
        return len(entries)

    async def _tell(self, hook: OnCommitted, scores: list[analytics.ScoreEntry]) -> None:
        try:
            await hook(scores)
        except Exception:
            # The attempts are stored: a failed hook must not make the pass replay them. What it would have
            # invalidated stays stale until its TTL (a user's performance up to the warm tier's 3 h).
            log.warning(
                "flusher: the post-commit hook failed for %d attempt(s); their cached reads stay stale until "
                "their TTL", len(scores), exc_info=True,
            )  # fmt: skip

    async def _acknowledge(self, entries: Sequence[Entry], *, reload_allowed: bool = True) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for e in entries:
            k = self._keys.session(e.sid)
            pipe.execute_command(  # not pipe.evalsha: redis-py's cluster pipelines refuse it by name
                "EVALSHA", self._scripts.flushed.sha, 5, e.stream, k.meta, k.ans, k.ev, k.ledger,
                FLUSH_GROUP, e.entry_id, self._flushed_ttl_s,
            )  # fmt: skip
        try:
            await pipe.execute()
        except NoScriptError:
            # Redis restarted and lost its scripts (redis-py names the error by class, not by the text
            # "NOSCRIPT"). The calls that did run are idempotent: run them all again.
            if not reload_allowed:
                raise
            await self._scripts.register(self._redis)
            await self._acknowledge(entries, reload_allowed=False)

    async def outbox_length(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.xlen(self._keys.outbox(p))
        return sum(await pipe.execute())
