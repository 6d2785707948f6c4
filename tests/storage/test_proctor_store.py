"""control.lua, presence and the time ledger against real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sessions.machine import Activate, Control, Finish, FinishReason, SaveAnswer, SavedAnswer, Status
from storage.keys import Keys
from storage.session_store import Opened, Outcome, RedisSessionStore
from tests.sessions.factories import fresh, template

SID = "a" * 32


async def opened(store: RedisSessionStore, cap_s: int = 0, sid: str = SID) -> int:
    from dataclasses import replace

    tpl = replace(template(), disconnect_credit_cap_ms=cap_s * 1000)
    assert await store.create(sid, "u1", tpl, fresh(sid=sid).paper, 1)
    o = await store.open(sid, "u1", "10.0.0.1")
    assert isinstance(o, Opened)
    assert (await store.apply(sid, o.stored.epoch, Activate())).outcome is Outcome.OK
    return o.stored.epoch


async def test_pause_extend_resume_on_redis_clock(store: RedisSessionStore, redis: Redis) -> None:
    await opened(store)
    k = store.keys.session(SID)
    deadline = int(await redis.hget(k.meta, "deadline_ms"))  # type: ignore[arg-type]
    paused = await store.control(SID, Control("pause"))
    assert paused.outcome is Outcome.OK and paused.status is Status.PAUSED
    assert paused.remaining_ms is not None and 599_000 < paused.remaining_ms <= 600_000
    assert await redis.zscore(k.due, SID) is None  # a paused session cannot expire
    # answers are refused while paused, by Redis itself
    stored = await store.load(SID)
    assert stored is not None
    q = stored.state.paper.question_ids[0]
    ans = SaveAnswer(1, q, SavedAnswer("a", False, 0, 1, 0))
    assert (await store.apply(SID, stored.epoch, ans)).outcome is Outcome.NOT_ACTIVE
    more = await store.control(SID, Control("extend", delta_ms=60_000))
    assert more.remaining_ms == paused.remaining_ms + 60_000
    resumed = await store.control(SID, Control("resume"))
    assert resumed.status is Status.ACTIVE and resumed.deadline_ms is not None
    assert resumed.deadline_ms >= deadline + 60_000 - 1000
    assert await redis.zscore(k.due, SID) == resumed.deadline_ms
    assert (await store.apply(SID, stored.epoch, ans)).outcome is Outcome.OK
    again = await store.control(SID, Control("resume"))
    assert again.outcome is Outcome.NOT_ACTIVE and again.status is Status.ACTIVE


async def test_flag_and_proctor_finishes(store: RedisSessionStore, redis: Redis) -> None:
    await opened(store)
    assert (await store.control(SID, Control("flag", flagged=True))).outcome is Outcome.OK
    loaded = await store.load(SID)
    assert loaded is not None and loaded.state.flagged
    done = await store.control(SID, Finish(None, FinishReason.FORCED))
    assert done.status is Status.SUBMITTED
    loaded = await store.load(SID)
    assert loaded is not None and loaded.state.finish_reason is FinishReason.FORCED
    assert await redis.xlen(store.keys.session(SID).outbox) == 1
    assert (await store.control(SID, Control("pause"))).outcome is Outcome.NOT_ACTIVE


async def test_terminating_a_never_opened_session_keeps_its_keys(store: RedisSessionStore, redis: Redis) -> None:
    sid = "b" * 32
    assert await store.create(sid, "u1", template(), fresh(sid=sid).paper, 1)
    assert (await store.control(sid, Finish(None, FinishReason.FORCED))).outcome is Outcome.NOT_ACTIVE
    done = await store.control(sid, Finish(None, FinishReason.PROCTOR))
    assert done.status is Status.TERMINATED
    assert await redis.ttl(store.keys.session(sid).meta) == -1  # owned by the flusher now, not a TTL


async def test_presence_and_the_ledger_with_automatic_credit(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store, cap_s=120)
    k = store.keys.session(SID)
    loaded = await store.load(SID)
    assert loaded is not None and loaded.presence.online
    await store.leave(SID, epoch)
    deadline = int(await redis.hget(k.meta, "deadline_ms"))  # type: ignore[arg-type]
    away_since = int(await redis.hget(k.meta, "offline_since_ms"))  # type: ignore[arg-type]
    await redis.hset(k.meta, "offline_since_ms", away_since - 90_000)  # as if the student left 90 s ago
    back = await store.open(SID, "u1", "10.0.0.2")
    assert isinstance(back, Opened)
    p = back.stored.presence
    assert p.online and p.offline_since_ms is None and p.ip_changes == 1
    assert 90_000 <= p.credited_ms < 95_000 and p.credited_ms == p.offline_total_ms
    assert back.stored.state.deadline_ms == deadline + p.credited_ms
    [(since, at, gap, credited)] = await store.ledger(SID)
    assert gap == credited == p.credited_ms and at - since == gap
    # the cap: a second long absence is credited only up to 120 s in all
    await store.leave(SID, back.stored.epoch)
    await redis.hset(k.meta, "offline_since_ms", away_since - 300_000)
    third = await store.open(SID, "u1", "10.0.0.2")
    assert isinstance(third, Opened) and third.stored.presence.credited_ms == 120_000


async def test_a_stale_connection_leaving_changes_nothing(store: RedisSessionStore) -> None:
    old = await opened(store)
    await store.open(SID, "u1")  # a newer connection
    await store.leave(SID, old)
    loaded = await store.load(SID)
    assert loaded is not None and loaded.presence.online


async def test_without_credit_the_time_lost_waits_for_a_proctor(store: RedisSessionStore, redis: Redis) -> None:
    epoch = await opened(store, cap_s=0)
    k = store.keys.session(SID)
    await store.leave(SID, epoch)
    since = int(await redis.hget(k.meta, "offline_since_ms"))  # type: ignore[arg-type]
    await redis.hset(k.meta, "offline_since_ms", since - 30_000)
    back = await store.open(SID, "u1")
    assert isinstance(back, Opened)
    p = back.stored.presence
    assert p.credited_ms == 0 and 30_000 <= p.uncredited_ms(back.now_ms) < 35_000


async def test_a_takeover_while_online_is_recorded_as_a_second_device(store: RedisSessionStore) -> None:
    from sessions.model import CheatKind

    epoch = await opened(store)
    second = await store.open(SID, "u1", "10.0.0.9")  # the first connection never left
    assert isinstance(second, Opened)
    kinds = [c.kind for c in second.stored.state.cheats]
    assert kinds == [CheatKind.SECOND_DEVICE] and second.stored.state.violations == 0
    await store.leave(SID, second.stored.epoch)
    third = await store.open(SID, "u1", "10.0.0.9")  # a normal return after leaving: nothing new
    assert isinstance(third, Opened) and len(third.stored.state.cheats) == 1
    assert epoch < second.stored.epoch < third.stored.epoch


def hub_store(store: RedisSessionStore, host: str, subscribed: bool = False) -> RedisSessionStore:
    """Another hub process on the same Redis, with its own lease (and with `subscribed`, reading other processes'
    alive channels, as a hub on a single Redis does)."""
    return RedisSessionStore(store._redis, store._writer, store.scripts, store.keys, 3600, host=host,
                             subscribed=subscribed)  # fmt: skip


async def two_hubs_with_an_active_session(
    store: RedisSessionStore, listening: bool = False
) -> tuple[RedisSessionStore, RedisSessionStore]:
    """hub-a and hub-b, both with a live lease; the student's connection is on hub-a. With `listening`, both say
    they listen on their alive channels (lease.lua, '<id>|listens') and read the other's."""
    a, b = hub_store(store, "hub-a", listening), hub_store(store, "hub-b", listening)
    await a.renew_lease()
    await b.renew_lease()
    await a.create(SID, "u1", template(), fresh().paper, 0)
    first = await a.open(SID, "u1", "10.0.0.1")
    assert isinstance(first, Opened)
    await a.apply(SID, first.stored.epoch, Activate())
    return a, b


