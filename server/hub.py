"""The student WebSocket hub: one connection per live session, thin handlers around the pure core.

Per connection: decode and validate a frame (server/wire.py), ask the core what it means
(sessions.machine.decide), persist the decision atomically in Redis (storage/session_store.py; the
write is coalesced with every other connection's into one pipeline), and only then queue the ack. The
send side is a bounded queue per connection: a client that stops reading is disconnected
(Close.SLOW_CONSUMER), it never slows anyone else down.

Each connection has its own message rate limit (settings.rate_ws_msgs), an in-process GCRA bucket
(storage.ratelimit.LocalBucket): a session has one connection in one process at a time, so the bucket needs
no Redis round trip. A message over the limit gets an error frame `rate_limited` with `retry_after_ms` and is
not processed (no ack: the client resends it later); the connection stays open, unless it keeps sending
regardless: more than settings.max_refused_msgs refusals beyond the rate close it (Close.RATE_LIMITED), so that
a flood stops costing a decode and an error frame per message. A reconnect to the same process continues the
session's buckets (Hub.park), so that reconnecting does not buy a fresh burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from server import frames
from server.api import too_many
from server.auth import SessionClaims, TokenError
from server.closecodes import Close
from server.wire import WireError, decode, encode, to_command
from sessions import adaptive, irt
from sessions.machine import (
    Ack,
    Activate,
    Command,
    Decision,
    Expire,
    Finished,
    NextItem,
    Open,
    Refusal,
    Refused,
    SessionState,
    Status,
    Write,
    decide,
)
from sessions.model import MarkingScheme, Question
from storage.errors import StorageUnavailable
from storage.outage import Outage
from storage.ratelimit import LocalBucket, Rate
from storage.session_store import Applied, Opened, Outcome, Stored

if TYPE_CHECKING:
    from server.metrics import Metrics
    from server.services import Services
    from server.settings import Settings

log = logging.getLogger(__name__)

Buckets = tuple[LocalBucket | None, LocalBucket | None]  # a connection's message bucket and refusal bucket


CLOCK_ACTIONS = frozenset({"pause", "resume", "extend", "credit"})


# An adaptive session's item bank, its template's rules, the bank's questions by id, and whether options shuffle.
AdaptiveContext = tuple[irt.Bank, irt.AdaptiveConfig, Mapping[int, Question], bool]


# Refused handshakes (bad token, foreign Origin) one address may have answered with a close code, per process;
# beyond them it gets HTTP 429 before the upgrade (Hub.auth_failure). Generous for a browser retrying an old link.
AUTH_FAILURES = Rate(10, 1.0, 50)
AUTH_FAILURE_ADDRESSES = 10_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def crash_point(services: Services, name: str) -> None:
    """Test-only crash switch (settings.crash_point, EXAMHUB_CRASH_POINT=NAME[:N]; loadtest/faults): exit at once,
    as kill -9 would, the Nth time this process reaches `name`. Off in production (one comparison)."""
    point = services.settings.crash_point
    if point is None or point[0] != name:
        return
    services.hub.crash_count += 1
    if services.hub.crash_count >= point[1]:
        log.critical("crash point %s reached (%d): exiting with 137", name, point[1])
        os._exit(137)


def _refused_not_active(decision: Decision) -> bool:
    return any(isinstance(e, Refused) and e.code is Refusal.NOT_ACTIVE for e in decision.effects)


class WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, minus one way of outliving its connection.

    aiohttp resets the heartbeat on every chunk received (_on_data_received, aio-libs/aiohttp#12030), even
    once the socket is closed: the peer's reply to our close (every exam ends with the hub's 4000) arrives
    while close() waits for it, and arms a new heartbeat timer after close() cancelled the old one. The loop's
    timer then keeps the response, its request, transport, socket and reader queue alive for a heartbeat and a
    half (~23 s at 15 s) after the exam ended: harmless one at a time, but a wave of hand-ins holds hundreds at
    once, and a tracemalloc snapshot taken soon after the exams took them for a leak. Nothing is received after
    a close, so there is no heartbeat to reset.

    And aiohttp hands that callback to the connection's protocol, which keeps it after the connection is lost
    (connection_lost drops the parser, not the callback): a bound method closed the cycle protocol -> response
    -> request -> protocol, so every closed connection (~40 objects, ~10 KB with its transport and buffers) was
    left to the cyclic collector, which `examhub serve` runs after 100,000 net allocations, and on the old
    generations almost never (server/cli.py, _tune_gc). A kill -9 of Redis closes thousands at once (every
    reconnect refused with 4503): the soak's hubs stepped up 17-31 MB per Redis kill, and what the collector
    freed later stayed in Python's arenas. The protocol gets a callback that holds the response weakly, so a
    closed connection is freed by reference counting."""

    @property
    def _on_data_received(self) -> Callable[[], None]:
        response = weakref.ref(self)

        def received() -> None:
            ws = response()
            if ws is not None and not ws.closed:
                web.WebSocketResponse._on_data_received(ws)

        return received


