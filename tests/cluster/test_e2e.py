"""examhub against a three-master Redis Cluster, end to end: two hub processes started with
EXAMHUB_REDIS_CLUSTER=1 (and durability required: every primary keeps an fsync'd append-only file), students
on one, proctors on the other, and sessions on every master."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server.auth import Auth, Role
from server.closecodes import Close
from storage import users as repo
from storage.embedded import free_port
from storage.keys import PARTITIONS, Keys
from tests.cluster.conftest import MASTERS
from tests.conftest import create_database, drop_database
from tests.server.test_proctoring import Proctor

SECRET = "cluster-secret-" + "c" * 40
WsFrame = dict[str, Any]


@dataclass(frozen=True)
class Hubs:
    a: str
    b: str
    prefix: str
    database_url: str

    def ws(self, base: str, path: str) -> str:
        return base.replace("http", "ws", 1) + path


@pytest.fixture(scope="module")
def cluster_database_url() -> Iterator[str]:
    """A database of this module's own, shared by its tests (each makes its own users and sessions)."""
    name = f"examhub_cluster_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def hubs(cluster_url: str, cluster_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubs]:
    """Two `examhub serve` processes on the cluster (background flusher and sweeper on, as in production)."""
    tmp = tmp_path_factory.mktemp("cluster-hubs")
    prefix = f"c{secrets.token_hex(4)}"
    env = {**os.environ, "DATABASE_URL": cluster_database_url, "REDIS_URL": cluster_url,
           "EXAMHUB_REDIS_CLUSTER": "1", "EXAMHUB_REDIS_DURABILITY": "require", "EXAMHUB_REDIS_PREFIX": prefix,
           "EXAMHUB_SECRET": SECRET, "EXAMHUB_DATA_DIR": str(tmp),
           "EXAMHUB_RATE_REST_IP": "1000/s,burst=1000"}  # fmt: skip
    # (one client IP starts every session of these tests: the default per-IP limit would refuse some)
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for i in range(2):
            port = free_port()
            logs.append(tmp / f"hub{i}.log")
            with logs[-1].open("wb") as log:
                cmd = [sys.executable, "-m", "server.cli", "serve"]
                procs.append(subprocess.Popen(cmd, env={**env, "EXAMHUB_PORT": str(port)}, stdout=log, stderr=log))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        for url, proc, log_path in zip(urls, procs, logs, strict=True):
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.1)
        yield Hubs(urls[0], urls[1], prefix, cluster_database_url)
    finally:
        for p in procs:
            p.terminate()
        stuck = []
        for p, log_path in zip(procs, logs, strict=True):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                stuck.append(log_path.read_text()[-3000:])
        assert not stuck, f"hubs did not stop within 20 s of SIGTERM: {stuck}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    yield client
    await client.aclose()


@dataclass
class Seat:
    sid: str
    token: str  # the session token
    user_token: str
    name: str  # the student's display name
    node: str  # host:port of the master holding the session's keys


async def recv(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> WsFrame:
    """The next frame of this type (others skipped), or {"type": "closed"} when the server closes."""
    end = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "code": msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code,
                    "msg_type": msg.type.name}  # fmt: skip
        frame: WsFrame = json.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def send(ws: aiohttp.ClientWebSocketResponse, **frame: Any) -> None:
    await ws.send_str(json.dumps(frame))


