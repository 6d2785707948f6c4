"""Questions: authoring (admin), review and search (staff), duplicate groups, random practice draws.

An edit never rewrites history: a question that a paper already holds is replaced by a new question (the
response carries the new id and `replaces`), the old one is retired with `replaced_by`. Questions no paper
has held are edited in place. See storage/questions.py.

A student's practice draw naming a bank and a topic is sampled from the warm tier's question sets by (bank,
topic, difficulty) (storage/cache.py); every write invalidates the sets of the banks holding the question.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from server.api import ADMIN, ANY_USER, STAFF, Ctx, Strict, fail
from server.auth import Role
from server.routes import api
from sessions.model import Difficulty
from storage import questions as repo
from storage.cache import Tier, load_question_set, question_bank_tags, question_set_key, question_set_tags
from storage.importers import QuestionDraft, QuestionFields

Status = Literal["unverified", "verified", "rejected"]
Level = Literal["easy", "medium", "hard"]  # in query models a Literal, not the enum: OpenAPI parameters inline it
Filter = Annotated[str, Field(max_length=60)]
MAX_ID = 2**63 - 1


class QuestionIn(QuestionDraft):
    """A new question. 409 when an active question has the same normalized text (unless allow_duplicate)
    or the same ref."""


class QuestionUpdate(QuestionFields):
    """The whole new content of a question (PUT replaces every field; the ref stays)."""

    allow_duplicate: bool = False


class ReviewIn(Strict):
    status: Status
    note: Annotated[str, Field(max_length=1000)] = ""


class OptionOut(BaseModel):
    id: str
    text: str


class PublicQuestionOut(BaseModel):
    """A question as a student practising sees it: no answer key, no explanation."""

    id: int
    subject: str
    curriculum: str
    grade: str
    topic: str
    difficulty: Difficulty
    category: str
    text: str
    options: list[OptionOut]
    marks: int


class QuestionOut(PublicQuestionOut):
    """A question as staff see it: the answer key, the review and the edit history."""

    ref: str | None
    correct: str
    explanation: str
    verification_status: Status
    reviewer_id: str | None
    review_note: str
    reviewed_at: str | None
    created_at: str
    updated_at: str
    retired_at: str | None
    replaced_by: int | None  # the newer version of this (retired) question
    replaces: int | None  # the older version this question replaced


class QuestionList(BaseModel):
    total: int
    questions: list[QuestionOut]


class RandomOut(BaseModel):
    full: bool  # True: staff caller, answer keys included
    questions: list[QuestionOut] | list[PublicQuestionOut]


class DuplicateGroup(BaseModel):
    normalized_hash: str
    ids: list[int]
    text: str


class DuplicateList(BaseModel):
    total: int
    groups: list[DuplicateGroup]


class SearchQuery(Strict):
    topic: Filter | None = None
    difficulty: Level | None = None
    curriculum: Filter | None = None
    grade: Filter | None = None
    subject: Filter | None = None
    category: Filter | None = None
    verification_status: Status | None = None
    bank_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    q: Annotated[str, Field(max_length=200)] | None = None  # a piece of the text, case-insensitive
    include_retired: bool = False
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class RandomQuery(Strict):
    topic: Filter | None = None
    difficulty: Level | None = None
    curriculum: Filter | None = None
    grade: Filter | None = None
    subject: Filter | None = None
    bank_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    count: Annotated[int, Field(ge=1, le=100)] = 10


class PageQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def question_out(row: Any) -> QuestionOut:
    data = dict(row)
    for key in ("reviewed_at", "created_at", "updated_at", "retired_at"):
        data[key] = _iso(data[key])
    data["reviewer_id"] = None if data["reviewer_id"] is None else str(data["reviewer_id"])
    data.pop("type", None)
    return QuestionOut(**data)


def public_out(row: Any) -> PublicQuestionOut:
    return PublicQuestionOut(**{k: row[k] for k in PublicQuestionOut.model_fields})


def duplicate_response(exc: repo.DuplicateQuestion) -> web.Response:
    """409 with the existing question's id beside the usual error fields."""
    body = {"error": "duplicate_question", "message": f"{exc}; send \"allow_duplicate\": true to store it anyway"
            if exc.by == "text" else str(exc), "existing_id": exc.existing_id}  # fmt: skip
    return web.json_response(body, status=409)


