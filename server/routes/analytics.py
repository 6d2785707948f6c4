"""Platform and template analytics: global figures, topics, item analysis, reliability, leaderboards,
an attempt's rank and percentile, and the periodic reports.

Cached in the cold tier (storage/cache.py), and invalidated by the flusher when it stores attempts: the global
figures, topic analytics over canonical windows, and each leaderboard's top entries (the caller's own place is
read fresh on every request, so no user ever sees another's).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.api import ANY_USER, STAFF, Ctx, Strict, fail
from server.routes import api
from server.routes.sessions import SESSION_ID, check_reader
from sessions import stats
from storage import analytics, pg
from storage.cache import (
    ANALYTICS_TAG,
    GLOBAL_ANALYTICS_KEY,
    LEADERBOARD_TOP,
    Tier,
    leaderboard_key,
    leaderboard_tag,
    topic_analytics_key,
)
from storage.scripts import AnyRedis

TEMPLATE = r"/api/templates/{id:\d+}"
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


async def _template(ctx: Ctx[Any, Any]) -> int:
    tid = ctx.path_int("id")
    if await analytics.template_row(ctx.services.pool, tid) is None:
        fail(404, "template_not_found", f"template {tid} does not exist")
    return tid


# ---- global and topics -----------------------------------------------------------------------------------


class GlobalOut(BaseModel):
    users: int
    sessions: int
    sessions_live: int  # running now (they have a deadline in Redis)
    attempts: int
    attempts_24h: int
    average_score: float | None
    average_percent: float | None
    questions: int
    templates: int


@api.get("/api/analytics/global", response=GlobalOut, roles=ANY_USER, tag="analytics")
async def global_analytics(ctx: Ctx[None, None]) -> dict[str, Any]:
    """Platform figures: users, sessions (live ones too), attempts, average score, questions."""
    s = ctx.services

    async def load() -> dict[str, Any]:
        stats_ = await analytics.global_stats(s.pool, s.redis, s.store.keys, datetime.now(UTC))
        return GlobalOut(**stats_).model_dump(mode="json")

    found: dict[str, Any] = await s.cache.get_or_load(Tier.COLD, GLOBAL_ANALYTICS_KEY, load, tags=(ANALYTICS_TAG,))
    # the PostgreSQL figures may be a day old; the live count is read fresh (one pipelined ZCARD per partition)
    return {**found, "sessions_live": await analytics.live_sessions(s.redis, s.store.keys)}


class TopicsQuery(Strict):
    template_id: Id | None = None  # 404 when there is no such template
    days: Annotated[int, Field(ge=1, le=3650)] | None = None  # only attempts finished in the last N days


CACHED_DAYS = frozenset({1, 7, 30, 90, 365})  # the windows a dashboard asks for; any other is computed each time


class TopicStatOut(BaseModel):
    topic: str
    attempts: int
    seen: int  # responses, skipped included
    answered: int
    correct: int
    accuracy: float | None  # correct / answered
    facility: float | None  # correct / seen
    avg_time_ms: float | None  # per answered question


class TopicsOut(BaseModel):
    topics: list[TopicStatOut]


@api.get("/api/analytics/topics", query=TopicsQuery, response=TopicsOut, roles=STAFF, tag="analytics")
async def topic_analytics(ctx: Ctx[None, TopicsQuery]) -> dict[str, Any]:
    """Per topic, over stored responses: attempts, accuracy, average time."""
    q, pool = ctx.query, ctx.services.pool
    if q.template_id is not None and await analytics.template_row(pool, q.template_id) is None:
        fail(404, "template_not_found", f"template {q.template_id} does not exist")
    if q.days is not None and q.days not in CACHED_DAYS:
        return await load_topics(pool, q.template_id, q.days)
    found: dict[str, Any] = await ctx.services.cache.get_or_load(
        Tier.COLD, topic_analytics_key(q.template_id, q.days), lambda: load_topics(pool, q.template_id, q.days),
        tags=(ANALYTICS_TAG,),
    )  # fmt: skip
    return found


async def load_topics(pool: pg.Pool, template_id: int | None, days: int | None) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=days) if days else None
    rows = await analytics.topic_stats(pool, template_id, since)
    return TopicsOut(
        topics=[
            TopicStatOut(**dict(r), accuracy=r["correct"] / r["answered"] if r["answered"] else None,
                         facility=r["correct"] / r["seen"] if r["seen"] else None)
            for r in rows
        ]
    ).model_dump(mode="json")  # fmt: skip


# ---- item analysis and reliability -----------------------------------------------------------------------


class ItemQuery(Strict):
    attempts: Annotated[int, Field(ge=1, le=20_000)] = 2000  # the most recent attempts analysed
    min_n: Annotated[int, Field(ge=1, le=10_000)] = 10  # attempts an item needs before it is flagged
    flagged_only: bool = False


class OptionOut(BaseModel):
    option: str
    count: int
    upper: int  # chosen by this many of the top 27% of attempts
    lower: int
    is_key: bool


class ItemOut(BaseModel):
    question_id: int
    topic: str | None
    difficulty: str | None
    key: str | None
    n: int
    facility: float
    discrimination: float | None
    upper_lower: float | None
    skipped: int
    options: list[OptionOut]
    flags: list[str]


class ItemAnalysisOut(BaseModel):
    template_id: int
    attempts: int
    items: int
    flagged: int
    min_n: int
    method: str
    flag_rules: dict[str, str]
    questions: list[ItemOut]


ITEM_METHOD = (
    "Per question, over the analysed attempts whose paper had it. Facility: proportion correct (skipped counts "
    "as wrong). Discrimination: corrected item-total correlation, Pearson's r between the item's 0/1 and the "
    "attempt's number correct on its other items. Upper/lower: the top and bottom 27% of those attempts by "
    "number correct; upper_lower is the difference of their facilities."
)


@api.get(f"{TEMPLATE}/item-analysis", query=ItemQuery, response=ItemAnalysisOut, roles=STAFF, tag="analytics")
async def item_analysis(ctx: Ctx[None, ItemQuery]) -> ItemAnalysisOut:
    """Classical item analysis of a template's attempts: facility, discrimination, distractors, flags."""
    tid = await _template(ctx)
    q, pool = ctx.query, ctx.services.pool
    responses = await analytics.template_responses(pool, tid, q.attempts)
    meta = await analytics.question_meta(pool, list({r.item for r in responses}))
    keys = {i: m["correct"] for i, m in meta.items()}
    options = {i: [o["id"] for o in m["options"]] for i, m in meta.items()}
    items = stats.item_analysis(responses, keys, options, min_n=q.min_n)
    out = [
        ItemOut(
            question_id=s.item, topic=meta[s.item]["topic"] if s.item in meta else None,
            difficulty=meta[s.item]["difficulty"] if s.item in meta else None, key=keys.get(s.item), n=s.n,
            facility=s.facility, discrimination=s.discrimination, upper_lower=s.upper_lower, skipped=s.skipped,
            options=[OptionOut(option=o.option, count=o.count, upper=o.upper, lower=o.lower, is_key=o.is_key)
                     for o in s.options],
            flags=list(s.flags),
        )
        for s in items
        if s.flags or not q.flagged_only
    ]  # fmt: skip
    return ItemAnalysisOut(
        template_id=tid,
        attempts=len({r.attempt for r in responses}),
        items=len(items),
        flagged=sum(1 for s in items if s.flags),
        min_n=q.min_n,
        method=ITEM_METHOD,
        flag_rules=stats.FLAG_RULES,
        questions=out,
    )


