"""The load scenarios of issue #6, each a coroutine that starts its own servers and returns its figures.

    steady         N connected students, one answer every 5 s each; ack latency, lost answers, memory/connection
    start-storm    N students start (POST /api/sessions) and connect within a window; start+connect latency
    submit-storm   N attempts of 180 answers reach one deadline together; time until all are in PostgreSQL
    proctors       steady, with proctors watching the room; student-to-proctor latency
    compare        examhub vs the ceiling baseline vs the HTTP->PostgreSQL baseline at stepped answer rates

Every scenario runs against servers of its own (a fresh database, a durable redis-server, `examhub serve
--workers N`), so runs never see each other; `loadtest.run` writes the figures as JSON and markdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from loadtest import driver
from loadtest.config import TARGET_P99_MS, Config
from loadtest.driver import Hub, Latencies, Options, Student, pct, summary


@contextlib.asynccontextmanager
async def servers(cfg: Config) -> AsyncIterator[Hub]:
    """A fresh database, a durable redis-server (unless cfg.redis_url) and the hub, for one scenario."""
    prefix = f"load{random.randrange(16**6):06x}"
    with contextlib.ExitStack() as stack:
        redis_url = cfg.redis_url or stack.enter_context(driver.durable_redis())
        if cfg.redis_fsync != "always" and not cfg.redis_url:
            redis = Redis.from_url(redis_url)
            await redis.config_set("appendfsync", cfg.redis_fsync)
            await redis.aclose()
        async with (
            driver.fresh_database(cfg.database_url) as database_url,
            driver.hub_process(
                database_url,
                redis_url,
                prefix,
                workers=cfg.workers,
                extra_env={"EXAMHUB_PG_POOL_MAX": str(cfg.pg_pool)},
            ) as hub,
        ):
            yield hub


def note(text: str) -> None:
    """Progress on stderr: a 10,000-student run spends minutes setting up before its measured part."""
    print(f"{time.strftime('%H:%M:%S')} loadtest: {text}", file=sys.stderr, flush=True)


def _settle_gc() -> None:
    # The load generator's own GC pauses would count as hub latency (docs/performance.md).
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------------------------------------- steady


async def steady(cfg: Config) -> dict[str, Any]:
    """Connected students answering on a schedule; optional proctors on the room's feed."""
    rate = cfg.rate or cfg.students / 5.0
    async with servers(cfg) as hub, driver.client_session() as http:
        t_setup = time.perf_counter()
        students = await driver.start_students(hub.url, cfg.students, cfg.template, cfg.msgpack)
        setup_s = time.perf_counter() - t_setup
        note(f"{cfg.students} sessions started in {setup_s:.1f} s; connecting (hub pid {hub.pid})")
        await asyncio.sleep(1.0)
        rss_before = hub.rss_kb()
        options = Options()
        t_connect = time.perf_counter()
        connect_cpu = Cpu.now(hub)
        connect_ms = await driver.connect_all(http, hub.url, students, options)
        connect_s = time.perf_counter() - t_connect
        connect_cores = connect_cpu.since(hub, connect_s)
        note(f"connected in {connect_s:.1f} s")
        await asyncio.sleep(1.0)  # idle: what the connections hold once the state frames are written
        idle_start = Cpu.now(hub)
        await asyncio.sleep(3.0)
        idle = idle_start.since(hub, 3.0)
        rss_idle = hub.rss_kb()
        _settle_gc()
        sent_at: dict[tuple[str, int], float] = {}
        feed = FeedStats()
        watchers = await start_watchers(cfg, hub, http, sent_at, feed)
        record = bool(cfg.proctors)
        next_q = [random.randrange(len(st.qids)) for st in students]

        async def answer(i: int) -> bool:
            st = students[i]
            next_q[i] += 1
            qid = st.qids[next_q[i] % len(st.qids)]
            if record:
                sent_at[(st.sid, st.seq + 1)] = time.perf_counter()
            return await st.answer(qid, options.pick(qid))

        if cfg.warmup:  # the same load, not counted: the hub settles after 10,000 connections (GC, buffers)
            note(f"warm-up: {rate:g} answers/s for {cfg.warmup:g} s")
            await driver.paced(cfg.students, rate, cfg.warmup, answer, Latencies())
        lat = Latencies()
        note(f"load: {rate:g} answers/s for {cfg.duration:g} s")
        cpu_start = Cpu.now(hub)
        elapsed = await driver.paced(cfg.students, rate, cfg.duration, answer, lat)
        cpu = cpu_start.since(hub, elapsed)
        await asyncio.gather(*watchers)
        rss_after = hub.rss_kb()
        await asyncio.gather(*(st.close() for st in students))
        lost = await driver.count_lost(hub.redis_url, hub.prefix, students)
    return {
        "students": cfg.students,
        "workers": cfg.workers,
        "template": cfg.template,
        "offered_rate": rate,
        "duration_s": cfg.duration,
        "warmup_s": cfg.warmup,
        "encoding": "msgpack" if cfg.msgpack else "json",
        "pg_pool_per_process": cfg.pg_pool,
        "setup_s": round(setup_s, 1),
        "connect_all_s": round(connect_s, 1),
        "connect_p99_ms": round(pct(connect_ms, 99), 2),
        "hub_cpu_cores_connect": connect_cores["hub_cpu_cores"],
        "driver_cpu_cores_connect": connect_cores["driver_cpu_cores"],
        "sent": lat.sent,
        "acked": lat.acked,
        "errors": lat.errors,
        "lost": lost,
        "throughput": round(lat.acked / elapsed, 1),
        **summary(lat.ms),
        "p99_ms_by_5s": lat.p99_by_window(),
        "proctors": cfg.proctors,
        "feed_updates": feed.updates,
        **summary(feed.ms, "feed_"),
        "feed_errors": feed.errors,
        **cpu,
        "hub_cpu_cores_idle": idle["hub_cpu_cores"],  # 10,000 open connections doing nothing (heartbeats)
        "hub_rss_mb_before_connect": round(rss_before / 1024, 1),
        "hub_rss_mb_idle": round(rss_idle / 1024, 1),
        "hub_rss_mb_after_load": round(rss_after / 1024, 1),
        "hub_kb_per_connection": round((rss_idle - rss_before) / cfg.students, 1),
        "redis": "external" if cfg.redis_url else f"own redis-server, appendonly yes, appendfsync {cfg.redis_fsync}",
    }


