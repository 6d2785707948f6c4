"""Two hub processes sharing Redis and PostgreSQL: a student on one, a proctor on the other, see each other
live; fencing, the flusher and actions work across processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.auth import Auth, Role
from server.closecodes import Close
from storage import users as repo
from storage.embedded import free_port
from tests.conftest import REDIS_URL

SECRET = "multi-secret-" + "m" * 40


@pytest.fixture
def hubs(own_database_url: str, prefix: str, tmp_path: Path) -> Iterator[list[str]]:
    env = {**os.environ, "DATABASE_URL": own_database_url, "REDIS_URL": REDIS_URL, "EXAMHUB_REDIS_PREFIX": prefix,
           "EXAMHUB_SECRET": SECRET, "EXAMHUB_REDIS_DURABILITY": "warn", "EXAMHUB_DATA_DIR": str(tmp_path)}  # fmt: skip
    procs, urls, logs = [], [], []
    for i in range(2):
        port = free_port()
        log = (tmp_path / f"hub{i}.log").open("wb")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "server.cli", "serve"],
                                      env={**env, "EXAMHUB_PORT": str(port)}, stdout=log, stderr=log))  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    import urllib.request

                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    assert time.monotonic() < deadline, (tmp_path / "hub0.log").read_text()[-3000:]
                    time.sleep(0.1)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        for log in logs:
            log.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def recv(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "code": ws.close_code}
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def feed_until(ws: aiohttp.ClientWebSocketResponse, sid: str, predicate: Any) -> dict[str, Any]:
    end = time.monotonic() + 5
    while True:
        frame = json.loads((await ws.receive(timeout=max(0.01, end - time.monotonic()))).data)
        for row in frame.get("sessions", []):
            if row["session"] == sid and predicate(row):
                return row


async def test_student_and_proctor_on_different_processes(
    hubs: list[str], http: aiohttp.ClientSession, own_database_url: str
) -> None:
    a, b = hubs
    conn = await asyncpg.connect(own_database_url)
    try:
        tid = await conn.fetchval("SELECT id FROM test_templates WHERE slug = 'biology-quick-10'")
        proctor = await repo.create_user(conn, f"proctor-{time.time_ns()}", None, "P", role="proctor")
        await conn.execute("INSERT INTO proctor_assignments (user_id, template_id) VALUES ($1, $2)", proctor.id, tid)
    finally:
        await conn.close()
    ptoken = Auth(SECRET).user_token(proctor.id, Role.PROCTOR, 600)
    pauth = {"Authorization": f"Bearer {ptoken}"}

    async with http.post(a + "/api/auth/guest", json={"display_name": "Meera"}) as r:
        utoken = (await r.json())["token"]
    async with http.post(a + "/api/sessions", json={"template_id": tid},
                         headers={"Authorization": f"Bearer {utoken}"}) as r:  # fmt: skip
        started = await r.json()
    sid, stoken = started["session_id"], started["token"]
    student = await http.ws_connect(f"{a.replace('http', 'ws')}/ws/student?token={stoken}")
    state = json.loads((await student.receive()).data)
    feed = await http.ws_connect(f"{b.replace('http', 'ws')}/ws/proctor?template={tid}", headers=pauth)
    snap = json.loads((await feed.receive()).data)
    assert snap["type"] == "snapshot" and any(r["session"] == sid and r["online"] for r in snap["sessions"])

    q = state["questions"][0]
    await student.send_str(json.dumps({"type": "answer", "seq": 1, "q": q["id"], "choice": q["options"][0]["id"]}))
    assert (await recv(student, "ack"))["seq"] == 1
    row = await feed_until(feed, sid, lambda r: r["answered"] == 1)  # from process A to a proctor on B
    assert row["name"] == "Meera"

    async with http.post(f"{b}/api/proctor/sessions/{sid}/actions", json={"action": "pause"}, headers=pauth) as r:
        assert r.status == 200
    assert (await recv(student, "clock"))["status"] == "paused"  # from B to the student on A
    async with http.post(f"{b}/api/proctor/sessions/{sid}/actions", json={"action": "resume"}, headers=pauth) as r:
        assert r.status == 200
    assert (await recv(student, "clock"))["status"] == "active"
    async with http.post(f"{b}/api/proctor/sessions/{sid}/actions",
                         json={"action": "extend", "seconds": 120, "reason": "noise"}, headers=pauth) as r:  # fmt: skip
        assert r.status == 200
    clock = await recv(student, "clock")
    assert clock["time_left_ms"] > state["time_left_ms"] + 100_000

    # the student moves to process B: the connection on A is fenced and closed by A
    moved = await http.ws_connect(f"{b.replace('http', 'ws')}/ws/student?token={stoken}")
    assert json.loads((await moved.receive()).data)["type"] == "state"
    assert (await recv(student, "error"))["code"] == "superseded"
    last = await student.receive()
    assert (last.type, last.data) == (aiohttp.WSMsgType.CLOSE, Close.SUPERSEDED)

    async with http.post(f"{a}/api/proctor/sessions/{sid}/actions",
                         json={"action": "submit", "reason": "time called"}, headers=pauth) as r:  # fmt: skip
        assert r.status == 200
    finished = await recv(moved, "finished")
    assert finished["status"] == "submitted" and finished["reason"] == "forced"

    # one of the two flushers stores the attempt, exactly once
    conn = await asyncpg.connect(own_database_url)
    try:
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM test_attempts WHERE session_id = $1", sid):
                break
            await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT count(*) FROM test_attempts WHERE session_id = $1", sid) == 1
        assert await conn.fetchval("SELECT count(*) FROM responses WHERE session_id = $1 AND choice IS NOT NULL",
                                   sid) == 1  # fmt: skip
        sql = "SELECT action FROM audit_log WHERE session_id = $1 AND actor_id IS NOT NULL ORDER BY id"
        actions = [r["action"] for r in await conn.fetch(sql, sid)]
        assert actions == ["pause", "resume", "extend", "submit"]
    finally:
        await conn.close()
    await feed.close()
    await moved.close()
