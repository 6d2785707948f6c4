"""Analytics and progress over HTTP: real attempts through the WebSocket, hand-checked statistics, roles, errors,
and the `examhub report / cleanup / leaderboard / progress` commands."""

from __future__ import annotations

import argparse
import math
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.commands import analytics as commands
from server.settings import Settings
from storage import analytics
from tests.conftest import template_id
from tests.server.conftest import Student, bearer, guest, services, start, token_for
from tests.server.test_proctoring import proctor_token
from tests.storage.test_analytics import insert_attempt, new_template, new_user, questions


async def error(resp: Any, status: int, code: str | None = None) -> None:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["message"]
    if code is not None:
        assert body["error"] == code, body


async def sit(client: TestClient[Any, Any], tid: int, user_token: str, answers: int) -> str:
    """Sit a whole exam through the WebSocket, answering the first `answers` questions with option 0."""
    started = await start(client, tid, user_token)
    st = Student(client, started["token"], started["session_id"])
    await st.connect()
    for q in st.questions()[:answers]:
        ack = await st.answer(q["id"], q["options"][0]["id"], time_ms=2000)
        assert ack["type"] == "ack"
    st.seq += 1
    await st.send({"type": "submit", "seq": st.seq})
    assert (await st.recv())["type"] == "ack"
    assert (await st.recv())["type"] == "finished"
    return st.sid


async def store_like_the_flusher(client: TestClient[Any, Any], sids: list[str]) -> None:
    """Flush: the flusher adds progress in its transaction and records leaderboard scores after the commit,
    so offering the same attempts again adds nothing."""
    s = services(client)
    assert await s.flusher.flush_once() >= len(sids)
    async with s.pool.acquire() as conn, conn.transaction():
        assert await analytics.apply_progress(conn, sids) == 0
    counted = await s.pool.fetchval("SELECT count(*) FROM attempt_progress WHERE session_id = ANY($1)", sids)
    assert counted == len(sids)


async def test_a_real_attempt_feeds_performance_history_rank_and_leaderboard(client: TestClient[Any, Any]) -> None:
    s = services(client)
    tid = await new_template(s.pool)  # a 4-question template of our own: its boards hold only this test's users
    asha, ravi = await guest(client, "Asha"), await guest(client, "Ravi")
    mine = await sit(client, tid, asha, answers=3)
    theirs = await sit(client, tid, ravi, answers=4)
    await store_like_the_flusher(client, [mine, theirs])
    attempt = await s.pool.fetchrow("SELECT * FROM test_attempts WHERE session_id = $1", mine)

    r = await client.get("/api/users/me/performance?min_answered=1", headers=bearer(asha))
    assert r.status == 200, await r.text()
    perf = await r.json()
    assert (perf["attempts"], perf["answered"], perf["skipped"]) == (1, 3, 1)
    assert perf["correct"] == attempt["correct"] and perf["wrong"] == attempt["wrong"]
    assert perf["accuracy"] == pytest.approx(attempt["correct"] / 3)
    assert sum(t["attempted"] for t in perf["topics"]) == 3 and sum(t["skipped"] for t in perf["topics"]) == 1
    assert perf["avg_time_per_question_ms"] == pytest.approx(3 * 2000 / 4)
    assert perf["trend"]["direction"] == "unknown" and len(perf["trend"]["attempts"]) == 1
    assert perf["trend"]["attempts"][0]["session_id"] == mine
    kinds = {x["kind"] for x in perf["recommendations"]}
    assert "try_new_topic" in kinds and "difficulty" in kinds  # 4 questions cannot cover 12 topics

    r = await client.get("/api/users/me/attempts", headers=bearer(asha))
    history = await r.json()
    assert history["total"] == 1 and history["attempts"][0]["session_id"] == mine
    row = history["attempts"][0]
    assert (row["status"], row["stored"], row["score"], row["template_id"]) == (
        "submitted",
        True,
        attempt["score"],
        tid,
    )

    r = await client.get(f"/api/sessions/{mine}/rank", headers=bearer(asha))
    rank = await r.json()
    assert r.status == 200 and rank["candidates"] == 2 and rank["score"] == attempt["score"]
    other = await s.pool.fetchval("SELECT score FROM test_attempts WHERE session_id = $1", theirs)
    assert rank["rank"] == (2 if other > attempt["score"] else 1)
    assert rank["percentile"] == (50.0 if other > attempt["score"] else 100.0)
    await error(await client.get(f"/api/sessions/{theirs}/rank", headers=bearer(asha)), 403, "forbidden")
    unassigned = await token_for(client, "proctor")  # a proctor of other exams
    await error(await client.get(f"/api/sessions/{theirs}/rank", headers=bearer(unassigned)), 403, "forbidden")
    proctor = await proctor_token(client, tid)  # this exam's proctor
    assert (await client.get(f"/api/sessions/{theirs}/rank", headers=bearer(proctor))).status == 200

    r = await client.get(f"/api/templates/{tid}/leaderboard?period=daily", headers=bearer(asha))
    board = await r.json()
    assert r.status == 200 and board["period"] == "daily"
    assert board["board"] == datetime.now(UTC).date().isoformat()
    assert sorted(e["display_name"] for e in board["entries"]) == ["Asha", "Ravi"]
    assert board["me"]["display_name"] == "Asha" and board["me"]["score"] == attempt["score"]
    assert [e["score"] for e in board["entries"]] == sorted([other, attempt["score"]], reverse=True)
    assert sum(e["is_me"] for e in board["entries"]) == 1


