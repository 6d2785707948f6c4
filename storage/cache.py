"""A tiered cache over Redis for content read far more often than it changes.

Tiers
  hot   live session state: the session keys of storage/keys.py. It already lives in Redis and the hub reads
        it directly; nothing here (listed so that all three tiers are described in one place).
  warm  content that changes now and then; TTL 3 h by default (EXAMHUB_CACHE_WARM_TTL_S, 1 to 6 h): question
        sets by topic and difficulty, templates, one user's performance.
  cold  aggregates over many attempts, where a day-old figure is fine; TTL 24 h: global statistics,
        leaderboards, topic analytics.

    value = await cache.get_or_load(Tier.WARM, "templates:active", load_list, tags=("templates",))
    await cache.invalidate("templates")  # after the write that changed them

Values are anything JSON can carry (what a hit returns is what JSON gives back: tuples come back as lists).
A loader returning None caches nothing (say, an unknown id: it must not let anyone fill the cache). The
cache shares Redis with live sessions, under `noeviction`: a full Redis refuses answers. So cache only
key spaces that are bounded (existing ids, a few canonical queries), never one a client's input can grow.

Key                              Type    Owner and lifetime
<prefix>:cache:<tier>:<key>      string  one entry: JSON `{"g": {tag: generation}, "v": value}`, or above 1 KiB
                                         the byte 'z' then that JSON zlib-compressed; TTL of its tier.
<prefix>:cache:tag:<tag>         set     keys of the entries registered under the tag; TTL 25 h, refreshed by each
                                         registration so it outlives every entry in it; deleted by invalidate.
<prefix>:cache:gen:<tag>         string  the tag's generation, incremented by invalidate; TTL 25 h from then.

Invalidation is precise and free of the read-write race:
- An entry records the generation of each of its tags as read in the same round trip as the miss that made
  it load, before the loader ran; a read whose recorded generations differ from the current ones is a miss.
  So a loader that read the database before a write and stores after that write's invalidation stores a
  value nobody will read (deleting keys alone would leave it live for hours).
- `invalidate(*tags)` increments the generations, then deletes the tags' entries and sets: the memory comes
  back at once, and an entry whose registration raced with the deletion is already dead by its generation.
No operation needs two keys in one hash slot (pipelines, no multi-key script), so this runs unchanged on
Redis Cluster. Within one process, concurrent misses of one key call its loader once (single flight).
When Redis does not answer, reads fall back to the loader (logged at most every 10 s); invalidate raises.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from storage import pg
from storage.analytics import ScoreEntry
from storage.outage import Outage
from storage.scripts import AnyRedis

log = logging.getLogger(__name__)


class Tier(StrEnum):
    WARM = "warm"
    COLD = "cold"


WARM_TTL_S = 3 * 3600
WARM_TTL_RANGE_S = (3600, 6 * 3600)
COLD_TTL_S = 24 * 3600
COMPRESS_ABOVE = 1024  # bytes of JSON; below that zlib saves little and costs a call each way
_ZLIB = b"z"  # no JSON text starts with it
_LOAD_SLACK_S = 3600  # generations outlive entries by this much, so a slow loader cannot outlive them

Loader = Callable[[], Awaitable[Any]]
_REDIS_DOWN = (TimeoutError, RedisError, OSError)


class CacheObserver(Protocol):
    """Told of every lookup (server/metrics.py counts them per tier)."""

    def on_cache(self, tier: str, hit: bool) -> None: ...


def encode_entry(value: Any, gens: dict[str, int]) -> tuple[bytes, bytes]:
    """(what Redis stores, the plain JSON it came from)."""
    data = orjson.dumps({"g": gens, "v": value}, option=orjson.OPT_NON_STR_KEYS)
    if len(data) > COMPRESS_ABOVE:
        return _ZLIB + zlib.compress(data, 6), data
    return data, data


def decode_entry(raw: bytes) -> tuple[dict[str, int], Any]:
    data = zlib.decompress(raw[1:]) if raw[:1] == _ZLIB else raw
    envelope = orjson.loads(data)
    return envelope["g"], envelope["v"]


class TieredCache:
    def __init__(
        self,
        redis: AnyRedis,
        prefix: str,
        *,
        warm_ttl_s: int = WARM_TTL_S,
        cold_ttl_s: int = COLD_TTL_S,
        observer: CacheObserver | None = None,
        enabled: bool = True,
    ) -> None:
        """`redis` must be a client made with decode_responses=False: compressed entries are bytes.
        `enabled=False` serves every read from its loader (benchmarks measure the uncached path with it)."""
        lo, hi = WARM_TTL_RANGE_S
        if not lo <= warm_ttl_s <= hi:
            raise ValueError(f"the warm tier's TTL must be between {lo} and {hi} s, got {warm_ttl_s}")
        self._redis = redis
        self._prefix = prefix
        self._ttl = {Tier.WARM: warm_ttl_s, Tier.COLD: cold_ttl_s}
        self._tag_ttl_s = max(self._ttl.values()) + _LOAD_SLACK_S
        self._observer = observer
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._outage = Outage(log, "cache")
        self._enabled = enabled

    def key(self, tier: Tier | str, key: str) -> str:
        return f"{self._prefix}:cache:{Tier(tier).value}:{key}"

    def tag_key(self, tag: str) -> str:
        return f"{self._prefix}:cache:tag:{tag}"

    def gen_key(self, tag: str) -> str:
        return f"{self._prefix}:cache:gen:{tag}"

    def ttl_s(self, tier: Tier | str) -> int:
        return self._ttl[Tier(tier)]

    # ---- reading ---------------------------------------------------------------------------------------

    async def get_or_load(self, tier: Tier | str, key: str, loader: Loader, tags: Iterable[str] = ()) -> Any:
        """The cached value, or the loader's (stored for the tier's TTL under `tags`). Use one key with one
        set of tags."""
        tier = Tier(tier)
        if not self._enabled:
            self._count(tier, hit=False)
            return await _plain(loader)
        full = self.key(tier, key)
        tagset = tuple(sorted(set(tags)))
        try:
            raw, gens = await self._read(full, tagset)
        except _REDIS_DOWN as exc:
            self._warn(exc)
            self._count(tier, hit=False)
            return await self._single_flight(full, lambda: _plain(loader))
        self._outage.recovered()
        if raw is not None:
            try:
                stored_gens, value = decode_entry(raw)
            except (ValueError, KeyError, TypeError, zlib.error):
                log.warning("cache entry %s is unreadable; loading it again", full)
            else:
                if stored_gens == gens:
                    self._count(tier, hit=True)
                    return value
        self._count(tier, hit=False)
        return await self._single_flight(full, lambda: self._load_and_store(tier, full, loader, gens))

    async def _read(self, full: str, tags: Sequence[str]) -> tuple[bytes | None, dict[str, int]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(full)
        for tag in tags:
            pipe.get(self.gen_key(tag))
        raw, *gens = await pipe.execute()  # one round trip (a lone GET in a pipeline costs the same)
        return raw, {tag: int(g or 0) for tag, g in zip(tags, gens, strict=True)}

    async def _single_flight(self, full: str, load: Callable[[], Awaitable[Any]]) -> Any:
        task = self._inflight.get(full)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[full] = task
            task.add_done_callback(lambda t: self._landed(full, t))
        # shield: a caller that gives up (its request was cancelled) does not cancel the others' load
        return await asyncio.shield(task)

    def _landed(self, full: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(full) is task:
            del self._inflight[full]
        if not task.cancelled():
            task.exception()  # retrieved here, so a load nobody waits for any more is not reported as lost

    async def _load_and_store(self, tier: Tier, full: str, loader: Loader, gens: dict[str, int]) -> Any:
        value = await loader()
        if value is None:
            return None
        raw, data = encode_entry(value, gens)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(full, raw, ex=self._ttl[tier])
            for tag in gens:
                pipe.sadd(self.tag_key(tag), full)
                pipe.expire(self.tag_key(tag), self._tag_ttl_s)
            await pipe.execute()
        except _REDIS_DOWN as exc:
            self._warn(exc)
        return orjson.loads(data)["v"]  # what a hit would return

    # ---- invalidating ----------------------------------------------------------------------------------

    async def invalidate(self, *tags: str) -> int:
        """Make every entry under any of `tags` a miss from now on, and delete them; how many were deleted."""
        unique = sorted(set(tags))
        if not unique:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for tag in unique:
            pipe.incr(self.gen_key(tag))
            pipe.expire(self.gen_key(tag), self._tag_ttl_s)
            pipe.smembers(self.tag_key(tag))
            pipe.delete(self.tag_key(tag))
        replies = await pipe.execute()
        members: set[bytes] = set()
        for found in replies[2::4]:
            members.update(found)
        if not members:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for member in sorted(members):
            pipe.delete(member)  # one key per command: entries live in different slots on a cluster
        return sum(await pipe.execute())

    # ---- helpers ---------------------------------------------------------------------------------------

    def _count(self, tier: Tier, *, hit: bool) -> None:
        if self._observer is not None:
            self._observer.on_cache(tier.value, hit)

    def _warn(self, exc: BaseException) -> None:
        self._outage.failed("redis unavailable (%s); serving from the source", exc)


async def _plain(loader: Loader) -> Any:
    value = await loader()
    return None if value is None else orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


# ---- shared content: the names that readers, writers and `examhub cache warm` agree on ---------------------
#
# What              Tier  Key                                  Tags                  Invalidated by
# active list       warm  templates:active                     templates             template create/update/archive
# one template      warm  templates:<id>                       templates             the same
# question set      warm  qset:<bank>:<topic>:<difficulty>     questions, bank:<id>  a question write, for each bank
#                                                                                    holding the question; membership
#                                                                                    edits and imports of that bank
# user performance  warm  user-perf:<uid>:<params>             user:<uid>            the flusher storing an attempt
#                         (default parameters only)                                  of that user
# global figures    cold  analytics:global                     analytics             every flush pass storing attempts
# topic analytics   cold  analytics:topics:<template>:<days>   analytics             the same
# leaderboard top   cold  leaderboard:<template>:<board>       leaderboard:<id>      a flush pass storing an attempt
#                         (the top LEADERBOARD_TOP, names too)                       of that template
# `questions` is on every question set, so `examhub cache invalidate questions` drops them all; the REST writes
# invalidate only the banks they touch.

TEMPLATES_TAG = "templates"
TEMPLATE_LIST_KEY = "templates:active"
ANALYTICS_TAG = "analytics"
GLOBAL_ANALYTICS_KEY = "analytics:global"
LEADERBOARD_TOP = 100  # the largest `limit` a leaderboard read may ask for: one entry serves every limit


def template_key(template_id: int) -> str:
    return f"templates:{template_id}"


def bank_tag(bank_id: int) -> str:
    return f"bank:{bank_id}"


def question_set_key(bank_id: int, topic: str, difficulty: str) -> str:
    return f"qset:{bank_id}:{topic}:{difficulty}"


def question_set_tags(bank_id: int) -> tuple[str, ...]:
    return ("questions", bank_tag(bank_id))


def user_tag(user_id: uuid.UUID | str) -> str:
    return f"user:{uuid.UUID(str(user_id))}"  # one spelling whatever the caller holds


def user_performance_key(user_id: uuid.UUID | str, params: str) -> str:
    return f"user-perf:{uuid.UUID(str(user_id))}:{params}"


def topic_analytics_key(template_id: int | None, days: int | None) -> str:
    return f"analytics:topics:{template_id or 'all'}:{days or 'all'}"


def leaderboard_tag(template_id: int) -> str:
    return f"leaderboard:{template_id}"


def leaderboard_key(template_id: int, board: str) -> str:
    """`board` names the period's board ("all", "2024-03-06", "2024-W10"): a new day is a new entry."""
    return f"leaderboard:{template_id}:{board}"


