"""Questions and question banks in PostgreSQL: authoring, review, search, random draws, bulk import.

History is never rewritten. A question that some paper already holds (a response row, or the paper of a
session not yet flushed) is immutable: editing it inserts a new question that takes over its ref and its bank
memberships, and retires the old one with `replaced_by` pointing at the new id. A question no paper has held
is edited in place. Retiring keeps the row (papers and responses refer to it); bank papers and random draws
skip retired and rejected questions.

Duplicates are found by `normalized_hash` (storage.seed) among active questions. Every writer that checks
for duplicates first takes one transaction-scoped advisory lock, so two concurrent creates of the same
text cannot both pass the check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from storage import pg
from storage.errors import StorageError
from storage.importers import ParsedRow, QuestionDraft, QuestionFields
from storage.seed import normalized_hash

_DEDUP_LOCK = 0x6578616D68756202  # "examhub\x02" (storage/migrate.py holds ...01)

COLUMNS = """q.id, q.ref, q.subject, q.curriculum, q.grade, q.topic, q.type, q.difficulty, q.text, q.options,
             q.correct, q.explanation, q.marks, q.category, q.verification_status, q.reviewer_id, q.review_note,
             q.reviewed_at, q.created_at, q.updated_at, q.retired_at, q.replaced_by,
             (SELECT p.id FROM questions p WHERE p.replaced_by = q.id LIMIT 1) AS replaces"""
_CONTENT = ("text", "options", "correct", "explanation")  # an edit of these resets the review
_FIELDS = ("topic", "difficulty", *_CONTENT, "marks", "category", "curriculum", "grade", "subject")


class QuestionError(StorageError):
    pass


class QuestionNotFound(QuestionError):
    pass


class QuestionRetired(QuestionError):
    def __init__(self, question_id: int, replaced_by: int | None) -> None:
        self.question_id, self.replaced_by = question_id, replaced_by
        later = f"; its current version is {replaced_by}" if replaced_by else ""
        super().__init__(f"question {question_id} is retired{later}")


class DuplicateQuestion(QuestionError):
    def __init__(self, existing_id: int, by: str) -> None:
        self.existing_id, self.by = existing_id, by
        what = "the same ref" if by == "ref" else "the same normalized text"
        super().__init__(f"question {existing_id} has {what}")


class UnknownUser(QuestionError):
    pass


class BankNotFound(QuestionError):
    pass


class BankExists(QuestionError):
    pass


class NotAddable(QuestionError):
    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = sorted(ids)
        shown = ", ".join(map(str, self.ids[:20])) + (" ..." if len(self.ids) > 20 else "")
        super().__init__(f"no active question with id {shown}")


def question_hash(text: str) -> str:
    return normalized_hash(text)


# ---- single questions ----------------------------------------------------------------------------------


async def get(pool: pg.Pool | asyncpg.Connection, question_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(f"SELECT {COLUMNS} FROM questions q WHERE q.id = $1", question_id)
    return row


async def _lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _DEDUP_LOCK)


async def _active_duplicate(conn: asyncpg.Connection, digest: str, exclude: int | None = None) -> int | None:
    found: int | None = await conn.fetchval(
        """SELECT id FROM questions WHERE normalized_hash = $1 AND retired_at IS NULL AND id IS DISTINCT FROM $2
            ORDER BY id LIMIT 1""",
        digest, exclude,
    )  # fmt: skip
    return found


_INSERT = """INSERT INTO questions (ref, subject, curriculum, grade, topic, difficulty, text, options, correct,
                                   explanation, marks, category, verification_status, reviewer_id, review_note,
                                   reviewed_at, normalized_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id"""


_UNREVIEWED = ("unverified", None, "", None)  # verification_status, reviewer_id, review_note, reviewed_at


def _insert_args(d: QuestionFields, ref: str | None, review: Sequence[Any] = _UNREVIEWED) -> list[Any]:
    options = [{"id": o.id, "text": o.text} for o in d.options]
    return [ref, d.subject, d.curriculum, d.grade, d.topic, d.difficulty.value, d.text, options, d.correct,
            d.explanation, d.marks, d.category, *review, question_hash(d.text)]  # fmt: skip


async def create(pool: pg.Pool, d: QuestionDraft) -> int:
    """Store a new (unverified) question. Raises DuplicateQuestion (same ref, or same text unless allowed)."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn)
        if d.ref is not None:
            existing = await conn.fetchval("SELECT id FROM questions WHERE ref = $1", d.ref)
            if existing is not None:
                raise DuplicateQuestion(existing, "ref")
        if not d.allow_duplicate:
            dup = await _active_duplicate(conn, question_hash(d.text))
            if dup is not None:
                raise DuplicateQuestion(dup, "text")
        new_id: int = await conn.fetchval(_INSERT, *_insert_args(d, d.ref))
        return new_id


async def in_use(conn: pg.Pool | asyncpg.Connection, question_id: int) -> bool:
    """Has any paper held this question? Finished ones left a responses row for each of their questions."""
    used: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM responses WHERE question_id = $1)
               OR EXISTS (SELECT 1 FROM test_sessions
                           WHERE finished_at IS NULL AND paper -> 'q' @> jsonb_build_array($1::bigint))""",
        question_id,
    )
    return used


@dataclass(frozen=True, slots=True)
class Edited:
    id: int  # the question's id after the edit: a new one when `versioned`
    versioned: bool  # True: the old question was in use, so it was retired and replaced by `id`
    changed: bool


async def update(pool: pg.Pool, question_id: int, d: QuestionFields, *, allow_duplicate: bool = False) -> Edited:
    """Apply an edit: in place when no paper has held the question, else as a new version (see module doc).

    Changing the text, options, correct answer or explanation resets the review to unverified.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn)
        old = await conn.fetchrow("SELECT * FROM questions WHERE id = $1 FOR UPDATE", question_id)
        if old is None:
            raise QuestionNotFound(f"no question {question_id}")
        if old["retired_at"] is not None:
            raise QuestionRetired(question_id, old["replaced_by"])
        new = d.model_dump(mode="json", include=set(_FIELDS))
        changed = [f for f in _FIELDS if new[f] != old[f]]
        if not changed:
            return Edited(question_id, versioned=False, changed=False)
        digest = question_hash(d.text)
        if digest != old["normalized_hash"] and not allow_duplicate:
            dup = await _active_duplicate(conn, digest, exclude=question_id)
            if dup is not None:
                raise DuplicateQuestion(dup, "text")
        if any(f in _CONTENT for f in changed):
            review: Sequence[Any] = _UNREVIEWED
        else:
            review = (old["verification_status"], old["reviewer_id"], old["review_note"], old["reviewed_at"])
        if not await in_use(conn, question_id):
            args = _insert_args(d, old["ref"], review)
            await conn.execute(
                """UPDATE questions SET subject = $2, curriculum = $3, grade = $4, topic = $5, difficulty = $6,
                          text = $7, options = $8, correct = $9, explanation = $10, marks = $11, category = $12,
                          verification_status = $13, reviewer_id = $14, review_note = $15, reviewed_at = $16,
                          normalized_hash = $17, updated_at = now()
                    WHERE id = $1""",
                question_id, *args[1:],
            )  # fmt: skip
            return Edited(question_id, versioned=False, changed=True)
        if old["ref"] is not None:  # the ref moves to the new version (refs are unique)
            await conn.execute("UPDATE questions SET ref = NULL WHERE id = $1", question_id)
        new_id: int = await conn.fetchval(_INSERT, *_insert_args(d, old["ref"], review))
        await conn.execute(
            "UPDATE questions SET retired_at = now(), updated_at = now(), replaced_by = $2 WHERE id = $1",
            question_id, new_id,
        )  # fmt: skip
        await conn.execute(
            """INSERT INTO question_bank_members (bank_id, question_id)
               SELECT bank_id, $2 FROM question_bank_members WHERE question_id = $1 ON CONFLICT DO NOTHING""",
            question_id, new_id,
        )  # fmt: skip
        return Edited(new_id, versioned=True, changed=True)


