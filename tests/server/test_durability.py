"""Acknowledged means kept: kill -9 Redis (append-only, fsync always) mid-exam and lose nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app, open_services
from server.closecodes import Close
from server.settings import Durability, Settings
from storage.embedded import EmbeddedRedis, free_port
from storage.errors import UnsafeRedisConfig
from tests.conftest import template_id
from tests.server.conftest import ClientFactory, Student, bearer, guest, services, student


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


async def test_kill_9_redis_loses_no_acknowledged_answer(
    aiohttp_client: ClientFactory, settings: Settings, durable_redis: EmbeddedRedis
) -> None:
    url = f"redis://127.0.0.1:{durable_redis.port}/0"
    settings = settings.with_(redis_url=url, redis_durability=Durability.REQUIRE, redis_timeout_s=1.0)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    s = services(client)
    st = await student(client, await template_id(s.pool, "neet-biology-90"))
    await st.connect()
    acked: dict[int, str] = {}
    for q in st.questions()[:40]:
        choice = q["options"][2]["id"]
        assert (await st.answer(q["id"], choice))["type"] == "ack"
        acked[q["id"]] = choice

    durable_redis.kill()
    q = st.questions()[40]
    err = await st.answer(q["id"], q["options"][0]["id"])
    assert err["type"] == "error" and err["code"] == "unavailable" and err["retry"] is True
    assert await st.closed() == Close.STORAGE_UNAVAILABLE  # and nothing else is processed on it

    durable_redis.start()
    resumed = Student(client, st.token, st.sid)
    state = await resumed.connect()
    saved = {int(k): v["choice"] for k, v in state["answers"].items()}
    assert {k: saved.get(k) for k in acked} == acked  # every acknowledged answer survived
    assert state["last_seq"] >= 40
    # the client resends what was not acknowledged (seq 41) and carries on
    reply = await resumed.answer(q["id"], q["options"][0]["id"], seq=41)
    assert reply["type"] == "ack"
    resumed.seq = 41
    resumed.seq += 1
    await resumed.send({"type": "submit", "seq": resumed.seq})
    assert (await resumed.recv())["type"] == "ack"
    assert (await resumed.recv())["type"] == "finished"
    assert await s.flusher.flush_once() == 1
    rows = await s.pool.fetch("SELECT question_id, choice FROM responses WHERE session_id = $1", st.sid)
    stored = {r["question_id"]: r["choice"] for r in rows if r["choice"] is not None}
    assert stored == {**acked, q["id"]: q["options"][0]["id"]}


async def test_start_up_refuses_a_redis_that_can_lose_writes(settings: Settings) -> None:
    # the machine's Redis keeps nothing on disk
    with pytest.raises(UnsafeRedisConfig, match="appendonly is off"):
        await open_services(settings.with_(redis_durability=Durability.REQUIRE))


async def test_start_up_accepts_a_durable_redis(settings: Settings, durable_redis: EmbeddedRedis) -> None:
    url = f"redis://127.0.0.1:{durable_redis.port}/0"
    from server.app import close_services

    s = await open_services(settings.with_(redis_url=url, redis_durability=Durability.REQUIRE))
    await close_services(s)


async def test_a_redis_outage_is_logged_once_per_part_not_once_per_failure(
    aiohttp_client: ClientFactory, settings: Settings, durable_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down, every student's answer, every request and every 0.5 s retry of the control listener fails;
    each part says so once (storage.outage: once per 10 s), and once more, at INFO, when it works again."""
    caplog.set_level(logging.INFO)
    url = f"redis://127.0.0.1:{durable_redis.port}/0"
    settings = settings.with_(redis_url=url, redis_durability=Durability.REQUIRE, redis_timeout_s=1.0)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    s = services(client)
    tid = await template_id(s.pool, "neet-biology-90")
    students = [await student(client, tid) for _ in range(4)]
    for st in students:
        await st.connect()
    user = await guest(client)

    durable_redis.kill()
    for st in students:  # each answer fails in its own pipeline, and each connection closes with 4503
        q = st.questions()[0]
        assert (await st.answer(q["id"], q["options"][0]["id"]))["code"] == "unavailable"
        assert await st.closed() == Close.STORAGE_UNAVAILABLE
    for _ in range(4):
        r = await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(user))
        assert r.status == 503 and (await r.json())["error"] == "unavailable"
    await asyncio.sleep(2.0)  # the control listener tries again every 0.5 s meanwhile

    durable_redis.start()
    back = Student(client, students[0].token, students[0].sid)
    await back.connect()
    q = back.questions()[1]
    assert (await back.answer(q["id"], q["options"][1]["id"], seq=2))["type"] == "ack"
    r = await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(user))
    assert r.status == 201
    parts = {
        "control listener": 3,  # at least this many failures: it retried while Redis was down
        "redis pipeline": 4,
        "storage unavailable to student connections": 4,
        "storage unavailable": 4,  # the API's 503s
    }
    for _ in range(50):  # the listener subscribes again within 0.5 s of Redis' return
        if "control listener: working again" in caplog.text:
            break
        await asyncio.sleep(0.1)
    for part, at_least in parts.items():
        said = [r for r in caplog.records if r.getMessage().startswith(part + ": ")]
        warned = [r for r in said if r.levelno == logging.WARNING]
        assert len(warned) == 1, (part, [r.getMessage() for r in said])
        ended = [r.getMessage() for r in said if r.levelno == logging.INFO]
        assert len(ended) == 1 and "working again after" in ended[0], (part, ended)
        failures = int(ended[0].rsplit(" and ", 1)[1].split()[0])
        assert failures >= at_least, (part, ended[0])