def flushed_tags(attempts: Iterable[ScoreEntry]) -> list[str]:
    """What a flush pass that stored these attempts makes stale: their users' performance, their templates'
    leaderboards, and the analytics (once)."""
    tags = {ANALYTICS_TAG}
    for template_id, _sid, user_id, _score, _finished_at in attempts:
        tags.add(user_tag(user_id))
        tags.add(leaderboard_tag(template_id))
    return sorted(tags)


async def question_bank_tags(pool: pg.Pool, question_ids: Sequence[int]) -> list[str]:
    """The bank tags of every bank holding any of these questions (read after the write that changed them)."""
    rows = await pool.fetch(
        "SELECT DISTINCT bank_id FROM question_bank_members WHERE question_id = ANY($1::bigint[]) ORDER BY bank_id",
        list(question_ids),
    )
    return [bank_tag(r["bank_id"]) for r in rows]


# never q.correct nor q.explanation: what is not selected cannot leak into a student's set
_PUBLIC_COLUMNS = (
    "q.id, q.subject, q.curriculum, q.grade, q.topic, q.difficulty, q.category, q.text, q.options, q.marks"
)
_LIVE_MEMBERS = """FROM questions q JOIN question_bank_members m ON m.question_id = q.id
                   WHERE m.bank_id = $1 AND q.retired_at IS NULL AND q.verification_status <> 'rejected'"""


