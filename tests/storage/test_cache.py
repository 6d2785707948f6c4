"""The tiered cache on real Redis: hits and misses (and their Prometheus counters), precise invalidation by
tag, the read-write race, compression, single flight, TTLs, and Redis being down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.metrics import Metrics
from storage.cache import COLD_TTL_S, WARM_TTL_S, Tier, TieredCache, decode_entry, encode_entry
from storage.embedded import free_port
from tests.conftest import REDIS_URL


@pytest.fixture
async def raw_redis(redis: Redis) -> AsyncIterator[Redis]:
    """A bytes client, as the cache needs (the `redis` fixture deletes this test's keys afterwards)."""
    client = Redis.from_url(REDIS_URL, decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def cache(raw_redis: Redis, prefix: str, metrics: Metrics) -> TieredCache:
    return TieredCache(raw_redis, prefix, observer=metrics)


class Loader:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return self.value


def counter(metrics: Metrics, name: str, tier: str) -> float:
    return metrics.registry.get_sample_value(f"examhub_cache_{name}_total", {"tier": tier}) or 0.0


async def test_a_miss_loads_and_stores_then_hits_count_per_tier(cache: TieredCache, metrics: Metrics) -> None:
    load = Loader({"n": 1})
    assert await cache.get_or_load(Tier.WARM, "k", load) == {"n": 1}
    assert await cache.get_or_load(Tier.WARM, "k", load) == {"n": 1}
    assert await cache.get_or_load("warm", "k", load) == {"n": 1}
    assert load.calls == 1
    assert counter(metrics, "misses", "warm") == 1 and counter(metrics, "hits", "warm") == 2
    cold = Loader([1, 2])
    await cache.get_or_load(Tier.COLD, "k", cold)  # same key, other tier: its own entry
    assert cold.calls == 1 and counter(metrics, "misses", "cold") == 1 and counter(metrics, "hits", "cold") == 0


async def test_keys_and_ttls_follow_the_layout(cache: TieredCache, raw_redis: Redis, prefix: str) -> None:
    await cache.get_or_load(Tier.WARM, "w", Loader(1), tags=("t",))
    await cache.get_or_load(Tier.COLD, "c", Loader(2), tags=("t",))
    warm_ttl = await raw_redis.ttl(f"{prefix}:cache:warm:w")
    cold_ttl = await raw_redis.ttl(f"{prefix}:cache:cold:c")
    tag_ttl = await raw_redis.ttl(f"{prefix}:cache:tag:t")
    assert WARM_TTL_S - 60 < warm_ttl <= WARM_TTL_S and COLD_TTL_S - 60 < cold_ttl <= COLD_TTL_S
    assert tag_ttl > cold_ttl  # the tag set outlives every entry registered in it
    members = await raw_redis.smembers(f"{prefix}:cache:tag:t")
    assert members == {f"{prefix}:cache:warm:w".encode(), f"{prefix}:cache:cold:c".encode()}


async def test_invalidate_deletes_exactly_the_tagged_entries(cache: TieredCache, raw_redis: Redis, prefix: str) -> None:
    entries = {"a1": ("a",), "a2": ("a",), "ab": ("a", "b"), "b1": ("b",), "plain": ()}
    loaders = {k: Loader(k) for k in entries}
    for k, tags in entries.items():
        await cache.get_or_load(Tier.WARM, k, loaders[k], tags=tags)
    assert await cache.invalidate("a") == 3
    exists = {k: await raw_redis.exists(f"{prefix}:cache:warm:{k}") for k in entries}
    assert exists == {"a1": 0, "a2": 0, "ab": 0, "b1": 1, "plain": 1}
    for k, tags in entries.items():
        assert await cache.get_or_load(Tier.WARM, k, loaders[k], tags=tags) == k
    assert {k: v.calls for k, v in loaders.items()} == {"a1": 2, "a2": 2, "ab": 2, "b1": 1, "plain": 1}
    assert await cache.invalidate("nobody-uses-this-tag") == 0
    assert await cache.invalidate() == 0


async def test_a_value_loaded_before_a_write_is_never_served_after_it(cache: TieredCache) -> None:
    """The loader read the old data, then the write and its invalidation happened, then the store."""

    async def slow_old_read() -> str:
        await cache.invalidate("t")  # the write lands while this loader is still running
        return "old"

    assert await cache.get_or_load(Tier.WARM, "k", slow_old_read, tags=("t",)) == "old"
    fresh = Loader("new")
    assert await cache.get_or_load(Tier.WARM, "k", fresh, tags=("t",)) == "new"
    assert fresh.calls == 1
    assert await cache.get_or_load(Tier.WARM, "k", fresh, tags=("t",)) == "new" and fresh.calls == 1


async def test_large_values_are_compressed_and_round_trip(cache: TieredCache, raw_redis: Redis, prefix: str) -> None:
    big = [{"id": i, "text": f"question {i} about the mitochondrion", "options": ["a", "b", "c", "d"]}
           for i in range(300)]  # fmt: skip
    load = Loader(big)
    assert await cache.get_or_load(Tier.WARM, "big", load) == big
    raw = await raw_redis.get(f"{prefix}:cache:warm:big")
    assert raw[:1] == b"z" and len(raw) < len(json.dumps(big)) / 3
    assert await cache.get_or_load(Tier.WARM, "big", load) == big and load.calls == 1
    await cache.get_or_load(Tier.WARM, "small", Loader({"x": "é"}))
    small = await raw_redis.get(f"{prefix}:cache:warm:small")
    assert json.loads(small) == {"g": {}, "v": {"x": "é"}}  # plain JSON below 1 KiB


def test_entry_encoding_round_trips_both_ways() -> None:
    for value in (None, 0, "x", [1, {"a": [True, None]}], {"k": "v" * 5000}):
        raw, _ = encode_entry(value, {"t": 4})
        assert decode_entry(raw) == ({"t": 4}, value)


async def test_concurrent_misses_call_the_loader_once(cache: TieredCache, metrics: Metrics) -> None:
    calls = 0
    gate = asyncio.Event()

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"v": 42}

    waiters = [asyncio.create_task(cache.get_or_load(Tier.WARM, "sf", load)) for _ in range(20)]
    for _ in range(1000):  # until every one of them has missed and waits (a loaded machine may take a while)
        if counter(metrics, "misses", "warm") == 20:
            break
        await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*waiters) == [{"v": 42}] * 20
    assert calls == 1
    assert counter(metrics, "misses", "warm") == 20  # each missed Redis; one of them loaded


