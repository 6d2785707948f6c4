"""Rate limits by GCRA (the generic cell rate algorithm): a bucket is one number, its theoretical arrival
time (TAT), and a request is allowed when it would not push the TAT more than the burst ahead of now.

Two implementations of the same arithmetic, held to one contract (tests/storage/test_ratelimit.py):
- `RedisLimiter` runs storage/lua/gcra.lua on Redis' clock, so every hub process shares the bucket. REST uses
  it, per client IP and per user; one pipeline round trip per request checks both.
- `LocalBucket` keeps the bucket in process memory. The WebSocket hot path uses it, one per connection: a
  session is served by one connection in one process at a time (a newer connection fences the older), so the
  bucket needs no sharing and a message costs no Redis round trip. A reconnect starts with a full bucket;
  reconnecting is itself limited per IP, as the handshake is an HTTP GET that the REST limiter sees.

Key                            Type    Owner and lifetime
<prefix>:rl:<scope>:<id>       string  the bucket's TAT in microseconds (Redis clock); expires (PX) when the
                                       bucket would be full again, so an idle client costs nothing.

When Redis does not answer, `RedisLimiter.check` fails OPEN (allows, logs at most every 10 s): availability
over strictness, and with Redis down the exams stop anyway.

Under a flood (one address opening hundreds of connections at once) two things keep the limiter from becoming
the attack's amplifier (tests/security/test_floods.py):
- at most `concurrency` checks wait on Redis at a time; the rest queue in process. Without this bound every
  request in flight held a pooled Redis connection, the pool (100) ran dry and the *students'* writes failed
  with "Too many connections" while the limiter, failing open, let the flood through.
- with `local_first`, each process keeps an in-memory bucket per key with the same rate (bounded LRU) and
  refuses locally what it alone has already seen too much of, without a Redis round trip. One process sees at
  most what all see, so a local refusal is one the shared bucket would make too (the local bucket is also
  charged for the rare request the shared bucket then refuses: a client already over its limit).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from storage.outage import Outage

if TYPE_CHECKING:
    from storage.scripts import AnyRedis, Script

# redis is imported inside RedisLimiter only: server/settings.py imports Rate, and every `examhub` command
# (even `examhub sit`) would otherwise pay ~80 ms to import redis-py.

log = logging.getLogger(__name__)

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*(?:,\s*burst\s*=\s*(\d+)\s*)?$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period_s`, and up to `burst` at once after an idle spell."""

    count: int
    period_s: float = 1.0
    burst: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or self.period_s <= 0 or self.burst < 1:
            raise ValueError("a rate needs count >= 1, a positive period and burst >= 1")

    @property
    def interval_ms(self) -> float:
        """The emission interval: the time one request is worth."""
        return self.period_s * 1000 / self.count

    @property
    def tolerance_ms(self) -> float:
        return (self.burst - 1) * self.interval_ms

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """'50/s', '600/min,burst=100', '1000/h'; 'off' (or '0') for no limit. The burst defaults to `count`."""
        raw = text.strip().lower()
        if raw in ("off", "0", "none"):
            return None
        m = _RATE.match(raw)
        if m is None or m.group(2) not in _PERIODS:
            raise ValueError(f"a rate looks like '50/s', '600/min,burst=100' or 'off', not {text!r}")
        count = int(m.group(1))
        burst = int(m.group(3)) if m.group(3) else count
        return cls(count, _PERIODS[m.group(2)], burst)

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period_s)
        per = unit if unit else f"{self.period_s}s"
        return f"{self.count}/{per},burst={self.burst}"


class Verdict(NamedTuple):  # one per WebSocket message: a tuple is ~3x cheaper to make than a frozen dataclass
    allowed: bool
    retry_after_ms: int  # 0 when allowed
    remaining: int  # how many more would be allowed right now


