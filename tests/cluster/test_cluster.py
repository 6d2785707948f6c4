"""What only a cluster can show: sessions in every partition (so on every master) expire, finish and flush
once; the durability check asks every primary; one subscriber hears every channel whichever node publishes;
the flusher reloads its script after the primaries lost theirs."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from server import alive, pubsub
from server.app import subscriber
from server.settings import Settings
from sessions.machine import Activate, Finish, FinishReason, SaveAnswer, SavedAnswer
from sessions.paper import draw_paper
from storage import pg
from storage.catalog import Catalog
from storage.durability import redis_problems
from storage.keys import PARTITIONS, Keys, partition_of
from storage.session_store import Opened, Outcome, RedisSessionStore
from storage.sweeper import Sweeper
from storage.writer import CoalescingWriter
from tests.cluster.conftest import MASTERS
from tests.conftest import template_id
from tests.storage.conftest import make_flusher
from tests.storage.test_flusher import counts, outbox_total
from tests.storage.test_proctor_store import shard_listeners


def node_of(redis: RedisCluster, key: str) -> str:
    node = redis.get_node_from_key(key)
    assert node is not None
    return str(node.name)


def sid_in(partition: int) -> str:
    sid = f"{partition:08x}{secrets.token_hex(12)}"
    assert partition_of(sid) == partition
    return sid


async def active_session(pool: pg.Pool, store: RedisSessionStore, sid: str) -> int:
    """A session of biology-quick-10, in PostgreSQL and Redis, opened and with one answer saved; its epoch."""
    catalog = Catalog(pool)
    found = await catalog.template(await template_id(pool, "biology-quick-10"))
    assert found is not None
    tpl, bank_id = found
    paper = draw_paper(await catalog.bank(bank_id), tpl.rule, sid)
    uid = await pg.create_guest(pool, "cluster test")
    await pg.insert_session(pool, sid, secrets.token_hex(8), uid, tpl.id, paper)
    assert await store.create(sid, str(uid), tpl, paper, 0)
    opened = await store.open(sid, str(uid))
    assert isinstance(opened, Opened)
    epoch = opened.stored.epoch
    assert (await store.apply(sid, epoch, Activate())).outcome is Outcome.OK
    q = paper.question_ids[0]
    answer = SaveAnswer(1, q, SavedAnswer(paper.option_order[q][0], False, 100, 1, 1000))
    assert (await store.apply(sid, epoch, answer)).outcome is Outcome.OK
    return epoch


async def test_a_session_in_every_partition_expires_or_finishes_and_flushes_once(
    pool: pg.Pool, store: RedisSessionStore, redis: RedisCluster
) -> None:
    sids = [sid_in(p) for p in range(PARTITIONS)]
    masters = {node_of(redis, store.keys.session(sid).meta) for sid in sids}
    assert masters == {n.name for n in redis.get_primaries()} and len(masters) == 3
    epochs = await asyncio.gather(*(active_session(pool, store, sid) for sid in sids))
    for p, (sid, epoch) in enumerate(zip(sids, epochs, strict=True)):
        if p % 2 == 0:  # half submitted by the student ...
            assert (await store.apply(sid, epoch, Finish(2, FinishReason.STUDENT))).outcome is Outcome.OK
        else:  # ... half past their deadline, for the sweeper (TIME on one node, the due sets on all three)
            k = store.keys.session(sid)
            await redis.hset(k.meta, mapping={"deadline_ms": 1000, "grace_ms": 0})
            await redis.zadd(k.due, {sid: 1000})
    assert sorted(await store.due(int(time.time() * 1000))) == sorted(sids[1::2])
    assert await Sweeper(redis, store).sweep_once() == PARTITIONS // 2
    assert await store.due(int(time.time() * 1000)) == []
    loaded = await store.load_many(sids)  # one pipeline over every master
    assert {s.state.status.value for s in loaded.values()} == {"submitted", "expired"} and len(loaded) == PARTITIONS

    flusher = make_flusher(redis, pool, store, "f1")
    await flusher.ensure_groups()
    assert await flusher.flush_once() == PARTITIONS
    assert await flusher.flush_once() == 0
    assert (await counts(pool, sids))[:3] == (PARTITIONS, 10 * PARTITIONS, 0)
    assert await outbox_total(redis, store) == 0
    assert await flusher.outbox_length() == 0


async def test_the_flusher_reloads_its_script_when_the_primaries_lost_theirs(
    pool: pg.Pool, store: RedisSessionStore, redis: RedisCluster
) -> None:
    sid = sid_in(3)
    epoch = await active_session(pool, store, sid)
    assert (await store.apply(sid, epoch, Finish(2, FinishReason.STUDENT))).outcome is Outcome.OK
    flusher = make_flusher(redis, pool, store, "f1")
    await flusher.ensure_groups()
    await redis.script_flush()  # on every primary: what a restart does to the script cache
    assert await flusher.flush_once() == 1
    assert await outbox_total(redis, store) == 0  # acknowledged: the script was loaded again and ran
    assert (await counts(pool, [sid]))[0] == 1


async def test_durability_is_checked_on_every_primary(redis: RedisCluster) -> None:
    assert await redis_problems(redis) == []
    await redis.initialize()
    default = redis.get_default_node()
    node = next(n for n in redis.get_primaries() if n.name != default.name)  # one a plain CONFIG GET never asks
    direct = Redis(host=node.host, port=int(node.port), decode_responses=True)
    try:
        await direct.config_set("appendfsync", "everysec")
        problems = await redis_problems(redis)
    finally:
        await direct.config_set("appendfsync", "always")
        await direct.aclose()
    assert problems == [f"{node.name}: appendfsync is 'everysec': an acknowledged answer needs 'always'"]


async def test_one_subscriber_hears_every_channel_whichever_master_publishes(
    redis: RedisCluster, store: RedisSessionStore, writer: CoalescingWriter, cluster_url: str
) -> None:
    keys = store.keys
    rooms = [1, 2, 3]  # {r1}, {r2} and {r3} hash to slots of three different masters
    assert len({node_of(redis, keys.room_seq(t)) for t in rooms}) == 3
    channels = [keys.fence_channel, keys.broadcast_channel, *(keys.control_channel(p) for p in range(PARTITIONS)),
                *(keys.room_feed(t) for t in rooms)]  # fmt: skip
    settings = Settings(redis_url=cluster_url, redis_cluster=True)
    got: dict[str, list[str]] = {}
    async with subscriber(settings, redis) as ps:
        await ps.subscribe(*channels)
        await redis.publish(keys.fence_channel, f"{'f' * 32} 7")  # what open.lua publishes on a takeover
        await redis.publish(keys.broadcast_channel, "to the room")
        for p in range(PARTITIONS):
            await store.announce(sid_in(p), {"op": "pause"})
        for t in rooms:  # PUBLISH run by publish.lua, on the master that holds the room's counter
            assert await writer.call(store.scripts.publish, [keys.room_seq(t)], [keys.room_feed(t), "{}"]) == 1
        deadline = time.monotonic() + 5
        while sum(len(v) for v in got.values()) < len(channels) and time.monotonic() < deadline:
            message = await ps.get_message(timeout=0.1)
            if message is not None:
                got.setdefault(message["channel"], []).append(message["data"])
    assert sorted(got) == sorted(channels)
    assert got[keys.fence_channel] == [f"{'f' * 32} 7"] and got[keys.room_feed(2)] == ["1|{}"]
    assert all(len(v) == 1 for v in got.values())


async def _alive_counts(redis: RedisCluster, keys: Keys, host: str) -> list[int]:
    """Subscribers of `host`'s sharded alive channel in each partition, on the node of that partition's slot."""
    return [await shard_listeners(redis, keys, p, host) for p in range(PARTITIONS)]


async def test_the_alive_channels_are_held_on_every_partitions_node_and_again_after_a_drop(
    redis: RedisCluster, prefix: str
) -> None:
    """server/alive.py: one sharded channel per partition, each counted by the node of its slot (where open.lua runs
    for that partition's sessions); a node that drops the subscriber's connection (a restart, a failover; CLIENT KILL
    here) leaves the process reading as dead only until it has subscribed again."""
    keys = Keys(prefix)
    held = asyncio.Event()
    task = asyncio.create_task(alive.hold_shards(redis, lambda h, p: Redis(host=h, port=p, decode_responses=True),
                                                 keys, "hub-x", held))  # fmt: skip
    try:
        await asyncio.wait_for(held.wait(), 10)
        assert await _alive_counts(redis, keys, "hub-x") == [1] * PARTITIONS
        assert await _alive_counts(redis, keys, "hub-y") == [0] * PARTITIONS
        killed = 0
        for node in redis.get_primaries():  # only the sharded subscribers (hold_shards' alone use SSUBSCRIBE here)
            for client in await redis.client_list(_type="pubsub", target_nodes=node):
                if int(client.get("ssub", 0)) > 0:
                    killed += await redis.client_kill_filter(_id=client["id"], target_nodes=node)
        assert killed >= MASTERS, killed  # a subscriber connection on each master
        for _ in range(100):
            if await _alive_counts(redis, keys, "hub-x") == [1] * PARTITIONS:
                break
            await asyncio.sleep(0.1)
        assert await _alive_counts(redis, keys, "hub-x") == [1] * PARTITIONS
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await _alive_counts(redis, keys, "hub-x") == [0] * PARTITIONS  # the task ended: its connections closed


async def test_while_one_node_hangs_the_channels_on_the_others_stay_held(
    redis: RedisCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One node answers nothing for three seconds (CLIENT PAUSE: a node stuck, or cut off by the network): its
    subscription does not answer a PING (server/pubsub.py, made quick here) and is given up. hold_shards confirms new
    subscriptions before it closes the old ones, so the partitions of the other nodes read as alive throughout; the
    hung node's are held again once it answers."""
    monkeypatch.setattr(pubsub, "QUIET_S", 0.3)
    keys = Keys(prefix)
    await redis.initialize()
    down = redis.get_node_from_key(keys.alive_shard_channel(0, "hub-x"))
    assert down is not None
    nodes = [(p, redis.get_node_from_key(keys.alive_shard_channel(p, "hub-x"))) for p in range(PARTITIONS)]
    elsewhere = [(p, node) for p, node in nodes if node is not None and node.name != down.name]
    assert elsewhere  # the 16 partitions' slots are spread over the three masters
    held = asyncio.Event()
    task = asyncio.create_task(alive.hold_shards(redis, lambda h, p: Redis(host=h, port=p, decode_responses=True),
                                                 keys, "hub-x", held))  # fmt: skip
    direct = Redis(host=down.host, port=int(down.port), decode_responses=True)
    try:
        await asyncio.wait_for(held.wait(), 10)
        await direct.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        counts: set[int] = set()
        for _ in range(80):  # the hung node's three seconds, and a second or so more
            for p, node in elsewhere:
                counts.add(await _listeners_on(redis, node, keys.alive_shard_channel(p, "hub-x")))
            await asyncio.sleep(0.05)
        assert counts <= {1, 2}, counts  # never 0 (2: the new subscription confirmed, the old one not yet closed)
        for _ in range(100):
            if await _held(redis, keys):
                break
            await asyncio.sleep(0.1)
        assert await _held(redis, keys)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await direct.aclose()


async def test_a_subscription_the_node_ends_is_noticed(cluster_url: str, redis: RedisCluster, prefix: str) -> None:
    """A slot that moves to another node ends its shard channels' subscriptions there (the node sends sunsubscribe):
    the watcher returns, and hold_shards subscribes again on the nodes the cluster names then. Here the subscriber
    unsubscribes one channel itself, which delivers the same message."""
    channel = Keys(prefix).alive_shard_channel(0, "hub-x")
    await redis.initialize()
    node = redis.get_node_from_key(channel)
    assert node is not None
    client = Redis(host=node.host, port=int(node.port), decode_responses=True)
    ps = client.pubsub(ignore_subscribe_messages=False)
    try:
        await ps.ssubscribe(channel)
        watching = asyncio.create_task(alive._until_one_ends([ps]))
        await asyncio.sleep(0.2)
        assert not watching.done()  # the confirmation of the subscription is not an end
        await ps.sunsubscribe(channel)
        await asyncio.wait_for(watching, 5)
    finally:
        await ps.aclose()
        await client.aclose()


async def test_a_partition_whose_slot_moves_is_held_on_its_new_node(redis: RedisCluster, prefix: str) -> None:
    """A real resharding of one partition's slot, as `redis-cli --cluster reshard` does it: the node that gives the slot
    away ends the sharded channel's subscription there (sunsubscribe), and hold_shards subscribes again on the node
    that took it, so the process reads as alive there. Then the slot goes back, and the same happens the other way."""
    keys = Keys(prefix)
    channel = keys.alive_shard_channel(0, "hub-x")
    slot = redis.keyslot(channel)
    await redis.initialize()
    home = redis.get_node_from_key(channel)
    assert home is not None
    away = next(n for n in redis.get_primaries() if n.name != home.name)
    held = asyncio.Event()
    task = asyncio.create_task(alive.hold_shards(redis, lambda h, p: Redis(host=h, port=p, decode_responses=True),
                                                 keys, "hub-x", held))  # fmt: skip
    try:
        await asyncio.wait_for(held.wait(), 10)
        assert (await _listeners_on(redis, home, channel), await _listeners_on(redis, away, channel)) == (1, 0)
        for there, elsewhere in ((away, home), (home, away)):
            await _move_slot(redis, slot, there)
            for _ in range(100):  # every channel is subscribed again, about 0.5 s after the end
                if await _listeners_on(redis, there, channel) == 1 and await _held(redis, keys):
                    break
                await asyncio.sleep(0.1)
            where = (await _listeners_on(redis, there, channel), await _listeners_on(redis, elsewhere, channel))
            assert where == (1, 0)
            assert await _held(redis, keys)  # the other partitions too
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.nodes_manager.initialize()
        if redis.nodes_manager.get_node_from_slot(slot).name != home.name:
            await _move_slot(redis, slot, home)  # leave the cluster as the other tests expect it


async def _held(redis: RedisCluster, keys: Keys) -> bool:
    return await _alive_counts(redis, keys, "hub-x") == [1] * PARTITIONS


async def _listeners_on(redis: RedisCluster, node: ClusterNode, channel: str) -> int:
    ((_, n),) = await redis.pubsub_shardnumsub(channel, target_nodes=node)
    return int(n)


async def _move_slot(redis: RedisCluster, slot: int, to: ClusterNode) -> None:
    """Move one slot, and the keys in it, to the primary `to`: IMPORTING and MIGRATING, MIGRATE, then SETSLOT NODE on
    every primary, the new owner first (the steps of `redis-cli --cluster reshard`)."""
    await redis.nodes_manager.initialize()
    owner = redis.nodes_manager.get_node_from_slot(slot)
    nodes = {n.name: Redis(host=n.host, port=int(n.port), decode_responses=True) for n in redis.get_primaries()}
    try:
        source, target = nodes[owner.name], nodes[to.name]
        source_id, target_id = (
            await source.execute_command("CLUSTER MYID"),
            await target.execute_command("CLUSTER MYID"),
        )
        await target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while moving := await source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            await source.execute_command("MIGRATE", to.host, to.port, "", 0, 5000, "KEYS", *moving)
        for client in (target, source, *(c for c in nodes.values() if c not in (source, target))):
            await client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    finally:
        for client in nodes.values():
            await client.aclose()
    await redis.nodes_manager.initialize()


async def test_sharded_pubsub_is_found_on_every_primary(redis: RedisCluster) -> None:
    """The test cluster runs the machine's Redis 7: every primary has sharded pub/sub, so the hub holds the alive
    channels there (server/app.py asks alive.supported at start)."""
    assert await alive.supported(redis)


async def test_a_cluster_that_refuses_info_is_taken_for_one_without_sharded_pubsub(
    redis: RedisCluster, cluster_url: str, prefix: str
) -> None:
    """A user whose ACL forbids INFO (as some managed services set it): the hub cannot tell the version, so it holds
    no sharded alive channel and does not say it listens, rather than fail to start."""
    user = f"{prefix}-noinfo"
    await redis.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-info",
                                target_nodes=RedisCluster.PRIMARIES)  # fmt: skip
    limited = RedisCluster.from_url(cluster_url.replace("redis://", f"redis://{user}:pw@"), decode_responses=True)
    try:
        assert await limited.ping()  # the user works; only INFO is refused
        assert await alive.supported(limited) is False
    finally:
        await limited.aclose()
        await redis.execute_command("ACL", "DELUSER", user, target_nodes=RedisCluster.PRIMARIES)
