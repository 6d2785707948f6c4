"""The soak run (issue #7, not in CI): many students sitting exam after exam for a long time, with a random
fault every few minutes, sampling what grows.

    python -m loadtest.faults soak --minutes 60 --students 1000 [--fault-every 300] [--json soak.json]

Each student opens a session, answers every ~2 s, submits after 60 answers, and starts the next exam. Faults,
in turn at random: kill -9 of a hub process (restarted at once), kill -9 of Redis (down 5 s), Redis hung
(SIGSTOP, 10 s). Every 30 s: each hub's RSS and open file descriptors, the outbox length, Redis' memory and
the answers settled so far. At the end every session is submitted, the flushers drain, and the checker runs
over every answer of every exam: Redis for the exams still open at the end, PostgreSQL for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis

from loadtest.faults.cases import outbox_length, stored_attempts
from loadtest.faults.checker import check_postgres, check_redis
from loadtest.faults.client import ACKED, REFUSED, UNKNOWN, FaultClient
from loadtest.faults.harness import Rig


async def _open_one(rig: Rig, http: aiohttp.ClientSession, tid: int, i: int) -> tuple[str, str]:
    """A guest and a session, retried through faults (REST needs Redis and PostgreSQL)."""
    delay = 0.5
    while True:
        base = rig.urls[i % len(rig.urls)]
        i += 1
        try:
            async with http.post(base + "/api/auth/guest", json={"display_name": f"soak {i}"}) as r:
                token = (await r.json())["token"]
            async with http.post(base + "/api/sessions", json={"template_id": tid},
                                 headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                body = await r.json()
            return body["session_id"], body["token"]
        except (aiohttp.ClientError, OSError, KeyError, TimeoutError, ValueError):
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 10)


async def _student(rig: Rig, http: aiohttp.ClientSession, tid: int, i: int, stop: asyncio.Event,
                   everyone: list[FaultClient], interval_s: float, answers: int) -> None:  # fmt: skip
    await asyncio.sleep(random.random() * 10)  # a ramp, not a thundering herd
    while not stop.is_set():
        sid, token = await _open_one(rig, http, tid, i)
        client = FaultClient(sid, token, rig.urls, url_index=i)
        everyone.append(client)
        mine = asyncio.Event()
        task = asyncio.create_task(client.run(http, mine, interval_s))
        while len(client.log) < answers and not stop.is_set() and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
        mine.set()
        await task
        if stop.is_set():
            return
        await client.submit(http)


async def _fault(rig: Rig, kind: str) -> None:
    assert rig.redis is not None
    if kind == "hub_kill":
        hub = random.choice(rig.hubs)
        hub.kill9()
        await hub.start()
    elif kind == "redis_kill":
        rig.redis.kill()
        await asyncio.sleep(5)
        rig.redis.start()
    elif kind == "redis_hang":
        rig.redis.pause()
        try:
            await asyncio.sleep(10)
        finally:
            rig.redis.resume()


async def _sample(rig: Rig, started: float, everyone: list[FaultClient]) -> dict[str, Any]:
    assert rig.redis is not None
    used_mb = None
    redis = Redis.from_url(rig.redis.url, decode_responses=True, socket_timeout=2)
    try:
        used_mb = round(int((await redis.info("memory"))["used_memory"]) / 2**20, 1)
    except Exception:  # a sample during a Redis fault just has no figure
        used_mb = None
    finally:
        await redis.aclose()
    try:
        outbox: int | None = await asyncio.wait_for(outbox_length(rig), 3)
    except Exception:  # as above
        outbox = None
    return {
        "t_s": round(time.monotonic() - started),
        "hub_rss_mb": [round(h.rss_kb() / 1024, 1) for h in rig.hubs],
        "hub_fds": [h.fds() for h in rig.hubs],
        "hub_starts": [h.starts for h in rig.hubs],
        "outbox": outbox,
        "redis_used_mb": used_mb,
        "exams": len(everyone),
        "acked": sum(1 for c in everyone for m in c.log if m.status == ACKED),
    }


async def soak(students: int = 1000, minutes: float = 60, fault_every_s: float = 300, interval_s: float = 2.0,
               answers: int = 60, sample_every_s: float = 30) -> dict[str, Any]:  # fmt: skip
    faults: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    everyone: list[FaultClient] = []
    async with Rig(hubs_n=2).up() as rig:
        tid = await rig.template_id("neet-mock-180")
        stop = asyncio.Event()
        started = time.monotonic()
        end = started + minutes * 60
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            tasks = [asyncio.create_task(_student(rig, http, tid, i, stop, everyone, interval_s, answers))
                     for i in range(students)]  # fmt: skip
            next_fault = started + fault_every_s
            next_sample = started + 15
            while time.monotonic() < end:
                await asyncio.sleep(1)
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(await _sample(rig, started, everyone))
                    print("soak sample", samples[-1], flush=True)
                    next_sample += sample_every_s
                if now >= next_fault and now < end - 60:
                    kind = random.choice(["hub_kill", "redis_kill", "redis_hang"])
                    faults.append({"t_s": round(now - started), "fault": kind})
                    print("soak fault", faults[-1], flush=True)
                    await _fault(rig, kind)
                    next_fault += fault_every_s
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            open_exams = [c for c in everyone if not c.finished]
            assert rig.redis is not None
            redis_report = await check_redis(rig.redis.url, rig.prefix, open_exams)
            sem = asyncio.Semaphore(100)

            async def submit(c: FaultClient) -> None:
                async with sem:
                    await c.submit(http)

            await asyncio.gather(*(submit(c) for c in open_exams))
            finished = [c.sid for c in everyone if c.finished]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if await outbox_length(rig) == 0 and await stored_attempts(rig, finished) >= len(finished):
                    break
                await asyncio.sleep(1)
            pg_report = await check_postgres(rig.database_url, everyone)
            samples.append(await _sample(rig, started, everyone))
    statuses = [m.status for c in everyone for m in c.log]
    first, last = samples[0] if samples else {}, samples[-1] if samples else {}
    resumes = sorted(r for c in everyone for r in c.resume_s)
    return {
        "ok": redis_report.ok and pg_report.ok and not [c for c in everyone if not c.finished],
        "students": students, "minutes": minutes, "fault_every_s": fault_every_s, "exams": len(everyone),
        "unfinished": len([c for c in everyone if not c.finished]),
        "answers": len(statuses), "acked": statuses.count(ACKED), "refused": statuses.count(REFUSED),
        "unknown": statuses.count(UNKNOWN), "faults": faults,
        "resume_p99_s": round(resumes[int(0.99 * (len(resumes) - 1))], 2) if resumes else None,
        "redis": redis_report.as_dict(), "postgres": pg_report.as_dict(),
        "first_sample": first, "last_sample": last,
        "max_outbox": max((s["outbox"] or 0) for s in samples) if samples else None,
        "samples": samples,
    }  # fmt: skip
