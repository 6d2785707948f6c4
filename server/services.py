"""What one hub process holds: settings, clients, stores and background workers, opened and closed in the
aiohttp app's cleanup context (server/app.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server.auth import Auth
from server.metrics import Metrics
from server.settings import Settings
from storage import pg
from storage.cache import TieredCache
from storage.catalog import Catalog
from storage.flusher import Flusher
from storage.outage import Outage
from storage.ratelimit import RedisLimiter
from storage.scripts import AnyRedis
from storage.session_store import RedisSessionStore
from storage.starts import SessionStarts
from storage.sweeper import Sweeper
from storage.writer import CoalescingWriter

if TYPE_CHECKING:
    from server.hub import Hub
    from server.proctor import Rooms

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services:
    settings: Settings
    auth: Auth
    pool: pg.Pool
    redis: AnyRedis
    writer: CoalescingWriter
    store: RedisSessionStore
    catalog: Catalog
    flusher: Flusher
    sweeper: Sweeper
    hub: Hub
    metrics: Metrics
    cache: TieredCache  # over `cache_redis`, a client without decode_responses (entries may be compressed)
    cache_redis: AnyRedis
    limiter: RedisLimiter
    starts: SessionStarts  # session rows, batched (POST /api/sessions)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # set once listen_control has subscribed: from then on this process reads as alive (Keys.alive_channel)
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    # on a Redis Cluster, set once the sharded alive channels are held (server/alive.py)
    alive: asyncio.Event = field(default_factory=asyncio.Event)
    # requests answered 503 while storage is down (server/api.py json_errors): one log line per 10 s, not one each
    api_outage: Outage = field(default_factory=lambda: Outage(logging.getLogger("server.api"), "storage unavailable"))
    rooms: Rooms = field(init=False)  # set right after construction: it needs the services itself

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a fire-and-forget coroutine, keeping a reference and logging its failure."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


SERVICES = web.AppKey("services", Services)
