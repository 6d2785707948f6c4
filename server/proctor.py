"""Live proctoring: the room feeds proctors watch, and the control channels that carry proctor actions to
whichever process holds the student's connection.

Rooms (one per template): every change to a session marks it dirty; every `window` seconds (0.1) this process
publishes one message per room with the summaries of its dirty sessions (coalesced: a student answering ten
times in a window is one row), numbered by publish.lua. Each process subscribes to the rooms its proctors
watch and forwards the messages to them through bounded queues; a message whose number is not the next one
means pub/sub lost something, so the process sends its proctors a fresh snapshot read from Redis.

Control: a proctor action is applied in Redis by the REST handler (any process), then announced on the
session's partition channel (`<prefix>:{pNN}:ctl`); the process holding the student's connection reloads
the session and pushes the change to the student. A room-wide message goes to `<prefix>:bcast`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from server.closecodes import Close
from server.hub import Outbound, WebSocket, wall_ms
from server.pubsub import Watch, messages
from sessions.proctoring import alerts, summary
from storage.keys import PARTITIONS
from storage.outage import Outage
from storage.session_store import Stored

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger(__name__)

AUDIENCE_TTL_S = 0.5  # how long a room's subscriber count is trusted before asking Redis again
SNAPSHOT_CHUNK = 50  # sessions decoded between two returns to the event loop while reading a snapshot


def row_of(stored: Stored, now_ms: int, live_hosts: frozenset[str] | None = None) -> dict[str, Any]:
    """A session's row for the proctor; `live_hosts`: the hub processes alive (a killed one's students are
    shown offline although no connection told Redis they left)."""
    p = stored.presence
    return summary(
        stored.state,
        now_ms,
        online=p.online and (live_hosts is None or not p.host or p.host in live_hosts),
        display_name=p.name,
        ip_changes=p.ip_changes,
        offline_ms=p.uncredited_ms(now_ms),
    )


def _numsub_pairs(raw: Any) -> list[tuple[str, int]]:
    """PUBSUB NUMSUB's reply, parsed (list of pairs) or flat ([channel, n, channel, n, ...])."""
    if raw and isinstance(raw[0], (list, tuple)):
        return [(str(c), int(n)) for c, n in raw]
    return [(str(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]


async def subscriber_counts(redis: Any, channels: list[str]) -> dict[str, int]:
    """Subscribers per channel. On a cluster each node counts only its own subscribers: ask them all."""
    from redis.asyncio.cluster import RedisCluster

    totals: dict[str, int] = dict.fromkeys(channels, 0)
    if isinstance(redis, RedisCluster):
        replies = await redis.execute_command("PUBSUB NUMSUB", *channels, target_nodes=RedisCluster.ALL_NODES)
        per_node = replies.values() if isinstance(replies, dict) else [replies]
    else:
        per_node = [await redis.execute_command("PUBSUB NUMSUB", *channels)]
    for reply in per_node:
        for channel, n in _numsub_pairs(reply):
            totals[channel] = totals.get(channel, 0) + n
    return totals


class ProctorConnection:
    def __init__(self, ws: web.WebSocketResponse, template_id: int, limit: int) -> None:
        self.ws = ws
        self.template_id = template_id
        self.out = Outbound(ws, limit)
        self.seq = 0  # the last update (or snapshot) this proctor has been sent
        self.pending: list[tuple[int, bytes]] | None = []  # updates that arrive while its snapshot is read

    def deliver(self, seq: int, text: bytes) -> bool:
        """False: this proctor missed something between its snapshot and this update (it needs a resync)."""
        if self.pending is not None:
            self.pending.append((seq, text))
            return True
        if seq <= self.seq:  # already in the snapshot it has
            return True
        if seq > self.seq + 1:
            return False
        self.seq = seq
        self.out.put(text)
        return True

    def snapshot_sent(self, snap: dict[str, Any]) -> None:
        self.seq = snap["seq"]
        self.send(snap)
        pending, self.pending = self.pending or [], None
        for seq, text in sorted(pending):
            if seq > self.seq:
                self.seq = seq
                self.out.put(text)

    def send(self, frame: dict[str, Any]) -> None:
        self.out.put(orjson.dumps(frame))


class Rooms:
    """This process' side of every room: what changed here, and the proctors watching from here."""

    def __init__(self, services: Services, window_s: float = 0.1) -> None:
        self.s = services
        self.window_s = window_s
        self.dirty: dict[int, dict[str, float]] = {}  # room -> session -> when it last changed (monotonic)
        self.watchers: dict[int, set[ProctorConnection]] = {}
        self.last_seq: dict[int, int] = {}
        self._subscriptions: asyncio.Queue[tuple[str, str, asyncio.Future[None] | None]] = asyncio.Queue()
        self._snapshots: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._audience: dict[int, tuple[float, int]] = {}  # room -> (checked at, subscribers)
        self.published = 0
        self.resyncs = 0
        self._outage = Outage(log, "room publisher")

    # ---- publishing ------------------------------------------------------------------------------------

    def touch(self, template_id: int, sid: str) -> None:
        self.dirty.setdefault(template_id, {})[sid] = time.monotonic()

    async def _audiences(self, template_ids: list[int]) -> dict[int, int]:
        """How many subscribers each room's feed has, cluster-wide (PUBSUB NUMSUB), cached for AUDIENCE_TTL_S."""
        now = time.monotonic()
        stale = [t for t in template_ids if now - self._audience.get(t, (-1e9, 0))[0] > AUDIENCE_TTL_S]
        if stale:
            keys = self.s.store.keys
            channels = [keys.room_feed(t) for t in stale]
            counts = await subscriber_counts(self.s.redis, channels)
            self._outage.recovered()  # (said only after run_publisher logged a failure)
            for t, channel in zip(stale, channels, strict=True):
                self._audience[t] = (now, counts.get(channel, 0))
        return {t: self._audience[t][1] for t in template_ids}

    async def publish_dirty(self) -> int:
        if not self.dirty:
            return 0
        # Rooms nobody watches (on any process) cost nothing: their sessions stay dirty, and are published as
        # soon as a proctor subscribes (a new proctor's snapshot covers them; these updates top it up).
        audience = await self._audiences(list(self.dirty))
        for t in [t for t in self.dirty if audience[t] == 0]:
            # Nobody watched when Redis was asked, so a proctor who subscribes later reads a snapshot after every
            # change made before that question: those changes can go (else they pile up for ever, one per
            # session, in a room nobody watches). Later ones wait for the next answer about the audience.
            asked = self._audience[t][0]
            kept = {sid: at for sid, at in self.dirty[t].items() if at >= asked}
            if kept:
                self.dirty[t] = kept
            else:
                del self.dirty[t]
        dirty = {t: sids for t, sids in self.dirty.items() if audience[t] > 0}
        if not dirty:
            return 0
        for t in dirty:
            del self.dirty[t]
        now = wall_ms()
        keys = self.s.store.keys
        local = self.s.hub.connections
        remote = [sid for sids in dirty.values() for sid in sids if sid not in local]
        loaded = await self.s.store.load_many(remote)
        live = await self.s.store.live_hosts() if loaded else None
        calls = []
        for template_id, sids in dirty.items():
            rows = []
            for sid in sorted(sids):
                conn = local.get(sid)
                if conn is not None and conn.state is not None and conn.stored is not None:
                    p = conn.stored.presence  # as of the connection's open (or the last proctor action)
                    rows.append(summary(conn.state, now, online=True, display_name=p.name, ip_changes=p.ip_changes,
                                        offline_ms=p.uncredited_ms(now)))  # fmt: skip
                elif sid in loaded:
                    rows.append(row_of(loaded[sid], now, live))
            if rows:
                payload = orjson.dumps({"sessions": rows, "at_ms": now}).decode()
                script = self.s.store.scripts.publish
                seq_key, channel = keys.room_seq(template_id), keys.room_feed(template_id)
                calls.append(self.s.writer.call(script, [seq_key], [channel, payload]))
        await asyncio.gather(*calls)
        self._outage.recovered()
        self.published += len(calls)
        return len(calls)

    async def run_publisher(self) -> None:
        while True:
            await asyncio.sleep(self.window_s)
            try:
                await self.publish_dirty()
            except Exception as exc:  # a lost update is healed by the next change or a resync
                self._outage.failed("%s", exc)

    # ---- snapshots -------------------------------------------------------------------------------------

    async def snapshot(self, template_id: int) -> dict[str, Any]:
        """One snapshot for everyone who asks while it is being read (ten proctors connecting at once cost
        one read of the room, not ten)."""
        pending = self._snapshots.get(template_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read_snapshot(template_id))
            self._snapshots[template_id] = pending
            pending.add_done_callback(lambda _: self._snapshots.pop(template_id, None))
        return await asyncio.shield(pending)

    async def _read_snapshot(self, template_id: int) -> dict[str, Any]:
        keys = self.s.store.keys
        seq = int(await self.s.redis.get(keys.room_seq(template_id)) or 0)  # read first: later deltas apply on top
        members = await self.s.store.room_members(template_id)
        loaded: dict[str, Stored] = {}
        for i in range(0, len(members), SNAPSHOT_CHUNK):  # decoding is CPU: let the students' messages through
            loaded.update(await self.s.store.load_many(members[i : i + SNAPSHOT_CHUNK]))
        gone = [(template_id, sid) for sid in members if sid not in loaded]
        if gone:
            await self.s.store.forget_members(gone)
        now = wall_ms()
        live = await self.s.store.live_hosts()
        rows = [row_of(loaded[sid], now, live) for sid in sorted(loaded)]
        return {"type": "snapshot", "template": template_id, "seq": seq, "server_time_ms": now, "sessions": rows,
                "alerts": alerts(rows)}  # fmt: skip

    async def resync(self, template_id: int, watchers: Iterable[ProctorConnection]) -> None:
        self.resyncs += 1
        targets = list(watchers)
        for w in targets:
            if w.pending is None:
                w.pending = []  # hold updates until the fresh snapshot is out
        snap = await self.snapshot(template_id)
        for w in targets:
            w.snapshot_sent(snap)

    # ---- watching --------------------------------------------------------------------------------------

    async def watch(self, conn: ProctorConnection) -> None:
        tid = conn.template_id
        first = tid not in self.watchers
        self.watchers.setdefault(tid, set()).add(conn)  # updates from now on are held in conn.pending
        if first:  # subscribed before the snapshot is read, so no update falls between the two
            subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._subscriptions.put(("subscribe", self.s.store.keys.room_feed(tid), subscribed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscribed, 5)
        conn.snapshot_sent(await self.snapshot(tid))

    async def unwatch(self, conn: ProctorConnection) -> None:
        tid = conn.template_id
        watchers = self.watchers.get(tid)
        if watchers is None:
            return
        watchers.discard(conn)
        if not watchers:
            del self.watchers[tid]
            self.last_seq.pop(tid, None)
            await self._subscriptions.put(("unsubscribe", self.s.store.keys.room_feed(tid), None))

    def on_feed(self, template_id: int, raw: str) -> None:
        seq_text, _, payload = raw.partition("|")
        seq = int(seq_text)
        watchers = self.watchers.get(template_id)
        if not watchers:
            return
        last = self.last_seq.get(template_id)  # where this process' subscription is (None: just subscribed)
        self.last_seq[template_id] = max(seq, last or 0)
        if last is not None and seq > last + 1:
            # pub/sub lost messages on the way to this process: everyone watching from here gets a snapshot
            log.info("room %d feed gap: expected %d, got %d; resyncing", template_id, last + 1, seq)
            self.s.background(self.resync(template_id, list(watchers)))
        # the payload is already JSON: frame it as text, once for every watcher (no decode, no re-encode)
        text = f'{{"type":"update","template":{template_id},"seq":{seq},{payload[1:]}'.encode()
        behind = [w for w in list(watchers) if not w.deliver(seq, text)]
        if behind and not (last is not None and seq > last + 1):
            self.s.background(self.resync(template_id, behind))

    async def run_subscriber(self) -> None:
        """One pub/sub connection for the rooms watched from this process."""
        from server.app import subscriber  # server.app imports this module

        prefix = self.s.store.keys.room_feed(0).split("{")[0]
        channels: set[str] = set()
        outage = Outage(log, "room subscriber")
        while True:
            try:
                async with subscriber(self.s.settings, self.s.redis) as ps:
                    watch = Watch(ps)  # a connection that died in silence raises (server/pubsub.py)
                    if channels:
                        await ps.subscribe(*channels)
                        for tid in list(self.watchers):
                            self.s.background(self.resync(tid, list(self.watchers[tid])))  # reconnected
                    while True:
                        while not self._subscriptions.empty():
                            action, channel, done = self._subscriptions.get_nowait()
                            if action == "subscribe":
                                channels.add(channel)
                                await ps.subscribe(channel)
                            else:
                                channels.discard(channel)
                                await ps.unsubscribe(channel)
                            if done is not None and not done.done():
                                done.set_result(None)
                        if not channels:
                            await self._subscriptions.put(await self._subscriptions.get())
                            continue
                        message = await watch.heard(await ps.get_message(timeout=0.05))
                        outage.recovered()
                        if message and message["type"] == "message":
                            channel = str(message["channel"])
                            tid = int(channel[len(prefix) :].split("}")[0].lstrip("{r"))
                            self.on_feed(tid, str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed("%s; reconnecting", exc)
                await asyncio.sleep(0.5)


async def listen_control(services: Services) -> None:
    """Fences, proctor actions and room messages for the student connections held by this process."""
    from server.app import subscriber  # server.app imports this module

    keys = services.store.keys
    channels = [keys.fence_channel, keys.broadcast_channel, *(keys.control_channel(p) for p in range(PARTITIONS))]
    if services.store.host and not services.store.sharded:  # "alive": never published to; open.lua counts listeners
        channels.append(keys.alive_channel(services.store.host))
    hub = services.hub
    outage = Outage(log, "control listener")
    while True:
        try:
            async with subscriber(services.settings, services.redis) as ps:
                await ps.subscribe(*channels)
                services.listening.set()
                outage.recovered()
                async for message in messages(ps):  # (a connection that died in silence raises: server/pubsub.py)
                    channel, data = str(message["channel"]), str(message["data"])
                    if channel == keys.fence_channel:
                        sid, _, epoch = data.partition(" ")
                        if epoch.isdigit():
                            hub.on_fence(sid, int(epoch))
                    elif channel == keys.broadcast_channel:
                        body = json.loads(data)
                        for conn in list(hub.connections.values()):
                            if conn.state is not None and conn.state.template_id == body["template"]:
                                conn.send({"type": "message", "from": "proctor", "text": body["text"]})
                    else:
                        sid, _, payload = data.partition(" ")
                        target = hub.connections.get(sid)
                        if target is not None:
                            services.background(target.on_control(json.loads(payload)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # missed notices are healed: fences by the epoch check, the rest by reloads
            outage.failed("%s; resubscribing", exc)
            await asyncio.sleep(0.5)


async def proctor_ws(request: web.Request) -> web.WebSocketResponse:
    """`/ws/proctor?template=ID` with a staff user token (Authorization header or ?token=)."""
    from server.api import may_watch
    from server.auth import Role, TokenError
    from server.hub import _origin_allowed, _token
    from server.services import SERVICES

    services = request.app[SERVICES]
    ws = WebSocket(compress=False, max_msg_size=4096, heartbeat=services.settings.heartbeat_s)
    await ws.prepare(request)

    async def refuse(code: Close, err: str, message: str) -> web.WebSocketResponse:
        await ws.send_str(json.dumps({"type": "error", "code": err, "message": message}))
        await ws.close(code=code, message=message.encode()[:120])
        return ws

    if not _origin_allowed(request, services):
        return await refuse(Close.FORBIDDEN_ORIGIN, "forbidden_origin", "this origin may not open proctor feeds")
    raw_tid = request.query.get("template", "")
    if not raw_tid.isdigit() or int(raw_tid) > 2**63 - 1:
        return await refuse(Close.PROTOCOL_ERROR, "invalid_message", "give ?template=<template id>")
    token = _token(request)
    try:
        claims = services.auth.verify_user(token or "")
    except TokenError as exc:
        return await refuse(Close.UNAUTHORIZED, "unauthorized", str(exc))
    if claims.role is Role.STUDENT:
        return await refuse(Close.UNAUTHORIZED, "forbidden", "students cannot open a proctor feed")
    tid = int(raw_tid)
    if not await may_watch(services, claims, tid):
        return await refuse(Close.UNAUTHORIZED, "forbidden", "you are not assigned to proctor this exam")

    conn = ProctorConnection(ws, tid, services.settings.send_queue_frames)
    rooms = services.rooms
    try:
        await rooms.watch(conn)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                try:
                    body = json.loads(msg.data)
                except (ValueError, RecursionError):  # RecursionError: '[[[[...' deeper than the stack
                    body = None
                if isinstance(body, dict) and body.get("type") == "resync":
                    await rooms.resync(tid, [conn])  # this proctor only
                elif isinstance(body, dict) and body.get("type") == "ping":
                    conn.send({"type": "pong", "server_time_ms": wall_ms()})
                else:
                    conn.send({"type": "error", "code": "invalid_message",
                               "message": "proctor feeds take {\"type\": \"resync\"} or {\"type\": \"ping\"}; "
                                          "act through POST /api/proctor/sessions/{id}/actions"})  # fmt: skip
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        await rooms.unwatch(conn)
        await conn.out.stop()
    return ws
