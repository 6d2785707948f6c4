"""The Lua scripts against real Redis: the atomic checks the hub relies on."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sessions.machine import (
    Activate,
    CheatRecord,
    Finish,
    FinishReason,
    RecordCheat,
    SaveAnswer,
    SavedAnswer,
    Status,
)
from sessions.model import CheatKind
from storage.keys import Keys, partition_of
from storage.scripts import Scripts
from storage.session_store import Opened, Outcome, RedisSessionStore
from storage.writer import CoalescingWriter
from tests.sessions.factories import fresh, template

SID = "0123456789abcdef0123456789abcdef"


async def created(store: RedisSessionStore, sid: str = SID) -> None:
    st = fresh(sid=sid)
    assert await store.create(sid, "u1", template(), st.paper, 1)


async def opened(store: RedisSessionStore, sid: str = SID) -> int:
    await created(store, sid)
    o = await store.open(sid, "u1")
    assert isinstance(o, Opened)
    r = await store.apply(sid, o.stored.epoch, Activate())
    assert r.outcome is Outcome.OK and r.deadline_ms is not None
    return o.stored.epoch


def answer(seq: int, q: int, choice: str = "a") -> SaveAnswer:
    return SaveAnswer(seq, q, SavedAnswer(choice, False, 10, seq, 5))


async def test_keys_of_one_session_share_a_hash_tag() -> None:
    k = Keys("eh").session(SID)
    tags = {key[key.index("{") : key.index("}") + 1] for key in (k.meta, k.ans, k.ev, k.due, k.outbox)}
    assert tags == {f"{{p{partition_of(SID):02d}}}"}


async def test_create_is_once_and_expires_until_opened(store: RedisSessionStore, redis: Redis) -> None:
    await created(store)
    assert not await store.create(SID, "u2", template(), fresh().paper, 2)
    meta = store.keys.session(SID).meta
    assert 0 < await redis.ttl(meta) <= 3600
    epoch = await opened(store, "1" * 32)
    assert epoch == 1
    assert await redis.ttl(store.keys.session("1" * 32).meta) == -1  # active: owned by the sweeper, no TTL


async def test_round_trip_and_sequence_dedup(store: RedisSessionStore) -> None:
    epoch = await opened(store)
    q = fresh(sid=SID).paper.question_ids[0]
    assert (await store.apply(SID, epoch, answer(1, q, "b"))).outcome is Outcome.OK
    assert (await store.apply(SID, epoch, answer(1, q, "c"))).outcome is Outcome.DUP
    loaded = await store.load(SID)
    assert loaded is not None
    assert loaded.state.answers[q].choice == "b" and loaded.state.last_seq == 1
    assert loaded.state.status is Status.ACTIVE


async def test_an_older_epoch_is_fenced(store: RedisSessionStore) -> None:
    old = await opened(store)
    newer = await store.open(SID, "u1")
    assert isinstance(newer, Opened) and newer.stored.epoch == old + 1
    q = fresh(sid=SID).paper.question_ids[0]
    assert (await store.apply(SID, old, answer(1, q))).outcome is Outcome.FENCED
    assert (await store.apply(SID, newer.stored.epoch, answer(1, q))).outcome is Outcome.OK
    loaded = await store.load(SID)
    assert loaded is not None and loaded.state.answers[q].seq == 1


async def test_writes_after_finish_are_refused(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store)
    assert (await store.apply(SID, epoch, Finish(1, FinishReason.STUDENT))).outcome is Outcome.OK
    q = fresh(sid=SID).paper.question_ids[0]
    r = await store.apply(SID, epoch, answer(2, q))
    assert r.outcome is Outcome.NOT_ACTIVE and r.status is Status.SUBMITTED
    assert await redis.xlen(store.keys.session(SID).outbox) == 1  # enqueued once


async def test_deadline_on_redis_clock(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store)
    meta = store.keys.session(SID).meta
    await redis.hset(meta, mapping={"deadline_ms": 1000, "grace_ms": 0})  # long past
    q = fresh(sid=SID).paper.question_ids[0]
    assert (await store.apply(SID, epoch, answer(1, q))).outcome is Outcome.TOO_LATE
    loaded = await store.load(SID)
    assert loaded is not None and loaded.state.status is Status.EXPIRED and not loaded.state.answers
    assert await redis.xlen(store.keys.session(SID).outbox) == 1


async def test_cheat_events_count_flag_and_autosubmit(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store)
    rec = CheatRecord(CheatKind.TAB_HIDDEN, 7, 1)
    await store.apply(SID, epoch, RecordCheat(1, rec, flag=False, finish=None))
    await store.apply(SID, epoch, RecordCheat(2, CheatRecord(CheatKind.TAB_VISIBLE, 8, 2), flag=False, finish=None))
    await store.apply(SID, epoch, RecordCheat(3, CheatRecord(CheatKind.COPY, 9, 3), True, FinishReason.ANTICHEAT))
    loaded = await store.load(SID)
    assert loaded is not None
    s = loaded.state
    assert [c.kind for c in s.cheats] == [CheatKind.TAB_HIDDEN, CheatKind.TAB_VISIBLE, CheatKind.COPY]
    assert s.violations == 2 and s.flagged
    assert s.status is Status.SUBMITTED and s.finish_reason is FinishReason.ANTICHEAT


async def test_racing_sweepers_expire_exactly_once(store: RedisSessionStore, redis: Redis) -> None:
    await opened(store)
    k = store.keys.session(SID)
    await redis.hset(k.meta, mapping={"deadline_ms": 1000, "grace_ms": 0})
    await redis.zadd(k.due, {SID: 1000})
    assert await store.due(2000) == [SID]
    results = await asyncio.gather(*(store.expire(SID) for _ in range(20)))
    assert sum(r.outcome is Outcome.OK for r in results) == 1
    assert await redis.xlen(store.keys.session(SID).outbox) == 1
    assert await store.due(10**13) == []


async def test_not_due_yet(store: RedisSessionStore) -> None:
    await opened(store)
    r = await store.expire(SID)
    assert r.outcome is Outcome.NOT_DUE


async def test_writer_survives_script_cache_flush(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store)
    await redis.script_flush()  # what a Redis restart does to the script cache
    q = fresh(sid=SID).paper.question_ids[0]
    assert (await store.apply(SID, epoch, answer(1, q))).outcome is Outcome.OK


async def test_many_concurrent_writes_coalesce(store: RedisSessionStore, writer: object) -> None:
    sids = [f"{i:032x}" for i in range(1, 51)]
    epochs = await asyncio.gather(*(opened(store, s) for s in sids))
    papers = {s: fresh(sid=s).paper.question_ids for s in sids}
    before = writer.batches  # type: ignore[attr-defined]
    results = await asyncio.gather(
        *(store.apply(s, e, answer(i + 1, papers[s][i])) for s, e in zip(sids, epochs, strict=True) for i in range(5))
    )
    assert all(r.outcome is Outcome.OK for r in results)
    assert writer.batches - before < len(results) / 5  # type: ignore[attr-defined]


async def test_a_run_of_applies_rides_one_script_call_each_caller_getting_its_own_reply(
    store: RedisSessionStore, writer: CoalescingWriter, redis: Redis
) -> None:
    """The writer merges the applies of a batch into calls of apply_many (one per hash tag on a cluster): each
    caller still gets exactly the reply its own call would have had, and the writes land as they would."""
    sids = [f"{i:08x}{'0' * 24}" for i in range(1, 33)]  # sessions in every partition (the first 8 digits pick it)
    assert len({partition_of(s) for s in sids}) == 16
    epochs = dict(zip(sids, await asyncio.gather(*(opened(store, s) for s in sids)), strict=True))
    papers = {s: fresh(sid=s).paper.question_ids for s in sids}
    for s in sids[:8]:  # these already hold seq 1: sending it again is a duplicate
        assert (await store.apply(s, epochs[s], answer(1, papers[s][0], "b"))).outcome is Outcome.OK
    merged = writer.merged
    results = await asyncio.gather(
        *(store.apply(s, epochs[s], answer(1, papers[s][0], "c")) for s in sids[:16]),  # DUP for 8, OK for 8
        *(store.apply(s, epochs[s] - 1, answer(1, papers[s][0])) for s in sids[16:24]),  # an old epoch: FENCED
        *(store.apply(s, epochs[s], answer(1, papers[s][1], "d")) for s in sids[24:]),  # OK
        store.apply("f" * 32, 1, answer(1, 1)),  # no such session
    )
    assert [r.outcome for r in results] == (
        [Outcome.DUP] * 8 + [Outcome.OK] * 8 + [Outcome.FENCED] * 8 + [Outcome.OK] * 8 + [Outcome.NO_SESSION]
    )
    assert writer.merged - merged >= len(results) // 2  # most rode merged calls (some may have gone alone)
    for s in sids:
        loaded = await store.load(s)
        assert loaded is not None
        got = {q: a.choice for q, a in loaded.state.answers.items()}
        if s in sids[:8]:
            assert got == {papers[s][0]: "b"}  # the duplicate changed nothing
        elif s in sids[8:16]:
            assert got == {papers[s][0]: "c"}
        elif s in sids[16:24]:
            assert got == {}  # fenced: nothing written
        else:
            assert got == {papers[s][1]: "d"}


async def test_a_failing_call_in_a_merged_run_spares_the_others(
    store: RedisSessionStore, writer: CoalescingWriter, redis: Redis
) -> None:
    sids = [f"{i:08x}{'1' * 24}" for i in range(1, 11)]
    epochs = dict(zip(sids, await asyncio.gather(*(opened(store, s) for s in sids)), strict=True))
    broken = sids[3]
    ans_key = store.keys.session(broken).ans
    await redis.delete(ans_key)
    await redis.set(ans_key, "not a hash")  # its HSET fails with WRONGTYPE inside the merged script
    papers = {s: fresh(sid=s).paper.question_ids for s in sids}
    results = await asyncio.gather(
        *(store.apply(s, epochs[s], answer(1, papers[s][0])) for s in sids), return_exceptions=True
    )
    failed = results[sids.index(broken)]
    assert isinstance(failed, ResponseError) and "WRONGTYPE" in str(failed)
    assert all(getattr(r, "outcome", None) is Outcome.OK for i, r in enumerate(results) if sids[i] != broken)
    await redis.delete(ans_key)


async def test_merged_calls_survive_script_cache_flush(store: RedisSessionStore, redis: Redis) -> None:
    sids = [f"{i:08x}{'2' * 24}" for i in range(1, 11)]
    epochs = dict(zip(sids, await asyncio.gather(*(opened(store, s) for s in sids)), strict=True))
    await redis.script_flush()  # what a Redis restart does to the script cache: apply_many is gone too
    results = await asyncio.gather(
        *(store.apply(s, epochs[s], answer(1, fresh(sid=s).paper.question_ids[0])) for s in sids)
    )
    assert all(r.outcome is Outcome.OK for r in results)


async def test_only_the_owner_can_take_a_session_over(store: RedisSessionStore) -> None:
    epoch = await opened(store)
    assert await store.open(SID, "intruder") is Outcome.FORBIDDEN
    assert await store.open("f" * 32, "u1") is Outcome.NO_SESSION
    q = fresh(sid=SID).paper.question_ids[0]
    assert (await store.apply(SID, epoch, answer(1, q))).outcome is Outcome.OK  # the owner was not fenced


async def test_a_burst_of_creates_needs_no_pooled_connection_each(prefix: str) -> None:
    """300 sessions created at once, on a client whose pool holds 4 connections: the room-member SADD rides the
    writer's pipelines with the create scripts (it used to take a pooled connection each: MaxConnectionsError)."""
    small = Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True, max_connections=4)
    writer = CoalescingWriter(small, Scripts.load())
    await writer.start()
    try:
        store = RedisSessionStore(small, writer, Scripts.load(), Keys(prefix), created_ttl_s=60)
        tpl = template()
        sids = [f"{i:032x}" for i in range(1, 301)]
        created = await asyncio.gather(
            *(store.create(s, "u1", tpl, fresh(sid=s).paper, 0) for s in sids), return_exceptions=True
        )
        assert created == [True] * len(sids)
        assert await store.room_members(tpl.id) == sorted(sids)
        assert writer.batches < 100
    finally:
        await writer.close()
        await small.aclose()