async def retire(pool: pg.Pool, question_id: int) -> None:
    """Retire a question (idempotent). Raises QuestionNotFound."""
    done = await pool.execute(
        "UPDATE questions SET retired_at = now(), updated_at = now() WHERE id = $1 AND retired_at IS NULL",
        question_id,
    )
    if done.endswith(" 0") and not await pool.fetchval("SELECT 1 FROM questions WHERE id = $1", question_id):
        raise QuestionNotFound(f"no question {question_id}")


async def review(pool: pg.Pool, question_id: int, status: str, note: str, reviewer: uuid.UUID) -> None:
    """Record a reviewer's verdict. Raises QuestionNotFound, QuestionRetired, UnknownUser."""
    try:
        done = await pool.execute(
            """UPDATE questions SET verification_status = $2, review_note = $3, reviewer_id = $4,
                      reviewed_at = now(), updated_at = now()
                WHERE id = $1 AND retired_at IS NULL""",
            question_id, status, note, reviewer,
        )  # fmt: skip
    except asyncpg.ForeignKeyViolationError:
        raise UnknownUser("the reviewer's account no longer exists") from None
    if done.endswith(" 0"):
        row = await pool.fetchrow("SELECT replaced_by FROM questions WHERE id = $1", question_id)
        if row is None:
            raise QuestionNotFound(f"no question {question_id}")
        raise QuestionRetired(question_id, row["replaced_by"])