def public_question(row: Mapping[str, Any]) -> dict[str, Any]:
    """A question without its answer key or explanation, safe to show before an attempt: the fields of a
    student's practice question (PublicQuestionOut in server/routes/questions.py)."""
    return {
        "id": row["id"],
        "subject": row["subject"],
        "curriculum": row["curriculum"],
        "grade": row["grade"],
        "topic": row["topic"],
        "difficulty": row["difficulty"],
        "category": row["category"],
        "text": row["text"],
        "options": [{"id": o["id"], "text": o["text"]} for o in row["options"]],
        "marks": row["marks"],
    }


async def question_sets(pool: pg.Pool, bank_id: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """A bank's live questions (public form) grouped by (topic, difficulty), in id order."""
    sets: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in await pool.fetch(f"SELECT {_PUBLIC_COLUMNS} {_LIVE_MEMBERS} ORDER BY q.id", bank_id):
        sets.setdefault((r["topic"], r["difficulty"]), []).append(public_question(r))
    return sets


async def load_question_set(pool: pg.Pool, bank_id: int, topic: str, difficulty: str) -> list[dict[str, Any]] | None:
    """The loader of `question_set_key`: None (nothing cached) when the bank has no such questions, so only
    sets that exist ever get a key, whatever topic a request names."""
    rows = await pool.fetch(
        f"SELECT {_PUBLIC_COLUMNS} {_LIVE_MEMBERS} AND q.topic = $2 AND q.difficulty = $3 ORDER BY q.id",
        bank_id, topic, difficulty,
    )  # fmt: skip
    return [public_question(r) for r in rows] or None
