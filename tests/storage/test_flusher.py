"""Finished sessions reach PostgreSQL exactly once, whatever crashes in between."""

from __future__ import annotations

import asyncio
import secrets
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis

from sessions.machine import Activate, CheatRecord, Finish, FinishReason, RecordCheat, SaveAnswer, SavedAnswer
from sessions.model import CheatKind
from sessions.paper import draw_paper
from storage import pg
from storage.catalog import Catalog
from storage.keys import PARTITIONS
from storage.session_store import Outcome, RedisSessionStore
from tests.conftest import template_id
from tests.storage.conftest import make_flusher


async def finished_session(pool: pg.Pool, store: RedisSessionStore, answers: int = 5) -> tuple[str, dict[int, str]]:
    catalog = Catalog(pool)
    found = await catalog.template(await template_id(pool, "biology-quick-10"))
    assert found is not None
    tpl, bank_id = found
    sid = secrets.token_hex(16)
    paper = draw_paper(await catalog.bank(bank_id), tpl.rule, sid)
    uid = await pg.create_guest(pool, "flush test")
    await pg.insert_session(pool, sid, secrets.token_hex(8), uid, tpl.id, paper)
    await store.create(sid, str(uid), tpl, paper, 0)
    opened = await store.open(sid, str(uid))
    assert opened is not None
    epoch = opened.stored.epoch
    assert (await store.apply(sid, epoch, Activate())).outcome is Outcome.OK
    chosen = {}
    for i, q in enumerate(paper.question_ids[:answers], start=1):
        choice = paper.option_order[q][0]
        chosen[q] = choice
        await store.apply(sid, epoch, SaveAnswer(i, q, SavedAnswer(choice, i % 2 == 0, 100 * i, i, 1000 + i)))
    await store.apply(sid, epoch, RecordCheat(answers + 1, CheatRecord(CheatKind.BLUR, 5, answers + 1), False, None))
    assert (await store.apply(sid, epoch, Finish(answers + 2, FinishReason.STUDENT))).outcome is Outcome.OK
    return sid, chosen


