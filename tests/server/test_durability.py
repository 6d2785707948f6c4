"""Acknowledged means kept: kill -9 Redis (append-only, fsync always) mid-exam and lose nothing."""

from __future__ import annotations

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
from tests.server.conftest import ClientFactory, Student, services, student


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