# ---- finding questions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    topic: str | None = None
    difficulty: str | None = None
    curriculum: str | None = None
    grade: str | None = None
    subject: str | None = None
    category: str | None = None
    verification_status: str | None = None
    bank_id: int | None = None
    text: str | None = None  # a substring of the text, case-insensitive
    include_retired: bool = False
    include_rejected: bool = True

    def where(self) -> tuple[str, list[Any]]:
        conds: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            conds.append(sql.replace("$?", f"${len(args)}"))

        for name in ("topic", "difficulty", "curriculum", "grade", "subject", "category", "verification_status"):
            value = getattr(self, name)
            if value is not None:
                add(f"q.{name} = $?", value)
        if self.bank_id is not None:
            add("EXISTS (SELECT 1 FROM question_bank_members m WHERE m.bank_id = $? AND m.question_id = q.id)",
                self.bank_id)  # fmt: skip
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            add("q.text ILIKE $?", f"%{escaped}%")
        if not self.include_retired:
            conds.append("q.retired_at IS NULL")
        if not self.include_rejected:
            conds.append("q.verification_status <> 'rejected'")
        return (" AND ".join(conds) or "true"), args


async def search(pool: pg.Pool, filters: Filters, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    where, args = filters.where()
    n = len(args)
    total: int = await pool.fetchval(f"SELECT count(*) FROM questions q WHERE {where}", *args)
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {COLUMNS} FROM questions q WHERE {where} ORDER BY q.id LIMIT ${n + 1} OFFSET ${n + 2}",
        *args, limit, offset,
    )  # fmt: skip
    return total, rows


async def random_sample(pool: pg.Pool, filters: Filters, count: int) -> list[asyncpg.Record]:
    """Up to `count` active, non-rejected questions matching the filters, in random order.

    ORDER BY random() reads every matching row once (a top-N sort, no full sort): fine for the partial
    (topic, difficulty) and (curriculum, grade) indexes over banks of up to ~100k questions.
    """
    where, args = replace(filters, include_retired=False, include_rejected=False).where()
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {COLUMNS} FROM questions q WHERE {where} ORDER BY random() LIMIT ${len(args) + 1}", *args, count
    )
    return rows