async def invalidate_sets(ctx: Ctx[Any, Any], question_ids: Sequence[int]) -> None:
    """After a write to these questions: drop the cached question sets of every bank holding one of them. A
    question in no bank is in no set (a new one, say), so nothing is dropped for it."""
    tags = await question_bank_tags(ctx.services.pool, question_ids)
    await ctx.services.cache.invalidate(*tags)


async def _found(ctx: Ctx[Any, Any], question_id: int) -> QuestionOut:
    row = await repo.get(ctx.services.pool, question_id)
    if row is None:
        fail(404, "question_not_found", "no such question")
    return question_out(row)


@api.post("/api/questions", body=QuestionIn, response=QuestionOut, roles=ADMIN, status=201)
async def create_question(ctx: Ctx[QuestionIn, None]) -> QuestionOut | web.Response:
    """Author a question (unverified until a reviewer says otherwise); 409 on a duplicate."""
    try:
        new_id = await repo.create(ctx.services.pool, ctx.body)
    except repo.DuplicateQuestion as exc:
        return duplicate_response(exc)
    return await _found(ctx, new_id)  # in no bank yet, so in no cached question set: nothing to invalidate


@api.get("/api/questions", query=SearchQuery, response=QuestionList, roles=STAFF)
async def search_questions(ctx: Ctx[None, SearchQuery]) -> QuestionList:
    """Search questions by topic, difficulty, curriculum, grade, subject, review status, bank or text."""
    q = ctx.query
    filters = repo.Filters(
        topic=q.topic, difficulty=q.difficulty, curriculum=q.curriculum,
        grade=q.grade, subject=q.subject, category=q.category, verification_status=q.verification_status,
        bank_id=q.bank_id, text=q.q, include_retired=q.include_retired,
    )  # fmt: skip
    total, rows = await repo.search(ctx.services.pool, filters, q.limit, q.offset)
    return QuestionList(total=total, questions=[question_out(r) for r in rows])


@api.get("/api/questions/random", query=RandomQuery, response=RandomOut, roles=ANY_USER)
async def random_questions(ctx: Ctx[None, RandomQuery]) -> RandomOut:
    """Up to `count` random active questions for practice; students get them without answers."""
    q = ctx.query
    student = ctx.me.role is Role.STUDENT
    if student and q.bank_id is not None and q.topic is not None:
        return RandomOut(full=False, questions=await _cached_sample(ctx, q.bank_id, q.topic))
    filters = repo.Filters(
        topic=q.topic, difficulty=q.difficulty, curriculum=q.curriculum,
        grade=q.grade, subject=q.subject, bank_id=q.bank_id,
    )  # fmt: skip
    rows = await repo.random_sample(ctx.services.pool, filters, q.count)
    if student:
        return RandomOut(full=False, questions=[public_out(r) for r in rows])
    return RandomOut(full=True, questions=[question_out(r) for r in rows])