async def test_a_malformed_merged_reply_fails_its_callers_and_the_writer_goes_on(
    redis: Redis, store: RedisSessionStore, prefix: str
) -> None:
    """A merged call whose reply is not one reply per caller (a broken apply_many) fails those callers with an
    error; it must not end the writer's task, or every later write would wait for ever."""
    from dataclasses import replace

    from storage.scripts import Script

    sids = [f"{i:08x}{'3' * 24}" for i in range(1, 5)]
    epochs = dict(zip(sids, await asyncio.gather(*(opened(store, s) for s in sids)), strict=True))
    scripts = Scripts.load()
    broken = replace(scripts, apply_many=Script("apply_many", "return {'OK'}"))
    writer = CoalescingWriter(redis, broken)
    await writer.start()
    try:
        bad = RedisSessionStore(redis, writer, broken, Keys(prefix), created_ttl_s=60)
        calls = (bad.apply(s, epochs[s], answer(1, fresh(sid=s).paper.question_ids[0])) for s in sids)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert writer.merged >= 2
        assert any(isinstance(r, ResponseError) for r in results)
        assert all(isinstance(r, ResponseError) or r.outcome is Outcome.OK for r in results)  # type: ignore[union-attr]
        later = await asyncio.wait_for(bad.leave(sids[0], epochs[sids[0]]), 5)  # the writer still runs
        assert later is None
    finally:
        await writer.close()
