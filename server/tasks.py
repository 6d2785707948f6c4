"""Stopping tasks whose cancellation a client library may swallow."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def stop(
    tasks: Collection[asyncio.Task[Any]], within_s: float = 5.0, every_s: float = 0.1
) -> set[asyncio.Task[Any]]:
    """Cancel the tasks and wait until each has ended; returns those still running after within_s.

    One cancel() is not always enough. redis-py bounds a read with asyncio.timeout(), and a cancel() that lands in the
    same turn of the event loop as that timeout's expiry is taken for the timeout: the read returns None and the task's
    loop goes on, as if never cancelled (Python 3.11). Tasks that read in step (a watcher per node, all started together
    with the same timeout) hit that turn together. So the cancel is repeated every `every_s` until each task has ended.
    """
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(every_s, left))
    return pending
