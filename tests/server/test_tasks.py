"""server/tasks.py: a task whose cancellation is swallowed (as redis-py's timed read swallows one that meets its
timeout's expiry) is cancelled again until it ends. Pure asyncio: the real case, with Redis, is in
tests/cluster/test_cluster.py (the watchers of a hung node's subscriptions)."""

from __future__ import annotations

import asyncio

from server.tasks import stop


async def _swallows(times: int) -> None:
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            if swallowed == times:
                raise
            swallowed += 1
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # what asyncio.timeout() does when it takes the cancel for its own expiry


async def test_a_task_that_swallows_one_cancel_is_cancelled_again_until_it_ends() -> None:
    once = asyncio.create_task(_swallows(1))
    control = asyncio.create_task(_swallows(1))
    await asyncio.sleep(0.05)
    control.cancel()  # one cancel, as before: the task goes on
    await asyncio.sleep(0.2)
    assert not control.done()
    assert await stop([once, control], within_s=5.0, every_s=0.05) == set()
    assert once.cancelled() and control.cancelled()


async def test_a_task_still_running_after_the_bound_is_returned() -> None:
    stubborn = asyncio.create_task(_swallows(30))  # more cancels than 0.3 s of one per 0.05 s
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    assert await stop([stubborn, finished], within_s=0.3, every_s=0.05) == {stubborn}
    assert not stubborn.done()
    assert await stop([stubborn], within_s=5.0, every_s=0.01) == set()  # (and it does end, cancelled often enough)
    assert stubborn.cancelled()
