"""Proctoring over REST: who may watch which exam, and every action on a live session (each one reaches the
student's connection on whatever process holds it, and lands in the audit trail with who, when and why)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.api import ADMIN, STAFF, Ctx, Strict, fail, may_watch
from server.auth import Role
from server.hub import wall_ms
from server.proctor import row_of
from server.routes import api
from server.routes.sessions import SESSION_ID
from sessions.machine import (
    Decision,
    Extend,
    ForceSubmit,
    Pause,
    ProctorCommand,
    Refusal,
    Refused,
    Resume,
    SetFlag,
    Terminate,
    decide,
)
from storage.errors import StorageUnavailable
from storage.session_store import Outcome

Reason = Annotated[str, Field(max_length=500)]


class AssignmentIn(Strict):
    user_id: uuid.UUID
    template_id: Annotated[int, Field(ge=1, le=2**63 - 1)]


class AssignmentOut(BaseModel):
    user_id: str
    template_id: int


class AssignmentsOut(BaseModel):
    assignments: list[AssignmentOut]


@api.post("/api/proctor/assignments", body=AssignmentIn, response=AssignmentOut, roles=ADMIN, status=201, tag="proctor")
async def assign(ctx: Ctx[AssignmentIn, None]) -> AssignmentOut:
    """Let a proctor watch and act on one exam (template)."""
    b = ctx.body
    role = await ctx.services.pool.fetchval("SELECT role FROM users WHERE id = $1", b.user_id)
    if role != "proctor":
        fail(422, "invalid_body", "user_id: not a proctor")
    if not await ctx.services.pool.fetchval("SELECT 1 FROM test_templates WHERE id = $1", b.template_id):
        fail(422, "invalid_body", "template_id: no such template")
    await ctx.services.pool.execute(
        """INSERT INTO proctor_assignments (user_id, template_id, assigned_by) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING""",
        b.user_id, b.template_id, ctx.me.user_id,
    )  # fmt: skip
    return AssignmentOut(user_id=str(b.user_id), template_id=b.template_id)


@api.get("/api/proctor/assignments", response=AssignmentsOut, roles=STAFF, tag="proctor")
async def my_assignments(ctx: Ctx[None, None]) -> AssignmentsOut:
    """The exams the caller may proctor (admins: every active template)."""
    if ctx.me.role is Role.ADMIN:
        rows = await ctx.services.pool.fetch("SELECT $1::uuid AS user_id, id AS template_id FROM test_templates "
                                             "WHERE status = 'active' ORDER BY id", ctx.me.user_id)  # fmt: skip
    else:
        rows = await ctx.services.pool.fetch(
            "SELECT user_id, template_id FROM proctor_assignments WHERE user_id = $1 ORDER BY template_id",
            ctx.me.user_id,
        )
    return AssignmentsOut(assignments=[AssignmentOut(user_id=str(r["user_id"]), template_id=r["template_id"])
                                       for r in rows])  # fmt: skip


class ActionIn(Strict):
    action: Literal["pause", "resume", "extend", "terminate", "submit", "flag", "unflag", "message", "credit"]
    seconds: Annotated[int, Field(ge=-86_400, le=86_400)] | None = None  # extend: + gives time, - takes it
    reason: Reason = ""
    text: Annotated[str, Field(min_length=1, max_length=1000)] | None = None  # message


class ActionOut(BaseModel):
    action: str
    outcome: str
    session: dict[str, Any]


def _command(body: ActionIn, uncredited_ms: int) -> ProctorCommand:
    match body.action:
        case "pause":
            return Pause()
        case "resume":
            return Resume()
        case "extend":
            if not body.seconds:
                fail(422, "invalid_body", "seconds: give a non-zero number of seconds to extend (or shorten) by")
            return Extend(body.seconds * 1000)
        case "credit":  # the one-click credit of time lost to dropped connections
            if uncredited_ms <= 0:
                fail(409, "nothing_to_credit", "this student has lost no uncredited time to disconnects")
            return Extend(uncredited_ms, credit=True)
        case "terminate":
            return Terminate()
        case "submit":
            return ForceSubmit()
        case "flag":
            return SetFlag(True)
        case _:
            return SetFlag(False)


async def _audit(ctx: Ctx[Any, Any], sid: str, template_id: int, body: ActionIn, outcome: str,
                 params: dict[str, Any]) -> int:  # fmt: skip
    """Write the audit row. Actions write it as 'pending' BEFORE they change anything, so that no change can
    exist without its row (PostgreSQL down: 503 and nothing happened), then settle it with _settle()."""
    audit_id: int = await ctx.services.pool.fetchval(
        """INSERT INTO audit_log (session_id, template_id, actor_id, action, reason, params, outcome)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        sid, template_id, ctx.me.user_id, body.action, body.reason, params, outcome,
    )  # fmt: skip
    return audit_id


