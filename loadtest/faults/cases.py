"""The fault cases of issue #7. Each is `async def case(**params) -> Result` and runs on a Rig of its own
(its own redis-server, database and hub processes); the runner (`python -m loadtest.faults`) calls them with
the issue's sizes, tests/faults/ with small ones. A case fails (`Result.ok` false) when the checker finds an
acknowledged answer lost, a duplicate, a phantom or a refused write stored, or when the case's own promise
breaks (an acknowledgement while Redis was down, no cut-off of a stalled proctor, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from loadtest.faults.checker import Report, check_postgres, check_redis
from loadtest.faults.client import ACKED, REFUSED, UNKNOWN, FaultClient, Lost, counts
from loadtest.faults.harness import SECRET, Rig
from loadtest.faults.proxy import FaultProxy
from storage.keys import FLUSH_GROUP, PARTITIONS, Keys

# A hub's log about one Redis outage of a few seconds: each part of it that uses Redis says once that it fails and
# once that it works again (storage/outage.py). Far more means some part logs every failure: one line per student, per
# request or per retry, thousands a second on a loaded hub.
OUTAGE_LOG_LINES = 40


@dataclass
class Result:
    case: str
    params: dict[str, Any]
    reports: list[Report] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(r.ok for r in self.reports)

    @property
    def acked(self) -> int:
        return max((r.acked for r in self.reports if r.where == "redis"), default=0)

    def expect(self, condition: bool, failure: str) -> None:
        if not condition:
            self.failures.append(failure)

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "ok": self.ok, "params": self.params, "failures": self.failures,
                "figures": self.figures, "reports": [r.as_dict() for r in self.reports]}  # fmt: skip


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# ---- shared steps ----------------------------------------------------------------------------------------


@dataclass
class Load:
    clients: list[FaultClient]
    stops: list[asyncio.Event]
    tasks: list[asyncio.Task[None]]
    http: aiohttp.ClientSession

    async def halt(self, clients: list[FaultClient] | None = None) -> None:
        """Stop these clients' answering (default: all) and wait until each has settled its last message."""
        chosen = {id(c) for c in clients} if clients is not None else None
        picked = [i for i, c in enumerate(self.clients) if chosen is None or id(c) in chosen]
        for i in picked:
            self.stops[i].set()
        await asyncio.gather(*(self.tasks[i] for i in picked), return_exceptions=True)


@contextlib.asynccontextmanager
async def running(rig: Rig, n: int, interval_s: float, *, urls: list[str] | None = None,
                   heartbeat_s: float | None = None, slug: str = "neet-mock-180") -> AsyncIterator[Load]:  # fmt: skip
    """n students answering every ~interval_s, spread over `urls` (default: every hub), until the block ends."""
    urls = urls or rig.urls
    sessions = await rig.open_sessions(n, slug)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients = [FaultClient(sid, token, urls, url_index=i) for i, (sid, token) in enumerate(sessions)]
    stops = [asyncio.Event() for _ in clients]
    pairs = zip(clients, stops, strict=True)
    tasks = [asyncio.create_task(c.run(http, stop, interval_s, heartbeat_s)) for c, stop in pairs]
    load = Load(clients, stops, tasks, http)
    try:
        yield load
    finally:
        await load.halt()
        for c in clients:
            await c.close()
        await http.close()


async def wait_acks(load: Load, more: int, timeout_s: float = 30) -> None:
    """Until `more` further answers are acknowledged (the load is flowing)."""
    start = counts(load.clients)[ACKED]
    await until(lambda: counts(load.clients)[ACKED] >= start + more, timeout_s, 0.3)