async def test_leaderboard_is_rebuilt_when_redis_lost_it(client: TestClient[Any, Any]) -> None:
    s = services(client)
    tid = await new_template(s.pool)
    now = datetime.now(UTC)
    users = [await new_user(s.pool, n) for n in ("A", "B", "C")]
    for u, score in zip(users, (10, 30, 30), strict=True):
        await insert_attempt(s.pool, u, tid, score, now - timedelta(days=20))
    token = await guest(client)
    r = await client.get(f"/api/templates/{tid}/leaderboard?limit=2", headers=bearer(token))
    body = await r.json()
    assert [(e["rank"], e["score"]) for e in body["entries"]] == [(1, 30), (1, 30)] and body["me"] is None
    r = await client.get(f"/api/templates/{tid}/leaderboard?period=weekly", headers=bearer(token))
    assert (await r.json())["entries"] == []  # nothing this week
    # Redis forgets everything: the next read rebuilds from PostgreSQL
    keys = [k async for k in s.redis.scan_iter(match=f"{s.settings.redis_prefix}:lb:*")]
    await s.redis.delete(*keys)
    r = await client.get(f"/api/templates/{tid}/leaderboard", headers=bearer(token))
    assert [e["display_name"] for e in (await r.json())["entries"]][2] == "A"


