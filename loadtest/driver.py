"""The asyncio load driver: what every scenario needs to start servers and to speak to them at scale.

One Python process on uvloop holds 10,000 real WebSockets (locust's per-user cost cannot, on two cores).
Here are the pieces shared by `loadtest.bench_ack`, `loadtest.scenarios` and `loadtest.run`:

- servers of the run's own: a durable redis-server (append-only, fsync always, no eviction), a fresh
  PostgreSQL database, the hub (`examhub serve --workers N`) and the baseline servers, as subprocesses;
- `Student`: one exam session over a real WebSocket, with a reader task that settles replies by `seq`
  (so sends can be pipelined, and pings are answered while a student idles);
- `Target`s for the comparison runs: examhub, the ceiling baseline and the HTTP->PostgreSQL baseline behind
  one `answer()` call;
- measurement helpers: percentiles, resident memory of a process tree, lost answers checked in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import msgpack
import orjson
from redis.asyncio import Redis

from server.workers import all_listen
from storage.embedded import EmbeddedRedis, free_port
from storage.keys import Keys

SECRET = "bench-secret-" + "b" * 40
HUB_ENV = {
    "EXAMHUB_SECRET": SECRET,
    "EXAMHUB_REDIS_DURABILITY": "warn",
    # the driver is one address hammering on purpose: the limits would measure themselves
    "EXAMHUB_RATE_REST_IP": "off",
    "EXAMHUB_RATE_REST_USER": "off",
    "EXAMHUB_RATE_WS_MSGS": "off",
}


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Lift the soft limit on open files as far as the hard limit allows; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def durable_redis() -> Iterator[str]:
    """Our own redis-server with the settings examhub demands (append-only, fsync always, no eviction)."""
    folder = Path(tempfile.mkdtemp(prefix="examhub-bench-redis-"))
    server = EmbeddedRedis(folder, port=free_port())
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A database of this run's own on the given server (dropped afterwards): runs never see each other."""
    base = server_url.rpartition("/")[0]
    name = f"examhub_bench_{random.randrange(16**8):08x}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class Hub:
    """A running `examhub serve [--workers N]`: its URL and the process tree to measure."""

    url: str
    pid: int
    database_url: str
    redis_url: str
    prefix: str
    log: Path

    def rss_kb(self) -> int:
        return tree_rss_kb(self.pid)


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (the hub's worker processes), in KB (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        todo += children(p)
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants: load over time tells whether the
    hub or the load generator was the one short of CPU."""
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        todo += children(p)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_runqueue_wait_s(pid: int) -> float:
    """Seconds a process tree's threads spent runnable but waiting for a CPU (/proc/PID/task/TID/schedstat): on a
    shared machine, the share of latency that is other work's, not the hub's."""
    waited, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            for task in Path(f"/proc/{p}/task").iterdir():
                waited += int((task / "schedstat").read_text().split()[1])
        todo += children(p)
    return waited / 1e9


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def worker_pids(pid: int) -> list[int]:
    """The worker processes of `examhub serve --workers N` or a baseline's --workers: its children but for
    multiprocessing's resource tracker, which the spawn start method runs beside them."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def _all_listen(pid: int, workers: int, log: Path) -> bool:
    """Whether the parent `pid` has said in its log that all its workers listen (server/workers.py, all_listen)."""
    return all_listen(workers) in log.read_text(errors="replace") and bool(worker_pids(pid))


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path, path: str = "/healthz") -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + path) as r:
                    if r.status < 500:
                        return
            if proc.returncode is not None:
                raise RuntimeError(f"{url} exited during start-up:\n{_tail(log)}")
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start:\n{_tail(log)}")