async def until(done: Callable[[], bool | Awaitable[bool]], timeout_s: float, every_s: float = 0.1) -> bool:
    """Poll `done` (plain or async) until it is true or timeout_s has passed; returns the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = done()
        if not isinstance(answer, bool):
            answer = await answer
        if answer or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(every_s)


async def outbox_length(rig: Rig) -> int:
    assert rig.redis is not None
    redis = Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        pipe = redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.xlen(Keys(rig.prefix).outbox(p))
        return int(sum(await pipe.execute()))
    finally:
        await redis.aclose()


async def _empty_outbox(rig: Rig) -> bool:
    return await outbox_length(rig) == 0


async def pending_entries(rig: Rig) -> int:
    assert rig.redis is not None
    redis = Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        total = 0
        for p in range(PARTITIONS):
            info = await redis.xpending(Keys(rig.prefix).outbox(p), FLUSH_GROUP)
            total += int(info["pending"])
        return total
    finally:
        await redis.aclose()


async def stored_attempts(rig: Rig, sids: list[str]) -> int:
    conn = await asyncpg.connect(rig.database_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM test_attempts WHERE session_id = ANY($1::text[])", sids)
    finally:
        await conn.close()
    return n


async def finish_and_check(rig: Rig, result: Result, load: Load, flush_timeout_s: float = 120) -> None:
    """Stop the load; check Redis; submit every session; wait for the flushers; check PostgreSQL."""
    await load.halt()
    assert rig.redis is not None
    result.reports.append(await check_redis(rig.redis.url, rig.prefix, load.clients))
    sem = asyncio.Semaphore(100)

    async def submit(c: FaultClient) -> None:
        async with sem:
            if not c.fenced:
                await c.submit(load.http)

    await asyncio.gather(*(submit(c) for c in load.clients))
    finished = [c.sid for c in load.clients if c.finished]
    result.expect(len(finished) == len({c.sid for c in load.clients}), "some sessions could not be submitted")
    deadline = time.monotonic() + flush_timeout_s
    while time.monotonic() < deadline:
        if await stored_attempts(rig, finished) >= len(set(finished)) and await outbox_length(rig) == 0:
            break
        await asyncio.sleep(0.3)
    result.figures["flush_wait_s"] = round(flush_timeout_s - (deadline - time.monotonic()), 1)
    result.reports.append(await check_postgres(rig.database_url, load.clients))
    result.expect(await outbox_length(rig) == 0, "the outbox did not drain")
    c = counts(load.clients)
    result.figures.update(acked=c[ACKED], refused=c[REFUSED], unknown=c[UNKNOWN],
                          settled_by_resume=sum(m.by_resume for cl in load.clients for m in cl.log))  # fmt: skip


def resume_figures(result: Result, clients: list[FaultClient]) -> list[float]:
    resumes = [r for c in clients for r in c.resume_s]
    result.figures.update(resumes=len(resumes), resume_p50_s=round(pct(resumes, 50), 3),
                          resume_p99_s=round(pct(resumes, 99), 3),
                          resume_max_s=round(max(resumes, default=0), 3))  # fmt: skip
    return resumes


def acks_between(clients: list[FaultClient], start: float, end: float) -> int:
    """Acknowledgements (not resume settlements) that arrived in [start, end] (monotonic)."""
    return sum(1 for c in clients for m in c.log
               if m.status == ACKED and not m.by_resume and start <= m.settled_at <= end)  # fmt: skip


# ---- the cases -------------------------------------------------------------------------------------------


async def hub_kill(students: int = 500, kills: int = 20, gap_s: float = 10.0, interval_s: float = 1.0,
                   spread: int = 1, resume_p99_max_s: float | None = 5.0) -> Result:  # fmt: skip
    """kill -9 of a hub process `kills` times (the two hubs in turn, each restarted at once) under load. With
    `spread` (default) a student reconnects to a random hub, as behind a load balancer; with spread=0 to the
    other one, so every kill after the first drops all students at once (the worst herd). Its students, back at once
    on the other hub while the dead one's lease still holds, are drops, not second devices: nothing listens on the
    dead process' alive channel any more (storage/lua/open.lua)."""
    result = Result("hub_kill", {"students": students, "kills": kills, "gap_s": gap_s, "interval_s": interval_s,
                                 "spread": spread})  # fmt: skip
    async with Rig(hubs_n=2).up() as rig, running(rig, students, interval_s) as load:
        for c in load.clients:
            c.spread = bool(spread)
        await wait_acks(load, students)
        for k in range(kills):
            hub = rig.hubs[k % 2]
            hub.kill9()
            await hub.start()
            await asyncio.sleep(gap_s)
        await after_kills(rig, result, load, kills)
    return expect_resume_p99(result, resume_p99_max_s)


