"""Question banks: create, list, membership, and bulk import of questions from JSON, CSV or Moodle XML.

Templates draw their papers from a bank's active, non-rejected members; every membership change drops the
in-process catalog's cached banks and the bank's cached question sets (storage/cache.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, Field

from server.api import ADMIN, ANY_USER, STAFF, Ctx, Strict, fail
from server.routes import api
from server.routes.questions import QuestionList, question_out
from storage import importers
from storage import questions as repo
from storage.cache import bank_tag
from storage.importers import Label

Slug = Annotated[str, Field(min_length=2, max_length=60, pattern=r"^[a-z0-9][a-z0-9-]*$")]
QuestionId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class BankIn(Strict):
    slug: Slug
    name: Annotated[str, Field(min_length=1, max_length=120, pattern=r"\S")]
    subject: Label = ""
    curriculum: Label = ""
    grade: Label = ""


class BankOut(BaseModel):
    id: int
    slug: str
    name: str
    subject: str
    curriculum: str
    grade: str
    created_at: str
    questions: int  # active, non-rejected members: what a template can draw from


class BankList(BaseModel):
    total: int
    banks: list[BankOut]


class MembersIn(Strict):
    question_ids: Annotated[list[QuestionId], Field(min_length=1, max_length=1000)]


class MembershipOut(BaseModel):
    bank_id: int
    added: int = 0
    removed: int = 0
    questions: int


class PageQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class MembersQuery(PageQuery):
    include_retired: bool = False


class ImportQuery(Strict):
    format: importers.Format | None = None  # default: from the Content-Type
    dry_run: bool = False  # validate and report, keep nothing


class ImportRowOut(BaseModel):
    row: int  # the n-th question of the file, from 1
    ok: bool
    status: str  # imported | duplicate | failed
    id: int | None
    error: str | None
    note: str | None


class ImportOut(BaseModel):
    imported: int
    duplicates: int
    failed: int
    dry_run: bool
    rows: list[ImportRowOut]


def bank_out(row: Any) -> BankOut:
    return BankOut(**{**dict(row), "created_at": row["created_at"].isoformat()})


async def _bank(ctx: Ctx[Any, Any]) -> BankOut:
    row = await repo.get_bank(ctx.services.pool, ctx.path_int("id"))
    if row is None:
        fail(404, "bank_not_found", "no such bank")
    return bank_out(row)


@api.post("/api/banks", body=BankIn, response=BankOut, roles=ADMIN, status=201)
async def create_bank(ctx: Ctx[BankIn, None]) -> BankOut:
    """Create an empty question bank."""
    b = ctx.body
    try:
        bank_id = await repo.create_bank(ctx.services.pool, b.slug, b.name.strip(), b.subject, b.curriculum, b.grade)
    except repo.BankExists as exc:
        fail(409, "conflict", str(exc))
    row = await repo.get_bank(ctx.services.pool, bank_id)
    return bank_out(row)


@api.get("/api/banks", query=PageQuery, response=BankList, roles=ANY_USER)
async def list_banks(ctx: Ctx[None, PageQuery]) -> BankList:
    """Every bank with its count of drawable questions."""
    total, rows = await repo.list_banks(ctx.services.pool, ctx.query.limit, ctx.query.offset)
    return BankList(total=total, banks=[bank_out(r) for r in rows])


@api.get(r"/api/banks/{id:\d+}", response=BankOut, roles=ANY_USER)
async def get_bank(ctx: Ctx[None, None]) -> BankOut:
    """One bank with its count of drawable questions."""
    return await _bank(ctx)


@api.get(r"/api/banks/{id:\d+}/questions", query=MembersQuery, response=QuestionList, roles=STAFF)
async def list_bank_questions(ctx: Ctx[None, MembersQuery]) -> QuestionList:
    """A bank's questions with their answer keys (retired ones on request)."""
    await _bank(ctx)
    q = ctx.query
    total, rows = await repo.list_members(ctx.services.pool, ctx.path_int("id"), q.include_retired, q.limit, q.offset)
    return QuestionList(total=total, questions=[question_out(r) for r in rows])


