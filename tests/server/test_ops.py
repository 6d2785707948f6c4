"""Operations end to end: /readyz, /metrics, REST and WebSocket rate limits, the templates cache, and the
`examhub health` and `examhub cache warm` commands."""

from __future__ import annotations

import argparse
import re
import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from server.app import create_app
from server.commands.ops import cache_invalidate, cache_warm, health
from server.settings import Durability, Settings
from storage.cache import TEMPLATE_LIST_KEY, Tier, question_set_key
from storage.durability import redis_problems
from storage.embedded import free_port
from storage.ratelimit import Rate
from tests.conftest import REDIS_URL, template_id
from tests.server.conftest import ClientFactory, bearer, guest, services, student, token_for


async def durability_problems() -> list[str]:
    r = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return await redis_problems(r)
    finally:
        await r.aclose()


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


async def metrics_text(client: TestClient[Any, Any]) -> str:
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return await r.text()


# ---- readiness ---------------------------------------------------------------------------------------------


async def test_readyz_is_ready_and_reports_durability_as_a_warning_under_warn(client: TestClient[Any, Any]) -> None:
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 200, body
    assert body["status"] == "ready" and body["failing"] == []
    assert {k: v["status"] for k, v in body["checks"].items() if k != "redis_durability"} == {
        "postgres": "ok", "redis": "ok", "migrations": "ok",
    }  # fmt: skip
    problems = await durability_problems()
    durability = body["checks"]["redis_durability"]
    assert durability["status"] == ("warn" if problems else "ok")
    assert durability.get("details", []) == problems


async def test_readyz_fails_on_durability_when_required(client: TestClient[Any, Any]) -> None:
    s = services(client)
    s.settings = s.settings.with_(redis_durability=Durability.REQUIRE)  # as if started with `require`
    r = await client.get("/readyz")
    body = await r.json()
    if await durability_problems():  # this machine's Redis keeps nothing on disk
        assert r.status == 503 and body["status"] == "unavailable"
        assert body["failing"] == ["redis_durability"] and body["checks"]["redis_durability"]["status"] == "fail"
    else:
        assert r.status == 200 and body["failing"] == []


async def test_readyz_lists_what_is_down(client: TestClient[Any, Any]) -> None:
    s = services(client)
    real = s.redis
    s.redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        r = await client.get("/readyz")
        body = await r.json()
    finally:
        await s.redis.aclose()
        s.redis = real
    assert r.status == 503 and body["status"] == "unavailable"
    assert set(body["failing"]) == {"redis", "redis_durability"}
    assert body["checks"]["postgres"]["status"] == "ok" and body["checks"]["redis"]["error"]


# ---- metrics -----------------------------------------------------------------------------------------------


async def test_metrics_after_an_exam(client: TestClient[Any, Any]) -> None:
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    st = await student(client, tid)
    await st.connect()
    q = st.questions()[0]
    assert (await st.answer(q["id"], q["options"][0]["id"]))["type"] == "ack"
    await st.send({"type": "heartbeat", "seq": 2})
    assert (await st.recv())["type"] == "time"
    await st.send({"type": "nonsense"})
    assert (await st.recv())["type"] == "error"
    text = await metrics_text(client)
    assert sample(text, "examhub_ws_connections") == 1
    assert sample(text, "examhub_ws_messages_total", type="answer") == 1
    assert sample(text, "examhub_ws_messages_total", type="heartbeat") == 1
    assert sample(text, "examhub_ws_messages_total", type="invalid") == 1
    assert sample(text, "examhub_ack_latency_seconds_count") == 1  # the answer wrote; the heartbeat did not
    assert sample(text, "examhub_rate_limited_total", scope="ws") == 0

    await st.send({"type": "submit", "seq": 3})
    assert (await st.recv())["type"] == "ack"
    assert (await st.recv())["type"] == "finished"
    await st.closed()
    assert await s.flusher.flush_once() == 1
    await s.flusher.flush_once()  # a pass that finds the outbox empty sets the gauge to 0
    text = await metrics_text(client)
    assert sample(text, "examhub_ws_connections") == 0
    assert sample(text, "examhub_flushed_attempts_total") == 1
    assert sample(text, "examhub_flush_lag_seconds_count") == 1
    assert sample(text, "examhub_outbox_length") == 0
    for name in ("examhub_cache_hits_total", "examhub_cache_misses_total"):
        assert sample(text, name, tier="warm") is not None


async def test_each_app_has_its_own_registry(aiohttp_client: ClientFactory, settings: Settings) -> None:
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    await one.get("/api/templates")
    assert services(one).metrics.registry is not services(two).metrics.registry
    miss_one = sample(await metrics_text(one), "examhub_cache_misses_total", tier="warm")
    miss_two = sample(await metrics_text(two), "examhub_cache_misses_total", tier="warm")
    assert miss_one == 1 and miss_two == 0


