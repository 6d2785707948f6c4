"""Live session state in Redis: encoding, and the atomic operations the hub and the sweeper need.

Every write goes through the CoalescingWriter as a Lua script (storage/lua/), so it is pipelined with
everyone else's and its checks (fencing epoch, sequence number, status, deadline on Redis' clock) are
atomic with the change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from redis.asyncio.cluster import RedisCluster

from sessions import irt
from sessions.machine import (
    Activate,
    Answers,
    CheatRecord,
    Control,
    Finish,
    FinishReason,
    RecordCheat,
    SaveAnswer,
    SavedAnswer,
    SessionState,
    Status,
    Write,
)
from sessions.model import VIOLATIONS, AntiCheatPolicy, CheatKind, MarkingScheme, Template
from sessions.paper import Paper
from storage.keys import PARTITIONS, Keys, partition_of
from storage.scripts import AnyRedis, Scripts
from storage.writer import CoalescingWriter


class Outcome(StrEnum):
    OK = "OK"
    DUP = "DUP"
    FENCED = "FENCED"
    NOT_ACTIVE = "NOT_ACTIVE"
    TOO_LATE = "TOO_LATE"
    NOT_DUE = "NOT_DUE"
    NO_SESSION = "NO_SESSION"
    FORBIDDEN = "FORBIDDEN"


class Applied(NamedTuple):  # one per write: a tuple is ~3x cheaper to make than a frozen dataclass
    outcome: Outcome
    now_ms: int | None = None
    deadline_ms: int | None = None
    status: Status | None = None
    remaining_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """What the proctor needs beyond the exam state: is the student connected, and the time ledger."""

    name: str = ""  # the student's display name, for the proctor's grid
    online: bool = False  # as stored: a crashed process' students stay "online" until its lease runs out
    host: str = ""  # the hub process that holds (or last held) the connection
    offline_since_ms: int | None = None
    offline_total_ms: int = 0  # every return after a drop, added up
    credited_ms: int = 0  # given back automatically (template policy)
    extended_ms: int = 0  # given (or taken) by proctors
    ip_changes: int = 0

    def uncredited_ms(self, now_ms: int) -> int:
        """Time lost to dropped connections that nobody has given back yet (the proctor's one-click credit)."""
        away = now_ms - self.offline_since_ms if self.offline_since_ms is not None else 0
        return max(0, self.offline_total_ms + away - self.credited_ms)


@dataclass(frozen=True, slots=True)
class Stored:
    """A session as Redis holds it, decoded."""

    state: SessionState
    scheme: MarkingScheme
    epoch: int
    presence: Presence = Presence()
    ledger: tuple[tuple[int, int, int, int], ...] = ()  # (offline since, back at, gap, credited) per return


@dataclass(frozen=True, slots=True)
class Opened:
    stored: Stored
    now_ms: int


# ---- encoding ------------------------------------------------------------------------------------------


def _checked_answer(raw: str) -> str:
    SavedAnswer.decode(raw)  # a malformed entry fails the load here, not some later read of the state
    return raw


def encode_cheat(c: CheatRecord) -> str:
    return f"{c.kind.value}|{c.at_ms}|{c.seq}"


def decode_cheat(raw: str) -> CheatRecord:
    kind, at_ms, seq = raw.split("|")
    return CheatRecord(CheatKind(kind), int(at_ms), int(seq))


def _opt(v: int | None) -> str:
    return "" if v is None else str(v)


def _int_or_none(v: str | None) -> int | None:
    return None if v in (None, "") else int(v)


def encode_policy(p: AntiCheatPolicy) -> str:
    return f"{_opt(p.warn_at)},{_opt(p.flag_at)},{_opt(p.submit_at)}"


def decode_policy(raw: str) -> AntiCheatPolicy:
    w, f, s = raw.split(",")
    return AntiCheatPolicy(_int_or_none(w), _int_or_none(f), _int_or_none(s))


def encode_scheme(s: MarkingScheme) -> str:
    return f"{s.correct},{s.wrong},{s.skipped}"


def decode_scheme(raw: str) -> MarkingScheme:
    c, w, s = (int(x) for x in raw.split(","))
    return MarkingScheme(c, w, s)


def _compact(data: Mapping[str, Any]) -> str:
    return orjson.dumps(data).decode()


def new_session_fields(
    sid: str,
    user_id: str,
    template: Template,
    paper: Paper,
    created_ms: int,
    name: str = "",
    adaptive: irt.AdaptiveState | None = None,
) -> dict[str, str | int]:
    fields: dict[str, str | int] = {
        "sid": sid,
        "uid": user_id,
        "name": name,
        "tpl": template.id,
        "status": Status.CREATED.value,
        "epoch": 0,
        "last_seq": 0,
        "duration_ms": template.duration_ms,
        "grace_ms": template.grace_ms,
        "violations": 0,
        "flagged": 0,
        "paper": _compact(paper.to_json()),
        "policy": encode_policy(template.policy),
        "scheme": encode_scheme(template.scheme),
        "created_ms": created_ms,
        "credit_cap_ms": template.disconnect_credit_cap_ms,
        "credited_ms": 0,
    }
    if adaptive is not None:
        fields["adaptive"] = _compact(irt.dump(adaptive))
    return fields


def decode_ledger(raw: Sequence[str]) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for entry in raw:
        since, back, gap, credited = (int(x) for x in entry.split("|"))
        out.append((since, back, gap, credited))
    return tuple(out)


def decode_session(
    meta: Mapping[str, str], answers: Mapping[str, str], events: Sequence[str], ledger: Sequence[str] = ()
) -> Stored:
    finish = meta.get("reason")
    state = SessionState(
        id=meta["sid"],
        user_id=meta["uid"],
        template_id=int(meta["tpl"]),
        status=Status(meta["status"]),
        paper=Paper.from_json(orjson.loads(meta["paper"])),
        duration_ms=int(meta["duration_ms"]),
        grace_ms=int(meta["grace_ms"]),
        policy=decode_policy(meta["policy"]),
        deadline_ms=_int_or_none(meta.get("deadline_ms")),
        remaining_ms=_int_or_none(meta.get("remaining_ms")),
        started_ms=_int_or_none(meta.get("started_ms")),
        last_seq=int(meta["last_seq"]),
        answers=Answers({int(q): _checked_answer(v) for q, v in answers.items()}),
        cheats=tuple(decode_cheat(e) for e in events),
        violations=int(meta["violations"]),
        flagged=meta.get("flagged") == "1",
        finish_reason=FinishReason(finish) if finish else None,
        finished_ms=_int_or_none(meta.get("finished_ms")),
        adaptive=irt.load(orjson.loads(meta["adaptive"])) if "adaptive" in meta else None,
    )
    presence = Presence(
        name=meta.get("name", ""),
        online=meta.get("online") == "1",
        host=meta.get("host", ""),
        offline_since_ms=_int_or_none(meta.get("offline_since_ms")),
        offline_total_ms=int(meta.get("offline_total_ms", 0)),
        credited_ms=int(meta.get("credited_ms", 0)),
        extended_ms=int(meta.get("extended_ms", 0)),
        ip_changes=int(meta.get("ip_changes", 0)),
    )
    return Stored(state, decode_scheme(meta["scheme"]), int(meta["epoch"]), presence, decode_ledger(ledger))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _controlled(raw: Sequence[Any]) -> Applied:
    outcome = Outcome(raw[0])
    now = int(raw[1]) if len(raw) > 1 else None
    if outcome is Outcome.OK:
        return Applied(outcome, now, deadline_ms=_int_or_none(raw[3]), status=Status(raw[2]),
                       remaining_ms=_int_or_none(raw[4]))  # fmt: skip
    if outcome is Outcome.NOT_ACTIVE:
        return Applied(outcome, now, status=Status(raw[2]))
    return Applied(outcome, now)


_OUTCOMES = {o.value: o for o in Outcome}  # Outcome(x) through the enum's metaclass costs ~0.4 us a call


def _applied(raw: Sequence[Any]) -> Applied:
    outcome = _OUTCOMES[raw[0]]
    now = int(raw[1]) if len(raw) > 1 else None
    if outcome is Outcome.OK and len(raw) > 2:
        return Applied(outcome, now, deadline_ms=int(raw[2]))
    if outcome is Outcome.NOT_ACTIVE:
        return Applied(outcome, now, status=Status(raw[2]))
    if outcome is Outcome.NOT_DUE:
        return Applied(outcome, now, deadline_ms=int(raw[2]))
    return Applied(outcome, now)


_PROCTOR_FINISHES = (FinishReason.PROCTOR, FinishReason.FORCED)


# ---- the store -----------------------------------------------------------------------------------------


# A hub process renews its lease every LEASE_RENEW_S; one not renewed for LEASE_TTL_MS is taken for dead (its
# students' connections were cut without a word: open.lua records them as dropped, not as a second device).
LEASE_RENEW_S = 5.0
LEASE_TTL_MS = 15_000
LEASE_FORGET_MS = 3_600_000  # a dead process' field is deleted after an hour


class RedisSessionStore:
    def __init__(
        self,
        redis: AnyRedis,
        writer: CoalescingWriter,
        scripts: Scripts,
        keys: Keys,
        created_ttl_s: int,
        host: str = "",
        subscribed: bool = False,
    ) -> None:
        self._redis = redis
        self._writer = writer
        self._scripts = scripts
        self.keys = keys
        self._created_ttl_s = created_ttl_s
        self.host = host  # this process' id for leases ('' : no lease tracking, as in storage-only tests)
        # every hub process keeps a subscription to its alive channel while it lives, so that open.lua can tell a
        # process killed a moment ago from a live one: on a single Redis one channel (Keys.alive_channel); on a Redis
        # Cluster, where a node counts only its own subscribers, a sharded one per partition (Keys.alive_shard_channel,
        # server/alive.py)
        self.subscribed = subscribed
        self.sharded = isinstance(redis, RedisCluster)
        self._live: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def renew_lease(self) -> None:
        """This process is alive: renew its lease in every partition (one pipelined script call each), saying
        whether it listens on its alive channel."""
        await self._lease_everywhere(self.host, "renew", "1" if self.subscribed else "")

    async def succeed(self, predecessor: str) -> None:
        """This process has taken the place of hub process `predecessor`, which has ended at some time since its last
        renewal (server/succession.py): its lease ends as of then, in every partition (lease.lua, 'succeeded'), so that
        its students' next connections count as dropped since its last sign of life, not as second devices."""
        await self._lease_everywhere(predecessor, "succeeded")

    async def _lease_everywhere(self, host: str, op: str, listens: str = "") -> None:
        """lease.lua for `host` in every partition, through the writer (one pipeline)."""
        args: list[str | int] = [host, LEASE_FORGET_MS, op, listens]
        lease = self._scripts.lease
        await asyncio.gather(*(self._writer.call(lease, [self.keys.hosts(p)], args) for p in range(PARTITIONS)))

    @staticmethod
    async def release_lease(redis: AnyRedis, scripts: Scripts, keys: Keys, host: str) -> None:
        """Hub process `host` has ended (its parent saw it exit): its lease ends now, in every partition (a field
        '<host>|gone': lease.lua), so that its students' next connections count as dropped since now, not as second
        devices until the lease would have run out. Needs no writer: the parent of `serve --workers` calls it
        (server/workers.py)."""
        await redis.script_load(scripts.lease.source)  # (idempotent; on a cluster, on every primary)
        pipe = redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.evalsha(scripts.lease.sha, 1, keys.hosts(p), host, LEASE_FORGET_MS, "release")
        await pipe.execute()

    async def live_hosts(self, max_age_s: float = 1.0) -> frozenset[str]:
        """The hub processes whose lease holds (every process renews every partition; partition 0 tells) and, with
        `subscribed`, that still listen on their alive channel when they say they do (a process killed a moment ago
        does not; one of an earlier version has none)."""
        at, hosts = self._live
        if time.monotonic() - at > max_age_s:
            hosts_key = self.keys.hosts(0)
            raw = await self._redis.hgetall(hosts_key)
            seconds, micros = await self._redis.time()  # leases are on Redis' clock
            now = int(seconds) * 1000 + int(micros) // 1000
            fields = {str(h): int(seen) for h, seen in raw.items()}
            gone = {h.removesuffix("|gone") for h in fields if h.endswith("|gone")}  # released (lease.lua)
            hosts = frozenset(h for h, seen in fields.items()
                              if "|" not in h and h not in gone and now - seen <= LEASE_TTL_MS)  # fmt: skip
            others = sorted(h for h in hosts - {self.host} if f"{h}|listens" in fields)
            if self.subscribed and others:
                hosts -= await self._silent(others, hosts_key)
            self._live = (time.monotonic(), hosts)
        return hosts

    async def _silent(self, hosts: list[str], hosts_key: str) -> set[str]:
        """The hosts with no subscriber on their alive channel (on a cluster, partition 0's, on that slot's node)."""
        if isinstance(self._redis, RedisCluster):
            node = self._redis.get_node_from_key(hosts_key)
            channels = [self.keys.alive_shard_channel(0, h) for h in hosts]
            counts = await self._redis.pubsub_shardnumsub(*channels, target_nodes=node)
        else:
            counts = await self._redis.pubsub_numsub(*(self.keys.alive_channel(h) for h in hosts))
        return {h for h, (_, n) in zip(hosts, counts, strict=True) if n == 0}

    @property
    def scripts(self) -> Scripts:
        return self._scripts

    async def announce(self, sid: str, notice: Mapping[str, Any]) -> None:
        """Tell whichever process holds the student's connection that a proctor changed the session."""
        channel = self.keys.control_channel(partition_of(sid))
        await self._redis.publish(channel, f"{sid} {_compact(notice)}")

    async def create(
        self,
        sid: str,
        user_id: str,
        template: Template,
        paper: Paper,
        created_ms: int,
        name: str = "",
        adaptive: irt.AdaptiveState | None = None,
    ) -> bool:
        fields = new_session_fields(sid, user_id, template, paper, created_ms, name, adaptive)
        flat: list[str | int] = [self._created_ttl_s]
        for field_name, value in fields.items():
            flat += [field_name, value]
        meta = self.keys.session(sid).meta
        created = bool(await self._writer.call(self._scripts.create, [meta], flat))
        if created:  # the room's member list (another slot, so not in the script; readers tolerate strays)
            await self._writer.command("SADD", self.keys.room_live(template.id), sid)
        return created

    async def room_members(self, template_id: int) -> list[str]:
        return sorted(str(m) for m in await self._redis.smembers(self.keys.room_live(template_id)))

    async def forget_members(self, members: Sequence[tuple[int, str]]) -> None:
        """Drop flushed (or vanished) sessions from their rooms' member lists."""
        if members:
            pipe = self._redis.pipeline(transaction=False)
            for template_id, sid in members:
                pipe.srem(self.keys.room_live(template_id), sid)
            await pipe.execute()

    async def open(self, sid: str, user_id: str, ip: str = "") -> Opened | Outcome:
        """Take the session over for a new connection of its owner (bumps the fencing epoch, marks the
        student online, credits a dropped connection's time when the template says so).

        Returns Outcome.NO_SESSION or Outcome.FORBIDDEN (not the owner; nothing changed) otherwise."""
        k = self.keys.session(sid)
        keys = [k.meta, k.ans, k.ev, k.due, k.ledger, self.keys.hosts(partition_of(sid))]
        alive, count = "", ""
        if self.subscribed:
            shard = self.sharded
            alive = self.keys.alive_shard_prefix(partition_of(sid)) if shard else self.keys.alive_prefix
            count = "SHARDNUMSUB" if shard else "NUMSUB"
        args: list[str | int] = [user_id, ip, self.host, LEASE_TTL_MS, self.keys.fence_channel, alive, count]
        raw = await self._writer.call(self._scripts.open, keys, args)
        if raw[0] != "OK":
            return Outcome(raw[0])
        stored = decode_session(_pairs(raw[3]), _pairs(raw[4]), raw[5])
        return Opened(stored, int(raw[1]))

    async def load(self, sid: str) -> Stored | None:
        """Read-only snapshot (REST progress, results before the flush, the flusher)."""
        found = await self.load_many([sid])
        return found.get(sid)

    async def load_many(self, sids: Sequence[str]) -> dict[str, Stored]:
        if not sids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for sid in sids:
            k = self.keys.session(sid)
            pipe.hgetall(k.meta)
            pipe.hgetall(k.ans)
            pipe.lrange(k.ev, 0, -1)
            pipe.lrange(k.ledger, 0, -1)
        raw = await pipe.execute()
        out = {}
        for i, sid in enumerate(sids):
            meta, ans, ev, ledger = raw[4 * i : 4 * i + 4]
            if meta:
                out[sid] = decode_session(meta, ans, ev, ledger)
        return out

    async def apply(self, sid: str, epoch: int, write: Write) -> Applied:
        k = self.keys.session(sid)
        if isinstance(write, Finish) and write.reason is FinishReason.TIMEOUT:
            return await self.expire(sid)
        if isinstance(write, Control) or (isinstance(write, Finish) and write.reason in _PROCTOR_FINISHES):
            return await self.control(sid, write)
        keys = [k.meta, k.ans, k.ev, k.due, k.outbox]
        head: list[str | int]
        match write:
            case Activate():
                head = ["activate", sid, epoch, ""]
            case SaveAnswer(seq=seq, question_id=qid, answer=answer, step=step):
                head = ["answer", sid, epoch, seq, qid, answer.encode()]  # the session's own compact text (Answers)
                if step is not None:  # adaptive: the posterior, the grown paper and the end, in the same write
                    head += [_compact(step.paper.to_json()), _compact(irt.dump(step.adaptive)),
                             step.finish.value if step.finish else ""]  # fmt: skip
            case RecordCheat(seq=seq, record=record, flag=flag, finish=finish):
                violation = int(record.kind in VIOLATIONS)
                head = ["cheat", sid, epoch, seq, encode_cheat(record), violation, int(flag), finish or ""]
            case Finish(seq=seq, reason=reason):
                head = ["finish", sid, epoch, _opt(seq), reason.status.value, reason.value]
        return _applied(await self._writer.call(self._scripts.apply, keys, head))

    async def leave(self, sid: str, epoch: int) -> None:
        """The connection of this epoch has gone: the student is offline (the ledger starts counting)."""
        await self._writer.call(self._scripts.leave, [self.keys.session(sid).meta], [epoch])

    async def control(self, sid: str, write: Control | Finish) -> Applied:
        """A proctor's decision, persisted atomically (see control.lua)."""
        k = self.keys.session(sid)
        args: list[str | int]
        match write:
            case Control(op="extend" | "credit" as op, delta_ms=delta):
                args = [op, sid, delta]
            case Control(op="flag", flagged=flag):
                args = ["flag", sid, int(flag)]
            case Control(op=op):
                args = [op, sid]
            case Finish(reason=reason):
                args = ["finish", sid, reason.status.value, reason.value]
        return _controlled(await self._writer.call(self._scripts.control, [k.meta, k.due, k.outbox], args))

    async def ledger(self, sid: str) -> list[tuple[int, int, int, int]]:
        """The time ledger: (offline since, back at, gap, credited) per return after a drop."""
        raw = await self._redis.lrange(self.keys.session(sid).ledger, 0, -1)
        return list(decode_ledger([str(e) for e in raw]))

    async def expire(self, sid: str) -> Applied:
        k = self.keys.session(sid)
        return _applied(await self._writer.call(self._scripts.expire, [k.meta, k.due, k.outbox], [sid]))

    async def due(self, now_ms: int, limit: int = 500) -> list[str]:
        """Sessions whose deadline has passed, over every partition (one pipeline)."""
        pipe = self._redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.zrangebyscore(self.keys.due(p), "-inf", now_ms, start=0, num=limit)
        return [sid for part in await pipe.execute() for sid in part]