async def worker_kill(students: int = 500, kills: int = 10, gap_s: float = 10.0, interval_s: float = 1.0,
                      resume_p99_max_s: float | None = 5.0) -> Result:  # fmt: skip
    """kill -9 of one hub process of `examhub serve --workers 2`, `kills` times, under load. Its parent replaces it
    and ends its lease (server/workers.py), so besides losing nothing, its students, back on the other process or
    the new one, are drops in their time ledger, not second devices."""
    import os
    import signal

    from loadtest.driver import worker_pids

    result = Result("worker_kill", {"students": students, "kills": kills, "gap_s": gap_s, "interval_s": interval_s})
    async with Rig(hubs_n=1, workers=2).up() as rig, running(rig, students, interval_s) as load:
        hub = rig.hubs[0]
        await wait_acks(load, students)
        for _ in range(kills):
            pids = worker_pids(hub.pid)
            result.expect(len(pids) == 2, f"{len(pids)} hub processes before a kill: {hub.tail()}")
            victim = random.choice(pids)
            os.kill(victim, signal.SIGKILL)
            replaced = await until(lambda victim=victim: f"in place of pid {victim}" in hub.tail(20_000), 60)
            result.expect(replaced, f"pid {victim} was not replaced: {hub.tail()}")
            await asyncio.sleep(gap_s)
        await after_kills(rig, result, load, kills)
    return expect_resume_p99(result, resume_p99_max_s)


async def hub_restart(students: int = 500, kills: int = 10, gap_s: float = 10.0, interval_s: float = 1.0,
                      resume_p99_max_s: float | None = 5.0) -> Result:  # fmt: skip
    """kill -9 of a lone hub process, `kills` times, each started again on its port at once, as Docker's or systemd's
    restart does: no parent sees it die. The new process ends the dead one's lease before it listens
    (server/succession.py), so its students, all back on it, are drops in their time ledger, not second devices."""
    result = Result("hub_restart", {"students": students, "kills": kills, "gap_s": gap_s, "interval_s": interval_s})
    async with Rig(hubs_n=1).up() as rig, running(rig, students, interval_s) as load:
        hub = rig.hubs[0]
        await wait_acks(load, students)
        for k in range(kills):
            hub.kill9()
            await hub.start()
            ended = hub.tail(10**9).count("ended the lease of")
            result.expect(ended == k + 1, f"after {k + 1} restarts, {ended} leases ended: {hub.tail()}")
            await asyncio.sleep(gap_s)
        await after_kills(rig, result, load, kills)
    return expect_resume_p99(result, resume_p99_max_s)


async def after_kills(rig: Rig, result: Result, load: Load, kills: int) -> None:
    """What a case of killed hub processes checks once its kills are done: every student answering again, a resume
    per kill at least, its students back as drops (time ledger) and none as a second device, nothing lost."""
    await wait_acks(load, len(load.clients))
    resumes = resume_figures(result, load.clients)
    result.expect(len(resumes) >= kills, f"only {len(resumes)} resumes after {kills} kills")
    result.figures["kills"] = kills
    await count_drops_and_second_devices(rig, result, load)
    second, drops = result.figures["second_devices"], result.figures["ledger_drops"]
    result.expect(second == 0, f"{second} students of killed hub processes were taken for second devices")
    result.expect(drops > 0, "no drop in any time ledger")
    await finish_and_check(rig, result, load)


def expect_resume_p99(result: Result, resume_p99_max_s: float | None) -> Result:
    p99 = result.figures["resume_p99_s"]
    if resume_p99_max_s is not None:  # a figure of the runner's; CI passes None (no timed assertions in tests)
        result.expect(p99 < resume_p99_max_s, f"resume p99 {p99} s >= {resume_p99_max_s} s")
    return result


