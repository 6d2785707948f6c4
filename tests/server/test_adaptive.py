"""An adaptive test end to end over the WebSocket (issue #8): calibrated items, an adaptive template, a student
who gets one item at a time, a reconnect in the middle, the test ending itself, the ability in PostgreSQL."""

from __future__ import annotations

import json
import math
import random
import secrets
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.settings import Settings
from server.sit import sit
from sessions import irt
from storage.embedded import free_port
from tests.server.conftest import ClientFactory, Student, bearer, guest, services, token_for

THETA = 0.6  # the simulated student's true ability


async def calibrate_by_level(client: TestClient[Any, Any]) -> int:
    """Item parameters for the demo bank as a calibration would leave them (difficulty from the level), and
    one question marked as an unscored pretest item. Returns the bank id."""
    pool = services(client).pool
    bank_id = int(await pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'"))
    await pool.execute(
        """INSERT INTO item_parameters (question_id, model, a, b, c, n)
           SELECT q.id, '2pl', 0.9 + (q.id % 7) * 0.15,
                  CASE q.difficulty WHEN 'easy' THEN -1.2 WHEN 'medium' THEN 0.0 ELSE 1.2 END + (q.id % 5) * 0.1, 0,
                  500
             FROM questions q JOIN question_bank_members m ON m.question_id = q.id WHERE m.bank_id = $1""",
        bank_id,
    )
    await pool.execute(
        """UPDATE questions SET pretest = true WHERE id = (SELECT max(question_id) FROM question_bank_members
            WHERE bank_id = $1)""",
        bank_id,
    )
    services(client).catalog.invalidate()
    return bank_id


def template_body(bank_id: int) -> dict[str, Any]:
    return {
        "slug": f"cat-{secrets.token_hex(3)}",
        "name": "Adaptive biology",
        "bank_id": bank_id,
        "config": {"count": 20, "duration_s": 900, "adaptive": {"target_se": 0.45, "min_items": 4,
                   "pretest_positions": [3]}},
    }  # fmt: skip


async def own_client(aiohttp_client: ClientFactory, settings: Settings, own_database_url: str) -> TestClient[Any, Any]:
    # item parameters change what every adaptive test in the database does: this test has a database of its own
    port = free_port()  # known before the app, so that the ws_url it hands out is its own
    app = create_app(replace(settings, database_url=own_database_url, port=port))
    return await aiohttp_client(app, server_kwargs={"port": port})


async def test_an_adaptive_session_over_the_websocket(
    aiohttp_client: ClientFactory, settings: Settings, own_database_url: str
) -> None:
    client = await own_client(aiohttp_client, settings, own_database_url)
    s = services(client)
    admin = await token_for(client, "admin")
    bank_id = int(await s.pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'"))

    # without calibrated items there is no adaptive test to make
    r = await client.post("/api/templates", json=template_body(bank_id), headers=bearer(admin))
    assert r.status == 422 and (await r.json())["error"] == "template_unsatisfiable"

    await calibrate_by_level(client)
    r = await client.post("/api/templates", json=template_body(bank_id), headers=bearer(admin))
    assert r.status == 201, await r.text()
    tid = (await r.json())["id"]

    r = await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(await guest(client)))
    started = await r.json()
    assert r.status == 201 and started["adaptive"] is True and started["questions"] == 20
    student = Student(client, started["token"], started["session_id"])
    state = await student.connect()
    assert len(state["questions"]) == 1 and state["adaptive"]["current"] == state["questions"][0]["id"]
    keys = {q["id"]: q["correct"] for q in await s.pool.fetch(
        "SELECT q.id, q.correct FROM questions q JOIN question_bank_members m ON m.question_id = q.id"
        " WHERE m.bank_id = $1", bank_id)}  # fmt: skip
    params = {r["question_id"]: (r["a"], r["b"]) for r in await s.pool.fetch("SELECT * FROM item_parameters")}
    pretest = await s.pool.fetchval("SELECT id FROM questions WHERE pretest")

    current = state["questions"][0]
    # bad input: a question that is not the current one, a skip
    other = next(q for q in keys if q != current["id"])
    assert (await student.answer(other, "a"))["code"] == "unknown_question"
    student.seq -= 1  # a refused message does not use up its sequence number
    assert (await student.answer(current["id"], None))["code"] == "invalid_choice"
    student.seq -= 1

    rng = random.Random(7)
    given: list[int] = []
    finished: dict[str, Any] = {}
    while not finished:
        qid = current["id"]
        a, b = params[qid]
        right = rng.random() < 1 / (1 + math.exp(-a * (THETA - b)))
        choice = keys[qid] if right else next(o["id"] for o in current["options"] if o["id"] != keys[qid])
        ack = await student.answer(qid, choice)
        assert ack == {"type": "ack", "seq": student.seq}, ack
        given.append(qid)
        nxt = await student.recv()
        if nxt["type"] == "finished":
            finished = nxt
            break
        assert nxt["type"] == "item" and nxt["number"] == len(given) + 1, nxt
        assert set(nxt["question"]) == {"id", "topic", "text", "options"}  # text and options only: no key
        current = nxt["question"]
        if len(given) == 3:
            # the earlier items are closed; a reconnect shows the items given and the current one
            assert (await student.answer(given[0], keys[given[0]]))["code"] == "not_current"
            student.seq -= 1
            await student.ws.close()  # type: ignore[union-attr]
            state = await student.connect()
            assert [q["id"] for q in state["questions"]] == [*given, current["id"]]
            assert state["adaptive"]["current"] == current["id"] and len(state["answers"]) == 3
        assert len(given) < 20

    assert finished["reason"] == "completed" and finished["status"] == "submitted"
    ability = finished["ability"]
    assert pretest in given and given.index(pretest) == 2  # seeded at position 3, unscored
    assert ability["items"] == len(given) - 1 and ability["pretest_items"] == 1
    assert ability["se"] <= 0.45 or len(given) == 20
    assert ability["items"] >= 4

    # the posterior kept in Redis is the one the answers give
    meta = await s.redis.hgetall(s.store.keys.session(student.sid).meta)  # type: ignore[attr-defined]
    kept = irt.load(json.loads(meta["adaptive"]))
    bank = await s.catalog.adaptive_bank(bank_id)
    assert bank is not None
    expected = irt.posterior_of(bank, kept.items, kept.responses)
    assert np.allclose(kept.posterior, expected) and list(kept.items) == [q for q in given if q != pretest]
    assert math.isclose(irt.estimate(kept).theta, ability["theta"], abs_tol=1e-3)

    # the result before the flush (from Redis) and after it (from PostgreSQL) say the same
    r = await client.get(f"/api/sessions/{student.sid}/result", headers=bearer(student.token))
    early = await r.json()
    assert r.status == 200 and not early["stored"] and early["ability"] == ability
    assert [q["id"] for q in early["questions"] if q.get("pretest")] == [pretest]

    # flushed to PostgreSQL exactly once, with every item and the ability
    assert await s.flusher.flush_once() == 1
    assert await s.flusher.flush_once() == 0
    row = await s.pool.fetchrow("SELECT * FROM test_attempts WHERE session_id = $1", student.sid)
    assert row["reason"] == "completed" and math.isclose(row["ability"], ability["theta"], abs_tol=1e-3)
    assert row["correct"] + row["wrong"] + row["skipped"] == len(given) - 1  # the pretest item is not scored
    assert row["scaled_score"] == ability["scaled"]
    responses = await s.pool.fetch(
        "SELECT question_id FROM responses WHERE session_id = $1 ORDER BY position", student.sid
    )
    assert [r["question_id"] for r in responses] == given
    r = await client.get(f"/api/sessions/{student.sid}/result", headers=bearer(student.token))
    result = await r.json()
    assert r.status == 200 and result["stored"] and [q["id"] for q in result["questions"]] == given
    assert result["ability"] == {k: ability[k] for k in ("theta", "se", "scaled", "items", "pretest_items")}
    assert [{k: q[k] for k in ("id", "marks", "choice")} for q in result["questions"]] == [
        {k: q[k] for k in ("id", "marks", "choice")} for q in early["questions"]]  # fmt: skip
    review = {q["id"]: q for q in result["questions"]}
    assert review[pretest]["pretest"] is True and review[pretest]["marks"] == 0
    assert sum(q["marks"] for q in result["questions"]) == result["score"]  # the pretest item is not scored
    assert not any(q.get("pretest") for q in result["questions"] if q["id"] != pretest)


async def test_adaptive_config_is_validated(
    aiohttp_client: ClientFactory, settings: Settings, own_database_url: str
) -> None:
    client = await own_client(aiohttp_client, settings, own_database_url)
    admin = await token_for(client, "admin")
    bank_id = await calibrate_by_level(client)
    for bad in ({"target_se": 0}, {"target_se": 1.5}, {"min_items": 0}, {"blueprint": {"cells": -1}},
                {"pretest_positions": [0]}, {"unknown": 1}):  # fmt: skip
        body = template_body(bank_id)
        body["config"]["adaptive"] = bad
        r = await client.post("/api/templates", json=body, headers=bearer(admin))
        assert r.status == 422, (bad, await r.text())
    body = template_body(bank_id)
    body["config"]["adaptive"] = {"min_items": 30}  # more than count (20): the test is at most 20 long
    r = await client.post("/api/templates", json=body, headers=bearer(admin))
    assert r.status == 201
    tpl = await services(client).catalog.template((await r.json())["id"])
    assert tpl is not None and tpl[0].adaptive is not None and tpl[0].adaptive.min_items == 20


async def test_examhub_sit_takes_an_adaptive_test(
    aiohttp_client: ClientFactory, settings: Settings, own_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await own_client(aiohttp_client, settings, own_database_url)
    bank_id = await calibrate_by_level(client)
    body = template_body(bank_id)
    r = await client.post("/api/templates", json=body, headers=bearer(await token_for(client, "admin")))
    assert r.status == 201
    url = str(client.make_url("")).rstrip("/")
    assert await sit(url, body["slug"], "Bot", auto=True, binary=False) == 0
    out = capsys.readouterr().out
    assert "up to 20 questions" in out and "Submitted (completed)" in out and "Ability " in out
    assert await services(client).pool.fetchval("SELECT count(*) FROM test_sessions") == 1