async def start_watchers(cfg: Config, hub: Hub, http: aiohttp.ClientSession, sent_at: dict[tuple[str, int], float],
                         feed: FeedStats) -> list[asyncio.Task[None]]:  # fmt: skip
    """cfg.proctors admin feeds on the room, each with its snapshot in before the load starts."""
    if not cfg.proctors:
        return []
    token = await driver.admin_token(hub.database_url)
    tid = await driver.template_id(http, hub.url, cfg.template)
    end = time.perf_counter() + cfg.warmup + cfg.duration + 5
    readies = [asyncio.Event() for _ in range(cfg.proctors)]
    watchers = [asyncio.create_task(watch(http, hub.url, tid, token, sent_at, feed, end, r)) for r in readies]
    await asyncio.gather(*(r.wait() for r in readies))
    return watchers


@dataclass
class Cpu:
    """CPU used by the hub's processes and by this load generator over the measured part of a run."""

    hub_s: float
    driver_s: float
    hub_wait_s: float
    driver_wait_s: float

    @staticmethod
    def now(hub: Hub) -> Cpu:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return Cpu(driver.tree_cpu_s(hub.pid), own.ru_utime + own.ru_stime, driver.tree_runqueue_wait_s(hub.pid),
                   driver.tree_runqueue_wait_s(os.getpid()))  # fmt: skip

    def since(self, hub: Hub, elapsed: float) -> dict[str, float]:
        """Cores used, and cores' worth of time spent runnable but waiting for a CPU held by someone else."""
        end = Cpu.now(hub)
        return {
            "hub_cpu_cores": round((end.hub_s - self.hub_s) / elapsed, 2),
            "driver_cpu_cores": round((end.driver_s - self.driver_s) / elapsed, 2),
            "hub_waiting_for_cpu": round((end.hub_wait_s - self.hub_wait_s) / elapsed, 2),
            "driver_waiting_for_cpu": round((end.driver_wait_s - self.driver_wait_s) / elapsed, 2),
        }