async def test_item_analysis_and_reliability_match_the_hand_computed_fixture(client: TestClient[Any, Any]) -> None:
    """The 5 x 4 matrix of tests/sessions/test_stats.py, stored as real rows and read back over HTTP."""
    s = services(client)
    tid = await new_template(s.pool)
    qs = await questions(s.pool, 4)
    matrix = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    base = datetime(2006, 1, 1, tzinfo=UTC)
    for i, row in enumerate(matrix):
        answers = []
        for q, v in zip(qs, row, strict=True):
            wrong = "a" if q["correct"] != "a" else "b"
            answers.append((q["id"], q["correct"] if v else wrong, bool(v), 1000))
        await insert_attempt(s.pool, await new_user(s.pool), tid, 4 * sum(row), base + timedelta(minutes=i), answers)
    staff = await token_for(client, "proctor")
    r = await client.get(f"/api/templates/{tid}/item-analysis?min_n=1", headers=bearer(staff))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["attempts"], body["items"]) == (5, 4)
    got = {x["question_id"]: x for x in body["questions"]}
    facility = [got[q["id"]]["facility"] for q in qs]
    discrimination = [got[q["id"]]["discrimination"] for q in qs]
    assert facility == pytest.approx([0.8, 0.6, 0.6, 0.4])
    assert discrimination == pytest.approx([0.375, math.sqrt(21) / 14, math.sqrt(21) / 14, -math.sqrt(5) / 6])
    last = got[qs[3]["id"]]
    assert "negative_discrimination" in last["flags"] and last["key"] == qs[3]["correct"]
    assert sum(o["count"] for o in last["options"]) == 5 and [o["option"] for o in last["options"]] == list("abcd")
    assert body["flagged"] >= 1 and "negative_discrimination" in body["flag_rules"]
    r = await client.get(f"/api/templates/{tid}/item-analysis?flagged_only=true&min_n=1", headers=bearer(staff))
    assert {x["question_id"] for x in (await r.json())["questions"]} <= set(got)
    r = await client.get(f"/api/templates/{tid}/item-analysis", headers=bearer(staff))  # min_n 10: no flags
    assert (await r.json())["flagged"] == 0

    r = await client.get(f"/api/templates/{tid}/reliability", headers=bearer(staff))
    rel = await r.json()
    assert rel["kr20"] == pytest.approx(8 / 39) and rel["kr21"] == pytest.approx(4 / 39)
    assert (rel["attempts"], rel["common_items"], rel["paper_length"]) == (5, 4, 4)
    assert (rel["common_mean"], rel["common_variance"]) == (pytest.approx(2.4), pytest.approx(1.04))

    r = await client.get(f"/api/analytics/topics?template_id={tid}", headers=bearer(staff))
    topics = {t["topic"]: t for t in (await r.json())["topics"]}
    assert {topics[q["topic"]]["accuracy"] for q in qs} == {0.8, 0.6, 0.4}
    assert all(topics[q["topic"]]["attempts"] == 5 and topics[q["topic"]]["avg_time_ms"] == 1000 for q in qs)


async def test_seeded_template_with_random_papers_has_no_common_items(client: TestClient[Any, Any]) -> None:
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    staff = await token_for(client, "admin")
    tokens = [await guest(client) for _ in range(2)]
    sids = [await sit(client, tid, t, answers=10) for t in tokens]
    await store_like_the_flusher(client, sids)
    r = await client.get(f"/api/templates/{tid}/reliability", headers=bearer(staff))
    rel = await r.json()
    assert r.status == 200 and rel["paper_length"] == 10 and rel["attempts"] >= 2
    assert rel["common_items"] < 10 and "common to every" in rel["method"]


async def test_performance_of_others_and_attempt_paging(client: TestClient[Any, Any]) -> None:
    s = services(client)
    tid = await new_template(s.pool)
    student = await token_for(client, "student")
    uid = s.auth.verify_user(student).user_id
    base = datetime(2007, 5, 1, tzinfo=UTC)
    for i, score in enumerate((10, 20, 30)):
        await insert_attempt(s.pool, uid, tid, score, base + timedelta(days=i))
    own = await client.get(f"/api/users/{uid}/performance", headers=bearer(student))
    assert own.status == 200
    perf = await own.json()
    # percents 25 50 75 over three attempts: slope +25 per attempt
    assert perf["trend"]["slope"] == pytest.approx(25.0) and perf["trend"]["direction"] == "improving"
    assert [p["percent"] for p in perf["trend"]["attempts"]] == [25.0, 50.0, 75.0]
    other = await token_for(client, "student")
    await error(await client.get(f"/api/users/{uid}/performance", headers=bearer(other)), 403, "forbidden")
    await error(await client.get(f"/api/users/{uid}/attempts", headers=bearer(other)), 403, "forbidden")
    staff = await token_for(client, "proctor")
    assert (await client.get(f"/api/users/{uid}/performance", headers=bearer(staff))).status == 200
    await error(
        await client.get(f"/api/users/{uuid.uuid4()}/performance", headers=bearer(staff)), 404, "user_not_found"
    )
    await error(await client.get(f"/api/users/{uuid.uuid4()}/attempts", headers=bearer(staff)), 404, "user_not_found")
    await error(await client.get(f"/api/users/{'-' * 36}/performance", headers=bearer(staff)), 404, "user_not_found")
    r = await client.get(f"/api/users/{uid}/attempts?limit=1&offset=1", headers=bearer(staff))
    page = await r.json()
    assert page["total"] == 3 and len(page["attempts"]) == 1 and page["attempts"][0]["score"] == 20