async def _cached_sample(ctx: Ctx[None, RandomQuery], bank_id: int, topic: str) -> list[PublicQuestionOut]:
    """The draw from the cached sets (no difficulty named: the three of the topic). Only a set that exists is
    stored, so a request naming anything else costs a query but no key (the cache shares Redis with exams)."""
    q, pool, cache = ctx.query, ctx.services.pool, ctx.services.cache
    levels = [q.difficulty] if q.difficulty is not None else [d.value for d in Difficulty]

    def load(level: str) -> Awaitable[Any]:
        return cache.get_or_load(
            Tier.WARM, question_set_key(bank_id, topic, level),
            lambda: load_question_set(pool, bank_id, topic, level), tags=question_set_tags(bank_id),
        )  # fmt: skip

    sets: list[list[dict[str, Any]] | None] = await asyncio.gather(*(load(level) for level in levels))
    wanted = {k: v for k, v in (("curriculum", q.curriculum), ("grade", q.grade), ("subject", q.subject)) if v}
    found = [x for s in sets for x in s or () if all(x[k] == v for k, v in wanted.items())]
    picked = random.sample(found, min(q.count, len(found)))  # practice, not secrets: no CSPRNG needed
    return [PublicQuestionOut(**x) for x in picked]


@api.get("/api/questions/duplicates", query=PageQuery, response=DuplicateList, roles=STAFF)
async def duplicate_questions(ctx: Ctx[None, PageQuery]) -> DuplicateList:
    """Groups of active questions that share a normalized text (case, spacing and punctuation ignored)."""
    total, rows = await repo.duplicate_groups(ctx.services.pool, ctx.query.limit, ctx.query.offset)
    return DuplicateList(total=total, groups=[DuplicateGroup(**dict(r)) for r in rows])


@api.get(r"/api/questions/{id:\d+}", response=QuestionOut, roles=STAFF)
async def get_question(ctx: Ctx[None, None]) -> QuestionOut:
    """One question with its answer key, retired ones included."""
    return await _found(ctx, ctx.path_int("id"))


@api.put(r"/api/questions/{id:\d+}", body=QuestionUpdate, response=QuestionOut, roles=ADMIN)
async def update_question(ctx: Ctx[QuestionUpdate, None]) -> QuestionOut | web.Response:
    """Edit a question. In use by any paper: a new question replaces it (new id in the response)."""
    try:
        edited = await repo.update(
            ctx.services.pool, ctx.path_int("id"), ctx.body, allow_duplicate=ctx.body.allow_duplicate
        )
    except repo.QuestionNotFound:
        fail(404, "question_not_found", "no such question")
    except repo.QuestionRetired as exc:
        fail(409, "question_retired", f"{exc}; edit that one")
    except repo.DuplicateQuestion as exc:
        return duplicate_response(exc)
    if edited.changed:
        ctx.services.catalog.invalidate()
        await invalidate_sets(ctx, [ctx.path_int("id"), edited.id])
    return await _found(ctx, edited.id)


@api.delete(r"/api/questions/{id:\d+}", response=QuestionOut, roles=ADMIN)
async def retire_question(ctx: Ctx[None, None]) -> QuestionOut:
    """Retire a question: no new paper or practice draw gets it; history keeps it."""
    try:
        await repo.retire(ctx.services.pool, ctx.path_int("id"))
    except repo.QuestionNotFound:
        fail(404, "question_not_found", "no such question")
    ctx.services.catalog.invalidate()
    await invalidate_sets(ctx, [ctx.path_int("id")])
    return await _found(ctx, ctx.path_int("id"))


@api.post(r"/api/questions/{id:\d+}/review", body=ReviewIn, response=QuestionOut, roles=STAFF)
async def review_question(ctx: Ctx[ReviewIn, None]) -> QuestionOut:
    """Record a review verdict (the caller is the reviewer); rejected questions leave bank papers."""
    qid = ctx.path_int("id")
    try:
        await repo.review(ctx.services.pool, qid, ctx.body.status, ctx.body.note, ctx.me.user_id)
    except repo.QuestionNotFound:
        fail(404, "question_not_found", "no such question")
    except repo.QuestionRetired as exc:
        fail(409, "question_retired", str(exc))
    except repo.UnknownUser as exc:
        fail(401, "unauthorized", str(exc))
    ctx.services.catalog.invalidate()
    await invalidate_sets(ctx, [qid])
    return await _found(ctx, qid)
