"""Floods are limited: one student sending messages far beyond its rate is refused, then cut off (4529), and
one address opening WebSocket handshakes in a loop gets 429s, while other students are served in full.

These tests show the limiting (counts, close codes, what was stored). What the flood costs the other students'
latency is measured, not asserted: `python -m loadtest.flood` (docs/reliability.md, Security checks).
tests/server/test_ops.py has the single-step cases (one message over the limit gets `rate_limited` and the
connection stays open; the handshake after the burst gets 429)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from server.api import TARPIT_S
from server.app import create_app
from server.closecodes import Close
from server.settings import Settings
from storage.embedded import free_port
from storage.ratelimit import Limit, Rate, RedisLimiter
from tests.conftest import template_id
from tests.server.conftest import ClientFactory, Student, services, student

MSG_RATE = Rate(20, 1.0, burst=50)


async def test_a_message_flood_is_refused_then_cut_off_while_others_are_served(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    strict = settings.with_(rate_ws_msgs=MSG_RATE, max_refused_msgs=50, rate_rest_ip=None, rate_rest_user=None)
    client = await aiohttp_client(create_app(strict))
    s = services(client)
    tid = await template_id(s.pool, "neet-biology-90")
    flooder, calm = await student(client, tid), await student(client, tid)
    await flooder.connect()
    await calm.connect()
    assert flooder.ws is not None
    qs = flooder.questions()
    started = time.monotonic()
    sent = 0
    for i in range(1000):  # as fast as the socket takes them: far beyond 1,000 messages/s here
        if flooder.ws.closed:
            break
        q = qs[i % len(qs)]
        await flooder.ws.send_str(json.dumps({"type": "answer", "seq": i + 1, "q": q["id"], "choice": "a"}))
        sent += 1
    replies: list[dict[str, Any]] = []
    while (frame := await flooder.recv())["type"] != "closed":
        replies.append(frame)
    drained = time.monotonic()  # the buckets are empty by now
    elapsed = drained - started
    assert frame["code"] == Close.RATE_LIMITED, frame
    acks = [r for r in replies if r["type"] == "ack"]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(acks) + len(limited) == len(replies), "only acks and rate_limited errors"
    # what got through is bounded by the bucket: the burst plus the rate over the time it took
    allowed = MSG_RATE.burst + math.ceil(MSG_RATE.count * elapsed) + 1
    assert 0 < len(acks) <= allowed, (len(acks), allowed)
    assert len(limited) >= strict.max_refused_msgs
    assert all(r["retry_after_ms"] > 0 for r in limited)
    stored = await s.store.load(flooder.sid)
    assert stored is not None and stored.state.last_seq == max(r["seq"] for r in acks)  # nothing refused is stored
    # the calm student, sending within the rate, was never refused
    for q in calm.questions()[:20]:
        reply = await calm.answer(q["id"], q["options"][0]["id"])
        assert reply == {"type": "ack", "seq": calm.seq}, reply
    # the flooder may come back and resume from last_seq, but without a fresh burst: its buckets carry over
    back = Student(client, flooder.token, flooder.sid)
    assert (await back.connect())["last_seq"] == stored.state.last_seq
    assert back.ws is not None
    for i in range(200):
        if back.ws.closed:
            break
        q = qs[i % len(qs)]
        await back.ws.send_str(json.dumps({"type": "answer", "seq": back.seq + i + 1, "q": q["id"], "choice": "a"}))
    replies = []
    while (frame := await back.recv())["type"] != "closed":
        replies.append(frame)
    assert frame["code"] == Close.RATE_LIMITED
    # what the bucket regained since it was drained (the first close), never a fresh burst
    regained = math.ceil(MSG_RATE.count * (time.monotonic() - drained)) + 1
    assert regained < MSG_RATE.burst, "the machine was too slow for this check to mean anything"
    assert sum(r["type"] == "ack" for r in replies) <= regained
    assert sent > 0


async def test_a_handshake_flood_from_one_address_is_limited_and_others_get_in(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """One address (127.0.0.2) opens handshakes with junk tokens from 50 workers for 2.5 s, each as fast as it is
    answered. Its handshakes beyond the address's bucket get 429, each held back TARPIT_S (so the flood gets
    about 50 refusals a second, not thousands); a student from another address connects and answers meanwhile."""
    ip_rate = Rate(50, 1.0, burst=100)
    app = create_app(settings.with_(rate_rest_ip=ip_rate, rate_rest_user=None))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    tid = await template_id(services(client).pool, "biology-quick-10")
    calm = await student(client, tid)  # from 127.0.0.1
    url = str(client.make_url("/ws/student"))
    flood = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0))
    outcomes: dict[str, int] = {}
    workers = 50
    started = time.monotonic()

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() - started < 2.5:
            i += 1
            try:
                ws = await flood.ws_connect(f"{url}?token=junk{w}-{i}")
            except aiohttp.WSServerHandshakeError as exc:
                key = str(exc.status)
            else:
                await ws.receive(timeout=5)  # the refusal frame (a junk token): the handshake got through
                key = "upgraded"
                await ws.close()
            outcomes[key] = outcomes.get(key, 0) + 1

    try:
        tasks = [asyncio.ensure_future(worker(w)) for w in range(workers)]
        await asyncio.sleep(0.2)
        state = await calm.connect()  # in the middle of the flood, from the other address
        q = calm.questions()[0]
        answered = await calm.answer(q["id"], q["options"][0]["id"])
        await asyncio.gather(*tasks)
    finally:
        await flood.close()
    elapsed = time.monotonic() - started
    assert state["type"] == "state" and answered["type"] == "ack"
    assert set(outcomes) <= {"429", "upgraded"}, outcomes
    upgraded_at_most = ip_rate.burst + math.ceil(ip_rate.count * elapsed) + 1
    assert 0 < outcomes.get("upgraded", 0) <= upgraded_at_most, (outcomes, upgraded_at_most)
    # every refusal held a worker for at least TARPIT_S / 2 (holds are spread over 0.5-1.5 x TARPIT_S): at most one
    # per worker per TARPIT_S / 2 (+ the one in flight)
    assert 0 < outcomes["429"] <= workers * (math.floor(elapsed / (TARPIT_S / 2)) + 1), outcomes


async def test_the_limiter_refuses_a_flood_in_process_without_asking_redis() -> None:
    """local_first (the hub's setting): once this process alone has seen an address exceed its rate, it refuses
    without a Redis round trip. Shown with a Redis that is down, where the shared check would fail open."""
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        limit = Limit("ip", "192.0.2.77", Rate(1, 60.0, burst=3))
        local = RedisLimiter(dead, "x", local_first=True)
        verdicts = [await local.check([limit]) for _ in range(5)]
        assert verdicts[:3] == [None, None, None]  # within the burst: asked Redis, which failed open
        assert all(v is not None and v[0] is limit and not v[1].allowed for v in verdicts[3:])
        shared_only = RedisLimiter(dead, "x")
        assert [await shared_only.check([limit]) for _ in range(5)] == [None] * 5  # fails open every time
    finally:
        await dead.aclose()


async def test_an_address_that_keeps_failing_handshakes_gets_429_before_the_upgrade(
    aiohttp_client: ClientFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused handshakes (junk token) are answered after the upgrade with close 4001, which a browser can read,
    until the address has had AUTH_FAILURES.burst of them; then a plain 429 JSON before any upgrade, which costs
    the hub far less. A valid token from the same address still gets in: only failures count. (The bucket's refill
    is slowed to one an hour for the test: on a slow machine the 50 handshakes took long enough at 10 a second to
    earn the 51st back, and the test failed.)"""
    import server.hub

    monkeypatch.setattr(server.hub, "AUTH_FAILURES", Rate(1, 3600.0, server.hub.AUTH_FAILURES.burst))
    AUTH_FAILURES = server.hub.AUTH_FAILURES
    client = await aiohttp_client(create_app(settings.with_(rate_rest_ip=None, rate_rest_user=None)))
    tid = await template_id(services(client).pool, "biology-quick-10")
    calm = await student(client, tid)
    closes = 0
    for i in range(AUTH_FAILURES.burst):
        ws = await client.ws_connect(f"/ws/student?token=junk-{i}")
        await ws.receive(timeout=5)  # the error frame
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE and ws.close_code == Close.UNAUTHORIZED
        closes += 1
    r = await client.get("/ws/student?token=junk-more", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                         "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})  # fmt: skip
    assert r.status == 429 and (await r.json())["error"] == "rate_limited" and r.headers["Retry-After"]
    assert closes == AUTH_FAILURES.burst
    state = await calm.connect()  # same address, valid token
    assert state["type"] == "state"