async def _settle(ctx: Ctx[Any, Any], audit_id: int, outcome: str, params: dict[str, Any]) -> None:
    await ctx.services.pool.execute(
        "UPDATE audit_log SET outcome = $2, params = params || $3::jsonb WHERE id = $1", audit_id, outcome, params
    )


async def _carry_out(ctx: Ctx[ActionIn, None], sid: str, tid: int, epoch: int, command: ProctorCommand,
                    decision: Decision) -> None:  # fmt: skip
    """Audit (pending), persist, settle the audit; a refusal or an expiry ends in a 409."""
    s, body = ctx.services, ctx.body
    refused = next((e for e in decision.effects if isinstance(e, Refused)), None)
    assert decision.write is not None
    write = decision.write
    params: dict[str, Any] = {"seconds": getattr(command, "delta_ms", 0) // 1000} if isinstance(command, Extend) else {}
    audit_id = await _audit(ctx, sid, tid, body, "pending", params)
    try:
        applied = await s.store.apply(sid, epoch, write)  # proctor writes go through control.lua
    except StorageUnavailable:
        await _settle(ctx, audit_id, "unknown", {})  # Redis did not answer: the action may or may not stand
        raise
    if refused is not None and refused.code is Refusal.TOO_LATE:  # the clock had run out: it expired instead
        await _settle(ctx, audit_id, "expired", {})
        await s.store.announce(sid, {"kind": "reload"})
        fail(409, "expired", "the time for this exam was over; the session has expired")
    if applied.outcome is not Outcome.OK:
        if applied.outcome is Outcome.TOO_LATE:
            await _settle(ctx, audit_id, "expired", {})
            await s.store.announce(sid, {"kind": "reload"})
            fail(409, "expired", "the time for this exam was over; the session has expired")
        await _settle(ctx, audit_id, "refused", {"status": applied.status})
        await s.store.announce(sid, {"kind": "reload"})
        fail(409, "not_allowed", f"the session is {applied.status.value if applied.status else 'gone'}")
    await _settle(ctx, audit_id, "done", {"deadline_ms": applied.deadline_ms, "remaining_ms": applied.remaining_ms})


@api.post("/api/proctor/sessions/{sid}/actions", body=ActionIn, response=ActionOut, roles=STAFF, tag="proctor")
async def act(ctx: Ctx[ActionIn, None]) -> ActionOut:
    """Act on one live session: pause, resume, extend/shorten, credit lost time, terminate, submit, flag, message."""
    sid = ctx.path_str("sid")
    if not SESSION_ID.match(sid):
        fail(404, "session_not_found", "no such session")
    s = ctx.services
    stored = await s.store.load(sid)
    if stored is None:
        fail(404, "session_not_found", "no such live session")
    tid = stored.state.template_id
    if not await may_watch(s, ctx.me, tid):
        fail(403, "forbidden", "you are not assigned to proctor this exam")
    body = ctx.body
    if body.action in ("extend", "credit", "terminate", "submit") and not body.reason.strip():
        fail(422, "invalid_body", f"reason: a {body.action} needs a reason (it goes into the audit trail)")
    if body.action == "message":
        if body.text is None:
            fail(422, "invalid_body", "text: a message needs text")
        audit_id = await _audit(ctx, sid, tid, body, "pending", {"text": body.text})
        await s.store.announce(sid, {"kind": "message", "text": body.text})
        await _settle(ctx, audit_id, "sent", {})
        return ActionOut(action=body.action, outcome="sent", session=row_of(stored, wall_ms()))

    now = wall_ms()
    command = _command(body, stored.presence.uncredited_ms(now))
    decision: Decision = decide(stored.state, command, now)
    refused = next((e for e in decision.effects if isinstance(e, Refused)), None)
    if decision.write is None:
        message = refused.message if refused else "nothing to do"
        await _audit(ctx, sid, tid, body, "refused", {"why": message})
        fail(409, "not_allowed", message)
    await _carry_out(ctx, sid, tid, stored.epoch, command, decision)
    await s.store.announce(sid, {"kind": body.action})  # the reason stays in the audit trail
    s.rooms.touch(tid, sid)
    after = await s.store.load(sid)
    assert after is not None
    return ActionOut(action=body.action, outcome="done", session=row_of(after, wall_ms()))


class RoomMessageIn(Strict):
    text: Annotated[str, Field(min_length=1, max_length=1000)]


class RoomMessageOut(BaseModel):
    template_id: int
    sent: bool


@api.post(r"/api/proctor/templates/{id:\d+}/message", body=RoomMessageIn, response=RoomMessageOut, roles=STAFF,
          tag="proctor")  # fmt: skip
async def message_room(ctx: Ctx[RoomMessageIn, None]) -> RoomMessageOut:
    """Send a message to every student sitting this exam right now."""
    tid = ctx.path_int("id")
    if not await ctx.services.pool.fetchval("SELECT 1 FROM test_templates WHERE id = $1", tid):
        fail(404, "template_not_found", "no such template")
    if not await may_watch(ctx.services, ctx.me, tid):
        fail(403, "forbidden", "you are not assigned to proctor this exam")
    import json

    await ctx.services.redis.publish(ctx.services.store.keys.broadcast_channel,
                                     json.dumps({"template": tid, "text": ctx.body.text}))  # fmt: skip
    await ctx.services.pool.execute(
        """INSERT INTO audit_log (template_id, actor_id, action, params, outcome)
           VALUES ($1, $2, 'message_room', $3, 'sent')""",
        tid, ctx.me.user_id, {"text": ctx.body.text},
    )  # fmt: skip
    return RoomMessageOut(template_id=tid, sent=True)


class AuditEntry(BaseModel):
    at: str
    session_id: str | None
    actor: str | None
    action: str
    reason: str
    outcome: str
    params: dict[str, Any]


class AuditOut(BaseModel):
    entries: list[AuditEntry]


@api.get("/api/proctor/sessions/{sid}/audit", response=AuditOut, roles=STAFF, tag="proctor")
async def audit(ctx: Ctx[None, None]) -> AuditOut:
    """The audit trail of one session: every proctor action and every automatic deadline change."""
    sid = ctx.path_str("sid")
    if not SESSION_ID.match(sid):
        fail(404, "session_not_found", "no such session")
    tid = await ctx.services.pool.fetchval("SELECT template_id FROM test_sessions WHERE id = $1", sid)
    if tid is None:
        fail(404, "session_not_found", "no such session")
    if not await may_watch(ctx.services, ctx.me, tid):
        fail(403, "forbidden", "you are not assigned to proctor this exam")
    rows = await ctx.services.pool.fetch(
        """SELECT created_at, session_id, actor_id, action, reason, outcome, params FROM audit_log
            WHERE session_id = $1 ORDER BY created_at, id""",
        sid,
    )
    return AuditOut(entries=[AuditEntry(at=r["created_at"].isoformat(), session_id=r["session_id"],
                                        actor=str(r["actor_id"]) if r["actor_id"] else None, action=r["action"],
                                        reason=r["reason"], outcome=r["outcome"], params=r["params"])
                             for r in rows])  # fmt: skip