async def _wait_port(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(300):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        if proc.returncode is not None:
            raise RuntimeError(f"port {port}: the server exited during start-up:\n{_tail(log)}")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"port {port}: the server did not start:\n{_tail(log)}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 20)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def hub_process(database_url: str, redis_url: str, prefix: str, port: int | None = None, workers: int = 1,
                      extra_env: dict[str, str] | None = None) -> AsyncIterator[Hub]:  # fmt: skip
    """Seed the database, then `examhub serve --workers N` on a spare port; stopped on exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="examhub-bench-"))
    port = port or free_port()
    env = {**os.environ, **HUB_ENV, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "EXAMHUB_PORT": str(port), "EXAMHUB_REDIS_PREFIX": prefix, "EXAMHUB_DATA_DIR": str(data_dir),
           **(extra_env or {})}  # fmt: skip
    log_path = data_dir / "hub.log"
    log = log_path.open("wb")
    seed = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", "seed", env=env,
                                                stdout=log, stderr=log)  # fmt: skip
    if await seed.wait() != 0:
        log.close()
        raise RuntimeError(f"examhub seed failed:\n{_tail(log_path)}")
    cmd = [sys.executable, "-m", "server.cli", "serve", *(["--workers", str(workers)] if workers > 1 else [])]
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(url, proc, log_path)
        await wait_workers(proc.pid, workers, log_path)
        yield Hub(url, proc.pid, database_url, redis_url, prefix, log_path)
    finally:
        await _stop(proc)
        log.close()


async def wait_workers(pid: int, workers: int, log: Path, timeout_s: float = 30.0) -> list[int]:
    """A server of several processes (SO_REUSEPORT) answers once its first one listens, and the kernel would give
    the first connections all to that one: the load starts once the parent has said that every worker listens
    (server/workers.py, all_listen). Not within timeout_s is an error (a run with fewer would measure something
    else)."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + timeout_s
    while not _all_listen(pid, workers, log):
        if time.monotonic() > deadline:
            found = worker_pids(pid)
            raise RuntimeError(f"{len(found)} of {workers} worker processes running, not all listening after "
                               f"{timeout_s:g} s:\n{_tail(log)}")  # fmt: skip
        await asyncio.sleep(0.05)
    return worker_pids(pid)


