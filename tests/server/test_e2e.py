"""A student sits an exam through a real WebSocket, and every answer and event lands in PostgreSQL once."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.closecodes import Close
from server.hub import StudentConnection, WebSocket
from storage import pg
from storage.errors import StorageUnavailable
from storage.session_store import Opened, Outcome
from tests.conftest import template_id
from tests.server.conftest import Student, services, start, student


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_sit_drop_resume_submit_then_stored_exactly_once(client: TestClient[Any, Any], binary: bool) -> None:
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    st = await student(client, tid, binary)
    state = await st.connect()
    assert state["status"] == "active" and len(state["questions"]) == 10
    assert 590_000 < state["time_left_ms"] <= 600_000
    assert all("correct" not in q and "explanation" not in q for q in state["questions"])
    qs = st.questions()
    chosen: dict[int, str | None] = {}
    for q in qs[:4]:
        choice = q["options"][1]["id"]
        assert await st.answer(q["id"], choice, time_ms=1500) == {"type": "ack", "seq": st.seq}
        chosen[q["id"]] = choice
    hidden = await st.event("tab_hidden")
    assert hidden[0] == {"type": "ack", "seq": st.seq}
    assert hidden[1]["type"] == "warning" and hidden[1]["level"] == "warn"

    # the connection drops mid-exam (no close handshake from the client's side matters to the server)
    assert st.ws is not None
    await st.ws.close()
    resumed = Student(client, st.token, st.sid, binary)
    state = await resumed.connect()
    assert state["epoch"] == 2 and state["last_seq"] == 5
    assert {int(q): a["choice"] for q, a in state["answers"].items()} == chosen
    assert [q["id"] for q in state["questions"]] == [q["id"] for q in qs]  # the same paper, same order
    # an answer re-sent with an old sequence number is acknowledged again and changes nothing
    assert await resumed.answer(qs[0]["id"], qs[0]["options"][3]["id"], seq=1) == {
        "type": "ack",
        "seq": 1,
        "duplicate": True,
    }
    # carry on: change one answer, clear another, answer a new one, mark one for review
    await resumed.answer(qs[0]["id"], qs[0]["options"][2]["id"])
    chosen[qs[0]["id"]] = qs[0]["options"][2]["id"]
    await resumed.answer(qs[1]["id"], None)
    chosen[qs[1]["id"]] = None
    await resumed.answer(qs[5]["id"], qs[5]["options"][0]["id"], marked=True)
    chosen[qs[5]["id"]] = qs[5]["options"][0]["id"]
    resumed.seq += 1
    await resumed.send({"type": "submit", "seq": resumed.seq})
    assert await resumed.recv() == {"type": "ack", "seq": resumed.seq}
    finished = await resumed.recv()
    assert finished["type"] == "finished" and finished["status"] == "submitted" and finished["reason"] == "student"
    assert await resumed.closed() == Close.SESSION_FINISHED

    assert await s.flusher.flush_once() == 1
    assert await s.flusher.flush_once() == 0
    rows = await pg.fetch_responses(s.pool, st.sid)
    assert len(rows) == 10
    assert {r["question_id"]: r["choice"] for r in rows if r["seq"] is not None} == chosen
    events = await s.pool.fetch("SELECT kind FROM anticheat_events WHERE session_id = $1", st.sid)
    assert [e["kind"] for e in events] == ["tab_hidden"]
    attempt = await s.pool.fetchrow("SELECT * FROM test_attempts WHERE session_id = $1", st.sid)
    assert attempt["score"] == finished["result"]["score"] and attempt["violations"] == 1

    r = await client.get(f"/api/sessions/{st.sid}/result", headers={"Authorization": f"Bearer {st.token}"})
    body = await r.json()
    assert r.status == 200 and body["stored"] is True and body["score"] == attempt["score"]
    assert all("correct" in q and "explanation" in q for q in body["questions"])

    # a new connection to a finished session gets the final state and is closed as finished
    late = Student(client, st.token, st.sid, binary)
    state = await late.connect()
    assert state["status"] == "submitted" and state["result"]["score"] == attempt["score"]
    assert await late.closed() == Close.SESSION_FINISHED


async def test_second_connection_fences_the_first(client: TestClient[Any, Any]) -> None:
    s = services(client)
    first = await student(client, await template_id(s.pool, "biology-quick-10"))
    await first.connect()
    q = first.questions()[0]
    await first.answer(q["id"], q["options"][0]["id"])
    second = Student(client, first.token, first.sid)
    await second.connect()
    superseded = await first.recv()
    assert superseded["type"] == "error" and superseded["code"] == "superseded"
    assert await first.closed() == Close.SUPERSEDED
    # even a write that sneaks through with the old epoch is refused by Redis itself
    from sessions.machine import SaveAnswer, SavedAnswer
    from storage.session_store import Outcome

    late = await s.store.apply(first.sid, 1, SaveAnswer(9, q["id"], SavedAnswer("b", False, 0, 9, 0)))
    assert late.outcome is Outcome.FENCED
    assert (await second.answer(q["id"], q["options"][1]["id"]))["type"] == "ack"


async def test_finished_elsewhere_refuses_the_answer_and_ends(client: TestClient[Any, Any]) -> None:
    from sessions.machine import Finish, FinishReason

    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    await st.connect()
    await s.store.apply(st.sid, 1, Finish(None, FinishReason.STUDENT))  # e.g. submitted by another path
    q = st.questions()[0]
    err = await st.answer(q["id"], q["options"][0]["id"])
    assert err["type"] == "error" and err["code"] == "not_active" and err["seq"] == st.seq
    assert (await st.recv())["type"] == "finished"
    assert await st.closed() == Close.SESSION_FINISHED
    stored = await s.store.load(st.sid)
    assert stored is not None and not stored.state.answers


async def _short_template(pool: pg.Pool, duration_s: int) -> int:
    bank = await pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    return int(
        await pool.fetchval(
            """INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, 'short', $2, $3)
               RETURNING id""",
            f"short-{id(pool)}-{duration_s}-{__import__('secrets').token_hex(3)}",
            bank,
            {"count": 3, "duration_s": duration_s, "grace_s": 0},
        )
    )


async def test_the_server_clock_ends_a_connected_exam(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await _short_template(s.pool, 1))
    state = await st.connect()
    assert state["time_left_ms"] <= 1000
    finished = await st.recv(timeout=5)
    assert finished["type"] == "finished" and finished["status"] == "expired" and finished["reason"] == "timeout"
    assert await st.closed() == Close.SESSION_FINISHED


async def test_the_sweeper_expires_an_abandoned_exam_once(client: TestClient[Any, Any]) -> None:
    import asyncio

    s = services(client)
    st = await student(client, await _short_template(s.pool, 1))
    await st.connect()
    q = st.questions()[0]
    await st.answer(q["id"], q["options"][0]["id"])
    assert st.ws is not None
    await st.ws.close()
    await asyncio.sleep(1.2)
    assert await s.sweeper.sweep_once() + await s.sweeper.sweep_once() == 1
    assert await s.flusher.flush_once() == 1
    row = await s.pool.fetchrow("SELECT status, reason FROM test_attempts WHERE session_id = $1", st.sid)
    assert (row["status"], row["reason"]) == ("expired", "timeout")
    assert (
        await s.pool.fetchval("SELECT count(*) FROM responses WHERE session_id = $1 AND choice IS NOT NULL", st.sid)
        == 1
    )


async def test_anticheat_policy_autosubmits(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    await st.connect()
    levels = []
    for _ in range(6):  # default policy: warn from 1, flag at 3, submit at 6
        frames = await st.event("fullscreen_exit")
        levels += [f["level"] for f in frames if f["type"] == "warning"]
    assert levels == ["warn", "warn", "flag", "flag", "flag", "submit"]
    finished = await st.recv()
    assert finished["type"] == "finished" and finished["reason"] == "anticheat"


async def test_start_returns_a_working_ws_url(client: TestClient[Any, Any]) -> None:
    s = services(client)
    started = await start(client, await template_id(s.pool, "biology-quick-10"))
    assert started["ws_url"].startswith("ws://") and "/ws/student?token=" in started["ws_url"]
    assert started["questions"] == 10 and started["duration_s"] == 600


async def sit_one_answer_exam(client: TestClient[Any, Any], tid: int) -> Student:
    """A student answers one question and submits; the hub ends the exam with its own close (4000)."""
    st = await student(client, tid)
    await st.connect()
    q = st.questions()[0]
    await st.answer(q["id"], q["options"][0]["id"])
    st.seq += 1
    await st.send({"type": "submit", "seq": st.seq})
    assert await st.closed() == Close.SESSION_FINISHED
    return st


async def test_finished_exams_leave_nothing_alive(client: TestClient[Any, Any]) -> None:
    """Every exam ends with the hub's close (4000). Once its handler has returned, nothing may keep the connection
    (its response, request, transport, reader) alive: aiohttp re-armed the heartbeat on the student's close reply,
    and the loop's timer held each one for a heartbeat and a half (server/hub.py, WebSocket)."""
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    opened: list[weakref.ref[Any]] = []
    register = s.hub.register

    def track(conn: StudentConnection) -> None:
        opened.extend((weakref.ref(conn), weakref.ref(conn.ws)))
        register(conn)

    s.hub.register = track  # type: ignore[method-assign]
    for _ in range(5):
        await sit_one_answer_exam(client, tid)
    assert len(opened) == 10

    def alive() -> int:
        gc.collect()
        return sum(ref() is not None for ref in opened)

    for _ in range(40):  # the handlers' last steps; the test settings' heartbeat (5 s) is far off
        if alive() == 0:
            break
        await asyncio.sleep(0.05)
    assert alive() == 0


