"""Reading a Redis pub/sub connection that may die without a word.

`PubSub.listen()` waits for ever on a connection whose path died without a FIN or a RST: a NAT, a firewall or a load
balancer between the hub and Redis that forgot an idle connection (many do after 4-6 minutes of silence), or a
network partition. The hub's subscriptions are quiet for long spells: the alive channels carry nothing ever, the
control channels only a proctor's action or a student's reconnect. Such a connection would go deaf for good (fences
and proctor actions lost) with nothing in the log.

redis-py's own `health_check_interval` does not tell either: it sends a PING on a pub/sub connection only when a read
starts (listen() starts one and waits in it), and nothing waits for the answer.

`Watch` tells a quiet connection from a dead one: after `quiet_s` of silence it sends a PING (which also keeps a
middlebox from forgetting the connection), and if nothing at all has come back `quiet_s` later it raises
ConnectionError; each caller already subscribes again on a new connection when its loop raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio.client import PubSub

QUIET_S = 10.0  # silence before a PING, and then before the connection is given up
PING_DATA = "examhub-watch"  # the PONG that answers our PING carries it: not a message for the caller


class Watch:
    """One subscribed connection's silence. Feed it every get_message() result (None included) through `heard()`."""

    __slots__ = ("_loop", "_pinged_at", "_ps", "heard_at", "quiet_s")

    def __init__(self, ps: PubSub, quiet_s: float | None = None) -> None:
        self._ps = ps
        self._loop = asyncio.get_running_loop()
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.heard_at = self._loop.time()
        self._pinged_at: float | None = None

    async def heard(self, message: dict[str, Any] | None) -> dict[str, Any] | None:
        """The message for the caller (None: nothing, or the answer to our PING). Sends the PING once the connection
        has been silent for quiet_s; raises ConnectionError when it stays silent quiet_s after that."""
        now = self._loop.time()
        if message is not None:
            self.heard_at, self._pinged_at = now, None
            if message.get("type") == "pong" and message.get("data") == PING_DATA:
                return None
            return message
        if self._pinged_at is None:
            if now - self.heard_at >= self.quiet_s:
                await self._ps.ping(PING_DATA)
                self._pinged_at = now
        elif now - self._pinged_at >= self.quiet_s:
            raise ConnectionError(f"the Redis pub/sub connection said nothing for {now - self.heard_at:.1f} s, "
                                  "not even to a PING")  # fmt: skip
        return None


async def messages(ps: PubSub, quiet_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """What `ps.listen()` yields, from a connection that raises ConnectionError once it has died in silence."""
    watch = Watch(ps, quiet_s)
    while True:
        message = await watch.heard(await ps.get_message(timeout=watch.quiet_s / 2))
        if message is not None:
            yield message
