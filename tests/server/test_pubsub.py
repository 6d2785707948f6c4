"""server/pubsub.py: a subscription whose path to Redis dies in silence (no FIN, no RST: a middlebox that forgot the
connection, a partition) is given up and made again, instead of waiting for ever. The dead path is the fault suite's
TCP proxy, blackholed: it holds every byte, either way, as a dead route does."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from loadtest.faults.proxy import FaultProxy
from server import pubsub
from server.app import create_app
from server.settings import Settings
from tests.conftest import REDIS_URL, template_id
from tests.server.conftest import ClientFactory, bearer, services, token_for

QUIET_S = 0.3


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    target = urlsplit(REDIS_URL)
    p = FaultProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await p.start()
    yield p
    p.blackhole(False)
    await p.stop()


async def _next(messages: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await anext(messages)


async def test_a_quiet_subscription_is_kept_and_its_pings_are_not_messages(proxy: FaultProxy) -> None:
    client = Redis(port=proxy.listen_port, decode_responses=True)
    publisher = Redis.from_url(REDIS_URL, decode_responses=True)
    channel = f"test-pubsub-{secrets.token_hex(4)}"
    ps = client.pubsub(ignore_subscribe_messages=True)
    try:
        await ps.subscribe(channel)
        reading = asyncio.create_task(_next(pubsub.messages(ps, QUIET_S)))
        await asyncio.sleep(QUIET_S * 6)  # silent for long: pinged several times, answered every time
        assert not reading.done()
        await publisher.publish(channel, "hello")
        message = await asyncio.wait_for(reading, 5)
        assert (message["type"], message["channel"], message["data"]) == ("message", channel, "hello")
    finally:
        await ps.aclose()
        await client.aclose()
        await publisher.aclose()


async def test_a_subscription_whose_path_died_in_silence_raises(proxy: FaultProxy) -> None:
    client = Redis(port=proxy.listen_port, decode_responses=True)
    ps = client.pubsub(ignore_subscribe_messages=True)
    try:
        await ps.subscribe(f"test-pubsub-{secrets.token_hex(4)}")
        assert await ps.get_message(timeout=2) is None  # (the confirmation, ignored): the path works
        proxy.blackhole(True)
        with pytest.raises(ConnectionError, match="not even to a PING"):
            await asyncio.wait_for(_next(pubsub.messages(ps, QUIET_S)), 10)
    finally:
        proxy.blackhole(False)
        await ps.aclose()
        await client.aclose()


async def test_the_hubs_listeners_subscribe_again_after_a_silent_death(
    aiohttp_client: ClientFactory,
    settings: Settings,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control listener (fences, proctor actions, the alive channel) and the room subscriber, on a hub whose Redis
    is behind the proxy: blackholed, each says its connection died, and subscribes again once the path is back."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(pubsub, "QUIET_S", QUIET_S)
    settings = settings.with_(redis_url=f"redis://127.0.0.1:{proxy.listen_port}/0", redis_timeout_s=1.0)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    s = services(client)
    tid = await template_id(s.pool, "neet-biology-90")
    feed = await client.ws_connect(f"/ws/proctor?template={tid}", headers=bearer(await token_for(client, "admin")))
    assert (await feed.receive_json(timeout=10))["type"] == "snapshot"  # the room subscriber holds its channel
    proxy.blackhole(True)
    for _ in range(100):
        if caplog.text.count("not even to a PING") >= 2:
            break
        await asyncio.sleep(0.1)
    proxy.blackhole(False)
    for _ in range(100):
        if "control listener: working again" in caplog.text and "room subscriber: working again" in caplog.text:
            break
        await asyncio.sleep(0.1)
    for part in ("control listener", "room subscriber"):
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(part + ": ")]
        assert any("not even to a PING" in line for line in said), (part, said)
        assert any("working again" in line for line in said), (part, said)
    alive = s.store.keys.alive_channel(s.store.host)
    direct = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        ((_, listeners),) = await direct.pubsub_numsub(alive)
        assert listeners >= 1  # this process reads as alive again
    finally:
        await direct.aclose()
        await feed.close()
