"""Session rows of concurrent starts are written together, only for enabled users, all or none per batch."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import pytest

from sessions.paper import draw_paper
from storage import pg
from storage.catalog import Catalog
from storage.starts import SessionStarts, StartRow
from tests.conftest import template_id


async def rows_for(pool: pg.Pool, count: int, name: str = "starter") -> list[StartRow]:
    catalog = Catalog(pool)
    found = await catalog.template(await template_id(pool, "biology-quick-10"))
    assert found is not None
    tpl, bank_id = found
    bank = await catalog.bank(bank_id)
    out = []
    for i in range(count):
        sid = secrets.token_hex(16)
        uid = await pg.create_guest(pool, f"{name} {i}")
        out.append(StartRow(sid, secrets.token_hex(8), uid, tpl.id, draw_paper(bank, tpl.rule, sid)))
    return out


async def test_concurrent_starts_share_statements_and_each_gets_its_users_name(pool: pg.Pool) -> None:
    rows = await rows_for(pool, 60)
    starts = SessionStarts(pool, max_batch=25)
    names = await asyncio.gather(*(starts.insert(r) for r in rows))
    assert names == [f"starter {i}" for i in range(60)]
    assert starts.rows == 60
    assert starts.batches <= 4  # queued while the first was in flight: batches of up to 25, not 60 statements
    stored = await pool.fetch(
        "SELECT id, user_id, template_id, paper FROM test_sessions WHERE id = ANY($1)", [r.sid for r in rows]
    )
    by_id = {rec["id"]: rec for rec in stored}
    assert len(by_id) == 60
    for r in rows:
        assert by_id[r.sid]["user_id"] == r.user_id
        assert by_id[r.sid]["template_id"] == r.template_id
        assert by_id[r.sid]["paper"] == r.paper.to_json()


async def test_a_disabled_user_gets_no_row_and_the_others_in_its_batch_do(pool: pg.Pool) -> None:
    rows = await rows_for(pool, 5)
    await pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", rows[2].user_id)
    starts = SessionStarts(pool)
    names = await asyncio.gather(*(starts.insert(r) for r in rows))
    assert names == ["starter 0", "starter 1", None, "starter 3", "starter 4"]
    assert starts.batches == 1
    stored = {rec["id"] for rec in await pool.fetch("SELECT id FROM test_sessions WHERE id = ANY($1)",
                                                    [r.sid for r in rows])}  # fmt: skip
    assert stored == {r.sid for i, r in enumerate(rows) if i != 2}


async def test_a_failing_batch_fails_every_caller_and_stores_nothing(pool: pg.Pool) -> None:
    rows = await rows_for(pool, 4)
    bad = StartRow(rows[1].sid, rows[1].token_id, rows[1].user_id, 2**62, rows[1].paper)  # no such template
    rows[1] = bad
    starts = SessionStarts(pool)
    results = await asyncio.gather(*(starts.insert(r) for r in rows), return_exceptions=True)
    assert all(isinstance(r, asyncpg.ForeignKeyViolationError) for r in results)
    assert await pool.fetchval("SELECT count(*) FROM test_sessions WHERE id = ANY($1)", [r.sid for r in rows]) == 0
    # the queue keeps working after a failed batch
    again = await rows_for(pool, 1, "after")
    assert await starts.insert(again[0]) == "after 0"


async def test_a_start_that_arrives_during_a_batch_rides_the_next(pool: pg.Pool) -> None:
    first, second = await rows_for(pool, 2)
    starts = SessionStarts(pool)
    one = asyncio.ensure_future(starts.insert(first))
    await asyncio.sleep(0)  # the first batch is on its way
    two = asyncio.ensure_future(starts.insert(second))
    assert await one == "starter 0"
    assert await two == "starter 1"
    assert starts.batches == 2


@pytest.mark.parametrize("count", [1, 3])
async def test_a_deleted_user_gets_none(pool: pg.Pool, count: int) -> None:
    rows = await rows_for(pool, count)
    ghost = StartRow(secrets.token_hex(16), secrets.token_hex(8), uuid.uuid4(), rows[0].template_id, rows[0].paper)
    starts = SessionStarts(pool)
    names = await asyncio.gather(*(starts.insert(r) for r in [*rows, ghost]))
    assert names[-1] is None
    assert all(n is not None for n in names[:-1])