async def count_drops_and_second_devices(rig: Rig, result: Result, load: Load) -> None:
    """How the students of killed hub processes came back: as drops (time ledger) or as second devices."""
    assert rig.redis is not None
    redis = Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        keys = Keys(rig.prefix)
        pipe = redis.pipeline(transaction=False)
        for c in load.clients:
            pipe.lrange(keys.session(c.sid).ev, 0, -1)
            pipe.llen(keys.session(c.sid).ledger)
        replies = await pipe.execute()
    finally:
        await redis.aclose()
    second = sum(1 for events in replies[0::2] for e in events if e.startswith("second_device"))
    result.figures.update(second_devices=second, ledger_drops=sum(replies[1::2]))


async def crash_points(students: int = 100, after: int = 200, interval_s: float = 0.5) -> Result:
    """The hub's test-only crash switch: exit 137 before the Redis write, after it (before the ack), after the
    ack. Clients are on hub 0 (the one that crashes) and move to hub 1."""
    result = Result("crash_points", {"students": students, "after": after, "interval_s": interval_s})
    async with Rig(hubs_n=2).up() as rig:
        for point in ("before_write", "after_write", "after_ack"):
            hub = rig.hubs[0]
            hub.stop()
            await hub.start({"EXAMHUB_CRASH_POINT": f"{point}:{after}"})
            async with running(rig, students, interval_s, urls=rig.urls) as load:
                for c in load.clients:
                    c.url_index = 0  # all on the hub that will crash
                code = await hub.wait_exit(120)
                result.expect(code == 137, f"{point}: the hub did not reach its crash point (exit {code})")
                await hub.start()  # and without the switch again
                await wait_acks(load, students)
                resume_figures(result, load.clients)
                await finish_and_check(rig, result, load)
            result.figures[f"{point}_acked"] = result.reports[-2].acked
            result.figures[f"{point}_unknown_at_end"] = result.reports[-2].unknown
            result.figures[f"{point}_settled_by_resume"] = result.figures["settled_by_resume"]
    return result


async def redis_kill(students: int = 200, down_s: float = 5.0, interval_s: float = 0.5) -> Result:
    """kill -9 of the redis-server (append-only, fsync always), down for down_s, then started again."""
    result = Result("redis_kill", {"students": students, "down_s": down_s, "interval_s": interval_s})
    async with Rig(hubs_n=2).up() as rig, running(rig, students, interval_s) as load:
        assert rig.redis is not None
        await wait_acks(load, students)
        logged = [hub.log_path.stat().st_size for hub in rig.hubs]
        killed = time.monotonic()
        rig.redis.kill()
        await asyncio.sleep(down_s)
        restarted = time.monotonic()
        rig.redis.start()
        false_acks = acks_between(load.clients, killed + 0.5, restarted)
        told_retry = sum(len([t for t in c.unavailable_at if t >= killed]) for c in load.clients)
        closes_4503 = sum(c.closes[4503] for c in load.clients)
        await wait_acks(load, students, timeout_s=60)
        recovered = acks_between(load.clients, restarted, time.monotonic())
        # what each hub wrote to its log from the kill until every student was acknowledged again
        lines = [len(hub.log_path.read_bytes()[at:].splitlines()) for hub, at in zip(rig.hubs, logged, strict=True)]
        result.figures.update(acks_while_down=false_acks, unavailable_frames=told_retry, closes_4503=closes_4503,
                              acks_after_restart=recovered, hub_log_lines=lines)  # fmt: skip
        result.expect(false_acks == 0, f"{false_acks} acknowledgements while Redis was down")
        result.expect(max(lines) <= OUTAGE_LOG_LINES, f"a hub logged {max(lines)} lines about one outage")
        result.expect(told_retry > 0, "no client was told `unavailable` (retry) while Redis was down")
        result.expect(recovered > 0, "no acknowledgement after Redis came back")
        resume_figures(result, load.clients)
        await finish_and_check(rig, result, load)
    return result