async def test_a_killed_process_connections_count_as_dropped_not_as_a_second_device(
    store: RedisSessionStore, redis: Redis
) -> None:
    from server.proctor import row_of
    from sessions.model import CheatKind
    from storage.keys import partition_of
    from storage.session_store import LEASE_TTL_MS

    a, b = await two_hubs_with_an_active_session(store)
    assert await a.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}

    # hub-a is killed: its lease stops; 20 s later (past LEASE_TTL_MS) it looks like this
    seconds, micros = await redis.time()
    last_seen = int(seconds) * 1000 + int(micros) // 1000 - LEASE_TTL_MS - 5_000
    await redis.hset(store.keys.hosts(partition_of(SID)), "hub-a", last_seen)
    await redis.hset(store.keys.hosts(0), "hub-a", last_seen)
    assert await b.live_hosts(max_age_s=0) == {"hub-b"}
    stale = await b.load(SID)
    assert stale is not None and stale.presence.online  # Redis still says online: nobody told it otherwise
    assert row_of(stale, 0, await b.live_hosts())["online"] is False  # the proctor sees the truth
    assert row_of(stale, 0)["online"] is True  # (without the lease check it would not)

    back = await b.open(SID, "u1", "10.0.0.1")  # the student resumes on hub-b
    assert isinstance(back, Opened)
    assert CheatKind.SECOND_DEVICE not in [c.kind for c in back.stored.state.cheats]
    after = await b.load(SID)
    assert after is not None
    ((since, returned, gap, _),) = after.ledger  # the drop is in the time ledger, from hub-a's last lease
    assert since == last_seen and gap == returned - last_seen >= LEASE_TTL_MS
    assert back.stored.presence.host == "hub-b" and back.stored.presence.online