@dataclass
class FeedStats:
    ms: list[float] = field(default_factory=list)  # a student's send -> a proctor's screen, per proctor
    updates: int = 0
    errors: int = 0


async def watch(http: aiohttp.ClientSession, url: str, tid: int, token: str, sent_at: dict[tuple[str, int], float],
                stats: FeedStats, until: float, ready: asyncio.Event) -> None:  # fmt: skip
    """A proctor on the room's feed: for each update row, how long since the student sent that message."""
    ws = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws/proctor?template={tid}",
                               headers={"Authorization": f"Bearer {token}"}, max_msg_size=0, compress=0)  # fmt: skip
    try:
        while time.perf_counter() < until:
            try:
                msg = await ws.receive(timeout=max(0.1, until - time.perf_counter()))
            except TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                stats.errors += 1
                ready.set()
                return
            now = time.perf_counter()
            frame = json.loads(msg.data)
            if frame["type"] == "snapshot":
                ready.set()
            elif frame["type"] == "update":
                stats.updates += 1
                for row in frame["sessions"]:
                    sent = sent_at.get((row["session"], row["last_seq"]))
                    if sent is not None:
                        stats.ms.append((now - sent) * 1000)
    finally:
        await ws.close()


async def proctors(cfg: Config) -> dict[str, Any]:
    if not cfg.proctors:
        cfg.proctors = 20
    return await steady(cfg)


# ---------------------------------------------------------------------------------------------- start storm


async def with_retry(attempt: Callable[[], Awaitable[Student]], counter: Counter[str], tries: int = 8) -> Student:
    """Retry a start refused with 429/503, or a connection refused, with jittered exponential backoff
    (honouring Retry-After): what a well-behaved client does at the start of an exam."""
    delay = 0.2
    for k in range(tries):
        try:
            return await attempt()
        except driver.StartRefused as exc:
            if exc.status not in (429, 503) or k == tries - 1:
                raise
            wait = exc.retry_after if exc.retry_after is not None else delay
            counter[f"http {exc.status}"] += 1
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            if k == tries - 1:
                raise
            wait = delay
            counter[type(exc).__name__] += 1
        await asyncio.sleep(wait * (0.5 + random.random()))
        delay = min(delay * 2, 4.0)
    raise AssertionError("unreachable")


async def start_storm(cfg: Config) -> dict[str, Any]:
    """Students who are logged in already all start their exam in one window: POST /api/sessions, then the
    WebSocket and its state frame. Latency runs from each student's arrival time to its state frame."""
    async with servers(cfg) as hub, driver.client_session(64) as setup_http:
        tid = await driver.template_id(setup_http, hub.url, cfg.template)
        sem = asyncio.Semaphore(64)

        async def guest(i: int) -> str:
            async with sem:
                return await driver.guest_token(setup_http, hub.url, f"storm {i}")

        tokens = await asyncio.gather(*(guest(i) for i in range(cfg.students)))
        note(f"{cfg.students} guests ready; the storm comes over {cfg.window:g} s (hub pid {hub.pid})")
        await asyncio.sleep(1.0)
        rss_before = hub.rss_kb()
        _settle_gc()
        total_ms: list[float] = []
        start_ms: list[float] = []
        retries: Counter[str] = Counter()
        errors: list[str] = []
        students: list[Student] = []
        async with driver.client_session(1000) as rest, driver.client_session() as ws_http:
            t0 = time.perf_counter() + 0.5
            last = [t0]

            async def arrive(i: int) -> None:
                at = t0 + random.random() * cfg.window
                await asyncio.sleep(at - time.perf_counter())
                try:
                    st = await with_retry(lambda: driver.start_session(rest, hub.url, tokens[i], tid), retries)
                    start_ms.append((time.perf_counter() - at) * 1000)

                    async def connect() -> Student:
                        await st.connect(ws_http, hub.url, None)  # checked as this session's state, not parsed
                        return st

                    await with_retry(connect, retries)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    return
                now = time.perf_counter()
                total_ms.append((now - at) * 1000)
                last[0] = max(last[0], now)
                students.append(st)

            await asyncio.gather(*(arrive(i) for i in range(cfg.students)))
            rss_connected = hub.rss_kb()
            await asyncio.gather(*(st.close() for st in students))
    return {
        "students": cfg.students,
        "workers": cfg.workers,
        "template": cfg.template,
        "window_s": cfg.window,
        "pg_pool_per_process": cfg.pg_pool,
        "connected": len(total_ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "retries": sum(retries.values()),
        "retry_reasons": dict(retries),
        "all_connected_s": round(last[0] - t0, 2),
        **summary(start_ms, "start_"),
        **summary(total_ms),
        "hub_rss_mb_before": round(rss_before / 1024, 1),
        "hub_rss_mb_connected": round(rss_connected / 1024, 1),
    }


# ---------------------------------------------------------------------------------------------- submit storm

STORM_TEMPLATE = "loadtest-storm"


async def create_storm_template(database_url: str, answers: int, duration_s: int = 7200) -> None:
    """A copy of the 180-question NEET mock with `answers` questions and a long clock: the storm's deadline
    is the moment every student submits together, not a timer racing the preparation."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO test_templates (slug, name, bank_id, config)
               SELECT $1, 'Load test: submit storm', bank_id,
                      config || jsonb_build_object('count', $2::int, 'duration_s', $3::int)
               FROM test_templates WHERE slug = 'neet-mock-180'""",
            STORM_TEMPLATE, answers, duration_s,
        )  # fmt: skip
    finally:
        await conn.close()


