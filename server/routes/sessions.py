"""The session lifecycle over REST: start a session, read its progress, read its result."""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, Field

from server import frames
from server.api import ANY_USER, PUBLIC, Ctx, Strict, bearer, fail, may_watch
from server.auth import Role, SessionClaims, TokenError, UserClaims
from server.hub import wall_ms
from server.routes import api
from server.services import Services
from sessions import adaptive, irt
from sessions.machine import SessionState
from sessions.model import Question, Template
from sessions.paper import Paper, PaperError, draw_paper
from sessions.scoring import mark
from storage import pg
from storage.starts import StartRow

SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def session_access(ctx: Ctx[Any, Any], sid: str) -> SessionClaims | UserClaims:
    """Either the session's own token, or a user token (who of them may read it: check_reader)."""
    if not SESSION_ID.match(sid):
        fail(404, "session_not_found", "no such session")
    token = bearer(ctx.request)
    if token is None:
        fail(401, "unauthorized", "send a token as 'Authorization: Bearer <token>'")
    auth = ctx.services.auth
    try:
        claims: SessionClaims | UserClaims = auth.verify_session(token)
    except TokenError:
        try:
            claims = auth.verify_user(token)
        except TokenError as exc:
            fail(401, "unauthorized", str(exc))
    if isinstance(claims, SessionClaims) and claims.sid != sid:
        fail(403, "forbidden", "this token is for another session")
    return claims


async def check_reader(
    services: Services, claims: SessionClaims | UserClaims, owner: uuid.UUID | str, template_id: int
) -> None:
    """Who may read a session: its own token, the student who owns it, an admin, or a proctor assigned to its exam
    (as for the room feed and the audit trail: a proctor of another exam may not read it)."""
    if isinstance(claims, SessionClaims) or claims.role is Role.ADMIN:
        return
    if claims.role is Role.STUDENT:
        if str(claims.user_id) != str(owner):
            fail(403, "forbidden", "this session belongs to someone else")
    elif not await may_watch(services, claims, template_id):
        fail(403, "forbidden", "you are not assigned to proctor this exam")


class StartIn(Strict):
    template_id: Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]


def ws_url(services: Services, token: str) -> str:
    base = services.settings.base_url
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}://{base.split('://', 1)[1]}/ws/student?token={token}"


class StartOut(BaseModel):
    session_id: str
    token: str
    ws_url: str
    status: str
    template: dict[str, Any]
    questions: int  # adaptive tests: the most it can have
    duration_s: int
    adaptive: bool = False


@api.post("/api/sessions", body=StartIn, response=StartOut, roles=ANY_USER, status=201)
async def start_session(ctx: Ctx[StartIn, None]) -> StartOut:
    """Start a session from a template: draws the paper, returns the session token and WebSocket URL."""
    s = ctx.services
    user = ctx.me
    data = ctx.body
    found = await s.catalog.template(data.template_id)
    if found is None:
        fail(404, "template_not_found", f"template {data.template_id} does not exist or is archived")
    template, bank_id = found
    sid = secrets.token_hex(16)
    adaptive_state = None
    if template.adaptive is not None:
        paper, adaptive_state = await _first_item(s, bank_id, template, sid)
    else:
        try:
            paper = draw_paper(await s.catalog.bank(bank_id), template.rule, seed=sid)
        except PaperError as exc:
            fail(409, "template_unsatisfiable", str(exc))
    ttl = s.settings.created_ttl_s + template.duration_ms // 1000 + s.settings.session_token_slack_s
    token, token_id = s.auth.session_token(sid, user.user_id, ttl)
    # one statement for every start queued meanwhile: the user check and the session row (storage/starts.py)
    name = await s.starts.insert(StartRow(sid, token_id, user.user_id, template.id, paper))
    if name is None:
        fail(403, "forbidden", "this user does not exist or is disabled")
    await s.store.create(sid, str(user.user_id), template, paper, wall_ms(), name, adaptive_state)
    return StartOut(
        session_id=sid,
        token=token,
        ws_url=ws_url(s, token),
        status="created",
        template={"id": template.id, "name": template.name},
        questions=template.rule.count if template.adaptive is not None else len(paper.question_ids),
        duration_s=template.duration_ms // 1000,
        adaptive=template.adaptive is not None,
    )


async def _first_item(s: Services, bank_id: int, template: Template, sid: str) -> tuple[Paper, irt.AdaptiveState]:
    """An adaptive session starts with one item: the most informative at the prior's mean."""
    assert template.adaptive is not None
    bank = await s.catalog.adaptive_bank(bank_id)
    if bank is None:
        fail(409, "template_unsatisfiable", "the bank has no calibrated items for an adaptive test")
    questions = await s.catalog.bank_index(bank_id)
    try:
        return adaptive.begin(bank, template.adaptive, questions, sid, template.rule.shuffle_options)
    except ValueError as exc:
        fail(409, "template_unsatisfiable", str(exc))


