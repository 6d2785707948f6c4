"""`examhub health` (is a hub, or its storage, ready?) and `examhub cache warm` (pre-fill popular content).

    examhub health                       GET /readyz of the hub at http://EXAMHUB_HOST:EXAMHUB_PORT
    examhub health --url http://h:8080   ... of that hub
    examhub health --direct              run the same checks here, against DATABASE_URL and REDIS_URL
    examhub cache warm                   fill the warm tier: the template list, each active template, and
                                         every bank's question sets by topic and difficulty
    examhub cache invalidate TAG...      drop every entry under those tags (after changing content outside
                                         the REST API, e.g. SQL by hand: `examhub cache invalidate templates`)

Exit status: 0 ready (or warmed), 1 not ready, 2 could not ask.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    health_p = sub.add_parser("health", help="readiness of a running hub (or, with --direct, of its storage)")
    health_p.add_argument("--url", help="the hub's base URL (default: http://EXAMHUB_HOST:EXAMHUB_PORT)")
    health_p.add_argument("--direct", action="store_true", help="check DATABASE_URL and REDIS_URL from here")
    health_p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the hub")
    health_p.set_defaults(run=health, storage=False)  # asks a running hub: must not start embedded servers
    cache_p = sub.add_parser("cache", help="the tiered Redis cache")
    actions = cache_p.add_subparsers(dest="action", required=True)
    actions.add_parser("warm", help="pre-fill the template list, templates and question sets").set_defaults(
        run=cache_warm
    )
    drop = actions.add_parser("invalidate", help="drop every cached entry under the given tags")
    drop.add_argument("tags", nargs="+", metavar="TAG", help="e.g. templates, questions, bank:<id>")
    drop.set_defaults(run=cache_invalidate)


def _print_checks(status: str, checks: dict[str, Any]) -> None:
    print(f"examhub: {status}")
    for name, check in checks.items():
        line = f"  {name:<18} {check.get('status', '?')}"
        if check.get("error"):
            line += f"  {check['error']}"
        print(line)
        for detail in check.get("details") or ():
            print(f"  {'':<18}   - {detail}")


async def health(settings: Settings, args: argparse.Namespace) -> int:
    if args.direct:
        return await _health_direct(settings)
    import aiohttp

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = (args.url or f"http://{host}:{settings.port}").rstrip("/") + "/readyz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as http,
            http.get(url) as r,
        ):
            text = await r.text()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"examhub: cannot reach {url}: {exc or type(exc).__name__}")
        return 2
    try:
        body = json.loads(text)
        checks = body["checks"]
    except (ValueError, KeyError, TypeError):
        print(f"examhub: {url} answered {status} without readiness checks: {text[:200]!r}")
        return 2
    _print_checks(f"{body.get('status', '?')} ({url} answered {status})", checks)
    return 0 if status == 200 else 1


async def _health_direct(settings: Settings) -> int:
    from server.app import connect_redis
    from server.routes import load
    from storage import pg

    load()  # import every route module first (load() registers them only when none is imported yet)
    from server.routes.ops import readiness

    if settings.database_url is None or settings.redis_url is None:
        print("examhub: --direct needs DATABASE_URL and REDIS_URL")
        return 2
    try:
        pool = await asyncio.wait_for(pg.create_pool(settings.database_url, 1, 2), settings.redis_timeout_s)
    except Exception as exc:  # any connection failure is the answer, not a crash
        print("examhub: unavailable")
        print(f"  {'postgres':<18} fail  {type(exc).__name__}: {exc}")
        return 1
    redis = connect_redis(settings)
    try:
        ready = await readiness(pool, redis, settings.redis_durability)
    finally:
        await redis.aclose()
        await pool.close()
    _print_checks(ready.status, ready.model_dump(mode="json", exclude_none=True)["checks"])
    return 0 if ready.status == "ready" else 1


async def cache_warm(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import connect_redis
    from server.routes import load
    from storage import pg
    from storage.cache import (
        TEMPLATE_LIST_KEY,
        TEMPLATES_TAG,
        Tier,
        TieredCache,
        question_set_key,
        question_set_tags,
        question_sets,
        template_key,
    )

    load()  # see _health_direct
    from server.routes.templates import load_template, load_template_list

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 4)
    redis = connect_redis(settings, decode=False)
    cache = TieredCache(redis, settings.redis_prefix, warm_ttl_s=settings.cache_warm_ttl_s)
    filled = already = 0

    async def fill(key: str, loader: Any, tags: tuple[str, ...]) -> None:
        nonlocal filled, already
        called = False

        async def tracking() -> Any:
            nonlocal called
            called = True
            return await loader()

        await cache.get_or_load(Tier.WARM, key, tracking, tags=tags)
        if called:
            filled += 1
        else:
            already += 1

    try:
        listing = await load_template_list(pool)
        await fill(TEMPLATE_LIST_KEY, lambda: load_template_list(pool), (TEMPLATES_TAG,))
        for t in listing["templates"]:
            await fill(template_key(t["id"]), lambda tid=t["id"]: load_template(pool, tid), (TEMPLATES_TAG,))
        print(f"examhub: templates: the active list and {len(listing['templates'])} templates")
        for bank in await pool.fetch("SELECT id, slug FROM question_banks ORDER BY id"):
            sets = await question_sets(pool, bank["id"])
            for (topic, difficulty), questions in sorted(sets.items()):
                key = question_set_key(bank["id"], topic, difficulty)

                async def ready(qs: list[dict[str, Any]] = questions) -> list[dict[str, Any]]:
                    return qs

                await fill(key, ready, question_set_tags(bank["id"]))
            print(f"examhub: bank {bank['slug']}: {len(sets)} question sets (topic x difficulty)")
    finally:
        await redis.aclose()
        await pool.close()
    print(f"examhub: cache warm: {filled} entries filled, {already} already cached "
          f"(warm tier, TTL {settings.cache_warm_ttl_s} s)")  # fmt: skip
    return 0


async def cache_invalidate(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import connect_redis
    from storage.cache import TieredCache

    redis = connect_redis(settings, decode=False)
    try:
        deleted = await TieredCache(redis, settings.redis_prefix).invalidate(*args.tags)
    finally:
        await redis.aclose()
    print(f"examhub: cache invalidate {' '.join(args.tags)}: {deleted} entries dropped")
    return 0
