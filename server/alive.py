"""On a Redis Cluster: this hub process' sharded alive channels, held for its whole life.

A student who comes back while the process that held their connection still has a valid lease is either on a second
device or back from a process killed a moment ago. open.lua tells them apart by counting the subscribers of that
process' alive channel: Redis drops a process' subscriptions when its socket closes, which the kernel does when the
process dies. On a single Redis that channel is a classic one, held by listen_control's connection
(server/proctor.py). On a Redis Cluster a node counts only the subscribers of its own slots' sharded channels, and
open.lua runs on the node of the session's slot. So each process subscribes (SSUBSCRIBE, Redis 7) to one sharded
channel per partition, `<prefix>:{pNN}:alive:<host>`, on the primary that owns the partition's slot: one connection
per such primary.

Nothing is ever published there (so the connections are read through server/pubsub.py, which tells a quiet one from
one that died in silence). A slot that moves (resharding) or a primary that fails over ends the subscription (the node
sends `sunsubscribe`, or the connection drops): every subscription is then made again, on the nodes the cluster names
now, and the old ones are closed only once the new ones are confirmed. Meanwhile this process reads as dead in the
partitions whose node cannot be reached or whose slot moved (a student who comes back there is a drop, not a second
device), and as alive in the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from server import tasks
from server.pubsub import messages
from storage.keys import PARTITIONS, Keys
from storage.outage import Outage

log = logging.getLogger(__name__)

RETRY_S = 0.5
CONFIRM_S = 10.0
SHARDED_SINCE = (7, 0)  # SSUBSCRIBE and PUBSUB SHARDNUMSUB came with Redis 7.0


async def supported(cluster: RedisCluster) -> bool:
    """Whether every primary of the cluster has sharded pub/sub. A process on an older cluster holds no alive channel
    and does not say it listens (lease.lua): its students, were it killed, are left to its lease and its successor."""
    try:
        infos: Any = await cluster.info("server", target_nodes=RedisCluster.PRIMARIES)
    except ResponseError as exc:  # INFO refused (an ACL, a managed service): not knowing, assume none
        log.warning("cannot read the Redis Cluster's versions (%s): no sharded alive channels; a hub process killed "
                    "outright is told to the others only by its lease (15 s) and its successor", exc)  # fmt: skip
        return False
    versions = [str(info.get("redis_version", "")) for info in infos.values()]
    old = [v for v in versions if not has_sharded_pubsub(v)]
    if old:
        log.warning(
            "Redis Cluster primaries of version %s have no sharded pub/sub: a hub process killed outright is told to "
            "the others only by its lease (15 s) and its successor",
            ", ".join(sorted(set(old))),
        )
    return not old


def has_sharded_pubsub(version: str) -> bool:
    """'7.0.15' -> True, '6.2.14' -> False (and False for what cannot be read)."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= SHARDED_SINCE


async def hold_shards(
    cluster: RedisCluster, connect: Callable[[str, int], Redis], keys: Keys, host: str, held: asyncio.Event
) -> None:
    """Subscribe to this process' sharded alive channels, set `held`, and subscribe again whenever a subscription
    ends; runs until cancelled. `connect(host, port)`: a plain client of one node.

    Make before break: a new set of subscriptions, on the nodes the cluster names then, is confirmed before the old set
    is closed. So a slot that moves, or a node that is down, leaves the channels on the other nodes held throughout:
    the process reads as dead only in the partitions that cannot be reached anyway. (Were every channel dropped while
    one node is down, `live_hosts` would show every student of this process offline to the proctors.)"""
    channels = [keys.alive_shard_channel(p, host) for p in range(PARTITIONS)]
    outage = Outage(log, "alive channels")
    current: _Subscriptions | None = None
    try:
        while True:
            try:
                fresh = await _subscribe(cluster, connect, channels)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed("%s; subscribing again", exc)
            else:
                if current is not None:
                    await current.close()
                current = fresh
                held.set()
                outage.recovered()
                try:
                    await _until_one_ends(current.pubsubs)
                    outage.failed("a subscription ended (a slot moved or a node failed over); subscribing again")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    outage.failed("%s; subscribing again", exc)
            await asyncio.sleep(RETRY_S)
            with contextlib.suppress(Exception):
                await cluster.nodes_manager.initialize()  # the slots as the cluster sees them now
    finally:
        if current is not None:
            await current.close()


@dataclass
class _Subscriptions:
    """One connection per node, each holding the channels of the slots that node serves."""

    clients: list[Redis] = field(default_factory=list)
    pubsubs: list[PubSub] = field(default_factory=list)

    async def close(self) -> None:
        for ps in self.pubsubs:
            with contextlib.suppress(Exception):
                await ps.aclose()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()


async def _subscribe(
    cluster: RedisCluster, connect: Callable[[str, int], Redis], channels: list[str]
) -> _Subscriptions:
    """Every channel subscribed on the node of its slot, each confirmed; on any failure, what was made is closed."""
    made = _Subscriptions()
    try:
        await cluster.initialize()  # a no-op once the client knows the cluster's nodes
        by_node: dict[tuple[str, int], list[str]] = defaultdict(list)
        for channel in channels:
            node = cluster.get_node_from_key(channel)
            if node is None:
                raise ConnectionError(f"no node serves the slot of {channel}")
            by_node[(node.host, int(node.port))].append(channel)
        for (node_host, node_port), on_node in by_node.items():
            client = connect(node_host, node_port)
            made.clients.append(client)
            ps = client.pubsub(ignore_subscribe_messages=False)
            made.pubsubs.append(ps)
            for channel in on_node:  # one command per channel: an SSUBSCRIBE's channels must share a slot
                await ps.ssubscribe(channel)
        for ps, on_node in zip(made.pubsubs, by_node.values(), strict=True):
            await _confirmed(ps, len(on_node))
    except BaseException:
        await made.close()
        raise
    return made


async def _confirmed(ps: PubSub, n: int, within_s: float = CONFIRM_S) -> None:
    """Until the node has confirmed `n` subscriptions on `ps` (redis-py sends SSUBSCRIBE without waiting for its reply;
    an error reply raises here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while n > 0:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{n} subscriptions not confirmed within {within_s} s")
        message = await ps.get_message(timeout=left)
        if message is not None and str(message.get("type")) == "ssubscribe":
            n -= 1


async def _until_one_ends(pubsubs: list[PubSub]) -> None:
    """Until one subscription ends: its node unsubscribed it (the slot moved), or the connection failed (raises)."""
    watchers = [asyncio.create_task(_watch(ps)) for ps in pubsubs]
    try:
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a connection error propagates
    finally:
        await tasks.stop(watchers)  # (the caller closes the connections: a watcher left running ends with them)


async def _watch(ps: PubSub) -> None:
    message: Any
    async for message in messages(ps):  # (a connection that died in silence raises: server/pubsub.py)
        if str(message.get("type")) == "sunsubscribe":
            return