@api.post(r"/api/banks/{id:\d+}/questions", body=MembersIn, response=MembershipOut, roles=ADMIN)
async def add_bank_questions(ctx: Ctx[MembersIn, None]) -> MembershipOut:
    """Add active questions to a bank: all of them, or none when one is unknown or retired (422)."""
    bank_id = ctx.path_int("id")
    try:
        added = await repo.add_members(ctx.services.pool, bank_id, ctx.body.question_ids)
    except repo.BankNotFound:
        fail(404, "bank_not_found", "no such bank")
    except repo.NotAddable as exc:
        fail(422, "invalid_body", f"question_ids: {exc}")
    ctx.services.catalog.invalidate()
    if added:
        await ctx.services.cache.invalidate(bank_tag(bank_id))
    return MembershipOut(bank_id=bank_id, added=added, questions=(await _bank(ctx)).questions)


@api.post(r"/api/banks/{id:\d+}/questions/remove", body=MembersIn, response=MembershipOut, roles=ADMIN)
async def remove_bank_questions(ctx: Ctx[MembersIn, None]) -> MembershipOut:
    """Remove questions from a bank (ids that are not members are ignored); the questions themselves stay."""
    bank_id = ctx.path_int("id")
    try:
        removed = await repo.remove_members(ctx.services.pool, bank_id, ctx.body.question_ids)
    except repo.BankNotFound:
        fail(404, "bank_not_found", "no such bank")
    ctx.services.catalog.invalidate()
    if removed:
        await ctx.services.cache.invalidate(bank_tag(bank_id))
    return MembershipOut(bank_id=bank_id, removed=removed, questions=(await _bank(ctx)).questions)


_TYPES: dict[importers.Format, frozenset[str]] = {
    "json": frozenset({"application/json"}),
    "csv": frozenset({"text/csv", "application/csv", "application/vnd.ms-excel"}),
    "moodle": frozenset({"application/xml", "text/xml"}),
}
_ANY_FORMAT = frozenset({"text/plain", "application/octet-stream"})  # with ?format=


def _format(ctx: Ctx[Any, ImportQuery]) -> importers.Format:
    ctype = ctx.request.content_type
    fmt = ctx.query.format or next((f for f, types in _TYPES.items() if ctype in types), None)
    if fmt is None:
        if ctype in _ANY_FORMAT:
            fail(422, "invalid_query", "format: say ?format=json, csv or moodle for a body of type " + ctype)
        fail(415, "unsupported_media_type", "send JSON, CSV or Moodle XML (application/json, text/csv, text/xml)")
    if ctype not in _TYPES[fmt] | _ANY_FORMAT:
        fail(415, "unsupported_media_type", f"a {fmt} import needs Content-Type {' or '.join(sorted(_TYPES[fmt]))}")
    return fmt


async def _upload(request: web.Request) -> bytes:
    limit = importers.MAX_IMPORT_BYTES
    too_big = f"the upload is larger than {limit // (1024 * 1024)} MiB; split the file"
    if request.content_length is not None and request.content_length > limit:
        fail(413, "payload_too_large", too_big)
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        fail(413, "payload_too_large", too_big)
    if len(data) > limit:
        fail(413, "payload_too_large", too_big)
    return data


@api.post(r"/api/banks/{id:\d+}/import", query=ImportQuery, response=ImportOut, roles=ADMIN, raw_body="text/plain")
async def import_questions(ctx: Ctx[None, ImportQuery]) -> ImportOut:
    """Import questions into a bank from JSON, CSV or Moodle XML; a per-row report (bad rows never stop the rest)."""
    bank_id = ctx.path_int("id")
    await _bank(ctx)
    fmt = _format(ctx)
    data = await _upload(ctx.request)
    try:  # parsing 8 MiB is CPU work: off the event loop, so live exams keep their acknowledgements flowing
        rows = await asyncio.to_thread(importers.parse, fmt, data)
    except importers.ImportFormatError as exc:
        fail(422, "invalid_file", str(exc))
    try:
        report = await repo.import_rows(ctx.services.pool, bank_id, rows, dry_run=ctx.query.dry_run)
    except repo.BankNotFound:
        fail(404, "bank_not_found", "no such bank")
    if report.imported or report.duplicates:
        ctx.services.catalog.invalidate()
        if not report.dry_run:  # new questions are in this bank only; duplicates joined this bank only
            await ctx.services.cache.invalidate(bank_tag(bank_id))
    return ImportOut(
        imported=report.imported, duplicates=report.duplicates, failed=report.failed, dry_run=report.dry_run,
        rows=[ImportRowOut(row=r.row, ok=r.ok, status=r.status, id=r.id, error=r.error, note=r.note)
              for r in report.rows],
    )  # fmt: skip