@contextlib.asynccontextmanager
async def baseline_process(name: str, *args: str, workers: int = 1) -> AsyncIterator[str]:
    """`python -m loadtest.baselines.<name> --port P [--workers N] ...`; ready when the port accepts connections."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix=f"examhub-baseline-{name}-")) / "server.log"
    log = log_path.open("wb")
    more = ["--workers", str(workers)] if workers > 1 else []
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"loadtest.baselines.{name}",
                                                "--port", str(port), *more, *args, stdout=log, stderr=log)  # fmt: skip
    try:
        await _wait_port(port, proc, log_path)
        await wait_workers(proc.pid, workers, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(proc)
        log.close()


async def probe_fsync(writes: int = 200) -> dict[str, float]:
    """Sequential writes to a fresh durable redis-server (appendfsync always): each waits for one fsync, the floor
    under every acknowledgement. On a shared machine this is what other work does to the disk; runs report it."""
    with durable_redis() as url:
        redis = Redis.from_url(url)
        try:
            ms = []
            for i in range(writes):
                t0 = time.perf_counter()
                await redis.set(f"probe:{i}", "x")
                ms.append((time.perf_counter() - t0) * 1000)
        finally:
            await redis.aclose()
    return {"fsync_write_p50_ms": round(pct(ms, 50), 2), "fsync_write_p99_ms": round(pct(ms, 99), 2)}


# ---------------------------------------------------------------------------------------------- students


_LAST_SEQ = re.compile(r'"last_seq":(\d+)')  # a key: inside a question's text its quotes would be escaped


class Options:
    """Option ids per question id, shared by all students: a 180-question paper per student would otherwise
    keep ~360 KB of question text alive per connection in the load generator."""

    def __init__(self) -> None:
        self.by_question: dict[int, tuple[str, ...]] = {}

    def learn(self, questions: list[dict[str, Any]]) -> list[int]:
        ids = []
        for q in questions:
            qid = q["id"]
            if qid not in self.by_question:
                self.by_question[qid] = tuple(sorted(sys.intern(o["id"]) for o in q["options"]))
            ids.append(qid)
        return ids

    def pick(self, qid: int) -> str:
        return random.choice(self.by_question[qid])


@dataclass(eq=False)
class Student:
    """One exam session. `request()` sends a sequenced frame and returns its reply; the reader task settles
    replies by `seq`, so several may be in flight (pipelining is allowed by the protocol)."""

    sid: str
    token: str
    binary: bool = False
    ws: aiohttp.ClientWebSocketResponse | None = None
    qids: list[int] = field(default_factory=list)
    seq: int = 0
    acked: dict[int, str | None] = field(default_factory=dict)  # question id -> last acknowledged choice
    waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    finished: asyncio.Future[dict[str, Any]] | None = None
    reader: asyncio.Task[None] | None = None
    pushes: int = 0
    close_code: int | None = None

    async def connect(self, http: aiohttp.ClientSession, base_url: str, options: Options | None) -> dict[str, Any]:
        """Open the WebSocket and read the state frame. `options` None: a student that will only have connected
        (the start storm), whose JSON state frame is checked for what it is, this session's, but not parsed: at
        ~90 KB, parsing took ~580 us of the load generator's CPU a student on a slow machine, a fifth of its
        share of the two cores that the hub needs in a storm. Returns the frame's head then."""
        fmt = "&format=msgpack" if self.binary else ""
        self.ws = await http.ws_connect(f"{base_url.replace('http', 'ws', 1)}/ws/student?token={self.token}{fmt}",
                                        compress=0, max_msg_size=0, autoping=True)  # fmt: skip
        msg = await self.ws.receive()
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise ConnectionError(f"no state frame: {msg.type!r} {msg.data!r}")
        if options is None and isinstance(msg.data, str):
            head = f'{{"type":"state","session":"{self.sid}",'
            seq = _LAST_SEQ.search(msg.data)
            if not msg.data.startswith(head) or not msg.data.endswith("}") or seq is None:
                raise ConnectionError(f"expected this session's state frame, got {msg.data[:200]}")
            self.seq = int(seq.group(1))
            self.finished = asyncio.get_running_loop().create_future()
            self.reader = asyncio.ensure_future(self._read())
            return {"type": "state", "session": self.sid, "last_seq": self.seq}
        state = self._decode(msg.data)
        if state.get("type") != "state":
            raise ConnectionError(f"expected a state frame, got {state}")
        self.qids = (options or Options()).learn(state["questions"])
        self.seq = state["last_seq"]
        self.finished = asyncio.get_running_loop().create_future()
        self.reader = asyncio.ensure_future(self._read())
        return state

    def _decode(self, data: str | bytes) -> dict[str, Any]:
        out: dict[str, Any] = msgpack.unpackb(data) if isinstance(data, bytes) else orjson.loads(data)
        return out

    async def _read(self) -> None:
        assert self.ws is not None and self.finished is not None
        try:
            async for msg in self.ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                frame = self._decode(msg.data)
                kind = frame.get("type")
                fut = self.waiting.pop(frame["seq"], None) if kind in ("ack", "error", "time") else None
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                elif kind == "finished" and not self.finished.done():
                    self.finished.set_result(frame)
                else:
                    self.pushes += 1
        finally:
            self.close_code = self.ws.close_code
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection closed ({self.close_code})"))
            self.waiting.clear()
            if not self.finished.done():
                self.finished.set_exception(ConnectionError(f"connection closed ({self.close_code})"))
                self.finished.exception()  # retrieved: nobody may be waiting for it

    async def send(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a sequenced frame (its `seq` is set here); the future resolves with the reply."""
        assert self.ws is not None
        self.seq += 1
        frame["seq"] = self.seq
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        if self.binary:
            await self.ws.send_bytes(msgpack.packb(frame))
        else:
            await self.ws.send_str(json.dumps(frame))
        return fut

    async def answer(self, qid: int, choice: str | None) -> bool:
        """One answer, awaited; True when acknowledged."""
        reply = await (await self.send({"type": "answer", "q": qid, "choice": choice, "time_ms": 1000}))
        if reply["type"] == "ack":
            self.acked[qid] = choice
            return True
        return False

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader


async def template_id(http: aiohttp.ClientSession, base_url: str, slug: str) -> int:
    async with http.get(base_url + "/api/templates") as r:
        templates = (await r.json())["templates"]
    found = [t["id"] for t in templates if t["slug"] == slug]
    if not found:
        raise LookupError(f"no template {slug!r} (have: {', '.join(t['slug'] for t in templates)})")
    return int(found[0])


async def guest_token(http: aiohttp.ClientSession, base_url: str, name: str) -> str:
    async with http.post(base_url + "/api/auth/guest", json={"display_name": name}) as r:
        if r.status != 201:
            raise RuntimeError(f"guest: {r.status} {await r.text()}")
        return str((await r.json())["token"])


async def start_session(http: aiohttp.ClientSession, base_url: str, user_token: str, tid: int,
                        binary: bool = False) -> Student:  # fmt: skip
    async with http.post(base_url + "/api/sessions", json={"template_id": tid},
                         headers={"Authorization": f"Bearer {user_token}"}) as r:  # fmt: skip
        if r.status != 201:
            raise StartRefused(r.status, r.headers.get("Retry-After"), await r.text())
        body = await r.json()
    return Student(body["session_id"], body["token"], binary)


class StartRefused(Exception):
    def __init__(self, status: int, retry_after: str | None, text: str) -> None:
        super().__init__(f"POST /api/sessions: {status} {text[:200]}")
        self.status = status
        self.retry_after = float(retry_after) if retry_after else None


def client_session(limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))  # fmt: skip


async def start_students(base_url: str, n: int, template_slug: str, binary: bool = False,
                         concurrency: int = 64) -> list[Student]:  # fmt: skip
    """n guests, one session each (not measured: the set-up of the steady-state scenarios)."""
    sem = asyncio.Semaphore(concurrency)
    async with client_session(concurrency) as http:
        tid = await template_id(http, base_url, template_slug)

        async def one(i: int) -> Student:
            async with sem:
                token = await guest_token(http, base_url, f"load {i}")
                return await start_session(http, base_url, token, tid, binary)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def connect_all(http: aiohttp.ClientSession, base_url: str, students: list[Student], options: Options,
                      concurrency: int = 200) -> list[float]:  # fmt: skip
    """Connect every student (bounded concurrency); returns each connect-to-state time in ms."""
    sem = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(st: Student) -> None:
        async with sem:
            t0 = time.perf_counter()
            await st.connect(http, base_url, options)
            times.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one(st) for st in students))
    return times


async def count_lost(redis_url: str, prefix: str, students: list[Student]) -> int:
    """Acknowledged answers whose final value is not in Redis."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    lost = 0
    try:
        for chunk in range(0, len(students), 500):
            group = students[chunk : chunk + 500]
            pipe = redis.pipeline(transaction=False)
            for st in group:
                pipe.hgetall(keys.session(st.sid).ans)
            for st, saved in zip(group, await pipe.execute(), strict=True):
                for q, choice in st.acked.items():
                    if saved.get(str(q), "").split("|")[0] != (choice or ""):
                        lost += 1
    finally:
        await redis.aclose()
    return lost


async def admin_token(database_url: str) -> str:
    from server.auth import Auth, Role
    from storage import users

    conn = await asyncpg.connect(database_url)
    try:
        user = await users.create_user(conn, f"bench-admin-{random.randrange(16**8):08x}", None, "bench", role="admin")
    finally:
        await conn.close()
    return Auth(SECRET).user_token(user.id, Role.ADMIN, 3600)


# ---------------------------------------------------------------------------------------------- targets


class Target(Protocol):
    """Something that takes answers and acknowledges them: examhub or a baseline, for the comparison runs."""

    name: str

    async def open(self, n: int) -> None: ...

    async def answer(self, i: int) -> bool:
        """Student i answers one question; True once acknowledged."""
        ...

    async def close(self) -> None: ...


class ExamhubTarget:
    name = "examhub"

    def __init__(self, hub: Hub, template: str) -> None:
        self.hub, self.template = hub, template
        self.options = Options()
        self.students: list[Student] = []
        self.http = client_session()
        self.next_q: list[int] = []

    async def open(self, n: int) -> None:
        self.students = await start_students(self.hub.url, n, self.template)
        await connect_all(self.http, self.hub.url, self.students, self.options)
        self.next_q = [random.randrange(len(st.qids)) for st in self.students]

    async def answer(self, i: int) -> bool:
        st = self.students[i]
        self.next_q[i] += 1
        qid = st.qids[self.next_q[i] % len(st.qids)]
        return await st.answer(qid, self.options.pick(qid))

    async def close(self) -> None:
        await asyncio.gather(*(st.close() for st in self.students))
        await self.http.close()


class CeilingTarget:
    """loadtest.baselines.ceiling: `GET /ws?student=ID`, `{"type":"answer","seq","q","choice"}` -> ack."""

    name = "ceiling"

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = client_session()
        self.conns: list[aiohttp.ClientWebSocketResponse] = []
        self.seq: list[int] = []
        self.waiting: list[asyncio.Future[dict[str, Any]] | None] = []
        self.readers: list[asyncio.Task[None]] = []

    async def open(self, n: int) -> None:
        sem = asyncio.Semaphore(200)

        async def one(i: int) -> aiohttp.ClientWebSocketResponse:
            async with sem:
                return await self.http.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?student=s{i}", compress=0)

        self.conns = list(await asyncio.gather(*(one(i) for i in range(n))))
        self.seq = [0] * n
        self.waiting = [None] * n
        self.readers = [asyncio.ensure_future(self._read(i)) for i in range(n)]

    async def _read(self, i: int) -> None:
        async for msg in self.conns[i]:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            fut = self.waiting[i]
            if fut is not None and not fut.done():
                fut.set_result(orjson.loads(msg.data))
        fut = self.waiting[i]
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("ceiling connection closed"))

    async def answer(self, i: int) -> bool:
        self.seq[i] += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[i] = fut
        await self.conns[i].send_str(json.dumps({"type": "answer", "seq": self.seq[i],
                                                 "q": random.randrange(1, 181), "choice": "A"}))  # fmt: skip
        reply = await fut
        return reply.get("type") == "ack" and reply.get("seq") == self.seq[i]

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.conns))
        for t in self.readers:
            t.cancel()
        await self.http.close()


