"""Hub memory per idle connection: N students of a template connect, sit still, and the hub's RSS is read.

    python -m loadtest.memory --students 2000                  # neet-mock-180: 180 questions per state frame
    python -m loadtest.memory --students 2000 --trace          # plus tracemalloc's top allocations in the hub
    python -m loadtest.memory --students 2000 --server ceiling # the floor: the same on baselines/ceiling.py

Issue #6's target is <= 25 KB per idle connection. The harness is bench_ack's (imported, not copied): a hub
process (`examhub serve`, as deployed) against a fresh database of its own and its own durable redis-server.
Sessions are started over REST first (that loads the bank into the hub's catalog), the hub's VmRSS is read,
then every student connects and receives its state frame; once the hub's RSS has stopped moving it is read
again. Reported: (RSS after - RSS before) / N.

With --trim the hub is also asked (SIGUSR2) to malloc_trim(0) at the end, and the figure after it is
reported: the difference is memory the allocator kept after the state frames were freed (fragmentation).

With --trace the hub runs under tracemalloc (a `sitecustomize` put on its PYTHONPATH starts it and dumps a
snapshot on SIGUSR1), and the difference between the snapshots before and after the connections is printed by
allocation site. tracemalloc costs memory of its own, so the RSS figure of a --trace run is not the figure
to quote; run without --trace for that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_ack import (
    Stats,
    connect,
    durable_redis,
    fresh_database,
    hub_process,
    rss_kb,
    start_students,
)
from storage.embedded import free_port

TRACE_ENV = "EXAMHUB_MEMORY_TRACE"

# Runs inside the hub process (as sitecustomize) when --trace is given: start tracemalloc before anything
# is imported, dump a snapshot to $EXAMHUB_MEMORY_TRACE.<n> on each SIGUSR1.
_SITECUSTOMIZE = f"""
import ctypes, os, signal, tracemalloc
signal.signal(signal.SIGUSR2, lambda signum, frame: ctypes.CDLL("libc.so.6").malloc_trim(0))
_path = os.environ.get({TRACE_ENV!r})
if _path:
    tracemalloc.start(int(os.environ.get({TRACE_ENV!r} + "_FRAMES", "8")))
    _count = [0]
    def _dump(signum, frame):
        _count[0] += 1
        tracemalloc.take_snapshot().dump(f"{{_path}}.{{_count[0]}}")
    signal.signal(signal.SIGUSR1, _dump)
"""


async def settle(pid: int, quiet_s: float = 1.0, tolerance_kb: int = 256, limit_s: float = 30.0) -> int:
    """The hub's RSS once it has stopped moving (two readings `quiet_s` apart within `tolerance_kb`)."""
    last = rss_kb(pid)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = rss_kb(pid)
        if abs(now - last) <= tolerance_kb:
            return now
        last = now
    return last


async def snapshot(pid: int, base: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    path = Path(f"{base}.{n}")
    last = -1
    for _ in range(1200):
        await asyncio.sleep(0.3)
        size = _size(path)
        if size > 0 and size == last:  # written completely
            return tracemalloc.Snapshot.load(str(path))
        last = size
    raise RuntimeError("the hub wrote no tracemalloc snapshot (is SIGUSR1 handled?)")


async def keep_reading(ws: aiohttp.ClientWebSocketResponse, closed: list[int]) -> None:
    """An idle browser still answers the hub's pings (heartbeat): receive() does. Otherwise the hub would close
    every connection after ~1.5 heartbeats and the figure would count fewer connections than it divides by."""
    while True:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):  # fmt: skip
            closed.append(1)
            return


