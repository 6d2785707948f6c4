from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage.migrate import available, migrate, pending
from tests.conftest import ADMIN_URL


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    name = f"examhub_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield ADMIN_URL.rpartition("/")[0] + "/" + name
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(m.name for m in available())
        assert await pending(conns[0]) == []
        assert await migrate(conns[0]) == []
        n = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert n == len(available())
    finally:
        for c in conns:
            await c.close()


async def test_hot_query_indexes_exist(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn)
        names = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname='public'")}
        assert {"questions_topic_difficulty", "test_sessions_token_id_key", "responses_user_time"} <= names
    finally:
        await conn.close()