async def test_rank_of_a_session_not_yet_stored(client: TestClient[Any, Any]) -> None:
    s = services(client)
    token = await guest(client)
    started = await start(client, await template_id(s.pool, "biology-quick-10"), token)
    await error(await client.get(f"/api/sessions/{started['session_id']}/rank", headers=bearer(token)), 409,
                "not_stored")  # fmt: skip
    await error(await client.get(f"/api/sessions/{'0' * 32}/rank", headers=bearer(token)), 404, "session_not_found")
    await error(await client.get("/api/sessions/not-a-session/rank", headers=bearer(token)), 404, "session_not_found")
    await error(await client.get(f"/api/sessions/{started['session_id']}/rank", headers=bearer(started["token"])),
                401, "unauthorized")  # a session token is not a user token  # fmt: skip


async def test_global_analytics_for_any_user(client: TestClient[Any, Any]) -> None:
    token = await guest(client)
    await error(await client.get("/api/analytics/global"), 401, "unauthorized")
    r = await client.get("/api/analytics/global", headers=bearer(token))
    body = await r.json()
    assert r.status == 200 and body["questions"] >= 240 and body["users"] >= 1 and body["sessions_live"] >= 0


@pytest.mark.parametrize(
    "path",
    ["/api/analytics/topics", "/api/templates/1/item-analysis", "/api/templates/1/reliability", "/api/reports"],
)
async def test_staff_only_endpoints(client: TestClient[Any, Any], path: str) -> None:
    await error(await client.get(path), 401, "unauthorized")
    await error(await client.get(path, headers=bearer(await guest(client))), 403, "forbidden")
    assert (await client.get(path, headers=bearer(await token_for(client, "proctor")))).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/me/performance",
        "/api/users/me/attempts",
        "/api/templates/1/leaderboard",
        f"/api/sessions/{'a' * 32}/rank",
        f"/api/users/{uuid.uuid4()}/performance",
    ],
)
async def test_user_endpoints_need_a_token(client: TestClient[Any, Any], path: str) -> None:
    await error(await client.get(path), 401, "unauthorized")
    await error(await client.get(path, headers=bearer("x.y.z")), 401, "unauthorized")


@pytest.mark.parametrize(
    "path",
    [
        "/api/templates/999999999/item-analysis",
        "/api/templates/999999999/reliability",
        "/api/templates/999999999/leaderboard",
        "/api/templates/99999999999999999999/leaderboard",
    ],
)
async def test_unknown_template(client: TestClient[Any, Any], path: str) -> None:
    await error(await client.get(path, headers=bearer(await token_for(client, "admin"))), 404)


@pytest.mark.parametrize(
    "query",
    [
        "/api/templates/1/leaderboard?period=monthly",
        "/api/templates/1/leaderboard?limit=0",
        "/api/templates/1/leaderboard?limit=101",
        "/api/templates/1/leaderboard?limit=ten",
        "/api/templates/1/leaderboard?sort=asc",
        "/api/templates/1/item-analysis?attempts=0",
        "/api/templates/1/item-analysis?flagged_only=perhaps",
        "/api/templates/1/reliability?attempts=1",
        "/api/analytics/topics?days=0",
        "/api/analytics/topics?template_id=-1",
        "/api/reports?limit=500",
        "/api/reports?kind=monthly",
        "/api/reports?user_id=not-a-uuid",
        "/api/users/me/performance?min_answered=0",
        "/api/users/me/performance?last=1",
        "/api/users/me/attempts?offset=-1",
        "/api/users/me/attempts?limit=1000",
    ],
)
async def test_bad_query_parameters(client: TestClient[Any, Any], query: str) -> None:
    await error(await client.get(query, headers=bearer(await token_for(client, "admin"))), 422, "invalid_query")


