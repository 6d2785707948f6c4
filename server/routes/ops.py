"""Operations: readiness (/readyz) and Prometheus metrics (/metrics). /healthz (alive) is in server/app.py.

/readyz answers 200 when this process can serve exams, 503 otherwise, with every check:
  postgres          SELECT 1
  redis             PING
  migrations        none pending (storage.migrate.pending)
  redis_durability  AOF on, fsync always, no eviction (storage.durability.redis_problems). With
                    EXAMHUB_REDIS_DURABILITY=warn a problem is reported as "warn" and the hub is still ready
                    (the operator chose to run on such a Redis); with `require` it is a failure.
Each check is "ok", "warn" or "fail" (with an "error" text); they run concurrently, 2 s each at most.
The rate limiter skips both paths, so probes and scrapes always get through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from server.api import Ctx
from server.metrics import CONTENT_TYPE
from server.routes import api
from server.settings import Durability
from storage import pg
from storage.durability import redis_problems
from storage.migrate import pending
from storage.scripts import AnyRedis

CHECK_TIMEOUT_S = 2.0

Status = Literal["ok", "warn", "fail"]


class Check(BaseModel):
    status: Status
    error: str | None = None
    details: list[str] = []


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]
    failing: list[str] = []


async def _postgres(pool: pg.Pool) -> Check:
    await pool.fetchval("SELECT 1")
    return Check(status="ok")


async def _redis(redis: AnyRedis) -> Check:
    await redis.ping()
    return Check(status="ok")


async def _migrations(pool: pg.Pool) -> Check:
    async with pool.acquire() as conn:
        missing = await pending(conn)
    if missing:
        return Check(status="fail", error="migrations pending", details=missing)
    return Check(status="ok")


async def _durability(redis: AnyRedis, durability: Durability) -> Check:
    problems = await redis_problems(redis)
    if not problems:
        return Check(status="ok")
    if durability is Durability.WARN:
        return Check(status="warn", error="redis can lose acknowledged writes (allowed: durability=warn)",
                     details=problems)  # fmt: skip
    return Check(status="fail", error="redis can lose acknowledged writes", details=problems)


async def _run(check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return Check(status="fail", error=f"no answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:  # a probe reports what failed; it never fails itself
        return Check(status="fail", error=f"{type(exc).__name__}: {exc}".strip())


async def readiness(pool: pg.Pool, redis: AnyRedis, durability: Durability) -> ReadyOut:
    """Every check, run concurrently (also used by `examhub health --direct`)."""
    checks: dict[str, Callable[[], Awaitable[Check]]] = {
        "postgres": lambda: _postgres(pool),
        "redis": lambda: _redis(redis),
        "migrations": lambda: _migrations(pool),
        "redis_durability": lambda: _durability(redis, durability),
    }
    results = await asyncio.gather(*(_run(c) for c in checks.values()))
    by_name = dict(zip(checks, results, strict=True))
    failing = [name for name, c in by_name.items() if c.status == "fail"]
    return ReadyOut(status="unavailable" if failing else "ready", checks=by_name, failing=failing)


@api.get("/readyz", response=ReadyOut, tag="ops")
async def readyz(ctx: Ctx[None, None]) -> web.Response:
    """Readiness: PostgreSQL, Redis, migrations and Redis durability (503 with the failing checks)."""
    s = ctx.services
    ready = await readiness(s.pool, s.redis, s.settings.redis_durability)
    body: dict[str, Any] = ready.model_dump(mode="json", exclude_none=True)
    return web.json_response(body, status=200 if ready.status == "ready" else 503)


@api.get("/metrics", tag="ops")
async def metrics(ctx: Ctx[None, None]) -> web.Response:
    """Prometheus metrics of this process (text exposition format)."""
    return web.Response(body=ctx.services.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