class ReliabilityQuery(Strict):
    attempts: Annotated[int, Field(ge=2, le=20_000)] = 2000


class ReliabilityOut(BaseModel):
    template_id: int
    attempts: int
    kr20: float | None
    common_items: int
    common_mean: float | None
    common_variance: float | None
    kr21: float | None
    paper_length: int
    paper_attempts: int
    paper_mean: float | None
    paper_variance: float | None
    method: str


RELIABILITY_METHOD = (
    "Students draw different papers from the bank, so there is no single attempts x items matrix. kr20 is "
    "computed on the questions common to every analysed attempt (the whole paper when it is fixed; none, and so "
    "null, when papers are drawn at random); common_mean/variance are of the number correct on those. kr21 "
    "needs only each attempt's number correct and the paper length, so it covers random papers: it is computed "
    "over the attempts whose paper has the most common length, assumes equally hard items, and is a lower bound "
    "of KR-20. Variances divide by n."
)


@api.get(f"{TEMPLATE}/reliability", query=ReliabilityQuery, response=ReliabilityOut, roles=STAFF, tag="analytics")
async def reliability(ctx: Ctx[None, ReliabilityQuery]) -> ReliabilityOut:
    """Internal consistency of a template's attempts: KR-20 on common items, KR-21 on whole papers."""
    tid = await _template(ctx)
    responses = await analytics.template_responses(ctx.services.pool, tid, ctx.query.attempts)
    matrix: dict[str, dict[int, int]] = {}
    for r in responses:
        matrix.setdefault(r.attempt, {})[r.item] = int(r.correct)
    rel = stats.reliability(matrix)
    return ReliabilityOut(
        template_id=tid, attempts=rel.attempts, kr20=rel.kr20, common_items=rel.common_items,
        common_mean=rel.common_mean, common_variance=rel.common_variance, kr21=rel.kr21,
        paper_length=rel.paper_length, paper_attempts=rel.paper_attempts, paper_mean=rel.paper_mean,
        paper_variance=rel.paper_variance, method=RELIABILITY_METHOD,
    )  # fmt: skip


# ---- leaderboard and rank --------------------------------------------------------------------------------


class LeaderboardQuery(Strict):
    period: analytics.Period = "all"
    limit: Annotated[int, Field(ge=1, le=LEADERBOARD_TOP)] = 10


class LeaderOut(BaseModel):
    rank: int  # equal scores share a rank
    display_name: str
    score: int
    is_me: bool


class LeaderboardOut(BaseModel):
    template_id: int
    period: str
    board: str  # "all", the UTC day (2024-03-06) or the ISO week (2024-W10)
    entries: list[LeaderOut]
    me: LeaderOut | None  # the caller's own place, when on this board