@api.get("/api/sessions/{sid}", roles=PUBLIC)
async def progress(ctx: Ctx[None, None]) -> web.Response:
    """A session's progress (its session token, or a user token: its student, an admin or its exam's proctor)."""
    s = ctx.services
    sid = ctx.path_str("sid")
    claims = session_access(ctx, sid)
    stored = await s.store.load(sid)
    if stored is not None:
        st = stored.state
        await check_reader(s, claims, st.user_id, st.template_id)
        return web.json_response(_progress(st, wall_ms()))
    row = await pg.fetch_session(s.pool, sid)
    if row is None:
        fail(404, "session_not_found", "no such session")
    await check_reader(s, claims, row["user_id"], row["template_id"])
    return web.json_response(
        {
            "session_id": sid,
            "status": row["status"],
            "total": len(row["paper"]["q"]),
            "answered": None,
            "time_left_ms": 0,
            "flushed": row["flushed_at"] is not None,
        }
    )


def _progress(st: SessionState, now_ms: int) -> dict[str, Any]:
    return {
        "session_id": st.id,
        "status": st.status.value,
        "total": len(st.paper.question_ids),
        "answered": sum(1 for a in st.answers.values() if a.choice is not None),
        "marked": sum(1 for a in st.answers.values() if a.marked),
        "time_left_ms": st.time_left_ms(now_ms),
        "violations": st.violations,
        "flagged": st.flagged,
        "last_seq": st.last_seq,
        "flushed": False,
    }


def _review_item(
    q: Question, order: tuple[str, ...], choice: str | None, marks: int, pretest: bool = False
) -> dict[str, Any]:
    view = frames.question_view(q, order)
    view.update(
        {"choice": choice, "correct": q.correct, "is_correct": None if choice is None else choice == q.correct,
         "marks": marks, "explanation": q.explanation}
    )  # fmt: skip
    if pretest:
        view["pretest"] = True  # an adaptive test's unscored trial item: not in the score
    return view


@api.get("/api/sessions/{sid}/result", roles=PUBLIC)
async def result(ctx: Ctx[None, None]) -> web.Response:
    """The result once the attempt has ended: score, per-topic breakdown, correct answers, explanations."""
    s = ctx.services
    sid = ctx.path_str("sid")
    claims = session_access(ctx, sid)
    row = await pg.fetch_session(s.pool, sid)
    if row is None:
        fail(404, "session_not_found", "no such session")
    await check_reader(s, claims, row["user_id"], row["template_id"])
    paper = Paper.from_json(row["paper"])
    questions = await s.catalog.questions(paper.question_ids)
    if row["flushed_at"] is not None:
        responses = {r["question_id"]: r for r in await pg.fetch_responses(s.pool, sid)}
        topics = {t["topic"]: {k: t[k] for k in ("correct", "wrong", "skipped", "score", "max_score")}
                  for t in await pg.fetch_topic_breakdown(s.pool, sid)}  # fmt: skip
        summary = {k: row[k] for k in ("score", "max_score", "min_score", "correct", "wrong", "skipped")}
        pretest = set(row["paper"].get("pretest", ()))  # adaptive tests' unscored items
        if row["ability"] is not None:
            scored = row["correct"] + row["wrong"] + row["skipped"]
            summary["ability"] = {"theta": round(row["ability"], 4), "se": round(row["ability_se"], 4),
                                  "scaled": row["scaled_score"], "items": scored,
                                  "pretest_items": len(paper.question_ids) - scored}  # fmt: skip
        items = [
            _review_item(questions[q], paper.option_order[q], r["choice"], r["marks"], q in pretest)
            for q in paper.question_ids
            for r in (responses[q],)
        ]
        return web.json_response(
            {
                "session_id": sid,
                "status": row["status"],
                "reason": row["finish_reason"],
                "stored": True,
                **summary,
                "topics": topics,
                "questions": items,
            }
        )
    stored = await s.store.load(sid)
    if stored is None or not stored.state.status.finished:
        fail(409, "not_finished", "the result is available once the attempt has ended")
    st = stored.state
    paper = st.paper  # an adaptive paper has grown since the start
    questions = await s.catalog.questions(paper.question_ids)
    res = frames.result_of(st, questions, stored.scheme)
    choices = st.choices()
    pretest = set(st.adaptive.pretest) if st.adaptive is not None else set()
    items = []
    for q in paper.question_ids:
        marks = 0 if q in pretest else mark(questions[q], choices.get(q), stored.scheme)
        items.append(_review_item(questions[q], paper.option_order[q], choices.get(q), marks, q in pretest))
    return web.json_response(
        {
            "session_id": sid,
            "status": st.status.value,
            "reason": st.finish_reason.value if st.finish_reason else None,
            "stored": False,
            **res.to_json(),
            **({"ability": frames.ability_view(st)} if st.adaptive is not None else {}),
            "questions": items,
        }
    )
