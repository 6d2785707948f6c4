"""REST read benchmark: the same reads served from the tiered Redis cache and straight from PostgreSQL.

    python -m loadtest.bench_rest --duration 15 --connections 32

Starts a hub process against a fresh database and a durable redis-server of its own (as bench_ack does),
then drives each endpoint with `wrk` (apt-get install wrk: a C load generator, so the driver costs little of
the two cores) twice: with the cache on, and with EXAMHUB_CACHE=off, which makes every read go to
PostgreSQL. Prints a table of requests/s and latency percentiles, and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_ack import durable_redis, fresh_database, hub_process
from storage.embedded import free_port

# path, needs a user token
ENDPOINTS = [
    ("/api/templates", False),
    ("/api/templates/{tid}", False),
    ("/api/analytics/global", True),
    ("/api/questions/random?bank_id={bank}&topic=genetics&difficulty=medium&count=10", True),
]


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for p in ("50", "90", "99"):
        figures[f"p{p}_ms"] = round(ms(re.search(rf"\s{p}(?:\.000)?%\s+(\S+)", out).group(1)), 2)  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return figures


async def prepare(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post("/api/auth/guest", json={"display_name": "bench"}) as r:
            token = (await r.json())["token"]
        async with http.get("/api/templates") as r:
            tid = next(t["id"] for t in (await r.json())["templates"] if t["slug"] == "neet-biology-90")
        async with http.get("/api/banks", headers={"Authorization": f"Bearer {token}"}) as r:
            body = await r.json()
            banks = body["banks"] if isinstance(body, dict) else body
            bank = banks[0]["id"]
    return {"token": token, "tid": str(tid), "bank": str(bank)}


def wrk(url: str, token: str | None, duration: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    return parse_wrk(out)


async def run_mode(args: argparse.Namespace, cache: bool) -> list[dict[str, Any]]:
    os.environ["EXAMHUB_CACHE"] = "on" if cache else "off"
    prefix = f"rest{random.randrange(16**6):06x}"
    rows = []
    with durable_redis() as redis_url:
        async with (
            fresh_database(args.database_url) as database_url,
            hub_process(database_url, redis_url, prefix, free_port()) as (url, _pid),
        ):
            ids = await prepare(url)
            for path, needs_token in ENDPOINTS:
                target = url + path.format(**ids)
                wrk(target, ids["token"] if needs_token else None, 2, args.connections)  # warm up (and fill)
                figures = wrk(target, ids["token"] if needs_token else None, args.duration, args.connections)
                rows.append({"endpoint": path.split("?")[0], "cache": "on" if cache else "off", **figures})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=32)
    default_db = os.environ.get("EXAMHUB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database-url", default=default_db)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        p.error("needs wrk: apt-get install wrk")
    if not 1 <= args.duration <= 300:
        p.error("duration must be 1..300 s")
    rows: list[dict[str, Any]] = []
    for cache in (True, False):
        rows += asyncio.run(run_mode(args, cache))
    print(f"{'endpoint':<28} {'cache':<6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for r in rows:
        print(f"{r['endpoint']:<28} {r['cache']:<6} {r['rps']:>9.0f} {r['p50_ms']:>8} {r['p90_ms']:>8} "
              f"{r['p99_ms']:>8} {r['non_2xx']:>8.0f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    with contextlib.suppress(KeyError):
        del os.environ["EXAMHUB_CACHE"]
    return 0 if all(r["non_2xx"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
