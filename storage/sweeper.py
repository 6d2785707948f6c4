"""The server's clock for sessions nobody is connected to: finish every session past its deadline.

Every hub process runs one; expire.lua makes the race harmless (exactly one caller finishes a session).
Connected students do not wait for it: their connection sets its own timer (server/hub.py).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from storage.errors import StorageUnavailable
from storage.outage import Outage
from storage.scripts import AnyRedis
from storage.session_store import Outcome, RedisSessionStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, redis: AnyRedis, store: RedisSessionStore, interval_s: float = 1.0) -> None:
        self._redis = redis
        self._store = store
        self._interval_s = interval_s
        self.expired = 0
        self._outage = Outage(log, "sweeper", every_s=60.0)

    async def sweep_once(self) -> int:
        seconds, micros = await self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        due = await self._store.due(now_ms)
        if not due:
            return 0
        results = await asyncio.gather(*(self._store.expire(sid) for sid in due))
        n = sum(1 for r in results if r.outcome is Outcome.OK)
        self.expired += n
        return n

    async def run(self) -> None:
        while True:
            try:
                n = await self.sweep_once()
                self._outage.recovered()
                if n:
                    log.info("sweeper expired %d sessions", n)
            except (TimeoutError, RedisError, OSError, StorageUnavailable) as exc:
                self._outage.failed("redis unavailable (%s)", exc)
            await asyncio.sleep(self._interval_s)