# ---- rate limits -------------------------------------------------------------------------------------------


@pytest.fixture
def strict(settings: Settings) -> Settings:
    """Low limits: a burst of 3 per IP, 2 per user, 2 WebSocket messages, then one a minute."""
    return settings.with_(rate_rest_ip=Rate(1, 60.0, 3), rate_rest_user=Rate(1, 60.0, 2), rate_ws_msgs=Rate(1, 60.0, 2))


async def test_rest_429_per_ip_with_retry_after(aiohttp_client: ClientFactory, strict: Settings) -> None:
    client = await aiohttp_client(create_app(strict.with_(rate_rest_user=None)))
    statuses = [(await client.get("/api/templates")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = await client.get("/api/templates")
    assert r.status == 429 and r.content_type == "application/json"
    body = await r.json()
    assert body["error"] == "rate_limited" and body["message"] and 0 < body["retry_after_ms"] <= 60_000
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert (await client.post("/api/auth/guest", json={"display_name": "x"})).status == 429  # every REST path
    for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes are never limited
        assert [(await client.get(path)).status for _ in range(5)] == [200] * 5
    assert sample(await metrics_text(client), "examhub_rate_limited_total", scope="ip") == 2


async def test_rest_429_per_user_and_invalid_tokens_count_against_the_ip(
    aiohttp_client: ClientFactory, strict: Settings
) -> None:
    client = await aiohttp_client(create_app(strict.with_(rate_rest_ip=None)))
    alice, bob = await guest(client, "alice"), await guest(client, "bob")
    got = [(await client.get("/api/templates", headers=bearer(alice))).status for _ in range(3)]
    assert got == [200, 200, 429]
    assert (await client.get("/api/templates", headers=bearer(bob))).status == 200  # bob has his own bucket
    forged = bearer(alice[:-4] + "AAAA")
    assert [(await client.get("/api/templates", headers=forged)).status for _ in range(4)] == [200] * 4
    assert sample(await metrics_text(client), "examhub_rate_limited_total", scope="user") == 1


async def test_websocket_handshakes_are_limited_per_ip(aiohttp_client: ClientFactory, strict: Settings) -> None:
    client = await aiohttp_client(create_app(strict.with_(rate_rest_ip=Rate(1, 60.0, 4), rate_rest_user=None)))
    tid = await template_id(services(client).pool, "biology-quick-10")
    st = await student(client, tid)  # 2 requests: guest, start
    await st.connect()  # 3
    assert st.ws is not None
    await st.ws.close()
    await st.connect()  # 4
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await st.connect()
    assert refused.value.status == 429


async def test_websocket_messages_over_the_limit_get_an_error_frame_and_are_not_processed(
    aiohttp_client: ClientFactory, strict: Settings
) -> None:
    client = await aiohttp_client(create_app(strict.with_(rate_rest_ip=None, rate_rest_user=None)))
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    await st.connect()
    qs = st.questions()
    for q in qs[:2]:
        assert await st.answer(q["id"], q["options"][0]["id"]) == {"type": "ack", "seq": st.seq}
    refused = await st.answer(qs[2]["id"], qs[2]["options"][0]["id"])
    assert refused["type"] == "error" and refused["code"] == "rate_limited" and refused["seq"] == 3
    assert 0 < refused["retry_after_ms"] <= 60_000
    # still limited, still connected: the next message gets the same answer rather than a close
    await st.send({"type": "heartbeat", "seq": 4})
    again = await st.recv()
    assert again["type"] == "error" and again["code"] == "rate_limited" and again["seq"] == 4
    stored = await s.store.load(st.sid)
    assert stored is not None
    assert set(stored.state.answers) == {qs[0]["id"], qs[1]["id"]} and stored.state.last_seq == 2
    assert sample(await metrics_text(client), "examhub_rate_limited_total", scope="ws") == 2


# ---- the templates cache -----------------------------------------------------------------------------------


def _config(count: int) -> dict[str, Any]:
    return {"count": count, "duration_s": 600, "topics": []}


async def test_templates_are_cached_and_a_write_invalidates_exactly_them(client: TestClient[Any, Any]) -> None:
    s = services(client)
    admin = await token_for(client, "admin")
    bank_id = await s.pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    tid = await template_id(s.pool, "biology-quick-10")
    # an unrelated entry under another tag must survive the templates' invalidation
    other = await s.cache.get_or_load(
        Tier.WARM, question_set_key(bank_id, "x", "easy"), _const(["q"]), tags=("questions",)
    )
    assert other == ["q"]

    before = (await (await client.get("/api/templates")).json())["templates"]
    assert (await client.get(f"/api/templates/{tid}")).status == 200
    text = await metrics_text(client)
    hits0 = sample(text, "examhub_cache_hits_total", tier="warm") or 0
    assert (await (await client.get("/api/templates")).json())["templates"] == before
    assert (await client.get(f"/api/templates/{tid}")).status == 200
    assert sample(await metrics_text(client), "examhub_cache_hits_total", tier="warm") == hits0 + 2

    slug = f"ops-cache-{secrets.token_hex(4)}"
    r = await client.post("/api/templates", headers=bearer(admin),
                          json={"slug": slug, "name": "Cached?", "bank_id": bank_id, "config": _config(5)})  # fmt: skip
    assert r.status == 201, await r.text()
    new_id = (await r.json())["id"]
    assert slug in {t["slug"] for t in (await (await client.get("/api/templates")).json())["templates"]}
    assert (await (await client.get(f"/api/templates/{new_id}")).json())["name"] == "Cached?"

    r = await client.put(
        f"/api/templates/{new_id}", headers=bearer(admin), json={"name": "Renamed", "config": _config(6)}
    )
    assert r.status == 200
    assert (await (await client.get(f"/api/templates/{new_id}")).json())["name"] == "Renamed"
    listed = {t["slug"]: t for t in (await (await client.get("/api/templates")).json())["templates"]}
    assert listed[slug]["name"] == "Renamed" and listed[slug]["questions"] == 6

    assert (await client.delete(f"/api/templates/{new_id}", headers=bearer(admin))).status == 200
    assert slug not in {t["slug"] for t in (await (await client.get("/api/templates")).json())["templates"]}
    assert (await (await client.get(f"/api/templates/{new_id}")).json())["status"] == "archived"

    raw = await s.cache_redis.exists(s.cache.key(Tier.WARM, question_set_key(bank_id, "x", "easy")))
    assert raw == 1  # the "questions" entry was not touched by three template invalidations


async def test_an_unknown_template_is_404_and_not_cached(client: TestClient[Any, Any]) -> None:
    for _ in range(2):
        r = await client.get("/api/templates/987654321")
        assert r.status == 404 and (await r.json())["error"] == "template_not_found"
    assert not await services(client).cache_redis.exists(services(client).cache.key(Tier.WARM, "templates:987654321"))


def _const(value: Any) -> Any:
    async def load() -> Any:
        return value

    return load


# ---- commands ----------------------------------------------------------------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"direct": False, "url": None, "timeout": 5.0, **kw})


async def test_health_direct(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await health(settings, _args(direct=True)) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "postgres" in out and "migrations" in out
    required = settings.with_(redis_durability=Durability.REQUIRE)
    assert await health(required, _args(direct=True)) == (1 if await durability_problems() else 0)
    dead = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    assert await health(dead, _args(direct=True)) == 1
    assert "redis" in capsys.readouterr().out


async def test_health_over_http(client: TestClient[Any, Any], capsys: pytest.CaptureFixture[str]) -> None:
    base = str(client.make_url("/"))
    assert await health(services(client).settings, _args(url=base)) == 0
    assert "ready" in capsys.readouterr().out
    assert await health(services(client).settings, _args(url=f"http://127.0.0.1:{free_port()}", timeout=1)) == 2


async def test_cache_warm_fills_templates_and_question_sets(
    settings: Settings, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cache_warm(settings, _args()) == 0
    first = capsys.readouterr().out
    sets = int(re.search(r"bank neet-biology: (\d+) question sets", first).group(1))  # type: ignore[union-attr]
    assert sets >= 36  # 12 topics x 3 difficulties in the demo bank (other tests may add topics)
    filled = int(re.search(r"(\d+) entries filled", first).group(1))  # type: ignore[union-attr]
    assert filled >= 1 + 3 + sets
    prefix = settings.redis_prefix
    assert await redis.exists(f"{prefix}:cache:warm:{TEMPLATE_LIST_KEY}")
    qset_keys = [k async for k in redis.scan_iter(match=f"{prefix}:cache:warm:qset:*", count=1000)]
    assert len(qset_keys) >= sets
    assert await cache_warm(settings, _args()) == 0
    second = capsys.readouterr().out
    assert f"0 entries filled, {filled} already cached" in second


async def test_cache_invalidate_command(settings: Settings, redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cache_warm(settings, _args()) == 0
    capsys.readouterr()
    assert await cache_invalidate(settings, _args(tags=["templates"])) == 0
    out = capsys.readouterr().out
    dropped = int(re.search(r"(\d+) entries dropped", out).group(1))  # type: ignore[union-attr]
    assert dropped == 1 + len(await pg_active_templates(settings))
    prefix = settings.redis_prefix
    assert not await redis.exists(f"{prefix}:cache:warm:{TEMPLATE_LIST_KEY}")
    assert [k async for k in redis.scan_iter(match=f"{prefix}:cache:warm:qset:*", count=1000)]  # untouched


async def pg_active_templates(settings: Settings) -> list[Any]:
    from storage import pg

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 1)
    try:
        return list(await pool.fetch("SELECT id FROM test_templates WHERE status = 'active'"))
    finally:
        await pool.close()
