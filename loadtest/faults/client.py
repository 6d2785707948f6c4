"""A simulated student that keeps score of every answer it sends, for the fault suite's checker.

It follows docs/protocol.md sections 5 and 13 as a careful browser would: an outbox of unsettled messages,
one sequenced message in flight at a time, reconnect with backoff and jitter (to the next hub URL, or with
`spread` to a random one, as a load balancer would), resume from `last_seq` and resend the rest with their
original seqs. Every message it sends ends in one of three states:

- `acked`: an `ack` (or a duplicate ack) came back, or a later `state` frame's `last_seq` covers it;
- `refused`: an error reply that means "not stored" (not_active, too_late, superseded, ...);
- `unknown`: sent, and the connection died before a reply (kept and resent until settled or the run ends).

Seqs are never reused, so a stored (question, choice, seq) names exactly one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ACKED, REFUSED, UNKNOWN = "acked", "refused", "unknown"
TERMINAL = {4000, 4001, 4003, 4004, 4009, 4400}  # docs/protocol.md section 9: do not reconnect


@dataclass(slots=True)
class Sent:
    seq: int
    q: int
    choice: str | None
    status: str = UNKNOWN
    sent_at: float = 0.0  # monotonic, first send
    settled_at: float = 0.0
    code: str = ""  # the refusal's error code
    by_resume: bool = False  # settled by a state frame's last_seq, not by an ack


class Lost(Exception):
    """The connection is gone (close, reset, timeout); `code` is the close code when there was one."""

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class FaultClient:
    sid: str
    token: str
    urls: list[str]
    url_index: int = 0
    spread: bool = False  # on reconnect pick a random hub (a load balancer) instead of the next one in turn
    reply_timeout_s: float = 10.0
    # A resuming herd can keep a hub busy for seconds: giving up on a slow `state` frame only wastes the work
    # the hub already put into it (a browser waits, too).
    connect_timeout_s: float = 30.0
    log: list[Sent] = field(default_factory=list)
    outbox: list[Sent] = field(default_factory=list)
    seq: int = 0
    questions: list[dict[str, Any]] = field(default_factory=list)
    resume_s: list[float] = field(default_factory=list)  # connection lost -> next state frame
    closes: Counter[int | None] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # error codes received
    unavailable_at: list[float] = field(default_factory=list)
    connects: int = 0
    fenced: bool = False
    finished: bool = False
    submitted: bool = False
    ws: aiohttp.ClientWebSocketResponse | None = None
    _lost_at: float | None = None
    _backoff: float = 0.2

    # ---- connection ----------------------------------------------------------------------------------

    async def connect(self, http: aiohttp.ClientSession, heartbeat_s: float | None = None) -> bool:
        """Connect (with backoff) until a `state` frame; settle and resend the outbox. False: the exam is over
        for this client (finished, fenced or a terminal close)."""
        while True:
            url = self.urls[self.url_index % len(self.urls)]
            try:
                self.ws = await http.ws_connect(
                    f"{url.replace('http', 'ws', 1)}/ws/student?token={self.token}",
                    heartbeat=heartbeat_s, timeout=aiohttp.ClientWSTimeout(ws_close=2),
                    compress=0, max_msg_size=0,
                )  # fmt: skip
                first = await self._frame(self.connect_timeout_s)
            except (aiohttp.ClientError, OSError, TimeoutError, Lost) as exc:
                code = exc.code if isinstance(exc, Lost) else None
                self.closes[code] += 1
                if code in TERMINAL:
                    return False
                await self._drop()
                await self._wait_backoff()
                continue
            if first.get("type") == "state":
                self._resumed(first)
                if first["status"] not in ("active", "paused"):
                    self.finished = True
                    return False
                return True
            if first.get("type") == "error":
                self.errors[first.get("code", "")] += 1
                if first.get("code") == "unavailable":
                    self.unavailable_at.append(time.monotonic())
            if first.get("type") == "finished":
                self.finished = True
                return False
            with contextlib.suppress(Lost, TimeoutError):
                await self._frame(2.0)  # the close that follows
            code = self.ws.close_code if self.ws is not None else None
            self.closes[code] += 1
            if code in TERMINAL:
                self.fenced = code == 4009
                return False
            await self._drop()
            await self._wait_backoff()

    def _resumed(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        self.connects += 1
        if self._lost_at is not None:
            self.resume_s.append(now - self._lost_at)
            self._lost_at = None
        self._backoff = 0.2
        self.questions = state["questions"]
        last = state["last_seq"]
        for m in self.outbox:
            if m.seq <= last and m.status == UNKNOWN:
                m.status, m.settled_at, m.by_resume = ACKED, now, True
        self.outbox = [m for m in self.outbox if m.status == UNKNOWN]
        self.seq = max(self.seq, last)

    async def _wait_backoff(self) -> None:
        first = self._backoff <= 0.2  # the first attempt after a drop may go anywhere; a failed one moves on
        self.url_index += random.randrange(1, len(self.urls) + 1) if self.spread and first else 1
        await asyncio.sleep(self._backoff * (0.5 + random.random() / 2))
        self._backoff = min(self._backoff * 2, 5.0)

    async def _drop(self) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 1)
            self.ws = None

    async def _frame(self, within_s: float) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=within_s)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame: dict[str, Any] = json.loads(msg.data)
            return frame
        code = self.ws.close_code if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) else None
        raise Lost(code, f"{msg.type.name} {msg.data!r}")

    # ---- messages ------------------------------------------------------------------------------------

    async def _exchange(self, m: Sent) -> None:
        """Send m (first time or again) and read until its reply. Raises Lost when the connection dies."""
        assert self.ws is not None
        if m.sent_at == 0.0:
            m.sent_at = time.monotonic()
        await self._send({"type": "answer", "seq": m.seq, "q": m.q, "choice": m.choice, "time_ms": 1000})
        await self._settle(m)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.ws is None:
            raise Lost(None, "not connected")
        try:
            await self.ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise Lost(await self._why_closed(), f"send: {exc}") from None

    async def _why_closed(self) -> int | None:
        """The hub may have closed first (a fence from another process supersedes an idle connection at once):
        read what it said before the close, as a browser would have (the `superseded` frame, close 4009)."""
        with contextlib.suppress(Lost, TimeoutError, RuntimeError, AssertionError):
            while True:
                frame = await self._frame(0.5)
                if frame.get("type") == "error":
                    self.errors[frame.get("code", "")] += 1
                    self.fenced = self.fenced or frame.get("code") == "superseded"
        return self.ws.close_code if self.ws is not None else None

    async def _settle(self, m: Sent) -> None:
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            try:
                frame = await self._frame(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise Lost(None, "no reply in time") from None
            kind = frame.get("type")
            if kind == "ack" and frame.get("seq") == m.seq:
                m.status, m.settled_at = ACKED, time.monotonic()
                return
            if kind == "error":
                code = frame.get("code", "")
                self.errors[code] += 1
                if code == "unavailable":
                    self.unavailable_at.append(time.monotonic())
                    continue  # not known: keep it; the close 4503 follows
                if code == "superseded":
                    self.fenced = True
                if frame.get("seq") == m.seq:
                    m.status, m.settled_at, m.code = REFUSED, time.monotonic(), code
                    return
            elif kind == "finished":
                self.finished = True
                raise Lost(4000, "finished")

    async def send_answer(self, q: int, choice: str | None) -> Sent:
        """A new answer: queued in the outbox, sent, settled (or left unknown when the connection dies)."""
        self.seq += 1
        m = Sent(self.seq, q, choice)
        self.log.append(m)
        self.outbox.append(m)
        await self._exchange(m)
        self.outbox = [x for x in self.outbox if x.status == UNKNOWN]
        return m

    async def resend_outbox(self) -> None:
        for m in list(self.outbox):
            await self._exchange(m)
        self.outbox = [x for x in self.outbox if x.status == UNKNOWN]

    def random_answer(self) -> tuple[int, str]:
        q = random.choice(self.questions)
        return q["id"], random.choice(q["options"])["id"]

    # ---- the whole life ------------------------------------------------------------------------------

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event, interval_s: float,
                  heartbeat_s: float | None = None) -> None:  # fmt: skip
        """Answer every ~interval_s until `stop`, surviving whatever happens to the connection."""
        await asyncio.sleep(random.random() * interval_s)
        while not stop.is_set():
            if self.ws is None and not await self.connect(http, heartbeat_s):
                return
            try:
                await self.resend_outbox()
                while not stop.is_set():
                    await self.send_answer(*self.random_answer())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval_s * (0.5 + random.random()))
            except Lost as exc:
                self.closes[exc.code] += 1
                if exc.code in TERMINAL or self.finished or self.fenced:
                    await self._drop()
                    return
                await self._drop()
                await self._wait_backoff()

    async def submit(self, http: aiohttp.ClientSession, attempts: int = 30) -> bool:
        """Settle the outbox, then submit. True once a `finished` frame (or a finished state) is seen."""
        for _ in range(attempts):
            if self.finished:
                return True
            if self.ws is None and not await self.connect(http):
                return self.finished
            try:
                await self.resend_outbox()
                self.seq += 1
                await self._send({"type": "submit", "seq": self.seq})
                while True:
                    frame = await self._frame(self.reply_timeout_s)
                    if frame.get("type") == "finished":
                        self.finished = self.submitted = True
                        await self._drop()
                        return True
                    if frame.get("type") == "error" and frame.get("seq") == self.seq and frame["code"] != "unavailable":
                        self.errors[frame.get("code", "")] += 1
                        break
            except (Lost, TimeoutError):
                await self._drop()
                await self._wait_backoff()
        return self.finished

    async def close(self) -> None:
        await self._drop()
        self._lost_at = None


def counts(clients: list[FaultClient]) -> Counter[str]:
    c: Counter[str] = Counter()
    for cl in clients:
        for m in cl.log:
            c[m.status] += 1
    return c
