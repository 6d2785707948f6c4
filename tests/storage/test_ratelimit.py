"""GCRA: one contract for both buckets (gcra.lua on real Redis, and the in-process LocalBucket), plus the
Redis limiter's own duties (key expiry, lost script cache, failing open) and rate parsing."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from server.settings import Settings, SettingsError
from storage.embedded import free_port
from storage.ratelimit import Limit, LocalBucket, Rate, RedisLimiter, Verdict, gcra
from storage.scripts import Script

Check = Callable[[], Awaitable[Verdict]]
BucketFactory = Callable[[Rate], Check]


@pytest.fixture(params=["redis", "local"])
def bucket(request: pytest.FixtureRequest, redis: Redis, prefix: str) -> BucketFactory:
    """A factory of one fresh bucket's check(), for each implementation."""

    def make(rate: Rate) -> Check:
        if request.param == "local":
            local = LocalBucket(rate)

            async def check_local() -> Verdict:
                return local.check()

            return check_local
        limiter = RedisLimiter(redis, prefix)
        limit = Limit("test", secrets.token_hex(4), rate)

        async def check_redis() -> Verdict:
            refused = await limiter.check([limit])
            if refused is None:
                return Verdict(True, 0, -1)  # the limiter reports refusals only
            return refused[1]

        return check_redis

    return make


async def test_the_burst_is_allowed_then_the_rest_refused(bucket: BucketFactory) -> None:
    check = bucket(Rate(1, 60.0, burst=3))  # one a minute: nothing refills during the test
    verdicts = [await check() for _ in range(10)]
    assert [v.allowed for v in verdicts] == [True] * 3 + [False] * 7
    # the next request is one emission interval (60 s) after the burst's first, give or take the test's run time
    assert all(50_000 < v.retry_after_ms <= 60_000 for v in verdicts[3:])


async def test_a_refused_client_recovers_after_retry_after(bucket: BucketFactory) -> None:
    check = bucket(Rate(20, 1.0, burst=2))  # one every 50 ms
    first = [await check() for _ in range(2)]
    assert all(v.allowed for v in first)
    refused = await check()
    while refused.allowed:  # the machine was slow enough for a refill: drain again
        refused = await check()
    assert 0 < refused.retry_after_ms <= 50
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.01)
    assert (await check()).allowed


def test_gcra_arithmetic_with_a_fake_clock() -> None:
    now = [1_000_000_000]  # ns
    bucket = LocalBucket(Rate(10, 1.0, burst=3), clock=lambda: now[0])
    got = [bucket.check() for _ in range(4)]
    assert [(v.allowed, v.remaining) for v in got] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    assert got[3].retry_after_ms == 100  # exactly one emission interval
    now[0] += 99_000_000
    assert not bucket.check().allowed
    now[0] += 1_000_000
    assert bucket.check().allowed
    now[0] += 10_000_000_000  # a long idle spell refills to the burst, never beyond
    assert [bucket.check().allowed for _ in range(4)] == [True, True, True, False]


def test_gcra_refusal_leaves_the_bucket_unchanged() -> None:
    rate = Rate(1, 1.0, burst=1)
    verdict, tat = gcra(5_000_000, 4_000_000, rate)
    assert not verdict.allowed and tat is None and verdict.retry_after_ms == 1000


async def test_the_redis_key_expires_when_the_bucket_is_full_again(redis: Redis, prefix: str) -> None:
    limiter = RedisLimiter(redis, prefix)
    limit = Limit("ip", "192.0.2.1", Rate(1, 60.0, burst=5))
    assert await limiter.check([limit]) is None
    ttl_ms = await redis.pttl(limiter.key("ip", "192.0.2.1"))
    assert 59_000 < ttl_ms <= 60_000  # one request taken: full again one interval later
    assert limiter.key("ip", "192.0.2.1") == f"{prefix}:rl:ip:192.0.2.1"


async def test_several_limits_in_one_call_report_the_refusing_one(redis: Redis, prefix: str) -> None:
    limiter = RedisLimiter(redis, prefix)
    ip = Limit("ip", "198.51.100.7", Rate(100, 1.0, burst=100))
    user = Limit("user", "u1", Rate(1, 60.0, burst=1))
    assert await limiter.check([ip, user]) is None
    refused = await limiter.check([ip, user])
    assert refused is not None and refused[0] is user and not refused[1].allowed


async def test_a_lost_script_cache_is_reloaded(redis: Redis, prefix: str) -> None:
    limiter = RedisLimiter(redis, prefix)
    # A script source Redis has never seen stands for a Redis that restarted and forgot its scripts.
    limiter.script = Script("gcra", limiter.script.source + f"\n-- {secrets.token_hex(8)}")
    assert await redis.script_exists(limiter.script.sha) == [False]
    limit = Limit("ip", "203.0.113.9", Rate(1, 60.0, burst=1))
    assert await limiter.check([limit]) is None
    refused = await limiter.check([limit])
    assert refused is not None and not refused[1].allowed
    assert await redis.script_exists(limiter.script.sha) == [True]


async def test_redis_down_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        limiter = RedisLimiter(dead, "x")
        limit = Limit("ip", "192.0.2.2", Rate(1, 60.0, burst=1))
        assert [await limiter.check([limit]) for _ in range(3)] == [None, None, None]
    finally:
        await dead.aclose()
    warnings = [r for r in caplog.records if "allowing requests unchecked" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per request


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50/s", Rate(50, 1.0, 50)),
        ("50/s,burst=100", Rate(50, 1.0, 100)),
        ("600 / min , burst = 20", Rate(600, 60.0, 20)),
        ("1000/h", Rate(1000, 3600.0, 1000)),
        ("off", None),
        ("0", None),
    ],
)
def test_rate_parse(text: str, expected: Rate | None) -> None:
    assert Rate.parse(text) == expected


@pytest.mark.parametrize("text", ["50", "50/fortnight", "-1/s", "0/s", "50/s,burst=0", "50/s,burst=x", "fast"])
def test_rate_parse_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate.parse(text)


def test_settings_read_the_rates_and_name_a_bad_one() -> None:
    s = Settings.from_env({"EXAMHUB_RATE_REST_IP": "5/s,burst=7", "EXAMHUB_RATE_WS_MSGS": "off"})
    assert s.rate_rest_ip == Rate(5, 1.0, 7) and s.rate_ws_msgs is None
    assert s.rate_rest_user == Settings().rate_rest_user  # unset: the default
    with pytest.raises(SettingsError, match="EXAMHUB_RATE_REST_USER"):
        Settings.from_env({"EXAMHUB_RATE_REST_USER": "lots"})
    with pytest.raises(SettingsError, match="EXAMHUB_CACHE_WARM_TTL_S"):
        Settings.from_env({"EXAMHUB_CACHE_WARM_TTL_S": "60"})


@pytest.mark.parametrize("rate", [Rate(1), Rate(10, 1.0, 20), Rate(3, 60.0, 5), Rate(7, 0.5, 1)])
def test_the_local_bucket_answers_as_gcra_does(rate: Rate) -> None:
    """LocalBucket.check() works gcra()'s arithmetic with figures it made once (it runs on every message)."""
    import random

    rng = random.Random(str(rate))
    now_ns = 10**12
    bucket = LocalBucket(rate, clock=lambda: now_ns)
    tat: int | None = None
    for _ in range(2000):
        now_ns += rng.choice([0, 1_000, 50_000, int(rate.interval_ms * 1e6 * rng.random()), 10**9])
        expected, new_tat = gcra(tat, now_ns // 1000, rate)
        tat = new_tat if new_tat is not None else tat
        assert bucket.check() == expected
