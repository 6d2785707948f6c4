"""The aiohttp application: routes, and every resource opened and closed in one cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from server import alive, routes, tasks
from server import api as api_edge
from server.auth import Auth, TokenError
from server.closecodes import Close
from server.hub import Hub, student_ws
from server.metrics import Metrics
from server.proctor import Rooms, listen_control, proctor_ws
from server.routes import pages
from server.services import SERVICES, Services
from server.settings import Durability, Settings
from storage import pg
from storage.analytics import ScoreEntry
from storage.cache import TieredCache, flushed_tags
from storage.catalog import Catalog
from storage.durability import redis_problems
from storage.errors import StorageUnavailable, UnsafeRedisConfig
from storage.flusher import Flusher, OnCommitted
from storage.keys import Keys
from storage.migrate import migrate
from storage.outage import Outage
from storage.ratelimit import Limit, RedisLimiter
from storage.scripts import AnyRedis, Scripts
from storage.session_store import LEASE_RENEW_S, RedisSessionStore
from storage.starts import SessionStarts
from storage.sweeper import Sweeper
from storage.writer import CoalescingWriter

log = logging.getLogger(__name__)

SUBSCRIBE_WAIT_S = 10.0  # how long a starting hub process waits for its Redis subscription (listen_control)


def connect_redis(settings: Settings, *, decode: bool = True) -> AnyRedis:
    assert settings.redis_url is not None
    timeout = settings.redis_timeout_s
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url, decode_responses=decode, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return _plain(settings.redis_url, settings, decode)


def _plain(url: str, settings: Settings, decode: bool) -> Redis:
    timeout = settings.redis_timeout_s
    return Redis.from_url(
        url, decode_responses=decode, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
    )


def _on_node(url: str, host: str, port: int) -> str:
    """The URL with its host and port replaced (scheme, credentials and database kept)."""
    parts = urlsplit(url)
    credentials, at, _ = parts.netloc.rpartition("@")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}{at}{where}"))


def plain_on_node(settings: Settings, host: str, port: int) -> Redis:
    """A plain client (decoded replies) of one node of the Redis Cluster at settings.redis_url."""
    assert settings.redis_url is not None
    return _plain(_on_node(settings.redis_url, host, port), settings, decode=True)


@contextlib.asynccontextmanager
async def subscriber(settings: Settings, redis: AnyRedis) -> AsyncIterator[PubSub]:
    """A pub/sub connection of its own (subscribe confirmations not reported), closed on exit.

    On a Redis Cluster, classic (not sharded) pub/sub is broadcast over the cluster bus: every node delivers
    every channel's messages, those PUBLISHed by a Lua script included. So one plain connection to any primary
    hears every channel examhub uses, whatever slot its name hashes to; a random primary each time, so that
    subscribing again after a failure does not insist on a node that is gone."""
    if not isinstance(redis, RedisCluster):
        async with redis.pubsub(ignore_subscribe_messages=True) as ps:
            yield ps
        return
    await redis.initialize()  # a no-op once the client knows the cluster's nodes
    node = random.choice(redis.get_primaries())
    client = plain_on_node(settings, node.host, int(node.port))
    try:
        async with client.pubsub(ignore_subscribe_messages=True) as ps:
            yield ps
    finally:
        await client.aclose()


def invalidate_after_flush(cache: TieredCache, store: RedisSessionStore) -> OnCommitted:
    """The flusher's post-commit hook: drop the stored attempts from their rooms' member lists, and invalidate
    their users, templates and the analytics in the cache, in one call."""

    async def invalidate(attempts: list[ScoreEntry]) -> None:
        await store.forget_members([(a[0], a[1]) for a in attempts])
        await cache.invalidate(*flushed_tags(attempts))

    return invalidate


async def open_services(settings: Settings) -> Services:
    if settings.database_url is None or settings.redis_url is None or settings.secret is None:
        raise ValueError("open_services needs database_url, redis_url and secret (the CLI fills them in)")
    pool = await pg.create_pool(settings.database_url, settings.pg_pool_min, settings.pg_pool_max)
    redis: AnyRedis | None = None
    cache_redis: AnyRedis | None = None
    metrics = Metrics()
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        redis = connect_redis(settings)
        problems = await redis_problems(redis)
        for p in problems:
            log.warning("REDIS CAN LOSE ACKNOWLEDGED WRITES: %s", p)
        if problems and settings.redis_durability is Durability.REQUIRE:
            raise UnsafeRedisConfig(
                "refusing to start: " + "; ".join(problems) + " (set EXAMHUB_REDIS_DURABILITY=warn to override)"
            )
        scripts = Scripts.load()
        keys = Keys(settings.redis_prefix)
        writer = CoalescingWriter(redis, scripts)
        await writer.start()
        # this process' name: its flusher's consumer name and its lease (storage/lua/lease.lua)
        consumer = f"{socket.gethostname()}-{os.getpid()}-{id(writer) & 0xFFFF:04x}"
        # subscribed: every hub process listens on its alive channel(s) (listen_control; on a cluster, server/alive.py,
        # which needs Redis 7)
        subscribed = not isinstance(redis, RedisCluster) or await alive.supported(redis)
        store = RedisSessionStore(redis, writer, scripts, keys, settings.created_ttl_s, host=consumer,
                                  subscribed=subscribed)  # fmt: skip
        await store.renew_lease()  # alive before the first connection can name this process
        catalog = Catalog(pool)
        sweeper = Sweeper(redis, store, settings.sweep_interval_s)
        cache_redis = connect_redis(settings, decode=False)
        cache = TieredCache(
            cache_redis,
            settings.redis_prefix,
            warm_ttl_s=settings.cache_warm_ttl_s,
            observer=metrics,
            enabled=settings.cache_enabled,
        )
        flusher = Flusher(
            redis, pool, store, scripts, catalog, consumer,
            batch=settings.flush_batch, claim_idle_ms=settings.flush_claim_idle_ms,
            flushed_ttl_s=settings.flushed_ttl_s, observer=metrics, on_committed=invalidate_after_flush(cache, store),
            crash_point=settings.crash_point,  # test-only (the fault suite)
        )  # fmt: skip
        await flusher.ensure_groups()
    except BaseException:
        for client in (redis, cache_redis):
            if client is not None:
                await client.aclose()
        await pool.close()
        raise
    auth = Auth(settings.secret)
    services = Services(
        settings, auth, pool, redis, writer, store, catalog, flusher, sweeper, Hub(metrics),
        metrics=metrics, cache=cache, cache_redis=cache_redis,
        limiter=RedisLimiter(redis, settings.redis_prefix, local_first=True),  # floods refused in process
        starts=SessionStarts(pool),
    )  # fmt: skip
    services.rooms = Rooms(services)
    return services


async def close_services(services: Services) -> None:
    # bounded: a task that keeps swallowing its cancellation must not keep the process from exiting
    for task in await tasks.stop(services.tasks, within_s=5.0, every_s=1.0):  # (1 s to clean up after a cancel)
        log.warning("background task %s did not stop within 5 s; leaving it", task.get_name())
    await services.writer.close()
    await services.redis.aclose()
    await services.cache_redis.aclose()
    await services.pool.close()


_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes must always get through


@web.middleware
async def rate_limit(request: web.Request, handler: api_edge.Handler) -> web.StreamResponse:
    """GCRA per client IP (the student WebSocket handshake included: it is an HTTP GET) and per user (a valid
    bearer token's subject; an invalid token counts against its IP only). 429 with Retry-After when refused,
    held back TARPIT_S first. Fails open when Redis does not answer (storage/ratelimit.py)."""
    if request.path in _UNLIMITED:
        return await handler(request)
    services = request.app[SERVICES]
    settings = services.settings
    limits: list[Limit] = []
    if settings.rate_rest_ip is not None and request.remote:
        limits.append(Limit("ip", request.remote, settings.rate_rest_ip))
    token = api_edge.bearer(request)
    if token is not None and settings.rate_rest_user is not None:
        with contextlib.suppress(TokenError):
            limits.append(Limit("user", str(services.auth.verify_user(token).user_id), settings.rate_rest_user))
    refused = await services.limiter.check(limits)
    if refused is None:
        return await handler(request)
    limit, verdict = refused
    services.metrics.refused(limit.scope)
    retry_s = max(1, math.ceil(verdict.retry_after_ms / 1000))
    return await api_edge.too_many(f"too many requests per {limit.scope}; retry in {retry_s} s", verdict.retry_after_ms)


async def _renew_lease(services: Services) -> None:
    """Every LEASE_RENEW_S: this process is alive. A process that stops renewing (killed) is taken for dead after
    LEASE_TTL_MS, and its students' next connections are recorded as dropped ones (ledger, credit), not as second
    devices; the proctor sees them offline."""
    outage = Outage(log, "lease", every_s=60.0)
    while True:
        await asyncio.sleep(LEASE_RENEW_S)
        try:
            await services.store.renew_lease()
        except (RedisError, OSError, StorageUnavailable) as exc:
            outage.failed("not renewed: %s", exc)
        else:
            outage.recovered()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[rate_limit, api_edge.json_errors], client_max_size=8 * 1024 * 1024)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(settings)
        app[SERVICES] = services
        try:
            log.info("catalog warmed: %d questions", await services.catalog.warm())
        except (OSError, asyncpg.PostgresError) as exc:  # serving cold is slower, not wrong
            log.warning("catalog not warmed: %s", exc)
        if settings.run_background:
            for n in range(settings.flush_lanes):
                services.background((services.flusher.lane(n) if n else services.flusher).run())
            services.background(services.sweeper.run())
        services.background(listen_control(services))
        subscribed = [services.listening.wait()]
        store = services.store
        if isinstance(services.redis, RedisCluster) and store.subscribed:  # sharded there: one per partition
            connect = functools.partial(plain_on_node, settings)
            services.background(alive.hold_shards(services.redis, connect, store.keys, store.host, services.alive))
            subscribed.append(services.alive.wait())
        try:  # subscribed before the first student can name this process: until then it reads as dead (open.lua)
            await asyncio.wait_for(asyncio.gather(*subscribed), SUBSCRIBE_WAIT_S)
        except TimeoutError:
            log.warning("not subscribed to Redis within %s s: serving anyway", SUBSCRIBE_WAIT_S)
        services.background(_renew_lease(services))
        services.background(services.rooms.run_publisher())
        services.background(services.rooms.run_subscriber())
        yield
        await close_services(services)

    async def on_shutdown(app: web.Application) -> None:
        with contextlib.suppress(KeyError):
            await app[SERVICES].hub.close_all(Close.GOING_AWAY, "server shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    routes.load().install(app)
    pages.install(app)  # the browser clients (server/static/), outside the OpenAPI document
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/ws/student", student_ws)
    app.router.add_get("/ws/proctor", proctor_ws)
    return app