async def seats_on_every_master(
    http: aiohttp.ClientSession, hubs: Hubs, cluster: RedisCluster, tid: int, name: str
) -> list[Seat]:
    """Start sessions on process A until one lives on each master; one seat per master. Where the keys live is
    checked on the node itself: a plain connection there finds the session's meta hash (a key of another
    node's slot would be answered with MOVED)."""
    keys = Keys(hubs.prefix)
    await cluster.initialize()
    seats: dict[str, Seat] = {}
    for i in range(64):  # a start lands on each master with odds >= 4/16 (its partitions): a few suffice
        async with http.post(hubs.a + "/api/auth/guest", json={"display_name": f"{name} {i}"}) as r:
            user_token = (await r.json())["token"]
        async with http.post(hubs.a + "/api/sessions", json={"template_id": tid},
                             headers={"Authorization": f"Bearer {user_token}"}) as r:  # fmt: skip
            assert r.status == 201, await r.text()
            started = await r.json()
        node = cluster.get_node_from_key(keys.session(started["session_id"]).meta)
        assert node is not None
        seat = Seat(started["session_id"], started["token"], user_token, f"{name} {i}", node.name)
        seats.setdefault(node.name, seat)
        if len(seats) == MASTERS:
            break
    assert len(seats) == MASTERS, f"sessions landed on {sorted(seats)} only"
    for seat in seats.values():
        host, port = seat.node.rsplit(":", 1)
        direct = Redis(host=host, port=int(port))
        try:
            assert await direct.exists(keys.session(seat.sid).meta) == 1
        finally:
            await direct.aclose()
    return list(seats.values())


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def stored(hubs: Hubs, sids: list[str]) -> None:
    """Wait until the hubs' flushers have stored every one of these attempts."""
    for _ in range(150):
        rows = await fetch(hubs.database_url, "SELECT count(*) AS n FROM test_attempts WHERE session_id = ANY($1)",
                           sids)  # fmt: skip
        if rows[0]["n"] == len(sids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {rows[0]['n']} of {len(sids)} attempts reached PostgreSQL")


async def sit(http: aiohttp.ClientSession, hubs: Hubs, seat: Seat) -> tuple[dict[int, str | None], WsFrame]:
    """Answer and send an event on A, drop, resume on B (a duplicate is acknowledged and changes nothing),
    answer on, submit. Returns the final answers and the finished frame."""
    ws = await http.ws_connect(hubs.ws(hubs.a, f"/ws/student?token={seat.token}"))
    state = await recv(ws, "state")
    assert state["status"] == "active" and state["epoch"] == 1
    qs = state["questions"]
    chosen: dict[int, str | None] = {}
    for seq, q in enumerate(qs[:3], start=1):
        chosen[q["id"]] = q["options"][1]["id"]
        await send(ws, type="answer", seq=seq, q=q["id"], choice=q["options"][1]["id"], time_ms=1200)
        assert await recv(ws, "ack") == {"type": "ack", "seq": seq}
    await send(ws, type="event", seq=4, kind="tab_hidden")
    assert await recv(ws, "ack") == {"type": "ack", "seq": 4}
    await ws.close()  # the connection drops mid-exam

    back = await http.ws_connect(hubs.ws(hubs.b, f"/ws/student?token={seat.token}"))
    state = await recv(back, "state")
    assert state["epoch"] == 2 and state["last_seq"] == 4
    assert {int(q): a["choice"] for q, a in state["answers"].items()} == chosen
    assert [q["id"] for q in state["questions"]] == [q["id"] for q in qs]
    await send(back, type="answer", seq=1, q=qs[0]["id"], choice=qs[0]["options"][3]["id"])  # resent: a duplicate
    assert await recv(back, "ack") == {"type": "ack", "seq": 1, "duplicate": True}
    await send(back, type="answer", seq=5, q=qs[4]["id"], choice=qs[4]["options"][0]["id"], marked=True)
    chosen[qs[4]["id"]] = qs[4]["options"][0]["id"]
    await send(back, type="answer", seq=6, q=qs[1]["id"], choice=None)
    chosen[qs[1]["id"]] = None
    assert (await recv(back, "ack"))["seq"] == 5 and (await recv(back, "ack"))["seq"] == 6
    await send(back, type="submit", seq=7)
    assert await recv(back, "ack") == {"type": "ack", "seq": 7}
    finished = await recv(back, "finished")
    assert finished["status"] == "submitted" and finished["reason"] == "student"
    assert (await recv(back, "never-sent"))["code"] == Close.SESSION_FINISHED
    return chosen, finished


async def test_students_on_every_master_sit_across_two_processes_and_land_once(
    hubs: Hubs, http: aiohttp.ClientSession, cluster: RedisCluster
) -> None:
    tid = (await fetch(hubs.database_url, "SELECT id FROM test_templates WHERE slug = 'biology-quick-10'"))[0]["id"]
    seats = await seats_on_every_master(http, hubs, cluster, tid, "Kiran")
    results = await asyncio.gather(*(sit(http, hubs, seat) for seat in seats))
    sids = [s.sid for s in seats]
    await stored(hubs, sids)

    url = hubs.database_url
    for seat, (chosen, finished) in zip(seats, results, strict=True):
        attempts = await fetch(url, "SELECT score, violations FROM test_attempts WHERE session_id = $1", seat.sid)
        assert [(a["score"], a["violations"]) for a in attempts] == [(finished["result"]["score"], 1)]
        responses = await fetch(url, "SELECT question_id, choice, seq FROM responses WHERE session_id = $1", seat.sid)
        assert len(responses) == 10
        assert {r["question_id"]: r["choice"] for r in responses if r["seq"] is not None} == chosen
        events = await fetch(url, "SELECT kind FROM anticheat_events WHERE session_id = $1", seat.sid)
        assert [e["kind"] for e in events] == ["tab_hidden"]
        async with http.get(f"{hubs.b}/api/sessions/{seat.sid}/result",
                            headers={"Authorization": f"Bearer {seat.token}"}) as r:  # fmt: skip
            body = await r.json()
            assert r.status == 200 and body["stored"] is True and body["score"] == finished["result"]["score"]
    # the flushers' leaderboard writes and cache invalidations ran on the cluster too
    async with http.get(f"{hubs.a}/api/templates/{tid}/leaderboard",
                        headers={"Authorization": f"Bearer {seats[0].user_token}"}) as r:  # fmt: skip
        board = await r.json()
        assert r.status == 200, board
    assert board["me"] is not None and board["me"]["score"] == results[0][1]["result"]["score"]
    # every outbox is empty on every master: each entry was acknowledged after its commit
    keys = Keys(hubs.prefix)
    assert sum([await cluster.xlen(keys.outbox(p)) for p in range(PARTITIONS)]) == 0


async def test_proctoring_across_processes_and_masters(
    hubs: Hubs, http: aiohttp.ClientSession, cluster: RedisCluster
) -> None:
    url = hubs.database_url
    conn = await asyncpg.connect(url)
    try:
        bank = await conn.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
        tid = await conn.fetchval(
            "INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, 'proctored', $2, $3::jsonb) "
            "RETURNING id", f"cluster-{secrets.token_hex(4)}", bank, json.dumps({"count": 5, "duration_s": 600}),
        )  # fmt: skip
        proctor = await repo.create_user(conn, f"proctor-{secrets.token_hex(4)}", None, "P", role="proctor")
        await conn.execute("INSERT INTO proctor_assignments (user_id, template_id) VALUES ($1, $2)", proctor.id, tid)
    finally:
        await conn.close()
    pauth = {"Authorization": f"Bearer {Auth(SECRET).user_token(proctor.id, Role.PROCTOR, 600)}"}

    async def act(base: str, sid: str, **body: Any) -> None:
        async with http.post(f"{base}/api/proctor/sessions/{sid}/actions", json=body, headers=pauth) as r:
            assert r.status == 200, await r.text()

    seats = await seats_on_every_master(http, hubs, cluster, tid, "Meera")
    students = []
    for seat in seats:  # every student on A
        ws = await http.ws_connect(hubs.ws(hubs.a, f"/ws/student?token={seat.token}"))
        students.append((ws, await recv(ws, "state")))
    p = Proctor(await http.ws_connect(hubs.ws(hubs.b, f"/ws/proctor?template={tid}"), headers=pauth))
    snap = await p.recv()  # the proctor, on B, sees every student of the room whatever master holds them
    assert snap["type"] == "snapshot" and all(p.rows[s.sid]["online"] for s in seats)

    for (ws, state), seat in zip(students, seats, strict=True):
        q = state["questions"][0]
        await send(ws, type="answer", seq=1, q=q["id"], choice=q["options"][0]["id"])
        assert (await recv(ws, "ack"))["seq"] == 1
        row = await p.until(seat.sid, lambda r: r["answered"] == 1)  # from A to B, in sequence
        assert row["name"] == seat.name

    # a message the feed never delivered: B notices the gap and sends a fresh snapshot
    await cluster.incr(Keys(hubs.prefix).room_seq(tid))
    ws, state = students[0]
    q = state["questions"][1]
    await send(ws, type="answer", seq=2, q=q["id"], choice=q["options"][0]["id"])
    assert (await recv(ws, "ack"))["seq"] == 2
    while (await p.recv())["type"] != "snapshot":
        pass
    assert p.snapshots == 2 and p.rows[seats[0].sid]["answered"] == 2

    # actions from B reach students on A through each session's partition channel, on every master
    for seat, (ws, _) in zip(seats, students, strict=True):
        await act(hubs.b, seat.sid, action="pause", reason="fire alarm")
        assert (await recv(ws, "clock"))["status"] == "paused"
        await act(hubs.b, seat.sid, action="resume")
        assert (await recv(ws, "clock"))["status"] == "active"
    await p.until(seats[2].sid, lambda r: r["status"] == "active")
    ws, state = students[0]
    await act(hubs.b, seats[0].sid, action="extend", seconds=120, reason="noise")
    assert (await recv(ws, "clock"))["time_left_ms"] > state["time_left_ms"] + 100_000
    async with http.post(f"{hubs.b}/api/proctor/templates/{tid}/message", json={"text": "Pens down in 5"},
                         headers=pauth) as r:  # fmt: skip
        assert r.status == 200
    for ws, _ in students:
        assert (await recv(ws, "message"))["text"] == "Pens down in 5"

    # the first student moves to B: the connection on A is fenced and closed by A
    moved = await http.ws_connect(hubs.ws(hubs.b, f"/ws/student?token={seats[0].token}"))
    assert (await recv(moved, "state"))["epoch"] == 2
    assert (await recv(students[0][0], "error"))["code"] == "superseded"
    closed = await recv(students[0][0], "never-sent")
    assert closed["code"] == Close.SUPERSEDED, closed

    await act(hubs.a, seats[0].sid, action="submit", reason="time called")
    finished = await recv(moved, "finished")
    assert finished["status"] == "submitted" and finished["reason"] == "forced"
    await act(hubs.a, seats[1].sid, action="terminate", reason="caught copying")
    assert (await recv(students[1][0], "finished"))["status"] == "terminated"
    ws = students[2][0]
    await send(ws, type="submit", seq=2)
    assert (await recv(ws, "finished"))["status"] == "submitted"
    await p.until(seats[1].sid, lambda r: r["status"] == "terminated")

    sids = [s.sid for s in seats]
    await stored(hubs, sids)  # one of the two flushers stores each attempt, exactly once
    rows = await fetch(url, "SELECT session_id, count(*) AS n FROM test_attempts WHERE session_id = ANY($1) "
                            "GROUP BY session_id", sids)  # fmt: skip
    assert sorted((r["session_id"], r["n"]) for r in rows) == sorted((sid, 1) for sid in sids)
    answered = await fetch(url, "SELECT count(*) AS n FROM responses WHERE session_id = $1 AND choice IS NOT NULL",
                           seats[0].sid)  # fmt: skip
    assert answered[0]["n"] == 2
    trail = await fetch(url, "SELECT session_id, action FROM audit_log WHERE session_id = ANY($1) "
                             "AND actor_id IS NOT NULL ORDER BY id", sids)  # fmt: skip
    by_session: dict[str, list[str]] = {}
    for r in trail:
        by_session.setdefault(r["session_id"], []).append(r["action"])
    assert by_session == {
        seats[0].sid: ["pause", "resume", "extend", "submit"],
        seats[1].sid: ["pause", "resume", "terminate"],
        seats[2].sid: ["pause", "resume"],
    }
    await p.ws.close()
    await moved.close()
    for ws, _ in students:
        await ws.close()


def test_a_killed_hubs_student_back_on_another_hub_at_once_is_a_drop_on_the_cluster(
    cluster_url: str, own_database_url: str, prefix: str, tmp_path: Path
) -> None:
    """tests/server/test_succession.py's two hubs behind a load balancer, on the cluster: the killed hub's sharded alive
    channel, on the node of the student's partition, has no subscriber any more (server/alive.py), so the student,
    straight back on the other hub, is a drop since the dead hub's last renewal, not a second device."""
    from tests.server.test_succession import kill_and_move

    asyncio.run(kill_and_move(own_database_url, prefix, tmp_path, cluster_url=cluster_url))