async def redis_hang(students: int = 200, hang_s: float = 10.0, interval_s: float = 0.5) -> Result:
    """SIGSTOP of the redis-server for hang_s, then SIGCONT: no acknowledgement while it hangs, recovery after."""
    result = Result("redis_hang", {"students": students, "hang_s": hang_s, "interval_s": interval_s})
    async with Rig(hubs_n=2).up() as rig, running(rig, students, interval_s) as load:
        assert rig.redis is not None
        await wait_acks(load, students)
        stopped = time.monotonic()
        rig.redis.pause()
        try:
            await asyncio.sleep(hang_s)
        finally:
            rig.redis.resume()
        resumed = time.monotonic()
        false_acks = acks_between(load.clients, stopped + 0.5, resumed)
        told_retry = sum(len([t for t in c.unavailable_at if t >= stopped]) for c in load.clients)
        await wait_acks(load, students, timeout_s=60)
        recovered = acks_between(load.clients, resumed, time.monotonic())
        result.figures.update(acks_while_hung=false_acks, unavailable_frames=told_retry, acks_after=recovered)
        result.expect(false_acks == 0, f"{false_acks} acknowledgements while Redis was hung")
        result.expect(recovered > 0, "no acknowledgement after Redis resumed")
        resume_figures(result, load.clients)
        await finish_and_check(rig, result, load)
    return result


