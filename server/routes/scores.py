"""A template's score distribution: how many stored attempts got each score (the proctor dashboard's and the
analytics page's histogram). The other analytics endpoints give item statistics, topic accuracy and KR-20, but
not the scores themselves; the leaderboard keeps only each user's best of the top 100.

Counts per exact score, not bins: NEET scores are whole numbers in [min_score, max_score] (at most 901 values
for 180 questions), so the client bins as it likes. Read fresh (one GROUP BY over the (template_id, score)
index); finished attempts reach it when the flusher stores them.
"""

from __future__ import annotations

from pydantic import BaseModel

from server.api import STAFF, Ctx, fail
from server.routes import api
from storage import analytics


class ScoreCount(BaseModel):
    score: int
    count: int


class ScoresOut(BaseModel):
    template_id: int
    attempts: int
    max_score: int | None  # the largest over the attempts (papers of one template normally share it)
    min_score: int | None
    mean: float | None
    scores: list[ScoreCount]  # ascending by score; scores nobody got are absent


@api.get(r"/api/templates/{id:\d+}/scores", response=ScoresOut, roles=STAFF, tag="analytics")
async def score_distribution(ctx: Ctx[None, None]) -> ScoresOut:
    """The score distribution of a template's stored attempts: attempts per score."""
    tid = ctx.path_int("id")
    pool = ctx.services.pool
    if await analytics.template_row(pool, tid) is None:
        fail(404, "template_not_found", f"template {tid} does not exist")
    rows = await pool.fetch(
        "SELECT score, count(*)::int AS n FROM test_attempts WHERE template_id = $1 GROUP BY score ORDER BY score",
        tid,
    )
    bounds = await pool.fetchrow(
        "SELECT max(max_score) AS hi, min(min_score) AS lo, avg(score)::float8 AS mean FROM test_attempts "
        "WHERE template_id = $1",
        tid,
    )
    return ScoresOut(
        template_id=tid,
        attempts=sum(r["n"] for r in rows),
        max_score=bounds["hi"],
        min_score=bounds["lo"],
        mean=bounds["mean"],
        scores=[ScoreCount(score=r["score"], count=r["n"]) for r in rows],
    )