class HttpPgTarget:
    """loadtest.baselines.http_pg: `POST /answer {"student","seq","q","choice"}` -> 200 `{"ack": seq}`.
    One keep-alive connection per student at most, as a browser would have."""

    name = "http_pg"

    def __init__(self, url: str) -> None:
        self.url = url
        self.http: aiohttp.ClientSession | None = None
        self.seq: list[int] = []

    async def open(self, n: int) -> None:
        self.http = client_session(limit=n)
        self.seq = [0] * n

    async def answer(self, i: int) -> bool:
        assert self.http is not None
        self.seq[i] += 1
        body = {"student": f"s{i}", "seq": self.seq[i], "q": random.randrange(1, 181), "choice": "A"}
        async with self.http.post(self.url + "/answer", json=body) as r:
            if r.status != 200:
                return False
            return bool((await r.json()).get("ack") == self.seq[i])

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Latencies:
    ms: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # each latency's scheduled send time (perf_counter)
    sent: int = 0
    acked: int = 0
    errors: int = 0
    start: float = 0.0

    def p99_by_window(self, window_s: float = 5.0) -> list[float]:
        """p99 per consecutive window of scheduled time: tells a single stall (a GC pass) from queueing."""
        buckets: dict[int, list[float]] = {}
        for at, ms in zip(self.at, self.ms, strict=True):
            buckets.setdefault(int((at - self.start) // window_s), []).append(ms)
        return [round(pct(buckets.get(k, []), 99), 1) for k in range(max(buckets, default=-1) + 1)]


async def paced(n: int, rate: float, duration: float, answer: Any, lat: Latencies) -> float:
    """n students answering at `rate` per second together, each on a fixed schedule with a random phase,
    one answer in flight each. Latency runs from the *scheduled* send time to the ack, so a stalled server
    shows up as latency rather than as a quietly lower rate (no coordinated omission). Returns the elapsed s."""
    interval = n / rate
    t0 = lat.start = time.perf_counter()
    until = t0 + duration

    async def one(i: int) -> None:
        due = t0 + random.random() * interval
        while due < until:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lat.sent += 1
            try:
                ok = await answer(i)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                lat.errors += 1
                return
            if ok:
                lat.acked += 1
                lat.ms.append((time.perf_counter() - due) * 1000)
                lat.at.append(due)
            else:
                lat.errors += 1
            due += interval

    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(values: list[float], prefix: str = "") -> dict[str, float | None]:
    """p50/p95/p99/max in ms, rounded; None when nothing was measured (JSON has no NaN)."""
    if not values:
        return {f"{prefix}p50_ms": None, f"{prefix}p95_ms": None, f"{prefix}p99_ms": None, f"{prefix}max_ms": None}
    return {
        f"{prefix}p50_ms": round(pct(values, 50), 2),
        f"{prefix}p95_ms": round(pct(values, 95), 2),
        f"{prefix}p99_ms": round(pct(values, 99), 2),
        f"{prefix}max_ms": round(max(values), 2),
    }
