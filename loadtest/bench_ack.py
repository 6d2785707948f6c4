"""Acknowledgement benchmark: N students on real WebSockets answering at R answers/s in total.

    python -m loadtest.bench_ack --students 2000 --rate 2000 --duration 30

It starts a hub process (`examhub serve`) on a spare port against a fresh PostgreSQL database of its own
(on the local server by default) and its own redis-server with the durable settings examhub demands
(append-only, fsync always, no eviction) unless --redis-url is given. It opens one session per student
over REST, connects every student, then each student sends answers on a fixed schedule (its share of the
rate, random phase) and awaits the ack. Latency is measured from the *scheduled* send time to the ack, so
a stalled hub shows up as latency rather than as a quietly lower rate (no coordinated omission).

At the end every acknowledged answer is checked against Redis: "lost" counts acknowledged answers whose
final value is not there. Prints a table and, with --json, writes the figures to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from loadtest import driver
from loadtest.driver import SECRET, admin_token, count_lost, durable_redis, fresh_database, pct
from storage.embedded import free_port

__all__ = ["SECRET", "Stats", "Student", "connect", "durable_redis", "fresh_database", "hub_process", "rss_kb",
           "start_students"]  # fmt: skip


@contextlib.asynccontextmanager
async def hub_process(database_url: str, redis_url: str, prefix: str, port: int,
                      workers: int = 1) -> AsyncIterator[tuple[str, int]]:  # fmt: skip
    """`examhub serve` seeded and ready (loadtest.driver.hub_process), as (url, pid)."""
    async with driver.hub_process(database_url, redis_url, prefix, port, workers) as hub:
        yield hub.url, hub.pid


@dataclass
class Student:
    sid: str
    token: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    questions: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    acked: dict[int, str] = field(default_factory=dict)  # question id -> last acknowledged choice


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    acked: int = 0
    errors: int = 0
    connect_ms: list[float] = field(default_factory=list)
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)  # (session, seq) -> send time
    feed_ms: list[float] = field(default_factory=list)  # student's send -> a proctor's screen, per proctor
    feed_updates: int = 0


async def start_students(url: str, n: int, template_slug: str, concurrency: int = 50) -> list[Student]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.get("/api/templates") as r:
            tid = next(t["id"] for t in (await r.json())["templates"] if t["slug"] == template_slug)

        async def one(i: int) -> Student:
            async with sem:
                async with http.post("/api/auth/guest", json={"display_name": f"bench {i}"}) as r:
                    token = (await r.json())["token"]
                async with http.post("/api/sessions", json={"template_id": tid},
                                     headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                    body = await r.json()
                return Student(body["session_id"], body["token"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def connect(http: aiohttp.ClientSession, url: str, st: Student, stats: Stats, binary: bool) -> None:
    t0 = time.perf_counter()
    fmt = "&format=msgpack" if binary else ""
    st.ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/student?token={st.token}{fmt}",
                                  compress=0, max_msg_size=0)  # fmt: skip
    msg = await st.ws.receive()
    state = msgpack.unpackb(msg.data) if binary else json.loads(msg.data)
    st.questions = state["questions"]
    st.seq = state["last_seq"]
    stats.connect_ms.append((time.perf_counter() - t0) * 1000)


async def drive(st: Student, rate_each: float, until: float, stats: Stats, binary: bool) -> None:
    assert st.ws is not None
    interval = 1.0 / rate_each
    due = time.perf_counter() + random.random() * interval
    i = random.randrange(len(st.questions))
    while due < until:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        q = st.questions[i % len(st.questions)]
        i += 1
        choice = random.choice(q["options"])["id"]
        st.seq += 1
        frame = {"type": "answer", "seq": st.seq, "q": q["id"], "choice": choice, "time_ms": 1000}
        if binary:
            await st.ws.send_bytes(msgpack.packb(frame))
        else:
            await st.ws.send_str(json.dumps(frame))
        stats.sent += 1
        stats.sent_at[(st.sid, st.seq)] = time.perf_counter()
        while True:
            msg = await st.ws.receive()
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                stats.errors += 1
                return
            reply = msgpack.unpackb(msg.data) if binary else json.loads(msg.data)
            if reply.get("seq") == st.seq:
                break
        if reply["type"] == "ack":
            stats.acked += 1
            st.acked[q["id"]] = choice
            stats.latencies_ms.append((time.perf_counter() - due) * 1000)
        else:
            stats.errors += 1
        due += interval


def rss_kb(pid: int) -> int:
    """Resident memory of the hub: its process and any worker processes, in KB."""
    return driver.tree_rss_kb(pid)


async def watch(http: aiohttp.ClientSession, url: str, template_id: int, token: str, stats: Stats,
                until: float, ready: asyncio.Event) -> None:  # fmt: skip
    """A proctor on the room's feed: for each update row, how long since the student sent that message."""
    ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/proctor?template={template_id}",
                               headers={"Authorization": f"Bearer {token}"}, max_msg_size=0, compress=0)  # fmt: skip
    try:
        while time.perf_counter() < until + 2:
            try:
                msg = await ws.receive(timeout=max(0.1, until + 2 - time.perf_counter()))
            except TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                stats.errors += 1
                return
            now = time.perf_counter()
            frame = json.loads(msg.data)
            if frame["type"] == "snapshot":
                ready.set()
            if frame["type"] == "update":
                stats.feed_updates += 1
                for row in frame["sessions"]:
                    sent = stats.sent_at.get((row["session"], row["last_seq"]))
                    if sent is not None:
                        stats.feed_ms.append((now - sent) * 1000)
    finally:
        await ws.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gc.set_threshold(100_000, 50, 1000)  # the load generator's own GC pauses would count as hub latency
    prefix = f"bench{random.randrange(16**6):06x}"
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(durable_redis())
        async with (
            fresh_database(args.database_url) as database_url,
            hub_process(database_url, redis_url, prefix, args.port or free_port()) as (url, pid),
        ):
            students = await start_students(url, args.students, args.template)
            rss_before = rss_kb(pid)
            stats = Stats()
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as http:
                sem = asyncio.Semaphore(200)

                async def connect_one(st: Student) -> None:
                    async with sem:
                        await connect(http, url, st, stats, args.msgpack)

                await asyncio.gather(*(connect_one(st) for st in students))
                rss_connected = rss_kb(pid)
                gc.collect()
                gc.freeze()
                watchers = []
                if args.proctors:
                    token = await admin_token(database_url)
                    async with http.get(url + "/api/templates") as r:
                        tid = next(t["id"] for t in (await r.json())["templates"] if t["slug"] == args.template)
                    end = time.perf_counter() + args.duration + 5
                    readies = [asyncio.Event() for _ in range(args.proctors)]
                    watchers = [asyncio.ensure_future(watch(http, url, tid, token, stats, end, r)) for r in readies]
                    await asyncio.gather(*(r.wait() for r in readies))  # their snapshots are in before the load
                t0 = time.perf_counter()
                until = t0 + args.duration
                await asyncio.gather(*(drive(st, args.rate / args.students, until, stats, args.msgpack)
                                       for st in students))  # fmt: skip
                elapsed = time.perf_counter() - t0
                await asyncio.gather(*watchers)
                rss_after = rss_kb(pid)
                for st in students:
                    if st.ws is not None:
                        await st.ws.close()
            lost = await count_lost(redis_url, prefix, students)
    return {
        "students": args.students,
        "offered_rate": args.rate,
        "duration_s": args.duration,
        "encoding": "msgpack" if args.msgpack else "json",
        "sent": stats.sent,
        "acked": stats.acked,
        "errors": stats.errors,
        "lost": lost,
        "throughput": round(stats.acked / elapsed, 1),
        "p50_ms": round(pct(stats.latencies_ms, 50), 2),
        "p95_ms": round(pct(stats.latencies_ms, 95), 2),
        "p99_ms": round(pct(stats.latencies_ms, 99), 2),
        "max_ms": round(max(stats.latencies_ms, default=float("nan")), 2),
        "connect_p99_ms": round(pct(stats.connect_ms, 99), 2),
        "proctors": args.proctors,
        "feed_updates": stats.feed_updates,
        "feed_p50_ms": round(pct(stats.feed_ms, 50), 2) if stats.feed_ms else None,
        "feed_p99_ms": round(pct(stats.feed_ms, 99), 2) if stats.feed_ms else None,
        "feed_max_ms": round(max(stats.feed_ms), 2) if stats.feed_ms else None,
        "hub_rss_mb_after_load": round(rss_after / 1024, 1),
        "hub_kb_per_connection": round((rss_connected - rss_before) / args.students, 1),
        "redis": "external" if args.redis_url else "own redis-server, appendonly yes, appendfsync always",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", type=int, default=2000)
    p.add_argument("--rate", type=float, default=2000.0, help="answers per second, all students together")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (bounded)")
    p.add_argument("--template", default="neet-mock-180")
    p.add_argument("--msgpack", action="store_true")
    p.add_argument("--proctors", type=int, default=0, help="proctors watching the room (feed latency is measured)")
    p.add_argument("--port", type=int)
    default_db = os.environ.get("EXAMHUB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument(
        "--database-url",
        default=default_db,
        help="a server (and a database to connect to); each run creates and drops a database of its own there",
    )
    p.add_argument("--redis-url", default=None, help="default: start a durable redis-server of our own")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 < args.students <= 20_000:
        p.error("duration must be in (0, 600] s and students in (0, 20000]")
    import uvloop

    result = uvloop.run(run(args))
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
