"""A proctor watches a live exam and acts on it; every action reaches the student and the audit trail."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.closecodes import Close
from tests.server.conftest import Student, bearer, services, student, token_for


class Proctor:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.rows: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self.snapshots = 0

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "code": self.ws.close_code}
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] == "snapshot":
            self.snapshots += 1
            self.rows = {r["session"]: r for r in frame["sessions"]}
            self.seq = frame["seq"]
        elif frame["type"] == "update":
            assert frame["seq"] == self.seq + 1, (frame["seq"], self.seq)
            self.seq = frame["seq"]
            for r in frame["sessions"]:
                self.rows[r["session"]] = r
        return frame

    async def until(self, sid: str, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            row = self.rows.get(sid)
            if row is not None and predicate(row):
                return row
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"timed out waiting; last row: {row}"
            await self.recv(left)


async def proctor_token(client: TestClient[Any, Any], tid: int) -> str:
    s = services(client)
    token = await token_for(client, "proctor")
    uid = s.auth.verify_user(token).user_id
    admin = await token_for(client, "admin")
    r = await client.post("/api/proctor/assignments", json={"user_id": str(uid), "template_id": tid},
                          headers=bearer(admin))  # fmt: skip
    assert r.status == 201, await r.text()
    return token


async def own_template(client: TestClient[Any, Any], **config: Any) -> int:
    pool = services(client).pool
    bank = await pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    return int(await pool.fetchval(
        "INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, 'proctored', $2, $3) RETURNING id",
        f"proctored-{secrets.token_hex(4)}", bank, {"count": 5, "duration_s": 600, "grace_s": 1, **config},
    ))  # fmt: skip


async def watched_exam(client: TestClient[Any, Any], **config: Any) -> tuple[int, str, Student, Proctor]:
    """An exam of our own, a student connected to it, and an assigned proctor who has the snapshot."""
    tid = await own_template(client, **config)
    token = await proctor_token(client, tid)
    st = await student(client, tid)
    await st.connect()
    p = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    await p.recv()
    return tid, token, st, p


async def act(client: TestClient[Any, Any], token: str, sid: str, **body: Any) -> Any:
    return await client.post(f"/api/proctor/sessions/{sid}/actions", json=body, headers=bearer(token))


async def next_of(st: Student, kind: str) -> dict[str, Any]:
    while True:
        frame = await st.recv()
        if frame["type"] == kind or frame["type"] == "closed":
            return frame


async def test_watch_and_act_on_a_live_exam(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    token = await proctor_token(client, tid)
    st = await student(client, tid)
    await st.connect()
    p = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    snap = await p.recv()
    assert snap["type"] == "snapshot" and snap["template"] == tid
    assert p.rows[st.sid]["online"] is True and p.rows[st.sid]["status"] == "active"

    q = st.questions()[0]
    assert (await st.answer(q["id"], q["options"][0]["id"]))["type"] == "ack"
    await p.until(st.sid, lambda r: r["answered"] == 1)
    await st.event("copy")
    row = await p.until(st.sid, lambda r: r["events"].get("copy") == 1)
    assert row["risk"] > 0 and "1 x copy" in row["risk_reasons"]

    r = await act(client, token, st.sid, action="pause", reason="fire alarm")
    assert r.status == 200, await r.text()
    clock = await next_of(st, "clock")
    assert clock["status"] == "paused" and clock["action"] == "pause" and clock["deadline_ms"] is None
    assert "fire alarm" not in json.dumps(clock)  # the proctor's reason stays in the audit trail
    left_when_paused = clock["time_left_ms"]
    refused = await st.answer(q["id"], q["options"][1]["id"])
    assert refused["type"] == "error" and refused["code"] == "not_active"
    await p.until(st.sid, lambda r: r["status"] == "paused")
    await asyncio.sleep(0.3)

    r = await act(client, token, st.sid, action="resume")
    clock = await next_of(st, "clock")
    assert clock["status"] == "active" and clock["time_left_ms"] >= left_when_paused - 100  # the clock stood still

    r = await act(client, token, st.sid, action="extend", seconds=90, reason="late start")
    clock = await next_of(st, "clock")
    assert clock["time_left_ms"] > left_when_paused + 85_000
    assert (await act(client, token, st.sid, action="extend", seconds=90)).status == 422  # a reason is required

    r = await act(client, token, st.sid, action="message", text="Five minutes left in the hall.")
    message = await next_of(st, "message")
    assert message["text"] == "Five minutes left in the hall."

    r = await act(client, token, st.sid, action="flag", reason="copying")
    assert (await r.json())["session"]["flagged"] is True
    await p.until(st.sid, lambda r: r["flagged"])

    r = await act(client, token, st.sid, action="terminate", reason="caught copying")
    finished = await next_of(st, "finished")
    assert finished["status"] == "terminated" and finished["reason"] == "proctor"
    assert await st.closed() == Close.SESSION_FINISHED
    await p.until(st.sid, lambda r: r["status"] == "terminated")
    r = await act(client, token, st.sid, action="pause")
    assert r.status == 409

    trail = await (await client.get(f"/api/proctor/sessions/{st.sid}/audit", headers=bearer(token))).json()
    actions = [(e["action"], e["outcome"]) for e in trail["entries"]]
    assert actions == [("pause", "done"), ("resume", "done"), ("extend", "done"), ("message", "sent"),
                       ("flag", "done"), ("terminate", "done"), ("pause", "refused")]  # fmt: skip
    assert trail["entries"][2]["params"]["seconds"] == 90 and trail["entries"][0]["reason"] == "fire alarm"
    assert all(e["actor"] for e in trail["entries"])
    await p.ws.close()


async def test_a_gap_in_the_feed_is_detected_and_resynced(client: TestClient[Any, Any]) -> None:
    tid, _token, st, p = await watched_exam(client)
    s = services(client)
    await s.redis.incr(s.store.keys.room_seq(tid))  # a message the feed never delivered
    q = st.questions()[0]
    await st.answer(q["id"], q["options"][0]["id"])
    frame = await p.recv()
    assert frame["type"] == "snapshot" and p.snapshots == 2  # the process noticed the gap and resynced
    assert p.rows[st.sid]["answered"] == 1
    await st.answer(st.questions()[1]["id"], st.questions()[1]["options"][0]["id"])
    await p.until(st.sid, lambda r: r["answered"] == 2)  # and carries on from the new sequence number
    await p.ws.send_str(json.dumps({"type": "resync"}))  # a client may ask too
    assert (await p.recv())["type"] == "snapshot"
    await p.ws.close()


async def test_disconnects_show_and_the_one_click_credit(client: TestClient[Any, Any]) -> None:
    _tid, token, st, p = await watched_exam(client)
    assert (await act(client, token, st.sid, action="credit", reason="wifi")).status == 409  # nothing lost yet
    assert st.ws is not None
    await st.ws.close()
    await p.until(st.sid, lambda r: r["online"] is False)
    await asyncio.sleep(1.2)
    back = Student(client, st.token, st.sid)
    before = (await back.connect())["time_left_ms"]
    row = await p.until(st.sid, lambda r: r["online"] is True and r["offline_ms"] >= 1000)
    r = await act(client, token, st.sid, action="credit", reason="wifi dropped")
    body = await r.json()
    assert r.status == 200 and body["session"]["offline_ms"] == 0, body
    clock = await next_of(back, "clock")
    assert clock["time_left_ms"] >= before + row["offline_ms"] - 1500
    await p.ws.close()


async def test_automatic_disconnect_credit(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client, disconnect_credit_cap_s=120)
    st = await student(client, tid)
    first = (await st.connect())["deadline_ms"]
    assert st.ws is not None
    await st.ws.close()
    await asyncio.sleep(1.0)
    back = Student(client, st.token, st.sid)
    state = await back.connect()
    assert state["deadline_ms"] - first >= 900  # the time away was given back
    ledger = await services(client).store.ledger(st.sid)
    assert len(ledger) == 1 and ledger[0][3] == state["deadline_ms"] - first


async def test_room_message_reaches_every_student_of_the_exam(client: TestClient[Any, Any]) -> None:
    tid, other_tid = await own_template(client), await own_template(client)
    token = await proctor_token(client, tid)
    a, b, other = await student(client, tid), await student(client, tid), await student(client, other_tid)
    for x in (a, b, other):
        await x.connect()
    r = await client.post(f"/api/proctor/templates/{tid}/message", json={"text": "Pens down in 5"},
                          headers=bearer(token))  # fmt: skip
    assert r.status == 200
    for x in (a, b):
        assert (await next_of(x, "message"))["text"] == "Pens down in 5"
    with pytest.raises(TimeoutError):
        await other.recv(timeout=0.5)


async def test_roles_and_scopes(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    assigned = await proctor_token(client, tid)
    stranger = await token_for(client, "proctor")
    student_user = await token_for(client, "student")
    st = await student(client, tid)
    await st.connect()
    for token, code in ((student_user, "forbidden"), (stranger, "forbidden"), ("junk", "unauthorized")):
        ws = await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token))
        frame = json.loads((await ws.receive()).data)
        assert frame["code"] == code
        await ws.receive()
        assert ws.close_code == Close.UNAUTHORIZED
    assert (await act(client, student_user, st.sid, action="pause")).status == 403
    assert (await act(client, stranger, st.sid, action="pause")).status == 403
    assert (await act(client, assigned, "f" * 32, action="pause")).status == 404
    assert (await act(client, assigned, st.sid, action="teleport")).status == 422
    # a proctor's token is no session token: it cannot answer
    ws = await client.ws_connect(f"/ws/student?token={assigned}")
    frame = json.loads((await ws.receive()).data)
    assert frame["code"] == "unauthorized"
    # and a student's session token cannot open a feed
    ws = await client.ws_connect(f"/ws/proctor?template={tid}&token={st.token}")
    assert json.loads((await ws.receive()).data)["code"] == "unauthorized"
    r = await client.post(f"/api/proctor/templates/{tid}/message", json={"text": "x"}, headers=bearer(stranger))
    assert r.status == 403
    r = await client.get(f"/api/proctor/sessions/{st.sid}/audit", headers=bearer(stranger))
    assert r.status == 403


async def test_a_session_is_read_by_its_exam_s_proctors_only(client: TestClient[Any, Any]) -> None:
    """Progress and result, live (Redis) and stored (PostgreSQL): the student, an admin and a proctor assigned to
    the exam may read them; a proctor of another exam and another student may not."""
    tid = await own_template(client)
    assigned = await proctor_token(client, tid)
    other_exam = await proctor_token(client, await own_template(client))
    admin = await token_for(client, "admin")
    other_student = await token_for(client, "student")
    st = await student(client, tid)
    await st.connect()

    async def status(path: str, token: str) -> tuple[int, str]:
        r = await client.get(f"/api/sessions/{st.sid}{path}", headers=bearer(token))
        body = await r.json()
        return r.status, body.get("error", body.get("status", ""))

    for token in (st.token, assigned, admin):
        assert await status("", token) == (200, "active")
    for token in (other_exam, other_student):
        assert (await status("", token))[0] == 403
    r = await client.get(f"/api/sessions/{st.sid}", headers=bearer(other_exam))
    assert await r.json() == {"error": "forbidden", "message": "you are not assigned to proctor this exam"}

    st.seq += 1
    await st.send({"type": "submit", "seq": st.seq})
    assert await next_of(st, "finished")
    s = services(client)
    assert await s.flusher.flush_once() >= 1
    await s.redis.delete(s.store.keys.session(st.sid).meta)  # as its TTL would: progress now comes from PostgreSQL
    for token in (st.token, assigned, admin):
        assert (await status("/result", token))[0] == 200
        assert await status("", token) == (200, "submitted")
    for token in (other_exam, other_student):
        assert await status("/result", token) == (403, "forbidden")
        assert await status("", token) == (403, "forbidden")


async def test_the_time_ledger_reaches_the_audit_trail_once(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client, disconnect_credit_cap_s=120)
    token = await proctor_token(client, tid)
    st = await student(client, tid)
    await st.connect()
    assert st.ws is not None
    await st.ws.close()
    await asyncio.sleep(0.5)
    back = Student(client, st.token, st.sid)
    await back.connect()
    back.seq += 1
    await back.send({"type": "submit", "seq": back.seq})
    assert (await next_of(back, "finished"))["status"] == "submitted"
    s = services(client)
    assert await s.flusher.flush_once() == 1
    trail = await (await client.get(f"/api/proctor/sessions/{st.sid}/audit", headers=bearer(token))).json()
    [entry] = [e for e in trail["entries"] if e["action"] == "disconnect"]
    assert entry["actor"] is None and entry["outcome"] == "credited" and entry["params"]["credited_ms"] >= 400
    from storage.flusher import Rows, attempt_rows, write_rows

    stored = await s.store.load(st.sid)
    assert stored is not None
    rows = Rows()
    attempt_rows(stored, await s.catalog.questions(stored.state.paper.question_ids), rows)
    async with s.pool.acquire() as conn, conn.transaction():
        await write_rows(conn, rows)  # the flush replayed
    n = await s.pool.fetchval("SELECT count(*) FROM audit_log WHERE session_id = $1 AND action = 'disconnect'", st.sid)
    assert n == 1


async def test_a_second_proctor_joining_a_busy_room_gets_a_consistent_feed(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    token = await proctor_token(client, tid)
    st = await student(client, tid)
    await st.connect()
    first = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    await first.recv()
    for q in st.questions()[:3]:
        await st.answer(q["id"], q["options"][0]["id"])
    await first.until(st.sid, lambda r: r["answered"] == 3)
    second = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    await second.recv()  # snapshot; every update after it must be exactly the next number (Proctor checks)
    for q in st.questions()[3:5]:
        await st.answer(q["id"], q["options"][0]["id"])
    for p in (first, second):
        await p.until(st.sid, lambda r: r["answered"] == 5)
    assert first.snapshots == second.snapshots == 1
    await first.ws.close()
    await second.ws.close()


async def test_acting_after_the_clock_ran_out_expires_the_session(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    token = await proctor_token(client, tid)
    st = await student(client, tid)
    await st.connect()
    s = services(client)
    meta = s.store.keys.session(st.sid).meta
    await s.redis.hset(meta, mapping={"deadline_ms": 1000, "grace_ms": 0})  # long past, nobody noticed yet
    r = await act(client, token, st.sid, action="extend", seconds=60, reason="too late")
    body = await r.json()
    assert (r.status, body["error"]) == (409, "expired"), body
    stored = await s.store.load(st.sid)
    assert stored is not None and stored.state.status.value == "expired"
    trail = await (await client.get(f"/api/proctor/sessions/{st.sid}/audit", headers=bearer(token))).json()
    assert [(e["action"], e["outcome"]) for e in trail["entries"]] == [("extend", "expired")]


async def test_rooms_nobody_watches_cost_no_publishing(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    st = await student(client, tid)
    await st.connect()
    q = st.questions()[0]
    await st.answer(q["id"], q["options"][0]["id"])
    s = services(client)
    rooms = s.rooms
    seq_key = s.store.keys.room_seq(tid)
    await asyncio.sleep(0.3)  # a few publisher windows
    assert await s.redis.get(seq_key) is None  # nothing was published: nobody watches
    assert tid not in rooms.dirty  # nor kept: a proctor who comes later reads a snapshot (memory stays bounded)
    token = await proctor_token(client, tid)
    p = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    snap = await p.recv()
    assert snap["type"] == "snapshot" and [r["answered"] for r in snap["sessions"] if r["session"] == st.sid] == [1]
    rooms._audience.clear()  # do not wait for the cached "nobody" to age
    await st.answer(st.questions()[1]["id"], st.questions()[1]["options"][0]["id"])
    await p.until(st.sid, lambda r: r["answered"] == 2)
    assert int(await s.redis.get(seq_key)) >= 1
    await p.ws.close()


async def test_bad_input_on_the_feed_gets_an_error_frame(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    token = await proctor_token(client, tid)
    for query in ("", "template=abc", "template=99999999999999999999"):
        ws = await client.ws_connect(f"/ws/proctor?{query}", headers=bearer(token))
        frame = json.loads((await ws.receive()).data)
        assert frame["code"] == "invalid_message"
        await ws.receive()
        assert ws.close_code == Close.PROTOCOL_ERROR
    p = Proctor(await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(token)))
    await p.recv()
    for junk in ("not json", json.dumps([1]), json.dumps({"type": "pause"})):
        await p.ws.send_str(junk)
        frame = await p.recv()
        assert frame["type"] == "error" and frame["code"] == "invalid_message"
    await p.ws.send_str(json.dumps({"type": "ping"}))
    assert (await p.recv())["type"] == "pong"  # still open and serving
    await p.ws.close()


async def test_a_disabled_user_cannot_start_a_session(client: TestClient[Any, Any]) -> None:
    tid = await own_template(client)
    token = await token_for(client, "student")
    uid = services(client).auth.verify_user(token).user_id
    await services(client).pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", uid)
    r = await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(token))
    assert (r.status, (await r.json())["error"]) == (403, "forbidden")
