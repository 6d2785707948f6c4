"""Test templates: which questions, how long, how marked, how strict about cheating."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, Field

from server.api import ADMIN, Ctx, Strict, fail
from server.routes import api
from sessions.paper import PaperError, draw_paper
from storage import calibration, pg
from storage.cache import TEMPLATE_LIST_KEY, TEMPLATES_TAG, Tier, template_key

Slug = Annotated[str, Field(min_length=2, max_length=60, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Topic = Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[a-z0-9][a-z0-9-]*$")]


class MixIn(Strict):
    easy: Annotated[float, Field(ge=0, le=1000)] = 0.3
    medium: Annotated[float, Field(ge=0, le=1000)] = 0.5
    hard: Annotated[float, Field(ge=0, le=1000)] = 0.2


class SchemeIn(Strict):
    correct: Annotated[int, Field(ge=1, le=100)] = 4
    wrong: Annotated[int, Field(ge=-100, le=0)] = -1
    skipped: Annotated[int, Field(ge=-100, le=100)] = 0


class PolicyIn(Strict):
    warn_at: Annotated[int, Field(ge=1, le=1000)] | None = 1
    flag_at: Annotated[int, Field(ge=1, le=1000)] | None = 3
    submit_at: Annotated[int, Field(ge=1, le=1000)] | None = 6


class AdaptiveIn(Strict):
    """An adaptive test (docs/adaptive.md): items chosen one by one by item response theory until the ability's
    standard error reaches `target_se`, after at least `min_items` and at most the template's `count` items."""

    target_se: Annotated[float, Field(gt=0.05, lt=1)] = 0.30
    min_items: Annotated[int, Field(ge=1, le=500)] = 5
    # target shares of the scored items per topic (normalised); empty: no content balancing
    blueprint: Annotated[dict[Topic, Annotated[float, Field(gt=0, le=1000)]], Field(max_length=100)] = Field(
        default_factory=dict
    )
    # 1-based positions at which an unscored pretest item is seeded (when the bank has one)
    pretest_positions: Annotated[list[Annotated[int, Field(ge=1, le=500)]], Field(max_length=50)] = Field(
        default_factory=list
    )


class TemplateConfig(Strict):
    count: Annotated[int, Field(ge=1, le=500)]  # adaptive tests: the maximum length
    topics: Annotated[list[Topic], Field(max_length=100, default_factory=list)]
    mix: MixIn = MixIn()
    duration_s: Annotated[int, Field(ge=60, le=24 * 3600)]
    grace_s: Annotated[int, Field(ge=0, le=60)] = 5
    # time lost to dropped connections given back automatically, up to this much per attempt (0: a proctor
    # gives it with one click from the dashboard)
    disconnect_credit_cap_s: Annotated[int, Field(ge=0, le=3600)] = 0
    scheme: SchemeIn = SchemeIn()
    policy: PolicyIn = PolicyIn()
    shuffle_questions: bool = True
    shuffle_options: bool = True
    adaptive: AdaptiveIn | None = None


class TemplateIn(Strict):
    slug: Slug
    name: Annotated[str, Field(min_length=1, max_length=120)]
    bank_id: Annotated[int, Field(ge=1, le=2**63 - 1)]
    config: TemplateConfig


class TemplateUpdate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    config: TemplateConfig


class TemplateOut(BaseModel):
    id: int
    slug: str
    name: str
    bank_id: int
    bank: str
    status: str
    questions: int
    duration_s: int
    config: dict[str, Any]


class TemplateList(BaseModel):
    templates: list[TemplateOut]


def _out(row: Any) -> TemplateOut:
    cfg = row["config"]
    fields = {k: row[k] for k in ("id", "slug", "name", "bank_id", "bank", "status")}
    return TemplateOut(**fields, questions=cfg["count"], duration_s=cfg["duration_s"], config=cfg)


async def _check_satisfiable(
    ctx: Ctx[Any, Any], template_id: int, name: str, bank_id: int, cfg: TemplateConfig
) -> None:
    """Reject a rule or a policy the domain refuses, or a bank too small for the rule (422)."""
    try:
        template = pg.template_from_config(template_id, name, cfg.model_dump())
    except ValueError as exc:
        fail(422, "invalid_body", f"config: {exc}")
    bank = await pg.fetch_bank_questions(ctx.services.pool, bank_id)
    if not bank and not await ctx.services.pool.fetchval("SELECT 1 FROM question_banks WHERE id = $1", bank_id):
        fail(422, "invalid_body", f"bank_id: no bank {bank_id}")
    if template.adaptive is not None:
        if await calibration.adaptive_bank(ctx.services.pool, bank_id) is None:
            fail(422, "template_unsatisfiable", "the bank has no calibrated items: run `examhub calibrate` first")
        return
    try:
        draw_paper(bank, template.rule, seed="check")
    except PaperError as exc:
        fail(422, "template_unsatisfiable", str(exc))