async def test_openapi_describes_the_endpoints(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    for path in ("/api/users/me/performance", "/api/templates/{id}/item-analysis", "/api/sessions/{sid}/rank",
                 "/api/templates/{id}/leaderboard", "/api/reports", "/api/analytics/global"):  # fmt: skip
        assert "get" in spec["paths"][path] and spec["paths"][path]["get"]["summary"]
    assert "ItemAnalysisOut" in spec["components"]["schemas"]


# ---- commands --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="examhub")
    commands.register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize(
    "argv",
    [
        ["cleanup"],
        ["cleanup", "--older-than-days", "0"],
        ["cleanup", "--older-than-days", "x"],
        ["report", "--period", "monthly"],
        ["report", "--date", "2024-13-01"],
        ["leaderboard", "rebuild", "--template", "0"],
        ["leaderboard"],
    ],
)
def test_command_arguments_are_checked(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2


async def test_report_command_then_reports_endpoint(
    client: TestClient[Any, Any], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    s = services(client)
    tid = await new_template(s.pool)
    day = datetime(2005, 6, 15, 8, tzinfo=UTC)  # a Wednesday nobody else uses
    u = await new_user(s.pool)
    for score in (8, 4, 0):
        await insert_attempt(s.pool, u, tid, score, day)
    args = parser().parse_args(["report", "--period", "weekly", "--date", "2005-06-17", "--per-user"])
    assert args.date == date(2005, 6, 17)
    assert await args.run(settings, args) == 0
    assert "2005-06-13 to 2005-06-20" in capsys.readouterr().out
    staff = await token_for(client, "proctor")
    r = await client.get(f"/api/reports?template_id={tid}", headers=bearer(staff))
    reports = (await r.json())["reports"]
    assert len(reports) == 1 and reports[0]["kind"] == "template_weekly"
    assert reports[0]["body"]["score"]["median"] == 4 and reports[0]["body"]["attempts"] == 3
    assert reports[0]["period_start"].startswith("2005-06-13")
    r = await client.get(f"/api/reports?user_id={u}&kind=user_weekly", headers=bearer(staff))
    assert (await r.json())["reports"][0]["body"]["percent"]["mean"] == pytest.approx(10.0)  # 20%, 10%, 0%
    args = parser().parse_args(["report"])  # the last complete day
    assert await args.run(settings, args) == 0


async def test_cleanup_command(
    client: TestClient[Any, Any], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    s = services(client)
    kind = f"cli-{uuid.uuid4().hex[:8]}"
    await s.pool.executemany(
        "INSERT INTO analytics_events (kind, occurred_at) VALUES ($1, $2)",
        [(kind, datetime(1985, 1, 1, tzinfo=UTC)), (kind, datetime(1985, 1, 2, tzinfo=UTC)), (kind, datetime.now(UTC))],
    )
    args = parser().parse_args(["cleanup", "--older-than-days", str(365 * 30), "--batch", "1"])
    assert await args.run(settings, args) == 0
    assert "deleted 2 analytics event(s) older than" in capsys.readouterr().out
    assert await s.pool.fetchval("SELECT count(*) FROM analytics_events WHERE kind = $1", kind) == 1


async def test_leaderboard_rebuild_and_progress_backfill_commands(
    client: TestClient[Any, Any], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    s = services(client)
    tid = await new_template(s.pool)
    u = await new_user(s.pool)
    (q,) = await questions(s.pool, 1)
    await insert_attempt(s.pool, u, tid, 7, datetime.now(UTC), [(q["id"], q["correct"], True, 5)])
    args = parser().parse_args(["leaderboard", "rebuild", "--template", str(tid)])
    assert await args.run(settings, args) == 0
    assert "rebuilt 3 leaderboard(s)" in capsys.readouterr().out
    assert await s.redis.zscore(f"{settings.redis_prefix}:lb:{{t{tid}}}:all", str(u)) == 7
    args = parser().parse_args(["progress", "backfill"])
    assert await args.run(settings, args) == 0
    assert "attempt(s) to per-topic progress" in capsys.readouterr().out
    row = await s.pool.fetchrow("SELECT attempted, correct FROM user_topic_progress WHERE user_id = $1", u)
    assert (row["attempted"], row["correct"]) == (1, 1)