async def submit_storm(cfg: Config) -> dict[str, Any]:
    """Every student answers every question (pipelined), then all submit at the same instant; we wait until
    every attempt and every response is in PostgreSQL and check them against what was acknowledged."""
    async with servers(cfg) as hub, driver.client_session() as http:
        await create_storm_template(hub.database_url, cfg.answers)
        students = await driver.start_students(hub.url, cfg.students, STORM_TEMPLATE)
        options = Options()
        await driver.connect_all(http, hub.url, students, options)
        _settle_gc()
        fill_errors = [0]

        async def fill(st: Student) -> None:
            window: set[asyncio.Future[Any]] = set()
            for qid in st.qids:
                choice = options.pick(qid)
                fut = await st.send({"type": "answer", "q": qid, "choice": choice, "time_ms": 1000})
                fut.add_done_callback(functools.partial(_settle, st, qid, choice, fill_errors))
                window.add(fut)
                if len(window) >= cfg.pipeline:
                    _, window = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
            if window:
                await asyncio.wait(window)

        note(f"{cfg.students} students connected; filling {cfg.answers} answers each (hub pid {hub.pid})")
        t_fill = time.perf_counter()
        await asyncio.gather(*(fill(st) for st in students))
        fill_s = time.perf_counter() - t_fill
        answers_acked = sum(len(st.acked) for st in students)

        note(f"filled in {fill_s:.1f} s; everyone submits together")
        deadline = time.perf_counter() + 1.0
        submit_ms: list[float] = []
        finished = [0]

        async def submit(st: Student) -> None:
            await asyncio.sleep(deadline - time.perf_counter())
            reply = await (await st.send({"type": "submit"}))
            if reply["type"] == "ack":
                submit_ms.append((time.perf_counter() - deadline) * 1000)
            assert st.finished is not None
            with contextlib.suppress(ConnectionError):
                await st.finished
                finished[0] += 1

        await asyncio.gather(*(submit(st) for st in students), return_exceptions=True)
        in_pg_s, attempts, responses = await _wait_in_pg(hub.database_url, cfg.students, answers_acked,
                                                         deadline, cfg.storm_timeout)  # fmt: skip
        checks = await _check_in_pg(hub.database_url, students)
        await asyncio.gather(*(st.close() for st in students))
    return {
        "students": cfg.students,
        "workers": cfg.workers,
        "answers_per_attempt": cfg.answers,
        "fill_s": round(fill_s, 1),
        "fill_rate": round(answers_acked / fill_s, 1),
        "answers_acked": answers_acked,
        "fill_errors": fill_errors[0],
        "submits_acked": len(submit_ms),
        "finished_frames": finished[0],
        **summary(submit_ms, "submit_"),
        "all_in_pg_s": round(in_pg_s, 2) if in_pg_s is not None else None,
        "attempts_in_pg": attempts,
        "responses_in_pg": responses,
        **checks,
    }