async def counts(pool: pg.Pool, sids: list[str]) -> tuple[int, int, int, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM test_attempts WHERE session_id = ANY($1)) AS a,
                  (SELECT count(*) FROM responses WHERE session_id = ANY($1)) AS r,
                  (SELECT count(*) FROM anticheat_events WHERE session_id = ANY($1)) AS e,
                  (SELECT count(*) FROM attempt_analytics WHERE session_id = ANY($1)) AS t""",
        sids,
    )
    return row["a"], row["r"], row["e"], row["t"]


async def outbox_total(redis: Redis, store: RedisSessionStore) -> int:
    return sum([await redis.xlen(store.keys.outbox(p)) for p in range(PARTITIONS)])


async def test_flush_writes_everything_once_and_sets_ttls(
    pool: pg.Pool, store: RedisSessionStore, redis: Redis
) -> None:
    sessions = [await finished_session(pool, store) for _ in range(3)]
    sids = [s for s, _ in sessions]
    flusher = make_flusher(redis, pool, store, "f1")
    await flusher.ensure_groups()
    assert await flusher.flush_once() == 3
    assert await flusher.flush_once() == 0
    a, r, e, t = await counts(pool, sids)
    assert (a, r, e) == (3, 30, 3) and t >= 3
    assert await outbox_total(redis, store) == 0
    sid, chosen = sessions[0]
    rows = {x["question_id"]: x for x in await pg.fetch_responses(pool, sid)}
    assert {q: rows[q]["choice"] for q in chosen} == chosen
    assert sum(1 for x in rows.values() if x["choice"] is None) == 5
    status = await pool.fetchval("SELECT status FROM test_sessions WHERE id = $1", sid)
    assert status == "submitted"
    assert 0 < await redis.ttl(store.keys.session(sid).meta) <= 3600


async def test_crash_between_commit_and_ack_writes_no_duplicates(
    pool: pg.Pool, store: RedisSessionStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sids = [(await finished_session(pool, store))[0] for _ in range(2)]
    flusher = make_flusher(redis, pool, store, "f1")
    await flusher.ensure_groups()

    async def crash(entries: object) -> None:
        raise ConnectionError("killed after the commit, before XACK")

    with monkeypatch.context() as m:
        m.setattr(flusher, "_acknowledge", crash)
        with pytest.raises(ConnectionError):
            await flusher.flush_once()
    assert (await counts(pool, sids))[:3] == (2, 20, 2)
    assert await outbox_total(redis, store) == 2  # still pending
    assert await flusher.flush_once() == 2  # replayed from our own pending list
    assert (await counts(pool, sids))[:3] == (2, 20, 2)
    assert await outbox_total(redis, store) == 0


async def test_a_dead_flushers_entries_are_claimed(pool: pg.Pool, store: RedisSessionStore, redis: Redis) -> None:
    sids = [(await finished_session(pool, store))[0] for _ in range(2)]
    dead = make_flusher(redis, pool, store, "dead")
    await dead.ensure_groups()
    taken = await dead._read()  # read, then "die" before writing anything
    assert len(taken) == 2
    alive = make_flusher(redis, pool, store, "alive", claim_idle_ms=100)
    assert await alive.flush_once() == 0  # not idle long enough yet
    await asyncio.sleep(0.2)
    alive._last_claim = 0.0
    assert await alive.flush_once() == 2
    assert (await counts(pool, sids))[:3] == (2, 20, 2)
    assert await outbox_total(redis, store) == 0


async def test_postgres_down_keeps_the_outbox(
    pool: pg.Pool, store: RedisSessionStore, redis: Redis, database_url: str
) -> None:
    sid, _ = await finished_session(pool, store)
    broken = await pg.create_pool(database_url, 1, 1)
    await broken.close()  # a closed pool fails like an unreachable server
    flusher = make_flusher(redis, broken, store, "f1")
    await flusher.ensure_groups()
    with pytest.raises(Exception):  # noqa: B017 - asyncpg raises its own InterfaceError here
        await flusher.flush_once()
    assert await outbox_total(redis, store) == 1
    good = make_flusher(redis, pool, store, "f1")
    assert await good.flush_once() == 1
    assert (await counts(pool, [sid]))[0] == 1


async def test_two_lanes_store_every_attempt_once(pool: pg.Pool, redis: Redis, store: RedisSessionStore) -> None:
    """A process' flusher lanes share the outboxes: together they store each attempt exactly once."""
    sids = [(await finished_session(pool, store, answers=3))[0] for _ in range(12)]
    first = make_flusher(redis, pool, store, "lanes", batch=2)
    second = first.lane(1)
    assert second.consumer == "lanes.1"
    await first.ensure_groups()

    async def drain(f: object) -> int:
        total = 0
        while n := await f.flush_once():  # type: ignore[attr-defined]
            total += n
            await asyncio.sleep(0)
        return total

    done = await asyncio.gather(drain(first), drain(second))
    assert sum(done) == 12
    attempts, responses, events, _ = await counts(pool, sids)
    assert (attempts, responses, events) == (12, 12 * 10, 12)  # a row per question of each 10-question paper
    assert await outbox_total(redis, store) == 0


async def test_an_idle_flusher_polls_less_and_resets_on_work(
    pool: pg.Pool, redis: Redis, store: RedisSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to flush: the wait after each empty pass doubles from idle_sleep_s up to max_idle_sleep_s (every pass
    reads all 16 outboxes); a pass that flushes something brings it back to idle_sleep_s. (The waits the flusher asks
    for are recorded; nothing here depends on the machine's speed.)"""
    flusher = make_flusher(redis, pool, store, "idle", idle_sleep_s=0.05, max_idle_sleep_s=0.4)
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0.01)

    monkeypatch.setattr("storage.flusher.asyncio", SimpleNamespace(sleep=sleep))  # the flusher's module only
    task = asyncio.create_task(flusher.run())
    try:
        while len(waits) < 6:
            await real_sleep(0.01)
        assert waits[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
        seen = len(waits)
        sid, _ = await finished_session(pool, store)
        while not (await counts(pool, [sid]))[0]:
            await real_sleep(0.01)
        while 0.05 not in waits[seen:] or len(waits) - waits.index(0.05, seen) < 3:
            await real_sleep(0.01)
        after = waits[seen:]
        assert set(after[: after.index(0.05)]) <= {0.4}, after  # idle until the attempt came, then starts over
        assert after[after.index(0.05) :][:3] == [0.05, 0.1, 0.2], after
    finally:
        while not task.done():  # (a cancellation landing inside redis-py can be swallowed: ask until it ends)
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
    assert (await counts(pool, [sid]))[0] == 1