def gcra(tat_us: int | None, now_us: int, rate: Rate) -> tuple[Verdict, int | None]:
    """One GCRA step in whole microseconds, as gcra.lua does it: the verdict and the new TAT (None: unchanged)."""
    interval = max(1, round(rate.interval_ms * 1000))
    tolerance = round(rate.tolerance_ms * 1000)
    tat = now_us if tat_us is None else max(tat_us, now_us)
    new_tat = tat + interval
    diff = now_us - (new_tat - tolerance - interval)
    if diff < 0:
        return Verdict(False, math.ceil(-diff / 1000), 0), None
    return Verdict(True, 0, diff // interval), new_tat


class LocalBucket:
    """One in-process GCRA bucket (not shared: see the module docstring for when that is right)."""

    __slots__ = ("_clock", "_interval", "_rate", "_tat", "_tolerance")

    def __init__(self, rate: Rate, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._rate = rate
        self._clock = clock  # nanoseconds
        self._tat: int | None = None
        # gcra()'s two figures, worked out once: check() runs on every WebSocket message
        self._interval = max(1, round(rate.interval_ms * 1000))
        self._tolerance = round(rate.tolerance_ms * 1000)

    @property
    def refill_s(self) -> float:
        """How long an empty bucket takes to be full again."""
        return self._rate.burst * self._rate.interval_ms / 1000

    def check(self) -> Verdict:
        """gcra() with this bucket's figures (tests/storage/test_ratelimit.py holds the two to the same answers)."""
        now, interval = self._clock() // 1000, self._interval
        tat = self._tat
        new_tat = (now if tat is None or tat < now else tat) + interval
        diff = now - (new_tat - self._tolerance - interval)
        if diff < 0:
            return Verdict(False, math.ceil(-diff / 1000), 0)
        self._tat = new_tat
        return Verdict(True, 0, diff // interval)


def _script() -> Script:
    from importlib import resources

    from storage.scripts import Script

    return Script("gcra", resources.files("storage").joinpath("lua", "gcra.lua").read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # what is limited ("ip", "user"): part of the key, and the label of the refusal metric
    id: str
    rate: Rate


class RedisLimiter:
    """Buckets shared by every hub process, in Redis."""

    def __init__(
        self, redis: AnyRedis, prefix: str, *, concurrency: int = 16, local_first: bool = False,
        local_keys: int = 10_000,
    ) -> None:  # fmt: skip
        self._redis = redis
        self._prefix = prefix
        self.script = _script()
        self._outage = Outage(log, "rate limiter")
        self._slots = asyncio.Semaphore(concurrency)  # checks waiting on Redis at once (see the module docstring)
        self._local: OrderedDict[str, tuple[Rate, LocalBucket]] | None = OrderedDict() if local_first else None
        self._local_keys = local_keys

    def _local_refusal(self, limits: Sequence[Limit]) -> tuple[Limit, Verdict] | None:
        """The in-process pre-check (local_first): the first limit this process alone has seen exceeded."""
        if self._local is None:
            return None
        for limit in limits:
            key = self.key(limit.scope, limit.id)
            entry = self._local.get(key)
            if entry is None or entry[0] != limit.rate:
                entry = (limit.rate, LocalBucket(limit.rate))
                self._local[key] = entry
                if len(self._local) > self._local_keys:
                    self._local.popitem(last=False)  # the least recently seen key
            else:
                self._local.move_to_end(key)
            verdict = entry[1].check()
            if not verdict.allowed:
                return limit, verdict
        return None

    def key(self, scope: str, id_: str) -> str:
        return f"{self._prefix}:rl:{scope}:{id_}"

    async def check(self, limits: Sequence[Limit]) -> tuple[Limit, Verdict] | None:
        """Take one request from every bucket named; the first refusal (in order), or None when all allow.

        Fails open when Redis does not answer."""
        from redis.exceptions import RedisError

        if not limits:
            return None
        local = self._local_refusal(limits)
        if local is not None:
            return local
        try:
            async with self._slots:
                replies = await self._run(limits, reload_allowed=True)
        except (TimeoutError, RedisError, OSError) as exc:
            self._outage.failed("redis unavailable (%s); allowing requests unchecked", exc)
            return None
        self._outage.recovered()
        for limit, (allowed, retry_after_ms, remaining) in zip(limits, replies, strict=True):
            if not allowed:
                return limit, Verdict(False, int(retry_after_ms), int(remaining))
        return None

    async def _run(self, limits: Sequence[Limit], *, reload_allowed: bool) -> list[list[int]]:
        from redis.exceptions import NoScriptError

        pipe = self._redis.pipeline(transaction=False)
        for limit in limits:
            rate = limit.rate
            key = self.key(limit.scope, limit.id)
            # not pipe.evalsha: redis-py's cluster pipelines refuse it by name
            pipe.execute_command("EVALSHA", self.script.sha, 1, key, rate.interval_ms, rate.tolerance_ms)
        replies: list[list[int] | Exception] = await pipe.execute(raise_on_error=False)
        lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if lost and reload_allowed:
            # Redis restarted and lost its script cache: those calls did not run; run just them again.
            await self._redis.script_load(self.script.source)
            again = await self._run([limits[i] for i in lost], reload_allowed=False)
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        out: list[list[int]] = []
        for r in replies:
            if isinstance(r, Exception):
                raise r
            out.append(r)
        return out
