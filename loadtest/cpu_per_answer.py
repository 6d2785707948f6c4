"""CPU per answer of each process, examhub and the ceiling at one offered rate:

    python -m loadtest.cpu_per_answer --rate 7500 [--seconds 20] [--students 2000] [--targets examhub,ceiling]

Starts what `compare` starts (a fresh database, a durable redis-server, `examhub serve`, the ceiling baseline),
opens the students, then offers each target the rate for --seconds (after 3 uncounted seconds) and prints, per
target: acknowledged answers/s, p50 and p99 of the acknowledgement, the p99 of each second, and the CPU (user +
system, from /proc) per acknowledged answer of the server process, of Redis and of this driver, with Redis' own
time per command (INFO commandstats). docs/performance.md, "CPU per answer", has its figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import sys
from typing import Any

from redis.asyncio import Redis

from loadtest import driver
from loadtest.config import Config
from loadtest.driver import Latencies, tree_cpu_s
from loadtest.scenarios import _settle_gc, servers


def _pid_of(pattern: bytes) -> int | None:
    """The process whose command line (NUL-separated, from /proc) matches the pattern."""
    mark = re.compile(pattern)
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    line = f.read()
            except OSError:
                continue
            if mark.search(line):
                return int(p)
    return None


def _redis_pid(url: str) -> int | None:
    """redis-server shows itself as `[path/]redis-server 127.0.0.1:PORT` (the ceiling's --redis-url names it too)."""
    port = url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    return _pid_of(rb"^[^\x00]*redis-server [^\x00]*:" + port.encode() + rb"(?!\d)")


def _baseline_pid(url: str) -> int | None:
    """A baseline is started with --port PORT (loadtest.driver.baseline_process)."""
    return _pid_of(rb"\x00--port\x00" + url.rsplit(":", 1)[1].encode() + rb"\x00")


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(rate: float, seconds: float, targets: list[str], cfg: Config) -> None:
    import gc

    gc.set_threshold(100_000, 50, 1000)  # as the runner: the driver's own pauses would count as latency
    students = cfg.students
    async with servers(cfg) as hub, driver.baseline_process("ceiling", "--redis-url", hub.redis_url) as ceiling_url:
        redis_pid = _redis_pid(hub.redis_url)
        ceiling_pid = _baseline_pid(ceiling_url) or 0
        made: dict[str, tuple[Any, int]] = {
            "examhub": (driver.ExamhubTarget(hub, cfg.template), hub.pid),
            "ceiling": (driver.CeilingTarget(ceiling_url), ceiling_pid),
        }
        for name in targets:
            await made[name][0].open(students)
        _settle_gc()
        redis = Redis.from_url(hub.redis_url)
        try:
            for name in targets:
                target, pid = made[name]
                await driver.paced(students, rate, 3.0, target.answer, Latencies())  # warm-up, not counted
                lat = Latencies()
                stats0 = await redis.info("commandstats")
                cpu0 = (tree_cpu_s(pid), tree_cpu_s(redis_pid) if redis_pid else 0.0, _self_cpu_s())
                elapsed = await driver.paced(students, rate, seconds, target.answer, lat)
                cpu1 = (tree_cpu_s(pid), tree_cpu_s(redis_pid) if redis_pid else 0.0, _self_cpu_s())
                stats1 = await redis.info("commandstats")
                n = max(1, lat.acked)
                ms = sorted(lat.ms)
                per_s: dict[int, list[float]] = collections.defaultdict(list)
                for at, m in zip(lat.at, lat.ms, strict=True):
                    per_s[int(at - lat.start)].append(m)
                us = [round(1e6 * (b - a) / n) for a, b in zip(cpu0, cpu1, strict=True)]
                print(f"{name}: {lat.acked / elapsed:.0f} acked/s, p50 {ms[len(ms) // 2]:.1f} ms, "
                      f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms, errors {lat.errors}; CPU per answer: server {us[0]} us, "
                      f"redis {us[1]} us, driver {us[2]} us")  # fmt: skip
                print(
                    "  p99 of each second (ms):",
                    [round(sorted(v)[int(len(v) * 0.99)]) for _, v in sorted(per_s.items())],
                )
                for cmd, v in stats1.items():
                    before = stats0.get(cmd, {"calls": 0, "usec": 0})
                    calls, usec = v["calls"] - before["calls"], v["usec"] - before["usec"]
                    if calls and usec / n >= 0.1:
                        print(f"  redis {cmd.removeprefix('cmdstat_')}: {calls} calls, {usec / n:.1f} us per answer")
        finally:
            await redis.aclose()
            for name in targets:
                await made[name][0].close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, required=True, help="offered answers/s")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--students", type=int, default=2000)
    p.add_argument("--targets", default="examhub,ceiling")
    p.add_argument("--database-url", default=Config.database_url, help="a PostgreSQL server (a database is made)")
    p.add_argument("--pg-pool", type=int, default=Config.pg_pool, help="EXAMHUB_PG_POOL_MAX of the hub")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.rate <= 0 or args.seconds <= 0 or args.students < 1 or not set(targets) <= {"examhub", "ceiling"}:
        p.error("--rate and --seconds must be > 0, --students >= 1, --targets examhub and/or ceiling")
    driver.raise_fd_limit()
    import uvloop

    cfg = Config(students=args.students, database_url=args.database_url, pg_pool=args.pg_pool)
    uvloop.run(measure(args.rate, args.seconds, targets, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