async def test_a_takeover_from_a_live_process_is_still_a_second_device(store: RedisSessionStore) -> None:
    from sessions.model import CheatKind

    _, b = await two_hubs_with_an_active_session(store)
    second = await b.open(SID, "u1", "10.0.0.2")  # hub-a is alive and its connection never left
    assert isinstance(second, Opened)
    assert [c.kind for c in second.stored.state.cheats] == [CheatKind.SECOND_DEVICE]
    after = await b.load(SID)
    assert after is not None and after.ledger == ()


@contextlib.asynccontextmanager
async def alive_channel_held(store: RedisSessionStore, host: str) -> AsyncIterator[None]:
    """Hold hub process `host`'s alive channel as that process does while it lives: on a single Redis one classic
    channel; on a Redis Cluster the sharded ones, one per partition, on their slots' nodes (server/alive.py). Leaving
    the block closes the subscriptions, as a killed process' sockets close."""
    from server import alive

    redis = store._redis
    if isinstance(redis, RedisCluster):
        held = asyncio.Event()
        connect = functools.partial(Redis, decode_responses=True)
        task = asyncio.create_task(alive.hold_shards(redis, lambda h, p: connect(host=h, port=p), store.keys, host,
                                                     held))  # fmt: skip
        try:
            await asyncio.wait_for(held.wait(), 10)
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    else:
        ps = redis.pubsub()
        await ps.subscribe(store.keys.alive_channel(host))
        try:
            yield
        finally:
            await ps.aclose()


async def alive_listeners(store: RedisSessionStore, host: str, sid: str = SID) -> int:
    """The subscribers of `host`'s alive channel as open.lua counts them for session `sid` (on a cluster: the sharded
    channel of the session's partition, on that partition's node)."""
    from storage.keys import partition_of

    redis = store._redis
    if isinstance(redis, RedisCluster):
        return await shard_listeners(redis, store.keys, partition_of(sid), host)
    counts = await redis.pubsub_numsub(store.keys.alive_channel(host))
    return int(counts[0][1])


async def shard_listeners(redis: RedisCluster, keys: Keys, partition: int, host: str) -> int:
    """The subscribers of `host`'s sharded alive channel in `partition`, counted by that partition's slot's node."""
    await redis.initialize()  # (the slots: a no-op once known)
    channel = keys.alive_shard_channel(partition, host)
    ((_, n),) = await redis.pubsub_shardnumsub(channel, target_nodes=redis.get_node_from_key(channel))
    return int(n)