_SELECT = """SELECT t.id, t.slug, t.name, t.bank_id, b.slug AS bank, t.status, t.config
               FROM test_templates t JOIN question_banks b ON b.id = t.bank_id"""


async def load_template_list(pool: pg.Pool) -> dict[str, Any]:
    """The active templates as GET /api/templates returns them (the loader of its warm cache entry)."""
    rows = await pool.fetch(f"{_SELECT} WHERE t.status = 'active' ORDER BY t.id")
    return TemplateList(templates=[_out(r) for r in rows]).model_dump(mode="json")


async def load_template(pool: pg.Pool, template_id: int) -> dict[str, Any] | None:
    """One template as GET /api/templates/{id} returns it; None (not cached) when there is no such id."""
    row = await pool.fetchrow(f"{_SELECT} WHERE t.id = $1", template_id)
    return None if row is None else _out(row).model_dump(mode="json")


@api.get("/api/templates", response=TemplateList)
async def list_templates(ctx: Ctx[None, None]) -> dict[str, Any]:
    """Active templates (public: no answer keys in them)."""
    pool = ctx.services.pool
    found: dict[str, Any] = await ctx.services.cache.get_or_load(
        Tier.WARM, TEMPLATE_LIST_KEY, lambda: load_template_list(pool), tags=(TEMPLATES_TAG,)
    )
    return found


@api.get(r"/api/templates/{id:\d+}", response=TemplateOut)
async def get_template(ctx: Ctx[None, None]) -> dict[str, Any]:
    """One template, archived ones included."""
    pool, tid = ctx.services.pool, ctx.path_int("id")
    found: dict[str, Any] | None = await ctx.services.cache.get_or_load(
        Tier.WARM, template_key(tid), lambda: load_template(pool, tid), tags=(TEMPLATES_TAG,)
    )
    if found is None:
        fail(404, "template_not_found", "no such template")
    return found


@api.post("/api/templates", body=TemplateIn, response=TemplateOut, roles=ADMIN, status=201)
async def create_template(ctx: Ctx[TemplateIn, None]) -> TemplateOut:
    """Create a template over a bank; the bank must be able to satisfy its rule."""
    b = ctx.body
    await _check_satisfiable(ctx, 0, b.name, b.bank_id, b.config)
    try:
        new_id = await ctx.services.pool.fetchval(
            "INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, $2, $3, $4) RETURNING id",
            b.slug, b.name, b.bank_id, b.config.model_dump(),
        )  # fmt: skip
    except asyncpg.UniqueViolationError:
        fail(409, "conflict", f"a template with slug {b.slug!r} exists")
    await ctx.services.cache.invalidate(TEMPLATES_TAG)
    return await get_template_by_id(ctx, new_id)


async def get_template_by_id(ctx: Ctx[Any, Any], template_id: int) -> TemplateOut:
    row = await ctx.services.pool.fetchrow(f"{_SELECT} WHERE t.id = $1", template_id)
    assert row is not None
    return _out(row)


@api.put(r"/api/templates/{id:\d+}", body=TemplateUpdate, response=TemplateOut, roles=ADMIN)
async def update_template(ctx: Ctx[TemplateUpdate, None]) -> TemplateOut:
    """Replace a template's name and config. Sessions already started keep the rules they started with."""
    tid = ctx.path_int("id")
    bank_id = await ctx.services.pool.fetchval("SELECT bank_id FROM test_templates WHERE id = $1", tid)
    if bank_id is None:
        fail(404, "template_not_found", "no such template")
    await _check_satisfiable(ctx, tid, ctx.body.name, bank_id, ctx.body.config)
    await ctx.services.pool.execute(
        "UPDATE test_templates SET name = $2, config = $3, updated_at = now() WHERE id = $1",
        tid, ctx.body.name, ctx.body.config.model_dump(),
    )  # fmt: skip
    ctx.services.catalog.invalidate()
    await ctx.services.cache.invalidate(TEMPLATES_TAG)
    return await get_template_by_id(ctx, tid)


@api.delete(r"/api/templates/{id:\d+}", response=TemplateOut, roles=ADMIN)
async def archive_template(ctx: Ctx[None, None]) -> TemplateOut:
    """Archive a template: no new sessions; history and analytics stay."""
    tid = ctx.path_int("id")
    done = await ctx.services.pool.execute(
        "UPDATE test_templates SET status = 'archived', updated_at = now() WHERE id = $1", tid
    )
    if done.endswith(" 0"):
        fail(404, "template_not_found", "no such template")
    ctx.services.catalog.invalidate()
    await ctx.services.cache.invalidate(TEMPLATES_TAG)
    return await get_template_by_id(ctx, tid)
