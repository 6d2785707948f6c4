"""In-process cache of content the hot path reads: questions (by id), banks and templates.

Questions are immutable once an attempt may have seen them (edits create new questions in issue #3's
workflow), so a question cached by id never goes stale; templates and bank memberships are dropped with
`invalidate()` when they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from sessions import irt
from sessions.model import Question, Template
from storage import calibration, pg


class Catalog:
    def __init__(self, pool: pg.Pool) -> None:
        self._pool = pool
        self._questions: dict[int, Question] = {}
        self._banks: dict[int, tuple[Question, ...]] = {}
        self._templates: dict[int, tuple[Template, int]] = {}
        self._adaptive: dict[int, irt.Bank | None] = {}
        self._indexes: dict[int, Mapping[int, Question]] = {}
        self._lock = asyncio.Lock()

    async def questions(self, ids: Iterable[int]) -> dict[int, Question]:
        wanted = list(ids)
        missing = [i for i in wanted if i not in self._questions]
        if missing:
            for q in await pg.fetch_questions(self._pool, missing):
                self._questions[q.id] = q
        return {i: self._questions[i] for i in wanted if i in self._questions}

    async def bank(self, bank_id: int) -> tuple[Question, ...]:
        cached = self._banks.get(bank_id)
        if cached is None:
            async with self._lock:  # a start storm loads each bank once, not once per student
                cached = self._banks.get(bank_id)
                if cached is None:
                    cached = tuple(await pg.fetch_bank_questions(self._pool, bank_id))
                    self._banks[bank_id] = cached
                    for q in cached:
                        self._questions[q.id] = q  # the bank's current text wins over an older copy
        return cached

    async def template(self, template_id: int) -> tuple[Template, int] | None:
        found = self._templates.get(template_id)
        if found is None:
            found = await pg.fetch_template(self._pool, template_id)
            if found is not None:  # unknown ids are not cached: they would let anyone grow this dict
                self._templates[template_id] = found
        return found

    async def warm(self) -> int:
        """Load the questions of every active template's bank; returns how many are cached. A restarted hub
        takes over a herd of reconnecting students at once: without this, each of the first connections loads
        its paper's questions from PostgreSQL while the others wait (docs/reliability.md, hub kills)."""
        for (bank_id,) in await self._pool.fetch("SELECT DISTINCT bank_id FROM test_templates WHERE status = 'active'"):
            await self.bank(bank_id)
        return len(self._questions)

    async def bank_index(self, bank_id: int) -> Mapping[int, Question]:
        """The bank's questions by id (adaptive tests pick from the whole bank)."""
        index = self._indexes.get(bank_id)
        if index is None:
            index = MappingProxyType({q.id: q for q in await self.bank(bank_id)})
            self._indexes[bank_id] = index
        return index

    async def adaptive_bank(self, bank_id: int) -> irt.Bank | None:
        """The bank's calibrated items with their precomputed tables (built once per process; `invalidate`
        after a calibration). None when the bank has no usable item."""
        if bank_id not in self._adaptive:
            async with self._lock:
                if bank_id not in self._adaptive:
                    self._adaptive[bank_id] = await calibration.adaptive_bank(self._pool, bank_id)
        return self._adaptive[bank_id]

    def invalidate(self) -> None:
        self._adaptive.clear()
        self._indexes.clear()
        self._banks.clear()
        self._templates.clear()
        self._questions.clear()