async def test_a_process_killed_while_its_lease_holds_is_told_by_its_silent_alive_channel(
    store: RedisSessionStore, redis: Redis
) -> None:
    """Two hubs behind a load balancer: hub-a is killed and its student comes straight back on hub-b, well within
    hub-a's lease. While hub-a's subscription to its alive channel lived, a takeover was a second device; once the
    subscription is gone (its socket to Redis closed with the process), the student is a drop since hub-a's last
    renewal. On a Redis Cluster too (collected again in tests/cluster/test_storage.py), with sharded channels."""
    from sessions.model import CheatKind
    from storage.keys import partition_of

    a, b = await two_hubs_with_an_active_session(store, listening=True)
    async with alive_channel_held(store, "hub-b"):  # hub-b lives throughout
        async with alive_channel_held(store, "hub-a"):  # hub-a lives
            assert await alive_listeners(store, "hub-a") == 1
            second = await b.open(SID, "u1", "10.0.0.2")
            assert isinstance(second, Opened)
            assert [c.kind for c in second.stored.state.cheats] == [CheatKind.SECOND_DEVICE]
            back = await a.open(SID, "u1", "10.0.0.1")  # back on hub-a while hub-b lives: a second device too
            assert isinstance(back, Opened)
            assert [c.kind for c in back.stored.state.cheats] == [CheatKind.SECOND_DEVICE] * 2
            assert await b.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}
        # hub-a is killed: Redis drops its subscriptions with its connections (as soon as it has read the close)
        for _ in range(100):
            if await alive_listeners(store, "hub-a") == 0:
                break
            await asyncio.sleep(0.01)
        seen = int(await redis.hget(store.keys.hosts(partition_of(SID)), "hub-a") or 0)
        assert seen and await a.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}  # its lease still holds
        assert await b.live_hosts(max_age_s=0) == {"hub-b"}  # but its channel is silent (the proctor sees it offline)
        again = await b.open(SID, "u1", "10.0.0.2")
        assert isinstance(again, Opened)
        assert [c.kind for c in again.stored.state.cheats] == [CheatKind.SECOND_DEVICE] * 2  # no new one
    after = await b.load(SID)
    assert after is not None
    ((since, returned, gap, _),) = after.ledger  # the drop, from hub-a's last renewal
    assert since == seen and gap == returned - seen >= 0


async def test_a_process_of_an_earlier_version_is_not_taken_for_dead_by_its_silence(
    store: RedisSessionStore, redis: Redis
) -> None:
    """A rolling upgrade: hub-a runs an earlier version, which has no alive channel and does not say it listens on
    one (no '<id>|listens' in its lease). A second connection on hub-b, while hub-a lives, stays a second device;
    the proctor sees hub-a's students online."""
    from sessions.model import CheatKind
    from storage.keys import PARTITIONS

    await two_hubs_with_an_active_session(store)  # hub-a renews as an earlier version would
    b = hub_store(store, "hub-b", subscribed=True)  # hub-b is of this version
    assert [await redis.hget(store.keys.hosts(p), "hub-a|listens") for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert await alive_listeners(store, "hub-a") == 0
    assert await b.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}
    second = await b.open(SID, "u1", "10.0.0.2")
    assert isinstance(second, Opened)
    assert [c.kind for c in second.stored.state.cheats] == [CheatKind.SECOND_DEVICE]
    after = await b.load(SID)
    assert after is not None and after.ledger == ()

    listening = hub_store(store, "hub-a", subscribed=True)
    await listening.renew_lease()  # upgraded (the same id, for the test): from now on its silence tells
    assert all([await redis.hget(store.keys.hosts(p), "hub-a|listens") for p in range(PARTITIONS)])
    assert await b.live_hosts(max_age_s=0) == {"hub-b"}


async def test_a_process_whose_lease_was_released_counts_as_gone_at_once(
    store: RedisSessionStore, redis: Redis
) -> None:
    """`serve --workers`: the parent saw hub-a exit and released its lease; the student, back on hub-b seconds
    later (well within LEASE_TTL_MS of hub-a's last renewal), dropped at the release, not a second device."""
    from server.proctor import row_of
    from sessions.model import CheatKind
    from storage.keys import PARTITIONS, partition_of

    _, b = await two_hubs_with_an_active_session(store)
    await RedisSessionStore.release_lease(redis, store.scripts, store.keys, "hub-a")
    stamps = [await redis.hget(store.keys.hosts(p), "hub-a|gone") for p in range(PARTITIONS)]
    assert all(s is not None for s in stamps), stamps  # released in every partition
    assert await redis.hget(store.keys.hosts(0), "hub-a") is not None  # its renewal stays, for earlier versions
    released = int(stamps[partition_of(SID)])  # type: ignore[arg-type]
    assert await b.live_hosts(max_age_s=0) == {"hub-b"}
    stale = await b.load(SID)
    assert stale is not None and row_of(stale, 0, await b.live_hosts())["online"] is False

    await b.renew_lease()  # another process' renewal keeps the released field (it is forgotten after an hour)
    assert await redis.hget(store.keys.hosts(partition_of(SID)), "hub-a|gone") == str(released)

    back = await b.open(SID, "u1", "10.0.0.1")
    assert isinstance(back, Opened)
    assert CheatKind.SECOND_DEVICE not in [c.kind for c in back.stored.state.cheats]
    after = await b.load(SID)
    assert after is not None
    ((since, returned, gap, _),) = after.ledger  # the drop runs from the release
    assert since == released and gap == returned - released >= 0


