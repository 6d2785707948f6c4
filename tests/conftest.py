"""Shared fixtures. Tests talk to real PostgreSQL and Redis:

- PostgreSQL: EXAMHUB_TEST_DATABASE_URL (default: the machine's server on 127.0.0.1:5432); each test run
  gets a fresh database, migrated once and seeded with the demo bank.
- Redis: EXAMHUB_TEST_REDIS_URL (default 127.0.0.1:6379); each test gets its own key prefix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from server.settings import Durability, Settings
from storage import pg
from storage.migrate import migrate
from storage.seed import seed_demo

ADMIN_URL = os.environ.get("EXAMHUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EXAMHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def create_database(name: str) -> str:
    """A new database on the test server, migrated and seeded with the demo bank; returns its URL."""
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    pool = await pg.create_pool(_db_url(name), 1, 2)
    try:
        async with pool.acquire() as c:
            await migrate(c)
        await seed_demo(pool)
    finally:
        await pool.close()
    return _db_url(name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"examhub_test_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture
def own_database_url() -> Iterator[str]:
    """A database for this test alone (for tests that change shared content, like the fuzzer as admin)."""
    name = f"examhub_own_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
def settings(database_url: str, prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        redis_durability=Durability.WARN,  # the machine's Redis keeps nothing on disk; durability tests use their own
        secret="test-secret-" + "x" * 40,
        run_background=False,  # tests drive the flusher and the sweeper themselves
        heartbeat_s=5.0,
        pg_pool_min=1,
        pg_pool_max=4,
    )


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[pg.Pool]:
    p = await pg.create_pool(database_url, 1, 4)
    yield p
    await p.close()


async def template_id(pool: Any, slug: str) -> int:
    value: int = await pool.fetchval("SELECT id FROM test_templates WHERE slug = $1", slug)
    return value
