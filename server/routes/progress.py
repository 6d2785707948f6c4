"""A student's own record: performance (accuracy, speed, topics, trend, advice) and attempt history.

Performance with the default parameters (what a dashboard asks for) is cached in the warm tier per user, under
the tag the flusher invalidates when it stores that user's attempt; other parameters are computed each time, so
no client can grow the key space (the cache shares Redis with live exams).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from server.api import ANY_USER, STAFF, Ctx, Strict, fail
from server.routes import api
from sessions import stats
from storage import analytics, pg
from storage.cache import Tier, user_performance_key, user_tag

USER_ID = r"{id:[0-9a-fA-F-]{32,36}}"


class PerformanceQuery(Strict):
    min_answered: Annotated[int, Field(ge=1, le=1000)] = 10  # answers a topic needs before it is judged
    last: Annotated[int, Field(ge=2, le=100)] = 10  # attempts in the trend


class TopicOut(BaseModel):
    topic: str
    attempted: int  # answered (NEET's sense); skipped ones are counted apart
    correct: int
    wrong: int
    skipped: int
    accuracy: float | None  # correct / attempted
    avg_time_ms: float | None  # per question seen


class TrendPoint(BaseModel):
    session_id: str
    template_id: int
    template: str
    score: int
    max_score: int
    percent: float | None
    finished_at: datetime


class TrendOut(BaseModel):
    attempts: list[TrendPoint]  # oldest first
    slope: float | None  # least-squares change in percent per attempt
    direction: str  # improving | declining | steady | unknown


class RecommendationOut(BaseModel):
    kind: str
    reason: str
    topic: str | None = None
    difficulty: str | None = None


class PerformanceOut(BaseModel):
    user_id: str
    attempts: int
    answered: int
    correct: int
    wrong: int
    skipped: int
    accuracy: float | None  # correct / answered over every stored attempt
    avg_time_per_question_ms: float | None
    min_answered: int
    topics: list[TopicOut]
    strengths: list[str]
    weaknesses: list[str]
    trend: TrendOut
    recommendations: list[RecommendationOut]


class AttemptsQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class AttemptOut(BaseModel):
    session_id: str
    template_id: int
    template_slug: str
    template: str
    status: str
    reason: str | None
    score: int | None
    max_score: int | None
    correct: int | None
    wrong: int | None
    skipped: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stored: bool  # the result is in PostgreSQL


class AttemptsOut(BaseModel):
    total: int
    limit: int
    offset: int
    attempts: list[AttemptOut]


def _user_param(ctx: Ctx[Any, Any]) -> uuid.UUID:
    try:
        uid = uuid.UUID(ctx.path_str("id"))
    except ValueError:
        fail(404, "user_not_found", "no such user")
    if uid != ctx.me.user_id and ctx.me.role not in STAFF:
        fail(403, "forbidden", "only staff may read another user's record")
    return uid


def _topic(t: stats.Tally) -> TopicOut:
    return TopicOut(topic=t.name, attempted=t.attempted, correct=t.correct, wrong=t.wrong, skipped=t.skipped,
                    accuracy=t.accuracy, avg_time_ms=t.ms_per_question)  # fmt: skip


def _point(r: Any) -> TrendPoint:
    return TrendPoint(**dict(r), percent=100 * r["score"] / r["max_score"] if r["max_score"] else None)


DEFAULT_PERFORMANCE = PerformanceQuery()


async def _performance(ctx: Ctx[None, PerformanceQuery], user_id: uuid.UUID) -> dict[str, Any]:
    pool, q = ctx.services.pool, ctx.query
    if q == DEFAULT_PERFORMANCE:
        params = ",".join(f"{k}={v}" for k, v in sorted(q.model_dump().items()))
        found: dict[str, Any] | None = await ctx.services.cache.get_or_load(
            Tier.WARM, user_performance_key(user_id, params), lambda: load_performance(pool, user_id, q),
            tags=(user_tag(user_id),),
        )  # fmt: skip
    else:
        found = await load_performance(pool, user_id, q)
    if found is None:
        fail(404, "user_not_found", "no such user")
    return found


async def load_performance(pool: pg.Pool, user_id: uuid.UUID, q: PerformanceQuery) -> dict[str, Any] | None:
    """A user's performance as the endpoints return it; None (never cached) when there is no such user."""
    if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id):
        return None
    totals = await analytics.attempt_totals(pool, user_id)
    topics = await analytics.topic_tallies(pool, user_id)
    levels = await analytics.level_tallies(pool, user_id)
    recent = await analytics.recent_attempts(pool, user_id, q.last)
    every_topic = await analytics.available_topics(pool)
    percents = [100 * r["score"] / r["max_score"] for r in recent if r["max_score"] > 0]
    tr = stats.trend(percents)
    strong, weak = stats.strengths_and_weaknesses(topics, q.min_answered)
    answered = totals["correct"] + totals["wrong"]
    seen = sum(t.attempted + t.skipped for t in topics)
    spent = sum(t.time_spent_ms for t in topics)
    recs = stats.recommend(topics, every_topic, levels, min_answered=q.min_answered)
    return PerformanceOut(
        user_id=str(user_id),
        attempts=totals["attempts"],
        answered=answered,
        correct=totals["correct"],
        wrong=totals["wrong"],
        skipped=totals["skipped"],
        accuracy=totals["correct"] / answered if answered else None,
        avg_time_per_question_ms=spent / seen if seen else None,
        min_answered=q.min_answered,
        topics=[_topic(t) for t in topics],
        strengths=strong,
        weaknesses=weak,
        trend=TrendOut(attempts=[_point(r) for r in recent], slope=tr.slope, direction=tr.direction),
        recommendations=[RecommendationOut(**asdict(r)) for r in recs],
    ).model_dump(mode="json")


@api.get("/api/users/me/performance", query=PerformanceQuery, response=PerformanceOut, roles=ANY_USER)
async def my_performance(ctx: Ctx[None, PerformanceQuery]) -> dict[str, Any]:
    """The caller's accuracy, speed, per-topic strengths and weaknesses, trend and what to practise next."""
    return await _performance(ctx, ctx.me.user_id)


@api.get(f"/api/users/{USER_ID}/performance", query=PerformanceQuery, response=PerformanceOut, roles=ANY_USER)
async def user_performance(ctx: Ctx[None, PerformanceQuery]) -> dict[str, Any]:
    """A user's performance (staff, or the user themself)."""
    return await _performance(ctx, _user_param(ctx))


async def _attempts(ctx: Ctx[None, AttemptsQuery], user_id: uuid.UUID) -> AttemptsOut:
    q = ctx.query
    rows, total = await analytics.attempt_history(ctx.services.pool, user_id, q.limit, q.offset)
    return AttemptsOut(total=total, limit=q.limit, offset=q.offset, attempts=[AttemptOut(**dict(r)) for r in rows])


@api.get("/api/users/me/attempts", query=AttemptsQuery, response=AttemptsOut, roles=ANY_USER)
async def my_attempts(ctx: Ctx[None, AttemptsQuery]) -> AttemptsOut:
    """The caller's sessions, newest first: template, status, score, dates."""
    return await _attempts(ctx, ctx.me.user_id)


@api.get(f"/api/users/{USER_ID}/attempts", query=AttemptsQuery, response=AttemptsOut, roles=ANY_USER)
async def user_attempts(ctx: Ctx[None, AttemptsQuery]) -> AttemptsOut:
    """A user's sessions, newest first (staff, or the user themself)."""
    uid = _user_param(ctx)
    if not await ctx.services.pool.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", uid):
        fail(404, "user_not_found", "no such user")
    return await _attempts(ctx, uid)
