"""The tiered cache behind the hot REST reads, through the real app: a first read misses, the next hits with
the same value, and each write (a question edit, a membership change, an import, a flushed attempt) makes stale
exactly the entries it changed and no others. Hits and misses are read from the app's Prometheus counters."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from storage import pg
from storage.cache import Tier, decode_entry, question_set_key
from tests.conftest import template_id
from tests.server.conftest import bearer, guest, services, token_for
from tests.server.test_analytics import sit
from tests.server.test_questions import Tokens, add_to_bank, body, create, error, new_bank, tokens, unique_topic
from tests.storage.test_analytics import new_template

Client = TestClient[Any, Any]
# PublicQuestionOut's fields (not imported: importing one route module first would keep load() from the others)
PUBLIC_FIELDS = {"id", "subject", "curriculum", "grade", "topic", "difficulty", "category", "text", "options", "marks"}


class Lookups:
    """The hits and misses of one tier since the last `take`."""

    def __init__(self, client: Client, tier: Tier) -> None:
        self._registry = services(client).metrics.registry
        self._tier = tier.value
        self._last = self._now()

    def _now(self) -> tuple[float, float]:
        def get(kind: str) -> float:
            return self._registry.get_sample_value(f"examhub_cache_{kind}_total", {"tier": self._tier}) or 0.0

        return get("hits"), get("misses")

    def take(self) -> tuple[int, int]:
        now = self._now()
        hits, misses = int(now[0] - self._last[0]), int(now[1] - self._last[1])
        self._last = now
        return hits, misses


async def get_json(client: Client, path: str, token: str) -> Any:
    r = await client.get(path, headers=bearer(token))
    assert r.status == 200, await r.text()
    return await r.json()


# ---- question sets (warm) --------------------------------------------------------------------------------


class Practice:
    """A student drawing practice sets of one topic."""

    def __init__(self, client: Client, t: Tokens, topic: str) -> None:
        self.client, self.t, self.topic = client, t, topic
        self.warm = Lookups(client, Tier.WARM)

    async def draw(self, bank_id: int, query: str = "&difficulty=easy", count: int = 100) -> list[dict[str, Any]]:
        path = f"/api/questions/random?bank_id={bank_id}&topic={self.topic}&count={count}{query}"
        out = await get_json(self.client, path, self.t.student)
        assert out["full"] is False
        for q in out["questions"]:
            assert set(q) == PUBLIC_FIELDS and "correct" not in q and "explanation" not in q
        return sorted(out["questions"], key=lambda q: q["id"])

    async def ids(self, bank_id: int, query: str = "&difficulty=easy") -> list[int]:
        return [q["id"] for q in await self.draw(bank_id, query)]


async def two_banks(client: Client, t: Tokens, topic: str) -> tuple[int, int, list[dict[str, Any]], dict[str, Any]]:
    """Bank one holds three easy questions of `topic`, bank two a fourth one."""
    qs = [await create(client, t.admin, topic=topic, curriculum=f"c{i}") for i in range(3)]
    other = await create(client, t.admin, topic=topic)
    one, two = (await new_bank(client, t.admin))["id"], (await new_bank(client, t.admin))["id"]
    await add_to_bank(client, t.admin, one, [q["id"] for q in qs])
    await add_to_bank(client, t.admin, two, [other["id"]])
    return one, two, qs, other


async def test_a_students_practice_set_is_sampled_from_the_cache_without_answers(client: Client) -> None:
    t = await tokens(client)
    s = services(client)
    topic = unique_topic()
    one, _, qs, _ = await two_banks(client, t, topic)
    hard = await create(client, t.admin, topic=topic, difficulty="hard")
    await add_to_bank(client, t.admin, one, [hard["id"]])
    p = Practice(client, t, topic)

    first = await p.draw(one)
    assert p.warm.take() == (0, 1)
    assert [q["id"] for q in first] == [q["id"] for q in qs]
    assert first[0]["text"] == qs[0]["text"] and first[0]["curriculum"] == "c0"
    assert await p.draw(one) == first
    assert p.warm.take() == (1, 0)
    # what Redis holds is the public form too: no answer key, no explanation
    raw = await s.cache_redis.get(s.cache.key(Tier.WARM, question_set_key(one, topic, "easy")))
    assert isinstance(raw, bytes)
    _, stored = decode_entry(raw)
    assert [q["id"] for q in stored] == [q["id"] for q in qs]
    assert all(set(q) == PUBLIC_FIELDS for q in stored)

    two = await p.draw(one, count=2)
    assert len(two) == 2 and {q["id"] for q in two} <= {q["id"] for q in qs}
    assert p.warm.take() == (1, 0)
    assert await p.ids(one, "&difficulty=easy&curriculum=c1") == [qs[1]["id"]]  # filtered from the cached set
    assert p.warm.take() == (1, 0)

    # no difficulty: the topic's three sets (easy cached, hard loaded, medium does not exist)
    assert await p.ids(one, "") == sorted([q["id"] for q in qs] + [hard["id"]])
    assert p.warm.take() == (1, 2)
    assert await p.ids(one, "") == sorted([q["id"] for q in qs] + [hard["id"]])
    assert p.warm.take() == (2, 1)
    assert not await s.cache_redis.exists(s.cache.key(Tier.WARM, question_set_key(one, topic, "medium")))


async def test_only_sets_that_exist_get_a_key_and_staff_or_bankless_draws_bypass_the_cache(client: Client) -> None:
    t = await tokens(client)
    s = services(client)
    topic = unique_topic()
    one, _, _, _ = await two_banks(client, t, topic)
    warm = Lookups(client, Tier.WARM)

    staff = await get_json(client, f"/api/questions/random?bank_id={one}&topic={topic}", t.proctor)
    assert staff["full"] is True and {q["correct"] for q in staff["questions"]} == {"a"}
    bankless = await get_json(client, f"/api/questions/random?topic={topic}&count=100", t.student)
    assert len(bankless["questions"]) == 4 and all("correct" not in q for q in bankless["questions"])
    assert warm.take() == (0, 0)

    nonsense = f"nope-{secrets.token_hex(4)}"
    for path in (f"/api/questions/random?bank_id={one}&topic={nonsense}",
                 f"/api/questions/random?bank_id=999999999&topic={topic}&difficulty=easy"):  # fmt: skip
        assert (await get_json(client, path, t.student))["questions"] == []
    assert warm.take() == (0, 4)
    prefix = s.settings.redis_prefix
    assert [k async for k in s.cache_redis.scan_iter(match=f"{prefix}:cache:*{nonsense}*")] == []
    assert [k async for k in s.cache_redis.scan_iter(match=f"{prefix}:cache:*:999999999*")] == []

    for bad in ("bank_id=0", "bank_id=x", f"bank_id={one}&count=0", f"bank_id={one}&difficulty=any",
                f"bank_id={one}&topic={'x' * 61}"):  # fmt: skip
        await error(await client.get(f"/api/questions/random?{bad}", headers=bearer(t.student)), 422, "invalid_query")
    assert warm.take() == (0, 0)


async def test_a_question_write_invalidates_the_sets_of_the_banks_holding_it_and_no_others(client: Client) -> None:
    t = await tokens(client)
    s = services(client)
    topic = unique_topic()
    one, two, qs, other = await two_banks(client, t, topic)
    p = Practice(client, t, topic)
    assert await p.ids(one) == [q["id"] for q in qs] and await p.ids(two) == [other["id"]]
    assert p.warm.take() == (0, 2)

    async def after_write(expect_one: list[int], expect_two: list[int], one_stale: bool, two_stale: bool) -> None:
        assert await p.ids(one) == expect_one
        assert p.warm.take() == ((0, 1) if one_stale else (1, 0))
        assert await p.ids(two) == expect_two
        assert p.warm.take() == ((0, 1) if two_stale else (1, 0))

    admin = bearer(t.admin)
    assert (await client.delete(f"/api/questions/{qs[0]['id']}", headers=admin)).status == 200
    await after_write([qs[1]["id"], qs[2]["id"]], [other["id"]], one_stale=True, two_stale=False)

    r = await client.post(f"/api/questions/{qs[1]['id']}/review", json={"status": "rejected"}, headers=admin)
    assert r.status == 200
    await after_write([qs[2]["id"]], [other["id"]], one_stale=True, two_stale=False)

    edit = {k: v for k, v in body(topic).items() if k != "ref"}
    r = await client.put(f"/api/questions/{qs[2]['id']}", json=edit, headers=admin)  # no paper holds it: in place
    assert r.status == 200 and (await r.json())["id"] == qs[2]["id"]
    await after_write([qs[2]["id"]], [other["id"]], one_stale=True, two_stale=False)
    assert (await p.draw(one))[0]["text"] == edit["text"]
    p.warm.take()

    # a paper holds `other`: the edit makes a new version, which takes over its place in bank two
    user = await pg.create_guest(s.pool, "holder")
    await s.pool.execute(
        """INSERT INTO test_sessions (id, token_id, user_id, template_id, status, paper)
           VALUES ($1, $2, $3, $4, 'active', $5)""",
        secrets.token_hex(16), secrets.token_hex(8), user, await template_id(s.pool, "biology-quick-10"),
        {"q": [other["id"]]},
    )  # fmt: skip
    r = await client.put(f"/api/questions/{other['id']}", json=body(topic), headers=admin)
    version = (await r.json())["id"]
    assert r.status == 200 and version != other["id"]
    await after_write([qs[2]["id"]], [version], one_stale=False, two_stale=True)

    await create(client, t.admin, topic=topic)  # in no bank: in no set
    await after_write([qs[2]["id"]], [version], one_stale=False, two_stale=False)


async def test_membership_changes_and_imports_invalidate_their_bank_only(client: Client) -> None:
    t = await tokens(client)
    topic = unique_topic()
    one, two, qs, other = await two_banks(client, t, topic)
    extra = await create(client, t.admin, topic=topic)
    p = Practice(client, t, topic)
    ids_one = [q["id"] for q in qs]
    await p.ids(one)
    await p.ids(two)
    p.warm.take()

    async def check(bank: int, expect: list[int], stale: bool, other_bank: int, other_expect: list[int]) -> None:
        assert await p.ids(bank) == expect
        assert p.warm.take() == ((0, 1) if stale else (1, 0))
        assert await p.ids(other_bank) == other_expect
        assert p.warm.take() == (1, 0)

    admin = bearer(t.admin)
    await add_to_bank(client, t.admin, one, [extra["id"]])
    await check(one, [*ids_one, extra["id"]], True, two, [other["id"]])
    r = await client.post(f"/api/banks/{one}/questions/remove", json={"question_ids": [extra["id"]]}, headers=admin)
    assert (await r.json())["removed"] == 1
    await check(one, ids_one, True, two, [other["id"]])
    r = await client.post(f"/api/banks/{one}/questions/remove", json={"question_ids": [extra["id"]]}, headers=admin)
    assert (await r.json())["removed"] == 0
    await check(one, ids_one, False, two, [other["id"]])  # nothing changed, nothing dropped

    upload = json.dumps([body(topic)])
    as_json = {**admin, "Content-Type": "application/json"}
    r = await client.post(f"/api/banks/{two}/import?dry_run=true", data=upload, headers=as_json)
    assert (await r.json())["imported"] == 1
    await check(two, [other["id"]], False, one, ids_one)
    r = await client.post(f"/api/banks/{two}/import", data=upload, headers=as_json)
    imported = (await r.json())["rows"][0]["id"]
    await check(two, [other["id"], imported], True, one, ids_one)


# ---- performance, leaderboards, analytics: invalidated by the flusher ------------------------------------


async def test_a_flushed_attempt_invalidates_its_users_performance_its_leaderboard_and_analytics(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = services(client)
    tid, elsewhere = await new_template(s.pool), await new_template(s.pool)
    asha, ravi = await guest(client, "Asha"), await guest(client, "Ravi")
    asha_id = s.auth.verify_user(asha).user_id
    staff = await token_for(client, "proctor")
    warm, cold = Lookups(client, Tier.WARM), Lookups(client, Tier.COLD)

    mine = await get_json(client, "/api/users/me/performance", asha)
    assert warm.take() == (0, 1) and mine["attempts"] == 0
    assert await get_json(client, "/api/users/me/performance", asha) == mine
    assert await get_json(client, "/api/users/me/performance?last=10&min_answered=10", asha) == mine  # defaults
    assert await get_json(client, f"/api/users/{asha_id}/performance", staff) == mine  # one entry per user
    assert warm.take() == (3, 0)
    theirs = await get_json(client, "/api/users/me/performance", ravi)
    assert warm.take() == (0, 1)
    assert (await get_json(client, "/api/users/me/performance?min_answered=1", asha))["min_answered"] == 1
    assert warm.take() == (0, 0)  # other parameters: computed, never cached

    board = f"/api/templates/{tid}/leaderboard"
    assert (await get_json(client, board, asha))["entries"] == []
    assert (await get_json(client, board, ravi))["entries"] == []
    assert (await get_json(client, f"/api/templates/{elsewhere}/leaderboard", asha))["entries"] == []
    assert cold.take() == (1, 2)
    overall = await get_json(client, "/api/analytics/global", asha)
    assert await get_json(client, "/api/analytics/global", ravi) == overall
    topics = f"/api/analytics/topics?template_id={tid}"
    assert (await get_json(client, topics, staff))["topics"] == []
    assert await get_json(client, topics, staff) == {"topics": []}
    assert cold.take() == (2, 2)

    session = await sit(client, tid, asha, answers=3)
    calls: list[tuple[str, ...]] = []
    invalidate = s.cache.invalidate

    async def spy(*tags: str) -> int:
        calls.append(tags)
        return await invalidate(*tags)

    monkeypatch.setattr(s.cache, "invalidate", spy)
    assert await s.flusher.flush_once() >= 1
    assert [set(c) for c in calls] == [{f"user:{asha_id}", f"leaderboard:{tid}", "analytics"}]  # one call

    mine = await get_json(client, "/api/users/me/performance", asha)
    assert warm.take() == (0, 1) and mine["attempts"] == 1 and mine["trend"]["attempts"][0]["session_id"] == session
    assert await get_json(client, "/api/users/me/performance", ravi) == theirs
    assert warm.take() == (1, 0)

    seen_by_ravi = await get_json(client, board, ravi)
    assert cold.take() == (0, 1)
    assert [e["display_name"] for e in seen_by_ravi["entries"]] == ["Asha"] and seen_by_ravi["me"] is None
    assert not seen_by_ravi["entries"][0]["is_me"]
    seen_by_asha = await get_json(client, board, asha)
    assert cold.take() == (1, 0)  # the same cached top list, with Asha's own place read for her
    assert seen_by_asha["entries"][0]["is_me"] and seen_by_asha["me"]["display_name"] == "Asha"
    assert seen_by_asha["me"]["score"] == seen_by_asha["entries"][0]["score"]
    assert (await get_json(client, f"/api/templates/{elsewhere}/leaderboard", asha))["entries"] == []
    assert cold.take() == (1, 0)

    fresh = await get_json(client, "/api/analytics/global", asha)
    assert fresh["attempts"] > overall["attempts"]
    assert {t["topic"] for t in (await get_json(client, topics, staff))["topics"]}
    assert cold.take() == (0, 2)


async def test_analytics_keys_stay_bounded(client: Client) -> None:
    s = services(client)
    staff = await token_for(client, "proctor")
    tid = await new_template(s.pool)
    cold = Lookups(client, Tier.COLD)
    for query in ("days=7", "days=7", f"template_id={tid}&days=30", ""):
        await get_json(client, f"/api/analytics/topics?{query}", staff)
    assert cold.take() == (1, 3)
    await get_json(client, "/api/analytics/topics?days=13", staff)  # not a canonical window: computed each time
    assert cold.take() == (0, 0)
    await error(await client.get("/api/analytics/topics?template_id=999999999", headers=bearer(staff)), 404,
                "template_not_found")  # fmt: skip
    assert cold.take() == (0, 0)
    prefix = s.settings.redis_prefix
    assert [k async for k in s.cache_redis.scan_iter(match=f"{prefix}:cache:cold:analytics:topics:999999999*")] == []
    assert await s.cache_redis.exists(s.cache.key(Tier.COLD, f"analytics:topics:{tid}:30"))

    # one leaderboard entry per board serves every limit
    token = await guest(client)
    for limit in (1, 5, 100):
        await get_json(client, f"/api/templates/{tid}/leaderboard?limit={limit}", token)
    assert cold.take() == (2, 1)
    for bad in ("limit=0", "limit=101", "period=yearly"):
        await error(await client.get(f"/api/templates/{tid}/leaderboard?{bad}", headers=bearer(token)), 422,
                    "invalid_query")  # fmt: skip
    await error(await client.get("/api/users/me/performance?last=1", headers=bearer(token)), 422, "invalid_query")
    assert cold.take() == (0, 0)


async def test_an_unknown_user_is_404_and_not_cached(client: Client) -> None:
    s = services(client)
    staff = await token_for(client, "proctor")
    nobody = "00000000-0000-4000-8000-000000000000"
    warm = Lookups(client, Tier.WARM)
    for _ in range(2):
        await error(await client.get(f"/api/users/{nobody}/performance", headers=bearer(staff)), 404,
                    "user_not_found")  # fmt: skip
    assert warm.take() == (0, 2)
    prefix = s.settings.redis_prefix
    assert [k async for k in s.cache_redis.scan_iter(match=f"{prefix}:cache:*{nobody}*")] == []


async def test_a_failed_invalidation_is_logged_and_the_flush_goes_on(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = services(client)
    tid = await new_template(s.pool)
    token = await guest(client)
    session = await sit(client, tid, token, answers=2)

    async def down(*tags: str) -> int:
        raise RedisConnectionError("cache unreachable")

    monkeypatch.setattr(s.cache, "invalidate", down)
    with caplog.at_level(logging.WARNING, logger="storage.flusher"):
        assert await s.flusher.flush_once() >= 1
    assert await s.pool.fetchval("SELECT count(*) FROM test_attempts WHERE session_id = $1", session) == 1
    assert await s.flusher.flush_once() == 0  # acknowledged all the same: nothing left to replay
    failed = [r for r in caplog.records if r.name == "storage.flusher" and "post-commit hook failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING and failed[0].exc_info is not None
