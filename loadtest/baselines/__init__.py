"""Comparison servers for issue #6, kept small so that anyone can check them.

- `ceiling`: the fastest anything on examhub's stack can be (aiohttp WebSocket, coalesced Redis pipeline, ack).
- `http_pg`: the usual alternative, an HTTP POST per answer written straight to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from server.workers import on_orphaned, ready, run_processes

Serve = Callable[..., Coroutine[Any, Any, None]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def run(serve: Serve, args: tuple[Any, ...], workers: int) -> int:
    """`serve(*args, reuse_port)` on uvloop: in this process, or in `workers` processes sharing the port (SO_REUSEPORT:
    the kernel spreads connections over them), as `examhub serve --workers N` runs the hub (server/cli.py). Each
    process has its own event loop and its own clients of Redis or PostgreSQL; nothing else is shared."""
    import uvloop

    if workers == 1:
        uvloop.run(serve(*args, False))
        return 0
    return run_processes(_worker, (serve, args), workers, "baseline")


def _worker(serve: Serve, args: tuple[Any, ...]) -> None:
    import uvloop

    uvloop.run(serve(*args, True))


async def serve_until_signal(app: web.Application, port: int, banner: str, reuse_port: bool = False) -> None:
    """Serve on 127.0.0.1:port until SIGINT or SIGTERM, with the garbage collector tuned as the hub tunes it
    (server/cli.py: the cyclic collector is the tail at scale); the caller closes its own clients after."""
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
    ready()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_orphaned(stop.set)
    print(banner, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
