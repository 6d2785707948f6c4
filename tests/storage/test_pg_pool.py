"""The pool's cheap reset (storage/pg.py): a connection comes back clean without asyncpg's reset query."""

from __future__ import annotations

from storage import pg


async def test_a_released_connection_in_a_transaction_is_rolled_back(database_url: str) -> None:
    pool = await pg.create_pool(database_url, 1, 1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            assert conn.is_in_transaction()
        async with pool.acquire() as conn:  # the same (only) connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None  # rolled back
            assert await conn.fetchval("SELECT '{\"a\": 1}'::jsonb") == {"a": 1}  # the codecs are still there
    finally:
        await pool.close()


async def test_the_catalog_warms_every_active_templates_bank(pool: pg.Pool) -> None:
    from storage.catalog import Catalog

    catalog = Catalog(pool)
    expected = await pool.fetchval(
        """SELECT count(DISTINCT m.question_id) FROM question_bank_members m
             JOIN questions q ON q.id = m.question_id AND q.retired_at IS NULL
            WHERE m.bank_id IN (SELECT bank_id FROM test_templates WHERE status = 'active')"""
    )
    assert expected > 0 and await catalog.warm() == expected
    assert len(catalog._questions) == expected  # served from memory from now on
