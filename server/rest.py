"""REST endpoints of the session lifecycle: a guest login, templates, start a session, progress, result.

Every error is JSON: {"error": <code>, "message": <text>} with a 4xx status (5xx only for our own faults
or unavailable storage, 503 with Retry-After).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, NoReturn

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from server import frames
from server.auth import Role, SessionClaims, TokenError, UserClaims
from server.hub import wall_ms
from server.services import SERVICES, Services
from sessions.machine import SessionState
from sessions.model import Question
from sessions.paper import Paper, PaperError, draw_paper
from sessions.scoring import mark
from storage import pg
from storage.errors import StorageUnavailable

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(web.HTTPException):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": code, "message": message}),
            content_type="application/json",
            headers=headers,
        )


def fail(status: int, code: str, message: str) -> NoReturn:
    raise ApiError(status, code, message)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_")
        raise ApiError(exc.status, code, exc.reason, headers=_passthrough(exc)) from None
    except (StorageUnavailable, RedisError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning("storage unavailable in %s %s: %s", request.method, request.path, exc)
        raise ApiError(503, "unavailable", "storage is unavailable; try again", {"Retry-After": "1"}) from None
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise ApiError(500, "internal_error", "internal error") from None


def _passthrough(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


async def body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        fail(415, "unsupported_media_type", "send a JSON body with Content-Type: application/json")
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        fail(422, "invalid_body", f"{where}: {first['msg']}")


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        fail(401, "unauthorized", "send a token as 'Authorization: Bearer <token>'")
    return header[7:].strip()


def require_user(request: web.Request) -> UserClaims:
    try:
        return request.app[SERVICES].auth.verify_user(_bearer(request))
    except TokenError as exc:
        fail(401, "unauthorized", str(exc))


SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def session_access(request: web.Request, sid: str) -> SessionClaims | UserClaims:
    """Either the session's own token, or a user token of its owner (checked by the caller)."""
    if not SESSION_ID.match(sid):
        fail(404, "session_not_found", "no such session")
    auth = request.app[SERVICES].auth
    token = _bearer(request)
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


def check_owner(claims: SessionClaims | UserClaims, owner: uuid.UUID | str) -> None:
    if isinstance(claims, UserClaims) and claims.role is Role.STUDENT and str(claims.user_id) != str(owner):
        fail(403, "forbidden", "this session belongs to someone else")


# ---- handlers ------------------------------------------------------------------------------------------


class GuestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: Annotated[str, Field(min_length=1, max_length=80)]


@routes.post("/api/auth/guest")
async def guest_login(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    data: GuestIn = await body(request, GuestIn)
    uid = await pg.create_guest(s.pool, data.display_name.strip() or "guest")
    token = s.auth.user_token(uid, Role.STUDENT, s.settings.user_token_ttl_s)
    return web.json_response({"user_id": str(uid), "token": token}, status=201)


@routes.get("/api/templates")
async def templates(request: web.Request) -> web.Response:
    rows = await pg.list_templates(request.app[SERVICES].pool)
    out = [
        {
            "id": r["id"],
            "slug": r["slug"],
            "name": r["name"],
            "bank": r["bank"],
            "questions": r["config"]["count"],
            "duration_s": r["config"]["duration_s"],
        }
        for r in rows
    ]
    return web.json_response({"templates": out})


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template_id: Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]


def ws_url(services: Services, token: str) -> str:
    base = services.settings.base_url
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}://{base.split('://', 1)[1]}/ws/student?token={token}"


@routes.post("/api/sessions")
async def start_session(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    user = require_user(request)
    data: StartIn = await body(request, StartIn)
    found = await s.catalog.template(data.template_id)
    if found is None:
        fail(404, "template_not_found", f"template {data.template_id} does not exist or is archived")
    template, bank_id = found
    if not await pg.user_exists(s.pool, user.user_id):
        fail(403, "forbidden", "this user does not exist or is disabled")
    sid = secrets.token_hex(16)
    try:
        paper = draw_paper(await s.catalog.bank(bank_id), template.rule, seed=sid)
    except PaperError as exc:
        fail(409, "template_unsatisfiable", str(exc))
    ttl = s.settings.created_ttl_s + template.duration_ms // 1000 + s.settings.session_token_slack_s
    token, token_id = s.auth.session_token(sid, user.user_id, ttl)
    await pg.insert_session(s.pool, sid, token_id, user.user_id, template.id, paper)
    await s.store.create(sid, str(user.user_id), template, paper, wall_ms())
    return web.json_response(
        {
            "session_id": sid,
            "token": token,
            "ws_url": ws_url(s, token),
            "status": "created",
            "template": {"id": template.id, "name": template.name},
            "questions": len(paper.question_ids),
            "duration_s": template.duration_ms // 1000,
        },
        status=201,
    )


@routes.get("/api/sessions/{sid}")
async def progress(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    sid = request.match_info["sid"]
    claims = session_access(request, sid)
    stored = await s.store.load(sid)
    if stored is not None:
        st = stored.state
        check_owner(claims, st.user_id)
        return web.json_response(_progress(st, wall_ms()))
    row = await pg.fetch_session(s.pool, sid)
    if row is None:
        fail(404, "session_not_found", "no such session")
    check_owner(claims, row["user_id"])
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


def _review_item(q: Question, order: tuple[str, ...], choice: str | None, marks: int) -> dict[str, Any]:
    view = frames.question_view(q, order)
    view.update(
        {"choice": choice, "correct": q.correct, "is_correct": None if choice is None else choice == q.correct,
         "marks": marks, "explanation": q.explanation}
    )  # fmt: skip
    return view


@routes.get("/api/sessions/{sid}/result")
async def result(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    sid = request.match_info["sid"]
    claims = session_access(request, sid)
    row = await pg.fetch_session(s.pool, sid)
    if row is None:
        fail(404, "session_not_found", "no such session")
    check_owner(claims, row["user_id"])
    paper = Paper.from_json(row["paper"])
    questions = await s.catalog.questions(paper.question_ids)
    if row["flushed_at"] is not None:
        responses = {r["question_id"]: r for r in await pg.fetch_responses(s.pool, sid)}
        topics = {t["topic"]: {k: t[k] for k in ("correct", "wrong", "skipped", "score", "max_score")}
                  for t in await pg.fetch_topic_breakdown(s.pool, sid)}  # fmt: skip
        summary = {k: row[k] for k in ("score", "max_score", "min_score", "correct", "wrong", "skipped")}
        items = [
            _review_item(questions[q], paper.option_order[q], responses[q]["choice"], responses[q]["marks"])
            for q in paper.question_ids
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
    res = frames.result_of(st, questions, stored.scheme)
    choices = st.choices()
    items = [
        _review_item(
            questions[q], paper.option_order[q], choices.get(q), mark(questions[q], choices.get(q), stored.scheme)
        )
        for q in paper.question_ids
    ]
    return web.json_response(
        {
            "session_id": sid,
            "status": st.status.value,
            "reason": st.finish_reason.value if st.finish_reason else None,
            "stored": False,
            **res.to_json(),
            "questions": items,
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
