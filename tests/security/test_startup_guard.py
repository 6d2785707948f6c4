"""The start-up guard: examhub refuses to serve on a Redis that could lose acknowledged writes, or (when
EXAMHUB_REDIS_DURABILITY=warn) starts and says so loudly in the log.

Each case starts a redis-server of its own with one unsafe setting (as tests/server/test_durability.py does
for the durable one), so the checks do not depend on how the machine's Redis happens to be configured.
tests/server/test_durability.py already shows that a durable Redis is accepted; tests/server/test_ops.py that
/readyz reports the same problems."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.app import close_services, open_services
from server.settings import Durability, Settings
from storage.embedded import free_port, redis_binary
from storage.errors import UnsafeRedisConfig

DURABLE = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


class RedisServer:
    """A redis-server on a spare port with the given configuration (each value a command-line option)."""

    def __init__(self, folder: Path, config: dict[str, str]) -> None:
        self.port = free_port()
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--save", "", "--daemonize", "no", "--logfile", str(folder / "redis.log")]  # fmt: skip
        for name, value in config.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def wait_ready(self) -> None:
        client = Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except RedisConnectionError:
                    await asyncio.sleep(0.02)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def redis_with(tmp_path: Path) -> Iterator[object]:
    started: list[RedisServer] = []

    async def make(**overrides: str) -> str:
        config = {**DURABLE, **{k.replace("_", "-"): v for k, v in overrides.items()}}
        server = RedisServer(tmp_path, config)
        started.append(server)
        await server.wait_ready()
        return server.url

    yield make
    for server in started:
        server.stop()


UNSAFE = [
    ({"appendonly": "no"}, "appendonly is off"),
    ({"maxmemory_policy": "allkeys-lru"}, "maxmemory-policy is 'allkeys-lru'"),
    ({"maxmemory_policy": "volatile-ttl"}, "maxmemory-policy is 'volatile-ttl'"),
    ({"appendfsync": "everysec"}, "appendfsync is 'everysec'"),
]


@pytest.mark.parametrize(("config", "problem"), UNSAFE, ids=["aof-off", "allkeys-lru", "volatile-ttl", "everysec"])
async def test_refuses_to_start_on_a_redis_that_can_lose_writes(
    settings: Settings, redis_with: object, config: dict[str, str], problem: str
) -> None:
    url = await redis_with(**config)  # type: ignore[operator]
    with pytest.raises(UnsafeRedisConfig) as refused:
        await open_services(settings.with_(redis_url=url, redis_durability=Durability.REQUIRE))
    message = str(refused.value)
    assert message.startswith("refusing to start") and problem in message, message
    assert "EXAMHUB_REDIS_DURABILITY=warn" in message  # the refusal says how to override it


async def test_names_every_problem_at_once(settings: Settings, redis_with: object) -> None:
    url = await redis_with(appendonly="no", maxmemory_policy="allkeys-random")  # type: ignore[operator]
    with pytest.raises(UnsafeRedisConfig) as refused:
        await open_services(settings.with_(redis_url=url, redis_durability=Durability.REQUIRE))
    assert "appendonly is off" in str(refused.value) and "'allkeys-random'" in str(refused.value)


@pytest.mark.parametrize(("config", "problem"), UNSAFE[:2], ids=["aof-off", "allkeys-lru"])
async def test_warn_mode_starts_and_logs_loudly(
    settings: Settings, redis_with: object, config: dict[str, str], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = await redis_with(**config)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="server.app"):
        services = await open_services(settings.with_(redis_url=url, redis_durability=Durability.WARN))
    try:
        loud = [r for r in caplog.records if r.levelno == logging.WARNING and "CAN LOSE ACKNOWLEDGED WRITES" in
                r.getMessage()]  # fmt: skip
        assert loud and problem in loud[0].getMessage(), [r.getMessage() for r in caplog.records]
    finally:
        await close_services(services)


async def test_a_durable_redis_starts_without_a_warning(
    settings: Settings, redis_with: object, caplog: pytest.LogCaptureFixture
) -> None:
    url = await redis_with()  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="server.app"):
        services = await open_services(settings.with_(redis_url=url, redis_durability=Durability.REQUIRE))
    await close_services(services)
    assert not [r for r in caplog.records if "CAN LOSE" in r.getMessage()]