async def duplicate_groups(pool: pg.Pool, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    """Groups of active questions that share a normalized text, oldest group first."""
    total: int = await pool.fetchval(
        """SELECT count(*) FROM (SELECT 1 FROM questions WHERE retired_at IS NULL
                                  GROUP BY normalized_hash HAVING count(*) > 1) g"""
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT normalized_hash, array_agg(id ORDER BY id) AS ids, (array_agg(text ORDER BY id))[1] AS text
             FROM questions WHERE retired_at IS NULL
            GROUP BY normalized_hash HAVING count(*) > 1
            ORDER BY min(id) LIMIT $1 OFFSET $2""",
        limit, offset,
    )  # fmt: skip
    return total, rows


# ---- banks ---------------------------------------------------------------------------------------------

_ACTIVE_MEMBERS = """(SELECT count(*) FROM question_bank_members m JOIN questions q ON q.id = m.question_id
                       WHERE m.bank_id = b.id AND q.retired_at IS NULL AND q.verification_status <> 'rejected')"""
BANK_COLUMNS = f"b.id, b.slug, b.name, b.subject, b.curriculum, b.grade, b.created_at, {_ACTIVE_MEMBERS} AS questions"


async def create_bank(pool: pg.Pool, slug: str, name: str, subject: str, curriculum: str, grade: str) -> int:
    try:
        bank_id: int = await pool.fetchval(
            """INSERT INTO question_banks (slug, name, subject, curriculum, grade) VALUES ($1, $2, $3, $4, $5)
               RETURNING id""",
            slug, name, subject, curriculum, grade,
        )  # fmt: skip
    except asyncpg.UniqueViolationError:
        raise BankExists(f"a bank with slug {slug!r} exists") from None
    return bank_id


async def get_bank(pool: pg.Pool, bank_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {BANK_COLUMNS} FROM question_banks b WHERE b.id = $1", bank_id
    )
    return row


async def bank_id_for_slug(pool: pg.Pool, slug: str) -> int | None:
    found: int | None = await pool.fetchval("SELECT id FROM question_banks WHERE slug = $1", slug)
    return found


async def list_banks(pool: pg.Pool, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    total: int = await pool.fetchval("SELECT count(*) FROM question_banks")
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {BANK_COLUMNS} FROM question_banks b ORDER BY b.id LIMIT $1 OFFSET $2", limit, offset
    )
    return total, rows


async def add_members(pool: pg.Pool, bank_id: int, question_ids: Sequence[int]) -> int:
    """Add active questions to a bank (all or none); return how many were not members yet."""
    wanted = sorted(set(question_ids))
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM question_banks WHERE id = $1 FOR SHARE", bank_id) is None:
            raise BankNotFound(f"no bank {bank_id}")
        found = await conn.fetch(
            "SELECT id FROM questions WHERE id = ANY($1::bigint[]) AND retired_at IS NULL FOR SHARE", wanted
        )
        missing = set(wanted) - {r["id"] for r in found}
        if missing:
            raise NotAddable(list(missing))
        done = await conn.execute(
            """INSERT INTO question_bank_members (bank_id, question_id)
               SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING""",
            bank_id, wanted,
        )  # fmt: skip
    return int(done.rsplit(" ", 1)[1])


async def remove_members(pool: pg.Pool, bank_id: int, question_ids: Sequence[int]) -> int:
    """Remove questions from a bank; ids that are not members are ignored. Return how many were removed."""
    if await pool.fetchval("SELECT 1 FROM question_banks WHERE id = $1", bank_id) is None:
        raise BankNotFound(f"no bank {bank_id}")
    done = await pool.execute(
        "DELETE FROM question_bank_members WHERE bank_id = $1 AND question_id = ANY($2::bigint[])",
        bank_id, sorted(set(question_ids)),
    )  # fmt: skip
    return int(done.rsplit(" ", 1)[1])


async def list_members(
    pool: pg.Pool, bank_id: int, include_retired: bool, limit: int, offset: int
) -> tuple[int, list[asyncpg.Record]]:
    return await search(pool, Filters(bank_id=bank_id, include_retired=include_retired), limit, offset)


# ---- bulk import ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowResult:
    row: int
    ok: bool
    status: str  # imported | duplicate | failed
    id: int | None = None
    error: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int
    duplicates: int
    failed: int
    rows: list[RowResult]
    dry_run: bool = False


Progress = Callable[[int, int], None]


async def import_rows(
    pool: pg.Pool,
    bank_id: int,
    rows: Sequence[ParsedRow],
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    every: int = 500,
) -> ImportReport:
    """Store the good rows of a parsed file in one transaction and add them to the bank.

    Idempotent: a row whose ref is stored already, or (unless it allows duplicates) whose normalized text an
    active question has, is not stored again; it is reported as a duplicate and that question is added to the
    bank instead (a retired one is not). Blank subject/curriculum/grade take the bank's. Refused rows never
    stop the others. `dry_run` reports the same without keeping anything.
    """
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            report = await _import(conn, bank_id, rows, dry_run, progress, every)
        except BaseException:
            await tx.rollback()
            raise
        if dry_run:
            await tx.rollback()
        else:
            await tx.commit()
        return report


async def _import(
    conn: asyncpg.Connection, bank_id: int, rows: Sequence[ParsedRow], dry_run: bool, progress: Progress | None,
    every: int,
) -> ImportReport:  # fmt: skip
    await _lock(conn)
    bank = await conn.fetchrow("SELECT subject, curriculum, grade FROM question_banks WHERE id = $1 FOR SHARE", bank_id)
    if bank is None:
        raise BankNotFound(f"no bank {bank_id}")
    drafts = [r.draft for r in rows if r.draft is not None]
    refs = sorted({d.ref for d in drafts if d.ref is not None})
    by_ref: dict[str, tuple[int, bool]] = {
        r["ref"]: (r["id"], r["retired_at"] is not None)
        for r in await conn.fetch("SELECT id, ref, retired_at FROM questions WHERE ref = ANY($1::text[])", refs)
    }
    hashes = sorted({question_hash(d.text) for d in drafts})
    by_hash: dict[str, tuple[int, int | None]] = {  # digest -> (question id, row of this file or None)
        r["normalized_hash"]: (r["id"], None)
        for r in await conn.fetch(
            """SELECT normalized_hash, min(id) AS id FROM questions
                WHERE normalized_hash = ANY($1::text[]) AND retired_at IS NULL GROUP BY normalized_hash""",
            hashes,
        )
    }
    insert = await conn.prepare(_INSERT)
    seen_refs: dict[str, int] = {}
    members: list[int] = []
    out: list[RowResult] = []
    for done, r in enumerate(rows, start=1):
        out.append(await _import_row(r, bank, by_ref, by_hash, seen_refs, members, insert, dry_run))
        if progress is not None and (done % every == 0 or done == len(rows)):
            progress(done, len(rows))
    await conn.execute(
        """INSERT INTO question_bank_members (bank_id, question_id)
           SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING""",
        bank_id, sorted(set(members)),
    )  # fmt: skip
    counts = {s: sum(1 for o in out if o.status == s) for s in ("imported", "duplicate", "failed")}
    return ImportReport(counts["imported"], counts["duplicate"], counts["failed"], out, dry_run)


async def _import_row(
    r: ParsedRow,
    bank: asyncpg.Record,
    by_ref: dict[str, tuple[int, bool]],
    by_hash: dict[str, tuple[int, int | None]],
    seen_refs: dict[str, int],
    members: list[int],
    insert: Any,
    dry_run: bool,
) -> RowResult:
    if r.draft is None:
        return RowResult(r.row, False, "failed", error=r.error or "invalid row")
    defaults = {k: bank[k] for k in ("subject", "curriculum", "grade") if not getattr(r.draft, k)}
    d = r.draft.model_copy(update=defaults)
    if d.ref is not None:
        if d.ref in seen_refs:
            return RowResult(r.row, False, "failed", error=f"ref {d.ref!r} is also on row {seen_refs[d.ref]}")
        seen_refs[d.ref] = r.row
        if d.ref in by_ref:
            existing, retired = by_ref[d.ref]
            if retired:
                note = f"ref {d.ref!r} is retired question {existing}; not added to the bank"
                return RowResult(r.row, True, "duplicate", existing, note=note)
            members.append(existing)
            return RowResult(r.row, True, "duplicate", existing, note=f"ref {d.ref!r} is question {existing}")
    digest = question_hash(d.text)
    if not d.allow_duplicate and digest in by_hash:
        existing, row = by_hash[digest]
        members.append(existing)
        same = f"row {row}" if row is not None else f"question {existing}"
        return RowResult(r.row, True, "duplicate", None if dry_run and row else existing, note=f"same text as {same}")
    new_id: int = await insert.fetchval(*_insert_args(d, d.ref))
    by_hash.setdefault(digest, (new_id, r.row))
    if d.ref is not None:
        by_ref[d.ref] = (new_id, False)
    members.append(new_id)
    return RowResult(r.row, True, "imported", None if dry_run else new_id)