class Outbound:
    """A connection's bounded send queue. A pump task drains it while there is something to send, then ends: an
    idle connection holds no task, no event, no buffer and no reference to the last frame it sent (a state frame
    of a 180-question paper is ~60 KB); see docs/performance.md, "Memory per connection"."""

    __slots__ = ("_closer", "_limit", "_queue", "_task", "_unsent", "_ws", "overflowed")

    # frames are queued encoded, with their opcode: JSON goes out as the bytes orjson made, sent as a text frame
    # (no decode to str and re-encode to UTF-8: two copies of a ~60 KB state frame per connection)

    def __init__(self, ws: web.WebSocketResponse, limit: int, transport: asyncio.BaseTransport | None = None) -> None:
        self._ws = ws
        # how many bytes the socket's transport still holds unsent (uvloop's transports have the method without
        # being asyncio.WriteTransport subclasses, so it is looked up, not type-checked)
        self._unsent: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
        self._limit = limit
        self._queue: deque[tuple[bytes, WSMsgType]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[bool] | None = None
        self.overflowed = False

    def put(self, data: bytes, opcode: WSMsgType = WSMsgType.TEXT) -> None:
        if self.overflowed or self._ws.closed:
            return
        if self._task is None and self._unsent is not None and not self._unsent():
            self._write_now(data, opcode)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        elif len(queue) >= self._limit:
            self.overflowed = True
            queue.clear()
            self._closer = asyncio.create_task(self._ws.close(code=Close.SLOW_CONSUMER, message=b"send queue overflow"))
            return
        queue.append((data, opcode))
        if self._task is None:
            self._task = asyncio.create_task(self._pump())

    def _write_now(self, data: bytes, opcode: WSMsgType) -> None:
        """Nothing is queued and the socket has taken everything so far: write the frame here, with no task (a
        pump task per ack cost the hub ~5 us of CPU per answer). aiohttp writes an uncompressed frame to the
        transport before anything it might wait for, and waits only on a paused transport, which an empty one
        is not; so the coroutine ends in its first step. Were it to stop at the drain anyway, the frame is
        written by then and the wait is dropped: the next put() sees the transport's buffer and queues."""
        step = self._ws.send_frame(data, opcode)
        try:
            step.send(None)
        except StopIteration:
            return
        except (ConnectionError, RuntimeError):
            return  # the socket went away (as in _pump)
        step.close()

    async def _pump(self) -> None:
        queue = self._queue
        try:
            while queue:
                data, opcode = queue.popleft()
                await self._ws.send_frame(data, opcode)
                del data
        except (ConnectionError, RuntimeError):
            pass  # the socket went away; what is queued can no longer be delivered
        finally:
            self._task = None
            if self._queue is queue:
                self._queue = None

    async def flush(self, within_s: float = 2.0) -> None:
        """Wait (at most within_s) until everything queued so far is written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while (task := self._task) is not None:
            left = deadline - loop.time()
            if left <= 0:
                return
            done, _ = await asyncio.wait({task}, timeout=left)
            if not done:
                return

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class StudentConnection:
    def __init__(
        self,
        services: Services,
        ws: web.WebSocketResponse,
        claims: SessionClaims,
        binary: bool,
        ip: str = "",
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.s = services
        self.ws = ws
        self.sid = claims.sid
        self.claims = claims
        self.binary = binary  # encoding of pushes; replies follow the frame they answer
        self.out = Outbound(ws, services.settings.send_queue_frames, transport)
        self.epoch = 0
        self.state: SessionState | None = None
        self.scheme = MarkingScheme()
        self.questions: dict[int, Question] = {}  # empty for a fixed paper once its state frame is out
        self.clock_offset_ms = 0  # Redis' clock minus ours, measured at every write
        self.lock = asyncio.Lock()
        self.bad_frames = 0
        self.bucket, self.refusals = services.hub.buckets(claims.sid, services.settings)
        self._timer: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self.closing = False
        self.stored: Stored | None = None  # as opened (presence, name); `state` is the live copy
        self.adaptive: AdaptiveContext | None = None  # adaptive tests: the item bank and the template's rules
        self.ip = ip

    def now_ms(self) -> int:
        return wall_ms() + self.clock_offset_ms

    def send(self, frame: dict[str, Any], binary: bool | None = None) -> None:
        binary = self.binary if binary is None else binary
        self.out.put(encode(frame, binary), WSMsgType.BINARY if binary else WSMsgType.TEXT)

    async def close(self, code: Close, reason: str) -> None:
        self.closing = True
        await self.out.flush()
        await self.ws.close(code=code, message=reason.encode()[:120])

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self._open():
                return
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(msg.data, msg.type is WSMsgType.BINARY)
                elif msg.type is WSMsgType.ERROR:
                    break
                if self.closing:
                    break
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.s.hub.unregister(self)
            self.s.hub.park(self.sid, self.bucket, self.refusals)
            await self.out.stop()
            # aiohttp cancels the handler once the peer has gone: marking the student offline must happen anyway
            await asyncio.shield(self.s.background(self._left()))
            if not self.ws.closed:
                # the student closed (autoclose is off): answered only now, so that a reconnect right after a
                # clean close, from this process or another, finds them offline and is not a second device
                await self.ws.close(drain=False)

    async def _left(self) -> None:
        """The student is offline from now, unless a newer connection took over (leave.lua checks the epoch)."""
        state = self.state
        if state is None or state.status.finished or self.epoch == 0:
            return
        try:
            await self.s.store.leave(self.sid, self.epoch)
        except StorageUnavailable:
            return  # the proctor sees them offline once Redis is back and the next connection comes
        self.s.rooms.touch(state.template_id, self.sid)

    async def _open(self) -> bool:
        try:
            opened = await self.s.store.open(self.sid, str(self.claims.user_id), self.ip)
        except StorageUnavailable as exc:
            await self._unavailable(None, self.binary, exc)
            return False
        self.s.hub.outage.recovered()
        if opened is Outcome.FORBIDDEN:
            self.send(frames.error_frame("forbidden", "this session belongs to someone else"))
            await self.close(Close.UNAUTHORIZED, "not your session")
            return False
        if not isinstance(opened, Opened):
            self.send(frames.error_frame("session_not_found", "this session does not exist or has expired"))
            await self.close(Close.SESSION_NOT_FOUND, "session not found")
            return False
        stored: Stored = opened.stored
        self.stored = stored
        self.epoch = stored.epoch
        self.scheme = stored.scheme
        self.clock_offset_ms = opened.now_ms - wall_ms()
        self.state = stored.state
        self.s.hub.register(self)
        self.questions = await self.s.catalog.questions(stored.state.paper.question_ids)
        if stored.state.adaptive is not None and not await self._load_adaptive(stored.state.template_id):
            return False
        async with self.lock:
            await self._execute(Open(), self.binary)
        if self.closing:
            return False
        state = self.state
        self.send(frames.state_frame(state, self.questions, self.scheme, self.now_ms(), self.epoch, not self.binary))
        if state.adaptive is None:  # the process' catalog keeps a fixed paper's questions: ~9 KB less per connection
            self.questions = {}
        if state.status.finished:
            await self.close(Close.SESSION_FINISHED, "the attempt is over")
            return False
        self._arm_timer()
        return True

    async def _load_adaptive(self, template_id: int) -> bool:
        """The bank and rules an adaptive session moves on with (cached per process by the catalog)."""
        catalog = self.s.catalog
        found = await catalog.template(template_id)
        bank = await catalog.adaptive_bank(found[1]) if found is not None else None
        rules = found[0].adaptive if found is not None else None
        if found is None or rules is None or bank is None:
            self.send(frames.error_frame("adaptive_unavailable", "this adaptive test's template or item bank is gone"))
            await self.close(Close.SESSION_NOT_FOUND, "adaptive test unavailable")
            return False
        self.adaptive = (bank, rules, await catalog.bank_index(found[1]), found[0].rule.shuffle_options)
        return True

    def _arm_timer(self) -> None:
        state = self.state
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        if state is None or state.deadline_ms is None or state.status is not Status.ACTIVE or self.closing:
            return  # paused: the clock stands still until a proctor resumes
        delay_s = max(0.05, (state.deadline_ms + state.grace_ms - self.now_ms()) / 1000 + 0.05)
        # a timer handle until the deadline, a task only once it is due: an idle connection holds no sleeping task
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = asyncio.create_task(self._expire())

    async def _expire(self) -> None:
        async with self.lock:
            await self._execute(Expire(), self.binary)
        self._arm_timer()  # our clock estimate may have been behind Redis': look again (no-op once finished)

    # ---- messages --------------------------------------------------------------------------------------

    async def _on_frame(self, data: str | bytes, binary: bool) -> None:
        received = time.perf_counter()
        metrics = self.s.metrics
        try:
            msg = decode(data)
        except WireError as err:
            metrics.received("invalid")
            self.bad_frames += 1
            self.send(frames.error_frame(err.code, err.message, err.seq), binary)
            if self.bad_frames > self.s.settings.max_bad_frames:
                await self.close(Close.PROTOCOL_ERROR, "too many invalid frames")
            return
        metrics.received(msg.type)
        if self.bucket is not None:
            verdict = self.bucket.check()
            if not verdict.allowed:
                metrics.refused("ws")
                frame = frames.error_frame("rate_limited", "too many messages: not processed; resend later", msg.seq)
                self.send({**frame, "retry_after_ms": verdict.retry_after_ms}, binary)
                if self.refusals is not None and not self.refusals.check().allowed:
                    log.warning("session %s: message flood from %s; closing %s", self.sid, self.ip, Close.RATE_LIMITED)
                    await self.close(Close.RATE_LIMITED, "too many messages beyond the rate limit")
                return
        async with self.lock:  # (handle()'s body, inlined: one coroutine less to resume per answer)
            await self._execute(to_command(msg), binary, received)

    async def handle(self, command: Command, binary: bool, received: float | None = None) -> None:
        """`received`: perf_counter() when the frame arrived, for the acknowledgement latency metric."""
        async with self.lock:
            await self._execute(command, binary, received)

    async def _execute(self, command: Command, binary: bool, received: float | None = None) -> None:
        """Decide, persist the decision's write (if any), then adopt its state and send its effects."""
        for attempt in range(2):
            assert self.state is not None
            decision = decide(self.state, command, self.now_ms())
            if self.adaptive is not None:  # the answer also moves an adaptive test on (sessions/adaptive.py)
                decision = adaptive.advance(decision, *self.adaptive)
            if decision.write is None:
                if attempt == 0 and self.state.status is Status.PAUSED and _refused_not_active(decision):
                    await self._reload()  # a lost "resume" notice must not lock the student out
                    if self.closing:
                        return
                    continue
                break
            student_write = received is not None  # a student's message, not the hub's own (activate, expire)
            if student_write:
                crash_point(self.s, "before_write")
            try:
                applied = await self.s.store.apply(self.sid, self.epoch, decision.write)
            except StorageUnavailable as exc:
                await self._unavailable(getattr(decision.write, "seq", None), binary, exc)
                return
            if applied.outcome is Outcome.OK and student_write:
                crash_point(self.s, "after_write")
            if applied.now_ms is not None:
                self.clock_offset_ms = applied.now_ms - wall_ms()
            if applied.outcome is Outcome.NOT_DUE:
                await self._reload()  # our clock ran ahead of Redis', or we missed an extension: decide again
                if self.closing:
                    return
                continue
            # (an answer's usual outcome, OK, stands without a coroutine for _reconcile)
            reconcile = applied.outcome is not Outcome.OK or isinstance(decision.write, Activate)
            if reconcile and not await self._reconcile(decision, decision.write, applied, binary):
                return
            break
        else:
            return
        self.state = state = decision.state
        self.s.rooms.touch(state.template_id, self.sid)
        now = self.now_ms()
        finished = False
        for effect in decision.effects:
            if isinstance(effect, NextItem):
                question = self.adaptive[2][effect.question_id] if self.adaptive else None
                if question is not None:
                    self.questions[question.id] = question
                    self.send(frames.item_frame(state, question), binary)
                continue
            finished = finished or isinstance(effect, Finished)
            frame = frames.effect_frame(effect, now)
            if frame is not None:
                self.send(frame, binary)
                if received is not None and decision.write is not None and isinstance(effect, Ack):
                    self.s.metrics.acked(time.perf_counter() - received)
                    if self.s.settings.crash_point is not None:
                        await self.out.flush()  # the ack is on the wire before the crash point is reached
                        crash_point(self.s, "after_ack")
        if finished:
            await self._finished()

    async def _unavailable(self, seq: int | None, binary: bool, exc: Exception) -> None:
        """Redis did not answer. The write may or may not have happened, so this connection stops here:
        processing later messages could store seq N+1 while N is unknown, and a resent N would then be
        taken for a duplicate. The client reconnects, reads last_seq from the state frame, resends the rest."""
        self.s.hub.outage.failed("session %s: %s; closing %s", self.sid, exc, Close.STORAGE_UNAVAILABLE)
        message = "storage is unavailable: this message may not be saved; reconnect, then resend after last_seq"
        self.send(frames.error_frame("unavailable", message, seq, retry=True), binary)
        await self.close(Close.STORAGE_UNAVAILABLE, "storage unavailable")

    async def _reconcile(self, decision: Decision, write: Write, applied: Applied, binary: bool) -> bool:
        """Redis had the last word. True: the decision stands as the core made it."""
        seq = getattr(write, "seq", None)
        match applied.outcome:
            case Outcome.OK:
                if isinstance(write, Activate) and applied.deadline_ms is not None:
                    self.state = decision.state._replace(deadline_ms=applied.deadline_ms, started_ms=applied.now_ms)
                    return False  # adopted with Redis' deadline; Activate has no effects to send
                return True
            case Outcome.DUP:
                if seq is not None:
                    self.send({"type": "ack", "seq": seq, "duplicate": True}, binary)
                return False
            case Outcome.FENCED:
                self.send(
                    frames.error_frame("superseded", "another connection has taken this session over", seq), binary
                )
                await self.close(Close.SUPERSEDED, "superseded by a newer connection")
                return False
            case Outcome.NOT_ACTIVE | Outcome.TOO_LATE:
                # Someone else changed the session (the sweeper, a proctor) or the deadline passed on Redis'
                # clock: reload the truth and tell the student.
                if seq is not None:
                    code = "too_late" if applied.outcome is Outcome.TOO_LATE else "not_active"
                    self.send(frames.error_frame(code, "not saved: the session is no longer active", seq), binary)
                await self._reload()
                return False
        self.send(frames.error_frame("session_not_found", "this session no longer exists", seq), binary)
        await self.close(Close.SESSION_NOT_FOUND, "session not found")
        return False

    async def on_control(self, notice: dict[str, Any]) -> None:
        """A proctor changed this session (from any process): reload it and tell the student."""
        async with self.lock:
            if self.closing or self.state is None:
                return
            kind = str(notice.get("kind", ""))
            if kind == "message":
                self.send({"type": "message", "from": "proctor", "text": notice.get("text", "")})
                return
            await self._reload()
            after = self.state
            if self.closing or after is None or after.status.finished or kind not in CLOCK_ACTIONS:
                return
            now = self.now_ms()
            self.send({"type": "clock", "status": after.status.value, "time_left_ms": after.time_left_ms(now),
                       "deadline_ms": after.deadline_ms if after.status is Status.ACTIVE else None,
                       "server_time_ms": now, "action": kind})  # fmt: skip

    async def _reload(self) -> None:
        stored = await self.s.store.load(self.sid)
        if stored is None:
            await self.close(Close.SESSION_NOT_FOUND, "session not found")
            return
        self.state = stored.state
        self.stored = stored
        self.s.rooms.touch(stored.state.template_id, self.sid)
        if stored.state.status.finished:
            await self._finished()
        else:
            self._arm_timer()

    async def _finished(self) -> None:
        state = self.state
        assert state is not None
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        questions = self.questions or await self.s.catalog.questions(state.paper.question_ids)
        result = frames.result_of(state, questions, self.scheme)
        self.send(frames.finished_frame(state, result))
        await self.close(Close.SESSION_FINISHED, "the attempt is over")


class Hub:
    """The process' live student connections, and the fence listener that closes superseded ones."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.connections: dict[str, StudentConnection] = {}
        # rate buckets of sessions whose connection closed lately (sid -> parked at, message bucket, refusals):
        # a reconnect continues them, so that reconnecting does not buy a fresh burst (see buckets())
        self.parked: OrderedDict[str, tuple[float, Buckets]] = OrderedDict()
        self.crash_count = 0  # times the test-only crash point was reached (crash_point())
        # while Redis is down every connection closes with 4503: one log line per 10 s, not one per student
        self.outage = Outage(log, "storage unavailable to student connections")
        # refused handshakes per address (bad token or Origin): see auth_failure()
        self.failures: OrderedDict[str, LocalBucket] = OrderedDict()
        if metrics is not None:
            metrics.watch_connections(lambda: len(self.connections))

    def register(self, conn: StudentConnection) -> None:
        old = self.connections.get(conn.sid)
        self.connections[conn.sid] = conn
        if old is not None and old is not conn:
            self._supersede(old)  # other processes hear of the new epoch from open.lua's fence message

    def unregister(self, conn: StudentConnection) -> None:
        if self.connections.get(conn.sid) is conn:
            del self.connections[conn.sid]

    def buckets(self, sid: str, settings: Settings) -> Buckets:
        """A new connection's message bucket and refusal bucket: its session's parked ones when it closed a
        connection here lately, else full ones. Refusals beyond the rate drain at that rate too; a client that
        overruns them is flooding and is closed (Close.RATE_LIMITED). A reconnect to another process starts full."""
        parked = self.parked.pop(sid, None)
        if parked is not None:
            return parked[1]
        rate = settings.rate_ws_msgs
        if rate is None:
            return None, None
        return LocalBucket(rate), LocalBucket(Rate(rate.count, rate.period_s, settings.max_refused_msgs))

    def auth_failure(self, address: str) -> bool:
        """Count a handshake refused for its token or Origin; False once the address has had too many lately.

        A refused handshake is answered after the upgrade, with a close code (4001, 4003) that a browser can read;
        an upgrade costs far more than an HTTP reply, so an address that keeps failing (a flood of junk tokens)
        gets a plain 429 before the upgrade instead. Only failures count: a school behind one NAT address with
        valid tokens is never held back by this. Per process; the oldest addresses are forgotten past a bound."""
        bucket = self.failures.get(address)
        if bucket is None:
            bucket = self.failures[address] = LocalBucket(AUTH_FAILURES)
            while len(self.failures) > AUTH_FAILURE_ADDRESSES:
                self.failures.popitem(last=False)
        self.failures.move_to_end(address)
        return bucket.check().allowed

    def park(self, sid: str, bucket: LocalBucket | None, refusals: LocalBucket | None) -> None:
        """Keep a closed connection's buckets until they would be full again anyway (then a fresh one is the
        same): bounded by the sessions that disconnected in the last few seconds."""
        if bucket is None or sid in self.connections:  # no limit, or a newer connection already has its own
            return
        now = time.monotonic()
        self.parked[sid] = (now, (bucket, refusals))
        self.parked.move_to_end(sid)
        while self.parked:
            at, (oldest, _) = next(iter(self.parked.values()))
            if oldest is not None and now - at <= oldest.refill_s:
                break
            self.parked.popitem(last=False)

    def on_fence(self, sid: str, epoch: int) -> None:
        conn = self.connections.get(sid)
        if conn is not None and conn.epoch < epoch:
            self.unregister(conn)
            self._supersede(conn)

    def _supersede(self, conn: StudentConnection) -> None:
        conn.send(frames.error_frame("superseded", "another connection has taken this session over"))
        conn.s.background(conn.close(Close.SUPERSEDED, "superseded by a newer connection"))

    async def close_all(self, code: Close, reason: str) -> None:
        await asyncio.gather(
            *(c.ws.close(code=code, message=reason.encode()) for c in list(self.connections.values())),
            return_exceptions=True,
        )


def _origin_allowed(request: web.Request, services: Services) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: cross-site hijacking needs a browser, and the token still applies
    origin = origin.rstrip("/")
    own = f"{request.scheme}://{request.host}"
    return origin in (own, services.settings.base_url, *services.settings.allowed_origins)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.query.get("token")


async def student_ws(request: web.Request) -> web.StreamResponse:
    from server.services import SERVICES

    services = request.app[SERVICES]
    settings = services.settings
    ws = WebSocket(
        compress=False,  # per-message deflate costs ~7x the memory per connection
        max_msg_size=settings.max_message_bytes,
        heartbeat=settings.heartbeat_s,
        autoclose=False,  # a student's close is answered once they are recorded offline (StudentConnection.run)
    )
    binary = request.query.get("format", "json") == "msgpack"

    async def refuse(code: Close, err: str, message: str) -> web.StreamResponse:
        if not services.hub.auth_failure(request.remote or ""):
            return await too_many("too many refused handshakes from this address; retry later", 1000)
        await ws.prepare(request)
        data = encode(frames.error_frame(err, message), binary)
        await ws.send_frame(data, WSMsgType.BINARY if binary else WSMsgType.TEXT)
        await ws.close(code=code, message=message.encode()[:120])
        return ws

    # The checks that need no storage come before the upgrade, so that a refusal can be cheap (refuse()).
    claims: SessionClaims | None = None
    problem: tuple[Close, str, str] | None = None
    token = _token(request)
    if not _origin_allowed(request, services):
        problem = (Close.FORBIDDEN_ORIGIN, "forbidden_origin", "this origin may not open exam sessions")
    elif not token:
        problem = (Close.UNAUTHORIZED, "unauthorized", "a session token is required")
    else:
        try:
            claims = services.auth.verify_session(token)
        except TokenError as exc:
            problem = (Close.UNAUTHORIZED, "unauthorized", str(exc))
    if problem is not None or claims is None:
        return await refuse(*(problem or (Close.UNAUTHORIZED, "unauthorized", "invalid token")))
    await ws.prepare(request)

    conn = StudentConnection(services, ws, claims, binary, request.remote or "", request.transport)
    try:
        await conn.run()
    except Exception:
        # The outermost handler is the only place that catches everything: log it, close 1011.
        log.exception("student connection %s failed", claims.sid)
        if not ws.closed:
            await ws.close(code=Close.INTERNAL_ERROR, message=b"internal error")
    if ws.close_code == Close.MESSAGE_TOO_BIG or ws.exception() is not None:
        log.info("connection %s closed: %s", claims.sid, ws.exception())
    return ws