async def test_closed_connections_need_no_cyclic_collector(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """`examhub serve` runs the cyclic collector on old objects almost never (server/cli.py, _tune_gc), so a closed
    connection must be freed by reference counting alone. aiohttp's protocol kept the heartbeat callback, a bound
    method of the response, after the connection was lost: protocol -> response -> request -> protocol held every
    finished exam, and every reconnect refused while Redis was down (4503), until a full collection (server/hub.py,
    WebSocket). gc.get_objects() lists unreachable objects too: none may be left."""
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    open_session = s.store.open

    async def unavailable(sid: str, user_id: str, ip: str = "") -> Opened | Outcome:
        raise StorageUnavailable("redis: down")

    def responses() -> int:
        return sum(isinstance(o, WebSocket) for o in gc.get_objects())

    # pytest keeps every log record, and the hub's warning about Redis holds the exception: its traceback, frames
    # and connection
    caplog.set_level(logging.ERROR, logger="server.hub")
    gc.collect()
    before = responses()
    gc.disable()
    try:
        for _ in range(3):
            st = await sit_one_answer_exam(client, tid)
            s.store.open = unavailable  # type: ignore[method-assign]
            refused = Student(client, st.token, st.sid)
            await refused.connect(expect_state=False)
            assert (await refused.recv())["code"] == "unavailable"
            assert await refused.closed() == Close.STORAGE_UNAVAILABLE
            s.store.open = open_session  # type: ignore[method-assign]
        for _ in range(40):  # the handlers' last steps
            if responses() == before:
                break
            await asyncio.sleep(0.05)
        assert responses() == before
    finally:
        gc.enable()
        s.store.open = open_session  # type: ignore[method-assign]


async def test_a_clean_close_then_an_immediate_reconnect_is_not_a_second_device(client: TestClient[Any, Any]) -> None:
    """The hub answers a student's close only once it has recorded them offline: a student who closes and opens
    again at once (a reload, a network switch) is never counted as a second device. A takeover while the first
    connection still stands is one (test_second_connection_fences_the_first)."""
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    leave = s.store.leave

    async def slow_leave(sid: str, epoch: int) -> None:  # as from another process, or through a busy Redis
        await asyncio.sleep(0.05)
        await leave(sid, epoch)

    s.store.leave = slow_leave  # type: ignore[method-assign]
    try:
        for attempt in range(5):  # each close races the next open
            await st.connect()
            assert st.ws is not None
            assert await st.ws.close() and st.ws.close_code == 1000, attempt
    finally:
        s.store.leave = leave  # type: ignore[method-assign]
    stored = await s.store.load(st.sid)
    assert stored is not None
    assert [c.kind.value for c in stored.state.cheats] == []  # no second_device
    assert stored.state.status.value == "active" and not stored.presence.online and stored.epoch == 5