async def pg_down(students: int = 100, down_s: float = 60.0, interval_s: float = 0.5) -> Result:
    """A private PostgreSQL stopped for down_s while half the students submit: the outbox grows, then drains,
    and every attempt is stored exactly once."""
    result = Result("pg_down", {"students": students, "down_s": down_s, "interval_s": interval_s})
    async with Rig(hubs_n=2, private_postgres=True).up() as rig, running(rig, students, interval_s) as load:
        assert rig.postgres is not None
        await wait_acks(load, students)
        await asyncio.to_thread(rig.postgres.down)
        down_at = time.monotonic()
        half = load.clients[: students // 2]
        # these students stop answering and hand in while PostgreSQL is down
        await load.halt(half)
        await asyncio.gather(*(c.submit(load.http) for c in half))
        peak = 0
        while time.monotonic() - down_at < down_s:
            peak = max(peak, await outbox_length(rig))
            await asyncio.sleep(1.0)
        await asyncio.to_thread(rig.postgres.up)
        up_at = time.monotonic()
        await until(lambda: _empty_outbox(rig), 120, 0.2)
        result.figures.update(outbox_peak=peak, submitted_while_down=sum(c.finished for c in half),
                              drain_s=round(time.monotonic() - up_at, 1))  # fmt: skip
        result.expect(peak >= sum(c.finished for c in half) > 0, f"the outbox did not grow (peak {peak})")
        await finish_and_check(rig, result, load)
    return result


async def flusher_crash(students: int = 40, interval_s: float = 0.3) -> Result:
    """The flusher exits (137) right after its first COMMIT, before XACK; the restarted process claims the
    pending entries and replays them: no duplicate rows."""
    result = Result("flusher_crash", {"students": students, "interval_s": interval_s})
    env = {"EXAMHUB_FLUSH_CLAIM_IDLE_MS": "1000"}
    async with Rig(hubs_n=1, hub_env=env).up() as rig:
        hub = rig.hubs[0]
        hub.stop()
        await hub.start({"EXAMHUB_CRASH_POINT": "after_commit:1"})
        async with running(rig, students, interval_s) as load:
            await wait_acks(load, students * 3)
            await load.halt()
            submits = asyncio.gather(*(c.submit(load.http) for c in load.clients[: students // 2]))
            code = await hub.wait_exit(60)
            result.expect(code == 137, f"the flusher did not reach its crash point (exit {code})")
            sids = [c.sid for c in load.clients if c.finished]
            committed, pending = await stored_attempts(rig, sids), await pending_entries(rig)
            result.figures.update(committed_before_crash=committed, pending_after_crash=pending)
            result.expect(committed > 0 and pending > 0, "the crash did not fall between a commit and its XACK")
            await hub.start()
            await submits
            await finish_and_check(rig, result, load)
    return result


async def proxy_faults(students: int = 100, heartbeat_s: int = 2, interval_s: float = 0.5,
                       notice_slack_s: float = 0.5) -> Result:  # fmt: skip
    """A TCP proxy between the students and the hub: blackhole, reset mid-frame, added latency."""
    result = Result("proxy", {"students": students, "heartbeat_s": heartbeat_s, "interval_s": interval_s})
    async with Rig(hubs_n=1, hub_env={"EXAMHUB_HEARTBEAT_S": str(heartbeat_s)}).up() as rig:
        proxy = FaultProxy("127.0.0.1", rig.hubs[0].port)
        port = await proxy.start()
        try:
            url = f"http://127.0.0.1:{port}"
            async with running(rig, students, interval_s, urls=[url], heartbeat_s=heartbeat_s) as load:
                await wait_acks(load, students)
                # blackhole: the hub must notice each dead connection within 1.5 heartbeats
                t0_ms = time.time() * 1000
                proxy.blackhole(True)
                await asyncio.sleep(heartbeat_s * 2.5)
                noticed = await offline_since(rig, [c.sid for c in load.clients])
                proxy.blackhole(False)
                delays = [(ms - t0_ms) / 1000 for ms in noticed.values()]
                result.figures.update(blackholed=students, noticed=len(delays),
                                      noticed_max_s=round(max(delays, default=0), 2),
                                      bound_s=1.5 * heartbeat_s)  # fmt: skip
                result.expect(len(delays) == students, f"only {len(delays)} of {students} dead connections noticed")
                result.expect(max(delays, default=0) <= 1.5 * heartbeat_s + notice_slack_s,
                              f"a dead connection was noticed after {max(delays, default=0):.2f} s")  # fmt: skip
                await wait_acks(load, students)
                # reset mid-frame
                result.figures["reset"] = await proxy.reset_all()
                await wait_acks(load, students)
                # latency
                proxy.latency_s = 0.2
                await wait_acks(load, students // 2)
                proxy.latency_s = 0.0
                await wait_acks(load, students)
                resume_figures(result, load.clients)
                await finish_and_check(rig, result, load)
        finally:
            await proxy.stop()
    return result


async def offline_since(rig: Rig, sids: list[str]) -> dict[str, int]:
    """Sessions the hub has marked offline, with the time it noticed (Redis ms)."""
    assert rig.redis is not None
    redis = Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        pipe = redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(Keys(rig.prefix).session(sid).meta, "online", "offline_since_ms")
        out = {}
        for sid, (online, since) in zip(sids, await pipe.execute(), strict=True):
            if online == "0" and since:
                out[sid] = int(since)
        return out
    finally:
        await redis.aclose()


async def fencing(students: int = 50, late: int = 3) -> Result:
    """A second connection to each session (on the other hub): the first is fenced, its late writes refused."""
    result = Result("fencing", {"students": students, "late": late})
    async with Rig(hubs_n=2).up() as rig:
        sessions = await rig.open_sessions(students)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            firsts = [FaultClient(sid, tok, [rig.urls[0]]) for sid, tok in sessions]
            seconds = [FaultClient(sid, tok, [rig.urls[1]]) for sid, tok in sessions]
            acked_late = closed_4009 = 0

            async def one(a: FaultClient, b: FaultClient) -> None:
                nonlocal acked_late, closed_4009
                assert await a.connect(http)
                for _ in range(3):
                    await a.send_answer(*a.random_answer())
                assert await b.connect(http)  # takes the session over: a's epoch is stale from here
                a.seq += 1000  # a's late seqs never collide with b's
                for _ in range(late):
                    try:
                        m = await a.send_answer(*a.random_answer())
                    except Lost as exc:
                        closed_4009 += exc.code == 4009
                        m = a.log[-1]
                        if m.status == UNKNOWN and (exc.code == 4009 or a.fenced):
                            m.status, m.code = REFUSED, "superseded"  # protocol section 11: not stored
                        break
                    acked_late += m.status == ACKED
                    if m.status == REFUSED:
                        m.code = m.code or "superseded"
                await a.close()
                for _ in range(3):
                    await b.send_answer(*b.random_answer())

            await asyncio.gather(*(one(a, b) for a, b in zip(firsts, seconds, strict=True)))
            result.figures.update(late_writes=sum(1 for c in firsts for m in c.log if m.seq > 1000),
                                  late_acked=acked_late, closed_4009=closed_4009,
                                  fenced_told=sum(c.fenced for c in firsts))  # fmt: skip
            result.expect(acked_late == 0, f"{acked_late} late writes of a fenced connection were acknowledged")
            result.expect(sum(c.fenced for c in firsts) == students, "not every first connection was told superseded")
            load = Load(firsts + seconds, [], [], http)
            assert rig.redis is not None
            result.reports.append(await check_redis(rig.redis.url, rig.prefix, load.clients))
            for b in seconds:
                assert await b.submit(http)
            for a in firsts:
                a.finished = True
            await until(lambda: _empty_outbox(rig), 60, 0.2)
            result.reports.append(await check_postgres(rig.database_url, load.clients))
    return result


# ---- a proctor who never reads ---------------------------------------------------------------------------


class StalledProctor:
    """A proctor feed over a raw socket that completes the WebSocket handshake and then never reads, with a
    tiny receive buffer, so the hub's writes back up. It does send a `ping` message every few seconds (a busy
    dashboard's timer), so the hub's heartbeat never times it out: only the slow-reader rule can cut it off."""

    def __init__(self, port: int, template_id: int, token: str) -> None:
        self.port, self.template_id, self.token = port, template_id, token
        self.sock: socket.socket | None = None
        self.eof = False  # the hub closed the TCP connection (seen by drain())
        self.reset = False  # ... with a reset

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.port))
        request = (
            f"GET /ws/proctor?template={self.template_id}&token={self.token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        s.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"proctor handshake refused: {head[:200]!r}")
        self.sock = s

    def ping(self) -> bool:
        """One masked text frame {"type":"ping"}; False once the hub has closed the connection."""
        assert self.sock is not None
        payload, mask = b'{"type":"ping"}', b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        except OSError:
            return False
        return True

    def drain(self, timeout_s: float = 30) -> tuple[int | None, int]:
        """Read everything now: (the close code the hub sent, or None; bytes read). Only after the fault."""
        assert self.sock is not None
        # open the window wide: after a long zero window the hub's kernel probes rarely, and a small window
        # update may not be sent at once
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(timeout_s)
        buf = bytearray()
        try:
            while chunk := self.sock.recv(1 << 20):
                buf += chunk
            self.eof = True
        except ConnectionResetError:
            # The hub closed its socket with our unread pings in its receive buffer: Linux then sends a reset
            # and drops what it had not sent yet (the close frame among it). The connection is over all the same.
            self.reset = True
        except OSError:
            pass
        self.sock.close()
        return _close_code(bytes(buf)), len(buf)


def _close_code(data: bytes) -> int | None:
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack(">H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i : i + 8])[0], i + 8
        if opcode == 0x8 and n >= 2:
            code: int = struct.unpack(">H", data[i : i + 2])[0]
            return code
        i += n
    return None


async def admin_token(rig: Rig) -> str:
    from server.auth import Auth, Role
    from storage import users

    conn = await asyncpg.connect(rig.database_url)
    try:
        user = await users.create_user(conn, f"faults-admin-{random.randrange(16**8):08x}", None, "F", role="admin")
    finally:
        await conn.close()
    return Auth(SECRET).user_token(user.id, Role.ADMIN, 3600)


async def slow_proctor(students: int = 1000, phase_s: float = 60.0, interval_s: float = 1.0,
                       send_queue: int = 256, cutoff_timeout_s: float = 180.0) -> Result:  # fmt: skip
    """1,000 students stream while a proctor never reads: the hub cuts it off (4500), its memory stays bounded,
    and the students' acknowledgement p99 is measured before (a reading proctor) and during."""
    result = Result("slow_proctor", {"students": students, "phase_s": phase_s, "interval_s": interval_s,
                                     "send_queue": send_queue})  # fmt: skip
    env = {"EXAMHUB_SEND_QUEUE": str(send_queue)}
    async with Rig(hubs_n=1, hub_env=env).up() as rig, running(rig, students, interval_s) as load:
        hub = rig.hubs[0]
        tid = await rig.template_id("neet-mock-180")
        token = await admin_token(rig)
        await wait_acks(load, students, timeout_s=120)

        def latencies(since: float) -> list[float]:
            return [m.settled_at - m.sent_at for c in load.clients for m in c.log
                    if m.status == ACKED and not m.by_resume and m.sent_at >= since]  # fmt: skip

        reader = await load.http.ws_connect(f"{rig.urls[0].replace('http', 'ws')}/ws/proctor?template={tid}",
                                            headers={"Authorization": f"Bearer {token}"}, max_msg_size=0)  # fmt: skip
        reading = asyncio.create_task(_read_all(reader))
        base_start = time.monotonic()
        await asyncio.sleep(phase_s)
        baseline = latencies(base_start)
        reading.cancel()
        await reader.close()  # the stalled proctor is the room's only watcher from here
        rss_before = hub.rss_kb()
        stalled = StalledProctor(hub.port, tid, token)
        await asyncio.to_thread(stalled.open)
        stall_start = time.monotonic()
        rss_peak, cut_off_at = rss_before, None
        while time.monotonic() - stall_start < max(phase_s, cutoff_timeout_s if cut_off_at is None else 0):
            await asyncio.sleep(1.0)
            rss_peak = max(rss_peak, hub.rss_kb())
            if cut_off_at is None and await room_watchers(rig, tid) == 0:
                cut_off_at = time.monotonic() - stall_start  # the hub let go of it (unsubscribed the room)
            if cut_off_at is None and int(time.monotonic() - stall_start) % 5 == 0:
                stalled.ping()  # within the hub's heartbeat (15 s), and not after the cut-off
        during = latencies(stall_start)
        code, nbytes = await asyncio.to_thread(stalled.drain, 60)
        result.figures.update(
            baseline_p99_ms=round(pct(baseline, 99) * 1000, 1), stalled_p99_ms=round(pct(during, 99) * 1000, 1),
            baseline_p50_ms=round(pct(baseline, 50) * 1000, 1), stalled_p50_ms=round(pct(during, 50) * 1000, 1),
            close_code=code, eof=stalled.eof, reset=stalled.reset,
            cut_off_after_s=None if cut_off_at is None else round(cut_off_at, 1),
            bytes_buffered_to_proctor=nbytes, hub_rss_before_mb=round(rss_before / 1024, 1),
            hub_rss_peak_mb=round(rss_peak / 1024, 1),
        )  # fmt: skip
        if baseline and during:
            result.figures["p99_ratio"] = round(pct(during, 99) / max(pct(baseline, 99), 1e-6), 2)
        result.expect(cut_off_at is not None, "the hub kept feeding a proctor who never reads")
        result.expect(code == 4500 or stalled.reset, f"the stalled proctor's connection did not end (close {code})")
        await finish_and_check(rig, result, load)
    return result


async def room_watchers(rig: Rig, template_id: int) -> int:
    assert rig.redis is not None
    redis = Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        reply = await redis.execute_command("PUBSUB NUMSUB", Keys(rig.prefix).room_feed(template_id))
    finally:
        await redis.aclose()
    return int(reply[0][1]) if reply and isinstance(reply[0], (list, tuple)) else int(reply[1])


async def _read_all(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


CASES: dict[str, Callable[..., Awaitable[Result]]] = {
    "hub_kill": hub_kill,
    "worker_kill": worker_kill,
    "hub_restart": hub_restart,
    "crash_points": crash_points,
    "redis_kill": redis_kill,
    "redis_hang": redis_hang,
    "pg_down": pg_down,
    "flusher_crash": flusher_crash,
    "proxy": proxy_faults,
    "fencing": fencing,
    "slow_proctor": slow_proctor,
}
