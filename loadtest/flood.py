"""Flood benchmark: what one flooding client costs the other students' acknowledgement latency.

    python -m loadtest.flood --students 500 --rate 1000 --duration 20

One hub process with its rate limits ON (the defaults: 20 messages/s per connection with a burst of 200, and
50 requests/s per address with a burst of 100, the WebSocket handshake included), its own durable redis-server
and a fresh database. N calm students (30 per source address, 127.0.1.x) answer at R answers/s in total
(loadtest/bench_ack.py's drive: latency from the scheduled send time to the ack). The same students, on the
same hub, go through --rounds rounds of three phases of --duration seconds, then a last quiet phase:

1. quiet: nobody floods (the baseline);
2. message flood: one more student sends --flood-rate messages/s (1,000 by default) on its own connection and
   reconnects 0.5 s after each close, for as long as the phase lasts;
3. handshake flood: one address (127.0.0.2) opens WebSocket handshakes with junk tokens, --flood-concurrency
   at a time, as fast as the hub answers.
The quiet phases around the floods show how much the machine itself drifted.

For each phase: the students' p50/p99/max, acknowledged and errors; for the floods: what the flooder got (acks,
rate_limited refusals, closes and their codes, 429s on handshakes). Each flood runs in a process of its own, so
that its client-side work does not delay the loop that measures the calm students (on a 2-core machine they
still share the CPU with the hub). The limits shed the flood; the other
students' p99 should stay where it was (ratios within one run are what to compare: other work may share the
machine).
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
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_ack import Stats, Student, connect, drive, start_students
from loadtest.driver import durable_redis, fresh_database, hub_process, pct, raise_fd_limit

DEFAULT_DATABASE_URL = os.environ.get("EXAMHUB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FLOOD_ADDRESS = "127.0.0.2"  # any 127.0.0.0/8 address reaches the hub on Linux loopback; a different client IP
PER_ADDRESS = 30  # calm students per source address: 3 requests each, within the default burst of 100


async def calm_students(url: str, n: int, slug: str, stack: contextlib.AsyncExitStack) -> list[Student]:
    """n students started and connected from 127.0.1.x, PER_ADDRESS per address (a school is many addresses;
    one address for all would need a per-address limit big enough to let any flood through). Their HTTP
    sessions (which hold the sockets) stay open until `stack` closes."""
    students: list[Student] = []
    setup = Stats()
    async with aiohttp.ClientSession() as plain, plain.get(url + "/api/templates") as r:
        tid = next(t["id"] for t in (await r.json())["templates"] if t["slug"] == slug)

    async def group(g: int, count: int) -> None:
        connector = aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.1.{g + 1}", 0))
        http = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        for i in range(count):
            async with http.post(url + "/api/auth/guest", json={"display_name": f"calm {g}-{i}"}) as r:
                body = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"guest from 127.0.1.{g + 1}: {r.status} {body}")
                token = body["token"]
            async with http.post(url + "/api/sessions", json={"template_id": tid},
                                 headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                body = await r.json()
            st = Student(body["session_id"], body["token"])
            await connect(http, url, st, setup, False)
            students.append(st)

    groups = (n + PER_ADDRESS - 1) // PER_ADDRESS
    await asyncio.gather(*(group(g, min(PER_ADDRESS, n - g * PER_ADDRESS)) for g in range(groups)))
    return students


async def message_flood(url: str, st: Student, rate: float, until: float, seen: Counter[str]) -> None:
    """One student sending `rate` answers/s regardless of replies; reconnecting 0.5 s after every close."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        seq = 0
        while time.perf_counter() < until:
            try:
                ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/student?token={st.token}", compress=0)
            except aiohttp.WSServerHandshakeError as exc:
                seen[f"handshake {exc.status}"] += 1
                await asyncio.sleep(0.5)
                continue
            state = json.loads((await ws.receive()).data)
            seq = max(seq, state["last_seq"])
            questions = state["questions"]
            seen["connections"] += 1

            async def read(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        frame = json.loads(msg.data)
                        seen[frame["type"] if frame["type"] != "error" else frame["code"]] += 1

            reader = asyncio.ensure_future(read())
            due = time.perf_counter()
            with contextlib.suppress(ConnectionError, RuntimeError):
                while not ws.closed and time.perf_counter() < until:
                    for _ in range(10):  # ten frames per tick of 10 / rate seconds
                        seq += 1
                        q = random.choice(questions)
                        await ws.send_str(json.dumps({"type": "answer", "seq": seq, "q": q["id"],
                                                      "choice": q["options"][0]["id"]}))  # fmt: skip
                        seen["sent"] += 1
                    due += 10 / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.close()
            await reader
            seen[f"close {ws.close_code}"] += 1
            seq = 0  # the state frame of the next connection says where the hub is
            await asyncio.sleep(0.5)


async def handshake_flood(url: str, concurrency: int, until: float, seen: Counter[str]) -> None:
    """One address opening handshakes with junk tokens as fast as the hub answers them."""
    connector = aiohttp.TCPConnector(limit=0, local_addr=(FLOOD_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(w: int) -> None:
            i = 0
            while time.perf_counter() < until:
                i += 1
                try:
                    ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/student?token=junk{w}x{i}", compress=0)
                except aiohttp.WSServerHandshakeError as exc:
                    seen[f"handshake {exc.status}"] += 1
                    continue
                except aiohttp.ClientError:
                    seen["connect errors"] += 1
                    continue
                await ws.receive()
                await ws.close()
                seen["handshake 101 (then refused 4001)"] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def flooder(kind: str, url: str, seconds: float, args: argparse.Namespace, token: str = "") -> Counter[str]:
    """Run one flood in a process of its own (`python -m loadtest.flood --flooder KIND`), so that its work does
    not slow down the event loop that measures the calm students: only the hub is shared."""
    cmd = [
        sys.executable,
        "-m",
        "loadtest.flood",
        "--flooder",
        kind,
        "--url",
        url,
        "--duration",
        str(seconds),
        "--token",
        token,
        "--flood-rate",
        str(args.flood_rate),
        "--flood-concurrency",
        str(args.flood_concurrency),
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return Counter(json.loads(out.decode().strip().splitlines()[-1]))


def run_flooder(args: argparse.Namespace) -> dict[str, int]:
    seen: Counter[str] = Counter()

    async def go() -> None:
        until = time.perf_counter() + args.duration
        if args.flooder == "message":
            await message_flood(args.url, Student(sid="", token=args.token), args.flood_rate, until, seen)
        else:
            await handshake_flood(args.url, args.flood_concurrency, until, seen)

    import uvloop

    uvloop.run(go())
    return dict(sorted(seen.items()))


async def phase(name: str, students: list[Student], args: argparse.Namespace, flood: Any) -> dict[str, Any]:
    stats = Stats()
    t0 = time.perf_counter()
    until = t0 + args.duration
    task = asyncio.ensure_future(flood(args.duration)) if flood is not None else None
    await asyncio.gather(*(drive(st, args.rate / len(students), until, stats, False) for st in students))
    elapsed = time.perf_counter() - t0
    seen = await task if task is not None else Counter()
    return {
        "phase": name,
        "acked": stats.acked,
        "errors": stats.errors,
        "throughput": round(stats.acked / elapsed, 1),
        "p50_ms": round(pct(stats.latencies_ms, 50), 2),
        "p99_ms": round(pct(stats.latencies_ms, 99), 2),
        "max_ms": round(max(stats.latencies_ms, default=float("nan")), 2),
        "flooder": dict(sorted(seen.items())),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    gc.set_threshold(100_000, 50, 1000)  # the load generator's own GC pauses would count as hub latency
    prefix = f"flood{random.randrange(16**6):06x}"
    limits = {"EXAMHUB_RATE_WS_MSGS": args.ws_rate, "EXAMHUB_RATE_REST_IP": args.ip_rate,
              "EXAMHUB_RATE_REST_USER": "off"}  # fmt: skip
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(durable_redis())
        async with (
            fresh_database(args.database_url) as database_url,
            hub_process(database_url, redis_url, prefix, extra_env=limits) as hub,
        ):
            url = hub.url
            (bad,) = await start_students(url, 1, args.template)
            async with contextlib.AsyncExitStack() as sessions:
                students = await calm_students(url, args.students, args.template, sessions)
                gc.collect()
                gc.freeze()
                await asyncio.sleep(args.settle)
                phases = []
                for _ in range(args.rounds):  # interleaved, so that the machine's own drift shows
                    phases.append(await phase("quiet", students, args, None))
                    phases.append(await phase(
                        f"message flood ({args.flood_rate:g}/s from one student)", students, args,
                        lambda seconds: flooder("message", url, seconds, args, bad.token),
                    ))  # fmt: skip
                    await asyncio.sleep(args.settle)
                    phases.append(await phase(
                        f"handshake flood (one address, {args.flood_concurrency} at a time)", students, args,
                        lambda seconds: flooder("handshake", url, seconds, args),
                    ))  # fmt: skip
                    await asyncio.sleep(args.settle)
                phases.append(await phase("quiet", students, args, None))
                for st in students:
                    if st.ws is not None:
                        await st.ws.close()
    return {
        "students": args.students,
        "offered_rate": args.rate,
        "duration_s_per_phase": args.duration,
        "ws_rate": args.ws_rate,
        "ip_rate": args.ip_rate,
        "p99_ms_by_phase": {
            kind: [p["p99_ms"] for p in phases if p["phase"] == kind]
            for kind in dict.fromkeys(p["phase"] for p in phases)
        },
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", type=int, default=500)
    p.add_argument("--rate", type=float, default=1000.0, help="answers per second, all (calm) students together")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    p.add_argument("--template", default="neet-mock-180")
    p.add_argument("--flood-rate", type=float, default=1000.0, help="messages/s of the flooding student")
    p.add_argument("--flood-concurrency", type=int, default=100, help="handshakes in flight from the flooder")
    p.add_argument("--ws-rate", default="20/s,burst=200", help="EXAMHUB_RATE_WS_MSGS (the default)")
    p.add_argument("--ip-rate", default="50/s,burst=100", help="EXAMHUB_RATE_REST_IP (the default)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after a flood (its buckets refill)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of quiet, message flood, handshake flood")
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--flooder", choices=["message", "handshake"], help=argparse.SUPPRESS)  # the flood's own process
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flooder:
        print(json.dumps(run_flooder(args)))
        return 0
    if not 0 < args.duration <= 300 or not 0 < args.students <= 10_000:
        p.error("duration must be in (0, 300] s and students in (0, 10000]")
    import uvloop

    result = uvloop.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
