"""A three-master Redis Cluster on spare ports, started once per test run with the machine's redis-server, and
the clients the storage contract tests take (the same fixture names as tests/conftest.py and
tests/storage/conftest.py, so those tests run here again, against the cluster)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster

from storage.embedded import free_port
from storage.keys import Keys
from storage.scripts import Scripts
from storage.session_store import RedisSessionStore
from storage.writer import CoalescingWriter

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
MASTERS = 3


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        # a cluster node also listens on port + 10000 (the cluster bus): both must be free and below 65536
        port = free_port()
        if port not in ports and port + 10000 < 65536 and port + 10000 not in ports:
            ports.append(port)
    return ports


def _wait_ok(ports: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for port in ports:
        client = SyncRedis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    if client.cluster("INFO")["cluster_state"] == "ok":
                        break
                except OSError:
                    pass
                except Exception as exc:  # redis-py wraps refused connections in its own errors
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {port}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not reach cluster_state:ok on node {port}")
                time.sleep(0.05)
        finally:
            client.close()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis://127.0.0.1:P1/0` of a fresh three-master cluster (no replicas), durable as examhub requires."""
    if shutil.which(REDIS_SERVER) is None or shutil.which(REDIS_CLI) is None:
        pytest.skip(f"the Redis Cluster tests need {REDIS_SERVER} and {REDIS_CLI} (Redis 7)")
    base = tmp_path_factory.mktemp("redis-cluster")
    ports = _ports(MASTERS)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            data = base / str(port)
            data.mkdir()
            log = (base / f"{port}.log").open("wb")
            procs.append(subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(base / f"nodes-{port}.conf"), "--appendonly", "yes",
                 "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--save", "", "--dir", str(data),
                 "--bind", "127.0.0.1", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            log.close()
        _wait_up(ports, procs, base)
        create = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout.decode()[-2000:]}")
        _wait_ok(ports, 30)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)


def _wait_up(ports: list[int], procs: list[subprocess.Popen[bytes]], base: Path) -> None:
    deadline = time.monotonic() + 10
    for port, proc in zip(ports, procs, strict=True):
        client = SyncRedis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {port} exited: {(base / f'{port}.log').read_text()[-2000:]}")
                try:
                    client.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()


@pytest.fixture
async def redis(cluster_url: str, prefix: str) -> AsyncIterator[RedisCluster]:
    """A client of the cluster (text replies), as tests/conftest.py's `redis` is of the single Redis; deletes
    this test's keys afterwards."""
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)  # redis-py splits a multi-key DEL per slot on a cluster
    await client.aclose()


@pytest.fixture
async def writer(redis: RedisCluster) -> AsyncIterator[CoalescingWriter]:
    w = CoalescingWriter(redis, Scripts.load())
    await w.start()
    yield w
    await w.close()


@pytest.fixture
def store(redis: RedisCluster, writer: CoalescingWriter, prefix: str) -> RedisSessionStore:
    return RedisSessionStore(redis, writer, Scripts.load(), Keys(prefix), created_ttl_s=3600)