async def test_a_failing_loader_fails_every_waiter_and_caches_nothing(cache: TieredCache) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("database said no")

    results = await asyncio.gather(*(cache.get_or_load(Tier.WARM, "e", broken) for _ in range(5)),
                                   return_exceptions=True)  # fmt: skip
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    assert await cache.get_or_load(Tier.WARM, "e", Loader("ok")) == "ok"


async def test_a_cancelled_caller_does_not_cancel_the_others(cache: TieredCache) -> None:
    gate = asyncio.Event()

    async def load() -> str:
        await gate.wait()
        return "v"

    first = asyncio.create_task(cache.get_or_load(Tier.WARM, "c", load))
    second = asyncio.create_task(cache.get_or_load(Tier.WARM, "c", load))
    await asyncio.sleep(0.02)
    first.cancel()
    gate.set()
    assert await second == "v"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_none_is_returned_but_not_cached(cache: TieredCache, raw_redis: Redis, prefix: str) -> None:
    load = Loader(None)
    assert await cache.get_or_load(Tier.WARM, "missing", load) is None
    assert await cache.get_or_load(Tier.WARM, "missing", load) is None
    assert load.calls == 2 and not await raw_redis.exists(f"{prefix}:cache:warm:missing")


async def test_an_unreadable_entry_is_a_miss(cache: TieredCache, raw_redis: Redis, prefix: str) -> None:
    await raw_redis.set(f"{prefix}:cache:warm:bad", b"z not zlib")
    assert await cache.get_or_load(Tier.WARM, "bad", Loader([1])) == [1]
    assert decode_entry(await raw_redis.get(f"{prefix}:cache:warm:bad")) == ({}, [1])


async def test_redis_down_serves_from_the_loader(metrics: Metrics) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        cache = TieredCache(dead, "x", observer=metrics)
        load = Loader({"from": "db"})
        assert await cache.get_or_load(Tier.WARM, "k", load, tags=("t",)) == {"from": "db"}
        assert load.calls == 1 and counter(metrics, "misses", "warm") == 1
        with pytest.raises(RedisError):  # an invalidation that did not happen must say so
            await cache.invalidate("t")
    finally:
        await dead.aclose()


def test_the_warm_ttl_must_be_between_one_and_six_hours(raw_redis: Redis) -> None:
    TieredCache(raw_redis, "x", warm_ttl_s=3600)
    TieredCache(raw_redis, "x", warm_ttl_s=6 * 3600)
    with pytest.raises(ValueError, match="warm"):
        TieredCache(raw_redis, "x", warm_ttl_s=600)
    with pytest.raises(ValueError, match="warm"):
        TieredCache(raw_redis, "x", warm_ttl_s=7 * 3600)


async def test_a_disabled_cache_always_loads_and_stores_nothing(raw_redis: Redis, prefix: str) -> None:
    cache = TieredCache(raw_redis, prefix, enabled=False)
    calls = []

    async def loader() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert await cache.get_or_load(Tier.WARM, "k", loader) == {"n": 1}
    assert await cache.get_or_load(Tier.WARM, "k", loader) == {"n": 2}
    assert [k async for k in raw_redis.scan_iter(match=f"{prefix}:cache:*")] == []