async def live_connections(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("examhub_ws_connections "):
                return int(float(line.split()[1]))
    raise RuntimeError("no examhub_ws_connections in /metrics")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else -1


def _remove(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


def top_allocations(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, per: int) -> list[str]:
    lines = []
    for stat in after.compare_to(before, "traceback")[:n]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in list(stat.traceback)[-4:]]
        lines.append(f"{stat.size_diff / per:9.0f} B/conn  {stat.count_diff / per:6.1f} blocks/conn  " + " <- ".join(
            reversed(frames)))  # fmt: skip
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gc.set_threshold(100_000, 50, 1000)
    prefix = f"mem{random.randrange(16**6):06x}"
    trace_dir = Path(tempfile.mkdtemp(prefix="examhub-memtrace-"))
    trace_base = trace_dir / "snap"
    if args.trace or args.trim:
        (trace_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(trace_dir), os.environ.get("PYTHONPATH")]))
    if args.trace:
        os.environ[TRACE_ENV] = str(trace_base)
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(durable_redis())
        async with (
            fresh_database(args.database_url) as database_url,
            hub_process(database_url, redis_url, prefix, free_port()) as (url, pid),
        ):
            students = await start_students(url, args.students, args.template)
            stats = Stats()
            closed: list[int] = []
            readers: list[asyncio.Task[None]] = []
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await connect(http, url, students[0], stats, False)  # one first: lazy per-process set-up
                assert students[0].ws is not None
                readers.append(asyncio.create_task(keep_reading(students[0].ws, closed)))
                rss_before = await settle(pid)
                snap_before = await snapshot(pid, trace_base, 1) if args.trace else None
                sem = asyncio.Semaphore(100)

                async def one(st: Any) -> None:
                    async with sem:
                        await connect(http, url, st, stats, args.msgpack)
                        st.questions = []  # the driver's own copy is not what we measure
                        readers.append(asyncio.create_task(keep_reading(st.ws, closed)))

                await asyncio.gather(*(one(st) for st in students[1:]))
                rss_after = await settle(pid)
                n = len(students) - 1
                live = await live_connections(http, url)
                if live != n + 1 or closed:
                    raise RuntimeError(f"{live} live connections of {n + 1} ({len(closed)} closed): not idle ones")
                result = {
                    "students": n,
                    "live_connections": live,
                    "template": args.template,
                    "encoding": "msgpack" if args.msgpack else "json",
                    "hub_rss_mb_before": round(rss_before / 1024, 1),
                    "hub_rss_mb_after": round(rss_after / 1024, 1),
                    "hub_kb_per_connection": round((rss_after - rss_before) / n, 1),
                    "traced": args.trace,
                }
                if args.trim:  # how much of it is free memory the allocator kept (fragmentation)
                    os.kill(pid, signal.SIGUSR2)
                    rss_trimmed = await settle(pid)
                    result["hub_kb_per_connection_after_malloc_trim"] = round((rss_trimmed - rss_before) / n, 1)
                if snap_before is not None:
                    snap_after = await snapshot(pid, trace_base, 2)
                    traced = sum(s.size_diff for s in snap_after.compare_to(snap_before, "filename"))
                    result["python_kb_per_connection_traced"] = round(traced / n / 1024, 1)
                    result["top"] = top_allocations(snap_before, snap_after, args.top, n)
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                for st in students:
                    if st.ws is not None:
                        await st.ws.close()
    _remove(trace_dir)
    return result


@contextlib.asynccontextmanager
async def ceiling_process(redis_url: str) -> AsyncIterator[tuple[str, int]]:
    """loadtest/baselines/ceiling.py on a spare port, as (url, pid), once /healthz answers."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loadtest.baselines.ceiling", "--port",
                                                str(port), "--redis-url", redis_url, "--prefix", "memceiling",
                                                stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the ceiling server did not start")
        yield url, proc.pid
    finally:
        proc.terminate()
        await proc.wait()


async def run_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The floor of this stack: the same idle WebSockets held by loadtest/baselines/ceiling.py (aiohttp,
    compress=False, heartbeat, nothing else per connection)."""
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(durable_redis())
        async with (
            ceiling_process(redis_url) as (url, pid),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            closed: list[int] = []
            ws_url = url.replace("http", "ws") + "/ws?student="
            sockets = [await http.ws_connect(ws_url + "s0", compress=0)]
            readers = [asyncio.create_task(keep_reading(sockets[0], closed))]
            rss_before = await settle(pid)
            sem = asyncio.Semaphore(100)

            async def one(i: int) -> None:
                async with sem:
                    ws = await http.ws_connect(ws_url + f"s{i}", compress=0)
                    sockets.append(ws)
                    readers.append(asyncio.create_task(keep_reading(ws, closed)))

            await asyncio.gather(*(one(i) for i in range(1, args.students)))
            rss_after = await settle(pid)
            n = args.students - 1
            if closed:
                raise RuntimeError(f"{len(closed)} connections closed while idle")
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for ws in sockets:
                await ws.close()
    return {
        "server": "ceiling (loadtest/baselines/ceiling.py)",
        "connections": n,
        "rss_mb_before": round(rss_before / 1024, 1),
        "rss_mb_after": round(rss_after / 1024, 1),
        "kb_per_connection": round((rss_after - rss_before) / n, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", type=int, default=2000)
    p.add_argument(
        "--server",
        choices=["examhub", "ceiling"],
        default="examhub",
        help="ceiling: the same idle connections on loadtest/baselines/ceiling.py (the stack's floor)",
    )
    p.add_argument("--template", default="neet-mock-180")
    p.add_argument("--msgpack", action="store_true")
    p.add_argument("--trace", action="store_true", help="tracemalloc in the hub: top allocation sites per connection")
    p.add_argument("--trim", action="store_true", help="also report the RSS after malloc_trim(0) in the hub")
    p.add_argument("--top", type=int, default=25, help="with --trace: how many allocation sites to print")
    default_db = os.environ.get("EXAMHUB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database-url", default=default_db, help="a server; each run creates and drops its own database")
    p.add_argument("--redis-url", default=None, help="default: start a durable redis-server of our own")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    if not 1 < args.students <= 20_000:
        p.error("students must be in (1, 20000]")
    import uvloop

    result = uvloop.run(run_ceiling(args) if args.server == "ceiling" else run(args))
    for k, v in result.items():
        if k == "top":
            print("top allocations in the hub (per connection, newest frame first):")
            print("\n".join("  " + line for line in v))
        else:
            print(f"{k:<26}  {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
