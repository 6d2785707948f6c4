from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from storage.catalog import Catalog
from storage.flusher import Flusher
from storage.keys import Keys
from storage.scripts import Scripts
from storage.session_store import RedisSessionStore
from storage.writer import CoalescingWriter


@pytest.fixture
async def writer(redis: Redis) -> AsyncIterator[CoalescingWriter]:
    w = CoalescingWriter(redis, Scripts.load())
    await w.start()
    yield w
    await w.close()


@pytest.fixture
def store(redis: Redis, writer: CoalescingWriter, prefix: str) -> RedisSessionStore:
    return RedisSessionStore(redis, writer, Scripts.load(), Keys(prefix), created_ttl_s=3600)


def make_flusher(redis: Redis, pool: object, store: RedisSessionStore, name: str, **kw: object) -> Flusher:
    return Flusher(redis, pool, store, Scripts.load(), Catalog(pool), name, **kw)  # type: ignore[arg-type]
