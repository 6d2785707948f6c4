"""The ceiling of examhub's stack: a bare aiohttp WebSocket server that saves each answer to Redis and acks.

    python -m loadtest.baselines.ceiling --port P --redis-url redis://127.0.0.1:6379/0 [--prefix ceiling]

`GET /ws?student=ID` opens a WebSocket. The client sends JSON text frames
`{"type": "answer", "seq": n, "q": <int>, "choice": "A"}`; the server writes the answer with HSET into the
student's hash `<prefix>:{<student>}:ans` (one hash tag per student, as examhub's keys have; a TTL so nothing
outlives a run) and replies `{"type": "ack", "seq": n}` only after Redis has returned. A bad frame gets
`{"type": "error", "seq": n|null, "code": ..., "message": ...}`; a failed write gets code `unavailable`.
`GET /healthz` answers 200 once the server listens (for drivers waiting on the port).

Everything examhub does on top (the session state machine, sequence dedup and fencing in a Lua script, deadlines on
Redis' clock, the outbox, rate limits, proctor feeds) is left out on purpose. What is kept is what no design on
this stack can avoid, done the fastest way we know: uvloop, orjson (as the hub), `compress=False`, the same
WebSocket limits as the hub (64 KiB frames, 15 s heartbeat), Python's GC tuned as the hub tunes it, and writes
coalesced the way storage/writer.py coalesces them: every answer that arrives while a pipeline is in flight rides
the next pipeline, so Redis sees one round trip per batch, not per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from loadtest.baselines import run, serve_until_signal

STUDENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CHOICE = re.compile(r"^[A-Za-z0-9]{1,8}$")
MAX_FRAME = 65536  # as the hub (EXAMHUB_MAX_MESSAGE_BYTES)
HEARTBEAT_S = 15.0  # as the hub (EXAMHUB_HEARTBEAT_S)


@dataclass(slots=True)
class _Write:
    key: str
    field: str
    value: str
    future: asyncio.Future[None]


class Coalescer:
    """One task sends whatever answers queued up while the previous pipeline was in flight, as one pipeline."""

    def __init__(self, redis: Redis, ttl_s: int, max_batch: int = 1000) -> None:
        self._redis = redis
        self._conn: Connection | None = None
        self._ttl_s = ttl_s
        self._max_batch = max_batch
        self._pending: list[_Write] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.disconnect()

    def save(self, key: str, field: str, value: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(key, field, value, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._execute(batch)

    async def _execute(self, batch: list[_Write]) -> None:
        self.batches += 1
        self.writes += len(batch)
        commands: list[tuple[str | int, ...]] = [("HSET", w.key, w.field, w.value) for w in batch]
        commands += [("EXPIRE", key, self._ttl_s) for key in {w.key for w in batch}]  # a TTL, no extra round trip
        try:
            await self._round_trip(commands)
            error: Exception | None = None
        except (RedisError, OSError, TimeoutError) as exc:
            error = exc
        for w in batch:
            if w.future.done():
                continue
            if error is None:
                w.future.set_result(None)
            else:
                w.future.set_exception(error)

    async def _round_trip(self, commands: list[tuple[str | int, ...]]) -> None:
        """As storage/writer.py's: one write of the packed commands, then their replies (an error reply raises)."""
        if self._conn is None:
            self._conn = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        await conn.send_packed_command(b"".join([hiredis.pack_command(c) for c in commands]))  # type: ignore[arg-type]
        failed: ResponseError | None = None
        for _ in commands:
            try:
                await conn.read_response()
            except ResponseError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


class Ceiling:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int) -> None:
        self.prefix = prefix
        self.writer = Coalescer(redis, ttl_s)
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_all(self) -> None:
        """On shutdown: aiohttp would otherwise wait for every open WebSocket handler to end by itself."""
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in list(self.sockets)),
                             return_exceptions=True)  # fmt: skip

    def key(self, student: str) -> str:
        return f"{self.prefix}:{{{student}}}:ans"

    async def ws(self, request: web.Request) -> web.StreamResponse:
        student = request.query.get("student", "")
        if not STUDENT_ID.match(student):
            return web.json_response(
                {"error": "bad_request", "message": "?student= must be 1-64 letters, digits or _.:-"}, status=400
            )
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_FRAME, heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            await self._serve(ws, self.key(student))
        finally:
            self.sockets.discard(ws)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, key: str) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    await ws.send_str(_error(None, "bad_frame", "send JSON text frames"))
                continue
            answer = parse_answer(msg.data)
            if isinstance(answer, str):
                await ws.send_str(_error(_seq_of(msg.data), "bad_frame", answer))
                continue
            seq, q, choice = answer
            try:
                await self.writer.save(key, str(q), f"{choice}|{seq}")
            except (RedisError, OSError, TimeoutError) as exc:
                await ws.send_str(_error(seq, "unavailable", f"not saved: {exc}"))
                continue
            await ws.send_str(f'{{"type":"ack","seq":{seq}}}')


def parse_answer(data: str) -> tuple[int, int, str] | str:
    """(seq, q, choice), or what is wrong with the frame."""
    try:
        frame: Any = orjson.loads(data)
    except ValueError:
        return "not JSON"
    if not isinstance(frame, dict) or frame.get("type") != "answer":
        return 'expected {"type": "answer", "seq": n, "q": question, "choice": option}'
    seq, q, choice = frame.get("seq"), frame.get("q"), frame.get("choice")
    if not _is_int(seq) or seq < 0:
        return "seq must be a non-negative integer"
    if not _is_int(q):
        return "q must be an integer"
    if not isinstance(choice, str) or not CHOICE.match(choice):
        return "choice must be 1-8 letters or digits"
    return seq, q, choice


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seq_of(data: str) -> int | None:
    with contextlib.suppress(ValueError, AttributeError):
        seq = orjson.loads(data).get("seq")
        return seq if _is_int(seq) and seq >= 0 else None
    return None


def _error(seq: int | None, code: str, message: str) -> str:
    return orjson.dumps({"type": "error", "seq": seq, "code": code, "message": message}).decode()


async def serve(port: int, redis_url: str, prefix: str, ttl_s: int, reuse_port: bool) -> None:
    redis = Redis.from_url(redis_url)
    await redis.ping()
    ceiling = Ceiling(redis, prefix, ttl_s)
    ceiling.writer.start()
    app = web.Application()
    app.router.add_get("/ws", ceiling.ws)
    app.on_shutdown.append(lambda _: ceiling.close_all())  # before the runner waits for the handlers
    try:
        await serve_until_signal(app, port, f"ceiling: serving on http://127.0.0.1:{port}/ws", reuse_port)
    finally:
        await ceiling.writer.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", default="ceiling", help="Redis key prefix (default: ceiling)")
    p.add_argument("--ttl", type=int, default=86_400, help="seconds each student's hash lives (default: a day)")
    p.add_argument("--workers", type=int, default=1, choices=(1, 2, 3, 4), help="processes sharing the port")
    args = p.parse_args(argv)
    return run(serve, (args.port, args.redis_url, args.prefix, args.ttl), args.workers)


if __name__ == "__main__":
    sys.exit(main())
