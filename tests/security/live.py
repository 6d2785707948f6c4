"""A live hub in a background thread with its own event loop, for the hypothesis tests here.

Hypothesis drives its examples from synchronous code; the hub and its clients are asyncio. So the app runs on
a real port (aiohttp AppRunner) in a thread of its own, and a test hands coroutines to that loop with `run()`:
clients, the app and Redis all live on one loop, exactly as in production, and each example is a few round
trips over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from server.app import create_app
from server.services import SERVICES, Services
from server.settings import Settings
from storage.embedded import free_port

T = TypeVar("T")


class LiveHub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-hub", daemon=True)
        self._runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine on the hub's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self.run(fn(*args, **kwargs))

    @property
    def services(self) -> Services:
        assert self._runner is not None
        return self._runner.app[SERVICES]  # type: ignore[no-any-return]

    def start(self) -> None:
        self._thread.start()

        async def up() -> None:
            self._runner = web.AppRunner(create_app(self.settings), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self.http = aiohttp.ClientSession(base_url=self.base)

        self.run(up())

    def stop(self) -> None:
        async def down() -> None:
            if self.http is not None:
                await self.http.close()
            if self._runner is not None:
                redis = self.services.redis
                keys = [k async for k in redis.scan_iter(match=f"{self.settings.redis_prefix}:*", count=1000)]
                if keys:
                    await redis.delete(*keys)
                await self._runner.cleanup()

        try:
            self.run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def live_hub(settings: Settings) -> Iterator[LiveHub]:
    hub = LiveHub(settings)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