@api.get(f"{TEMPLATE}/leaderboard", query=LeaderboardQuery, response=LeaderboardOut, roles=ANY_USER,
         tag="analytics")  # fmt: skip
async def leaderboard(ctx: Ctx[None, LeaderboardQuery]) -> LeaderboardOut:
    """Each user's best score on a template: all time, today (UTC) or this ISO week."""
    tid = await _template(ctx)
    s, q = ctx.services, ctx.query
    now = datetime.now(UTC)
    prefix = s.settings.redis_prefix
    await analytics.ensure_boards(s.redis, s.pool, prefix, tid, now)
    b = analytics.board(prefix, tid, q.period, now)
    name = b.key.rsplit(":", 1)[-1]
    # shared by every caller: the top LEADERBOARD_TOP with their names, sliced to the limit asked for
    top: list[dict[str, Any]] = await s.cache.get_or_load(
        Tier.COLD, leaderboard_key(tid, name), lambda: load_top(s.redis, s.pool, b), tags=(leaderboard_tag(tid),)
    )
    me = str(ctx.me.user_id)
    _, mine = await analytics.read_board(s.redis, b, 1, me=me)  # the caller's own place: never cached
    my_name = next((e["display_name"] for e in top if e["user_id"] == me), None)
    if mine is not None and my_name is None:
        my_name = (await analytics.display_names(s.pool, [me])).get(me, "")
    entries = [LeaderOut(rank=e["rank"], display_name=e["display_name"], score=e["score"], is_me=e["user_id"] == me)
               for e in top[: q.limit]]  # fmt: skip
    return LeaderboardOut(template_id=tid, period=q.period, board=name, entries=entries,
                          me=LeaderOut(rank=mine.rank, display_name=my_name or "", score=mine.score, is_me=True)
                          if mine else None)  # fmt: skip


async def load_top(redis: AnyRedis, pool: pg.Pool, b: analytics.Board) -> list[dict[str, Any]]:
    """A board's top LEADERBOARD_TOP entries with display names (the cold tier's leaderboard entry)."""
    top, _ = await analytics.read_board(redis, b, LEADERBOARD_TOP)
    names = await analytics.display_names(pool, [e.user_id for e in top])
    return [{"rank": e.rank, "user_id": e.user_id, "display_name": names.get(e.user_id, ""), "score": e.score}
            for e in top]  # fmt: skip


class RankOut(BaseModel):
    session_id: str
    template_id: int
    score: int
    max_score: int
    rank: int
    percentile: float
    candidates: int
    definition: str


RANK_DEFINITION = (
    "Over every stored attempt of the template: rank = 1 + attempts with a strictly higher score (equal scores "
    "share a rank; no tie-breaking); percentile = 100 x attempts scoring at most this / all attempts, to 7 "
    "decimals (NTA's percentile score)."
)


@api.get("/api/sessions/{sid}/rank", response=RankOut, roles=ANY_USER, tag="analytics")
async def rank(ctx: Ctx[None, None]) -> RankOut:
    """An attempt's NEET-style rank and percentile among its template's attempts (its student, an admin, or a
    proctor of its exam)."""
    sid = ctx.path_str("sid")
    if not SESSION_ID.match(sid):
        fail(404, "session_not_found", "no such session")
    pool = ctx.services.pool
    row = await analytics.attempt_standing(pool, sid)
    found = (row["user_id"], row["template_id"]) if row else await analytics.session_owner(pool, sid)
    if found is None:
        fail(404, "session_not_found", "no such session")
    await check_reader(ctx.services, ctx.me, *found)
    if row is None:
        fail(409, "not_stored", "the rank is available once the attempt has ended and been stored")
    st = stats.standing(row["higher"], row["at_or_below"])
    return RankOut(session_id=sid, template_id=row["template_id"], score=row["score"], max_score=row["max_score"],
                   rank=st.rank, percentile=st.percentile, candidates=st.total, definition=RANK_DEFINITION)  # fmt: skip


# ---- reports ---------------------------------------------------------------------------------------------

ReportKind = Literal["template_daily", "template_weekly", "user_daily", "user_weekly"]


class ReportsQuery(Strict):
    template_id: Id | None = None
    user_id: uuid.UUID | None = None
    kind: ReportKind | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 20


class ReportOut(BaseModel):
    id: int
    kind: str
    user_id: uuid.UUID | None
    template_id: int | None
    period_start: datetime
    period_end: datetime
    body: dict[str, Any]
    created_at: datetime


class ReportsOut(BaseModel):
    reports: list[ReportOut]


@api.get("/api/reports", query=ReportsQuery, response=ReportsOut, roles=STAFF, tag="analytics")
async def reports(ctx: Ctx[None, ReportsQuery]) -> ReportsOut:
    """Periodic performance reports written by `examhub report`, newest period first."""
    q = ctx.query
    rows = await analytics.list_reports(ctx.services.pool, q.template_id, q.user_id, q.kind, q.limit)
    return ReportsOut(reports=[ReportOut(**dict(r)) for r in rows])