def _settle(st: Student, qid: int, choice: str, errors: list[int], fut: asyncio.Future[dict[str, Any]]) -> None:
    if fut.cancelled() or fut.exception() is not None or fut.result()["type"] != "ack":
        errors[0] += 1
    else:
        st.acked[qid] = choice


async def _wait_in_pg(database_url: str, attempts: int, responses: int, since: float,
                      limit_s: float) -> tuple[float | None, int, int]:  # fmt: skip
    """Poll PostgreSQL until every attempt and every acknowledged answer is there; seconds since `since`."""
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            row = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM test_attempts a JOIN test_templates t ON t.id = a.template_id
                           WHERE t.slug = $1) AS attempts,
                          (SELECT count(*) FROM responses r JOIN test_attempts a USING (session_id)
                           JOIN test_templates t ON t.id = a.template_id WHERE t.slug = $1) AS responses""",
                STORM_TEMPLATE,
            )
            assert row is not None
            now = time.perf_counter()
            if row["attempts"] >= attempts and row["responses"] >= responses:
                return now - since, row["attempts"], row["responses"]
            if now - since > limit_s:
                return None, row["attempts"], row["responses"]
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def _check_in_pg(database_url: str, students: list[Student]) -> dict[str, int]:
    """Every acknowledged answer against PostgreSQL, by SQL: lost = acknowledged but absent or different;
    duplicated = rows beyond one per (attempt, question) and attempts beyond one per session."""
    rows = [(st.sid, qid, choice) for st in students for qid, choice in st.acked.items()]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMPORARY TABLE acked (session_id text, question_id bigint, choice text)")
        await conn.copy_records_to_table("acked", records=rows)
        await conn.execute("CREATE TEMPORARY TABLE sids AS SELECT DISTINCT session_id FROM acked")
        lost = await conn.fetchval(
            """SELECT count(*) FROM acked k LEFT JOIN responses r USING (session_id, question_id)
               WHERE r.choice IS DISTINCT FROM k.choice"""
        )
        dup_responses = await conn.fetchval(
            """SELECT count(*) - count(DISTINCT (session_id, question_id))
               FROM responses JOIN sids USING (session_id)"""
        )
        dup_attempts = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT session_id) FROM test_attempts JOIN sids USING (session_id)"
        )
        missing_attempts = await conn.fetchval(
            """SELECT count(*) FROM sids s
               WHERE NOT EXISTS (SELECT 1 FROM test_attempts a WHERE a.session_id = s.session_id)"""
        )
    finally:
        await conn.close()
    return {
        "lost": int(lost),
        "duplicated_responses": int(dup_responses),
        "duplicated_attempts": int(dup_attempts),
        "missing_attempts": int(missing_attempts),
    }


# ---------------------------------------------------------------------------------------------- comparison


async def compare(cfg: Config) -> dict[str, Any]:
    """examhub, the ceiling of its stack and the HTTP->PostgreSQL alternative, side by side in one run.

    Each rate is offered to each target for `cfg.step` seconds in a trial, the targets in turn (their order rotating),
    so that a noisy machine hits all alike. A rate counts for a target when most of its trials meet the target
    (_meets): up to `cfg.trials` trials, stopping once the majority is decided, so that one stall of the shared
    machine in one trial neither makes nor breaks a rate (at 10,000 answers/s one 100 ms stall holds ~1% of a
    10-second trial's answers: its p99). A target stops after two rates in a row that did not count."""
    async with (
        servers(cfg) as hub,
        # as many processes of each baseline as the hub has (--workers): one process against one, or N against N
        driver.baseline_process("ceiling", "--redis-url", hub.redis_url, workers=cfg.workers) as ceiling_url,
        driver.baseline_process("http_pg", "--database-url", hub.database_url, workers=cfg.workers) as http_url,
    ):
        targets: list[driver.Target] = [
            driver.ExamhubTarget(hub, cfg.template),
            driver.CeilingTarget(ceiling_url),
            driver.HttpPgTarget(http_url),
        ]
        for t in targets:
            await t.open(cfg.students)
        _settle_gc()
        rows: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        misses = {t.name: 0 for t in targets}
        turn = 0
        try:
            for rate in cfg.rates:
                active = [t for t in targets if misses[t.name] < 2]
                if not active:
                    break
                trials: dict[str, list[dict[str, Any]]] = {t.name: [] for t in active}
                for trial in range(1, cfg.trials + 1):
                    due = [t for t in active if majority(trials[t.name], cfg.trials) is None]
                    if not due:
                        break
                    turn += 1
                    for t in due[turn % len(due) :] + due[: turn % len(due)]:
                        lat = Latencies()
                        note(f"{t.name} at {rate:g} answers/s, trial {trial}")
                        elapsed = await driver.paced(cfg.students, rate, cfg.step, t.answer, lat)
                        row: dict[str, Any] = {
                            "target": t.name, "offered_rate": rate, "trial": trial, "acked": lat.acked,
                            "errors": lat.errors, "throughput": round(lat.acked / elapsed, 1), **summary(lat.ms),
                        }  # fmt: skip
                        row["met"] = _meets(row)
                        rows.append(row)
                        trials[t.name].append(row)
                        await asyncio.sleep(1.0)
                for t in active:
                    step = _step(t.name, rate, trials[t.name], cfg.trials)
                    steps.append(step)
                    misses[t.name] = 0 if step["counts"] else misses[t.name] + 1
        finally:
            for t in targets:
                await t.close()
    names = [t.name for t in targets]
    best = {n: max((s["throughput"] for s in steps if s["target"] == n and s["counts"]), default=0.0) for n in names}
    # the rule before trials (one trial decides): the first trials alone, for comparison with older records
    first = {n: max((r["throughput"] for r in rows if r["target"] == n and r["trial"] == 1 and r["met"]),
                    default=0.0) for n in names}  # fmt: skip
    first_ratios = {
        "ratio_examhub_to_ceiling": _ratio(first, "ceiling"),
        "ratio_examhub_to_http_pg": _ratio(first, "http_pg"),
    }
    return {
        "students": cfg.students,
        "workers": cfg.workers,
        "template": cfg.template,
        "step_s": cfg.step,
        "trials": cfg.trials,
        "rows": rows,
        "steps": steps,
        "best_throughput_at_p99_50ms": best,
        "ratio_examhub_to_ceiling": _ratio(best, "ceiling"),
        "ratio_examhub_to_http_pg": _ratio(best, "http_pg"),
        "first_trials_only": {"best": first, **first_ratios},
    }


def _meets(row: dict[str, Any]) -> bool:
    """A trial meets the target when p99 <= 50 ms, nothing failed and the target kept up with the offered rate."""
    p99 = row["p99_ms"]
    return p99 is not None and p99 <= TARGET_P99_MS and row["errors"] == 0 and row["acked"] > 0 and (
        row["throughput"] >= 0.95 * row["offered_rate"])  # fmt: skip


def majority(trials: list[dict[str, Any]], of: int) -> bool | None:
    """Whether most of `of` trials meet the target, once the trials so far decide it; None while they do not."""
    met = sum(1 for t in trials if t["met"])
    need = of // 2 + 1
    if met >= need:
        return True
    if len(trials) - met >= of - need + 1:
        return False
    return None


def _step(target: str, rate: float, trials: list[dict[str, Any]], of: int) -> dict[str, Any]:
    """One rate's verdict for one target, with the medians of its trials."""

    def median(key: str) -> float | None:
        values = sorted(t[key] for t in trials if t[key] is not None)
        return round(statistics.median(values), 2) if values else None

    return {"target": target, "offered_rate": rate, "trials": len(trials), "met": sum(1 for t in trials if t["met"]),
            "counts": bool(majority(trials, of)), "throughput": median("throughput"), "p50_ms": median("p50_ms"),
            "p99_ms": median("p99_ms")}  # fmt: skip


def _ratio(best: dict[str, float], baseline: str) -> float | None:
    return round(best["examhub"] / best[baseline], 2) if best[baseline] else None


SCENARIOS: dict[str, Callable[[Config], Coroutine[Any, Any, dict[str, Any]]]] = {
    "steady": steady,
    "start-storm": start_storm,
    "submit-storm": submit_storm,
    "proctors": proctors,
    "compare": compare,
}