async def test_a_successor_ends_its_dead_predecessors_lease_as_of_its_last_renewal(
    store: RedisSessionStore, redis: Redis
) -> None:
    """A single `examhub serve` killed and started again (server/succession.py): the new process, hub-c, knows hub-a
    has ended, not when. The student, back within LEASE_TTL_MS, is dropped since hub-a's last renewal (the last sign
    of life, as for an expired lease), not a second device."""
    from sessions.model import CheatKind
    from storage.keys import PARTITIONS, partition_of

    _, b = await two_hubs_with_an_active_session(store)
    seconds, micros = await redis.time()
    last_seen = int(seconds) * 1000 + int(micros) // 1000 - 3_000  # hub-a renewed 3 s ago, then was killed
    for p in range(PARTITIONS):
        await redis.hset(store.keys.hosts(p), "hub-a", last_seen)
    assert await b.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}  # its lease still holds

    c = hub_store(store, "hub-c")
    await c.renew_lease()
    await c.succeed("hub-a")
    stamps = {await redis.hget(store.keys.hosts(p), "hub-a|gone") for p in range(PARTITIONS)}
    assert stamps == {str(last_seen)}  # in every partition, as of the last renewal
    assert await redis.hget(store.keys.hosts(0), "hub-a") == str(last_seen)  # its own field as it was
    assert await c.live_hosts(max_age_s=0) == {"hub-b", "hub-c"}

    back = await c.open(SID, "u1", "10.0.0.1")
    assert isinstance(back, Opened)
    assert CheatKind.SECOND_DEVICE not in [c.kind for c in back.stored.state.cheats]
    after = await c.load(SID)
    assert after is not None
    ((since, returned, gap, _),) = after.ledger
    assert since == last_seen and gap == returned - last_seen >= 3_000
    assert await redis.hget(store.keys.hosts(partition_of(SID)), "hub-c|gone") is None


async def test_a_successor_keeps_the_release_its_predecessors_parent_made(
    store: RedisSessionStore, redis: Redis
) -> None:
    """`serve --workers`: the parent released the dead worker's lease as it saw it die; the replacement, taking the
    same place, then succeeds it too. The parent's time (the death, seen) stands, not the last renewal."""
    await two_hubs_with_an_active_session(store)
    seconds, _ = await redis.time()
    last_seen = int(seconds) * 1000 - 3_000
    await redis.hset(store.keys.hosts(0), "hub-a", last_seen)  # its last renewal, 3 s before it died
    await RedisSessionStore.release_lease(redis, store.scripts, store.keys, "hub-a")
    released = await redis.hget(store.keys.hosts(0), "hub-a|gone")
    assert released is not None and int(released) > last_seen
    await hub_store(store, "hub-c").succeed("hub-a")
    assert await redis.hget(store.keys.hosts(0), "hub-a|gone") == released


async def test_a_successor_of_a_forgotten_process_writes_nothing(store: RedisSessionStore, redis: Redis) -> None:
    """A predecessor whose lease is long forgotten (or never was): no '|gone' field without a time to give it."""
    c = hub_store(store, "hub-c")
    await c.succeed("hub-z")
    assert await redis.hget(store.keys.hosts(0), "hub-z|gone") is None
    assert await redis.hget(store.keys.hosts(0), "hub-z") is None


async def test_a_renewal_clears_a_release_of_the_same_id(store: RedisSessionStore, redis: Redis) -> None:
    a, _ = await two_hubs_with_an_active_session(store)
    await RedisSessionStore.release_lease(redis, store.scripts, store.keys, "hub-a")
    assert await a.live_hosts(max_age_s=0) == {"hub-b"}
    await a.renew_lease()  # alive after all (an id used again): its renewal wins
    assert await redis.hget(store.keys.hosts(0), "hub-a|gone") is None
    assert await a.live_hosts(max_age_s=0) == {"hub-a", "hub-b"}


async def test_a_released_lease_is_forgotten_after_an_hour(store: RedisSessionStore, redis: Redis) -> None:
    from storage.session_store import LEASE_FORGET_MS

    _, b = await two_hubs_with_an_active_session(store)
    seconds, _ = await redis.time()
    long_ago = int(seconds) * 1000 - LEASE_FORGET_MS - 60_000
    await redis.hset(store.keys.hosts(0), mapping={"hub-a": long_ago, "hub-a|gone": long_ago})  # an hour ago
    await b.renew_lease()
    assert await redis.hget(store.keys.hosts(0), "hub-a") is None
    assert await redis.hget(store.keys.hosts(0), "hub-a|gone") is None
