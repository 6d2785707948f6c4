"""Session rows written together: every start that arrives while a batch is in flight rides the next one.

A start storm (10,000 students opening one exam within seconds) otherwise costs PostgreSQL two round trips and
one commit per student: the check that the user is enabled and the insert of the session row. Here each start
queues its row; one task writes whatever has queued up as ONE statement (the user check is a join inside it),
so a thousand starts cost a handful of commits. A row comes back only for an enabled user: a disabled or
deleted user gets None and no row, exactly as the separate check and insert did.

Every caller in a failed batch gets the batch's exception (the rows are one statement: all in or none).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg

from sessions.paper import Paper

# Rows of test_sessions for enabled users only; the display name of each inserted session's user comes back.
INSERT_STARTS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bigint[], $5::jsonb[])
        AS t (id, token_id, user_id, template_id, paper)
), inserted AS (
    INSERT INTO test_sessions (id, token_id, user_id, template_id, paper)
    SELECT i.id, i.token_id, i.user_id, i.template_id, i.paper
      FROM input i JOIN users u ON u.id = i.user_id AND u.disabled_at IS NULL
    RETURNING id, user_id
)
SELECT inserted.id, u.display_name FROM inserted JOIN users u ON u.id = inserted.user_id
"""


@dataclass(slots=True, frozen=True)
class StartRow:
    sid: str
    token_id: str
    user_id: uuid.UUID
    template_id: int
    paper: Paper


class SessionStarts:
    """The process' queue of session rows to insert. `insert` resolves once its batch has committed."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._pending: list[tuple[StartRow, asyncio.Future[str | None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.rows = 0

    async def insert(self, row: StartRow) -> str | None:
        """Insert the session row; the user's display name, or None (no row) when the user is disabled or gone."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="examhub-starts")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    names = await self._write([row for row, _ in batch])
                except asyncio.CancelledError:
                    _fail(batch, ConnectionError("the hub is shutting down"))
                    raise
                except Exception as exc:  # every caller of the one statement gets its error, as if it had run it
                    _fail(batch, exc)
                    continue
                for row, future in batch:
                    if not future.done():
                        future.set_result(names.get(row.sid))
        finally:
            self._task = None
            if self._pending:  # cancelled with starts still queued: they were never written
                _fail(self._pending, ConnectionError("the hub is shutting down"))
                self._pending.clear()

    async def _write(self, rows: list[StartRow]) -> dict[str, str]:
        self.batches += 1
        self.rows += len(rows)
        records = await self._pool.fetch(
            INSERT_STARTS,
            [r.sid for r in rows],
            [r.token_id for r in rows],
            [r.user_id for r in rows],
            [r.template_id for r in rows],
            [r.paper.to_json() for r in rows],
        )
        return {rec["id"]: rec["display_name"] for rec in records}


def _fail(batch: list[tuple[StartRow, asyncio.Future[str | None]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
