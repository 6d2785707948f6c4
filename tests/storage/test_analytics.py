"""Progress exactly once, leaderboards as a cache of PostgreSQL, reports and retention, on real databases."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from storage import analytics, pg
from storage.catalog import Catalog
from storage.flusher import Rows, attempt_rows, write_rows
from storage.keys import Keys
from storage.session_store import RedisSessionStore
from tests.conftest import template_id
from tests.storage.test_flusher import finished_session

T0 = datetime(2024, 3, 6, 10, 30, tzinfo=UTC)  # a Wednesday; ISO week 2024-W10 starts Monday 4 March


async def new_template(pool: pg.Pool) -> int:
    """A template of our own, so that boards, ranks and reports see only this test's attempts."""
    tid: int = await pool.fetchval(
        """INSERT INTO test_templates (slug, name, bank_id, config)
           SELECT $1, 'analytics test', id, '{"count": 4, "duration_s": 600}' FROM question_banks
            WHERE slug = 'neet-biology' RETURNING id""",
        f"an-{secrets.token_hex(5)}",
    )
    return tid


async def new_user(pool: pg.Pool, name: str = "Student") -> uuid.UUID:
    return await pg.create_guest(pool, name)


async def questions(pool: pg.Pool, n: int) -> list[Any]:
    """n seeded questions, each of a different topic: (id, topic, correct)."""
    rows = await pool.fetch(
        "SELECT DISTINCT ON (topic) id, topic, correct FROM questions WHERE ref IS NOT NULL ORDER BY topic, id"
    )
    assert len(rows) >= n
    return list(rows[:n])


async def insert_attempt(
    pool: pg.Pool,
    user: uuid.UUID,
    tid: int,
    score: int,
    finished_at: datetime,
    answers: Sequence[tuple[int, str | None, bool | None, int]] = (),
) -> str:
    """An attempt and its responses written directly (question id, choice, is_correct, time_ms)."""
    sid = secrets.token_hex(16)
    qids = [a[0] for a in answers]
    await pool.execute(
        """INSERT INTO test_sessions (id, token_id, user_id, template_id, status, paper)
           VALUES ($1, $2, $3, $4, 'submitted', $5)""",
        sid, secrets.token_hex(8), user, tid, {"q": qids},
    )  # fmt: skip
    correct = sum(1 for a in answers if a[2])
    wrong = sum(1 for a in answers if a[2] is False)
    await pool.execute(
        """INSERT INTO test_attempts (session_id, user_id, template_id, status, reason, score, max_score,
                                      min_score, correct, wrong, skipped, finished_at)
           VALUES ($1, $2, $3, 'submitted', 'student', $4, 40, -10, $5, $6, $7, $8)""",
        sid, user, tid, score, correct, wrong, len(answers) - correct - wrong, finished_at,
    )  # fmt: skip
    if answers:
        await pool.executemany(
            """INSERT INTO responses (session_id, question_id, user_id, position, choice, is_correct, marks,
                                      time_spent_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)""",
            [(sid, q, user, i, c, ok, ms) for i, (q, c, ok, ms) in enumerate(answers)],
        )
    return sid


async def progress(pool: pg.Pool, user: uuid.UUID) -> dict[str, tuple[int, ...]]:
    rows = await pool.fetch(
        "SELECT topic, attempted, correct, wrong, skipped, time_spent_ms FROM user_topic_progress WHERE user_id = $1",
        user,
    )
    return {r["topic"]: (r["attempted"], r["correct"], r["wrong"], r["skipped"], r["time_spent_ms"]) for r in rows}


# ---- progress --------------------------------------------------------------------------------------------


async def test_apply_progress_counts_each_attempt_once(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    user = await new_user(pool)
    q = await questions(pool, 4)
    assert len({r["topic"] for r in q}) == 4
    a, b, c, d = q
    wrong_choice = "a" if a["correct"] != "a" else "b"
    s1 = await insert_attempt(pool, user, tid, 3, T0, [
        (a["id"], a["correct"], True, 1000), (b["id"], wrong_choice, False, 2000), (c["id"], None, None, 500),
    ])  # fmt: skip
    s2 = await insert_attempt(pool, user, tid, 8, T0 + timedelta(hours=1), [
        (a["id"], a["correct"], True, 3000), (d["id"], d["correct"], True, 4000),
    ])  # fmt: skip
    async with pool.acquire() as conn, conn.transaction():
        assert await analytics.apply_progress(conn, [s1, s2]) == 2
    # attempted (answered), correct, wrong, skipped, time
    expected = {
        a["topic"]: (2, 2, 0, 0, 4000),
        b["topic"]: (1, 0, 1, 0, 2000),
        c["topic"]: (0, 0, 0, 1, 500),
        d["topic"]: (1, 1, 0, 0, 4000),
    }
    assert await progress(pool, user) == expected
    last = await pool.fetchval(
        "SELECT last_attempt_at FROM user_topic_progress WHERE user_id = $1 AND topic = $2", user, a["topic"]
    )
    assert last == T0 + timedelta(hours=1)
    # offered again (a replayed flush, a backfill): nothing changes
    async with pool.acquire() as conn, conn.transaction():
        assert await analytics.apply_progress(conn, [s1, s2, "no-such-session"]) == 0
    assert await progress(pool, user) == expected
    assert await analytics.backfill_progress(pool) >= 0
    assert await progress(pool, user) == expected
    async with pool.acquire() as conn:
        assert await analytics.apply_progress(conn, []) == 0


async def test_progress_rolled_back_with_its_transaction(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    user = await new_user(pool)
    (a,) = await questions(pool, 1)
    sid = await insert_attempt(pool, user, tid, 4, T0, [(a["id"], a["correct"], True, 10)])

    class Boom(Exception):
        pass

    try:
        async with pool.acquire() as conn, conn.transaction():
            assert await analytics.apply_progress(conn, [sid]) == 1
            raise Boom
    except Boom:
        pass
    assert await progress(pool, user) == {}  # neither the counts nor the marker survived
    async with pool.acquire() as conn, conn.transaction():
        assert await analytics.apply_progress(conn, [sid]) == 1
    assert await progress(pool, user) == {a["topic"]: (1, 1, 0, 0, 10)}


async def test_concurrent_callers_count_once(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    user = await new_user(pool)
    q = await questions(pool, 3)
    sids = [await insert_attempt(pool, user, tid, i, T0, [(r["id"], r["correct"], True, 100) for r in q])
            for i in range(5)]  # fmt: skip

    async def apply() -> int:
        async with pool.acquire() as conn, conn.transaction():
            return await analytics.apply_progress(conn, sids)

    assert sorted(await asyncio.gather(apply(), apply(), apply())) == [0, 0, 5]
    assert await progress(pool, user) == {r["topic"]: (5, 5, 0, 0, 500) for r in q}


async def test_flushed_attempt_updates_progress_once_when_rows_are_replayed(
    pool: pg.Pool, store: RedisSessionStore
) -> None:
    """The flusher's write (write_rows adds progress for the attempts it inserted, in its transaction), done
    twice with the same rows, as a replayed outbox entry would: the second adds nothing."""
    sid, _ = await finished_session(pool, store)
    stored = await store.load(sid)
    assert stored is not None
    questions_ = await Catalog(pool).questions(stored.state.paper.question_ids)
    rows = Rows()
    attempt_rows(stored, questions_, rows)
    user = uuid.UUID(stored.state.user_id)
    inserted, again = [], []
    for _ in range(2):
        async with pool.acquire() as conn, conn.transaction():
            inserted.append(await write_rows(conn, rows))
            again.append(await analytics.apply_progress(conn, [sid]))
    assert inserted == [[sid], []] and again == [0, 0]
    # the expected counts, from the stored responses themselves
    truth = await pool.fetch(
        """SELECT q.topic, r.choice, r.is_correct, r.time_spent_ms FROM responses r
             JOIN questions q ON q.id = r.question_id WHERE r.session_id = $1""",
        sid,
    )
    expected: dict[str, list[int]] = {}
    for r in truth:
        t = expected.setdefault(r["topic"], [0, 0, 0, 0, 0])
        t[0] += r["choice"] is not None
        t[1] += r["is_correct"] is True
        t[2] += r["is_correct"] is False
        t[3] += r["choice"] is None
        t[4] += r["time_spent_ms"]
    assert await progress(pool, user) == {k: tuple(v) for k, v in expected.items()}
    assert sum(v[0] + v[3] for v in expected.values()) == 10


async def test_backfill_counts_attempts_flushed_without_progress(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    user = await new_user(pool)
    (a,) = await questions(pool, 1)
    for _ in range(3):
        await insert_attempt(pool, user, tid, 4, T0, [(a["id"], a["correct"], True, 10)])
    assert await analytics.backfill_progress(pool, batch=2) >= 3
    assert await progress(pool, user) == {a["topic"]: (3, 3, 0, 0, 30)}
    assert await analytics.backfill_progress(pool, batch=2) == 0


# ---- leaderboards ----------------------------------------------------------------------------------------


async def test_record_scores_keeps_the_best_per_user_with_ttls(redis: Redis, prefix: str) -> None:
    u1, u2 = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    await analytics.record_scores(redis, prefix, [
        (7, "s1", u1, 40, now), (7, "s2", u1, 30, now), (7, "s3", u2, 50, yesterday), (7, "s4", u2, -5, now),
    ])  # fmt: skip
    base = f"{prefix}:lb:{{t7}}"
    today_key = f"{base}:d:{now.date().isoformat()}"
    assert analytics.board(prefix, 7, "daily", now).key == today_key
    assert await redis.zrange(f"{base}:all", 0, -1, withscores=True) == [(u1, 40.0), (u2, 50.0)]
    assert await redis.zrange(today_key, 0, -1, withscores=True) == [(u2, -5.0), (u1, 40.0)]
    assert await redis.zrange(f"{base}:d:{yesterday.date().isoformat()}", 0, -1, withscores=True) == [(u2, 50.0)]
    year, week, _ = now.isocalendar()
    week_key = f"{base}:w:{year}-W{week:02d}"
    assert analytics.board(prefix, 7, "weekly", now).key == week_key
    assert await redis.zscore(week_key, u1) == 40.0
    assert await redis.ttl(f"{base}:all") == -1  # owned, no TTL
    # expiry derives from the period's start: a daily board lives 7 to 8 days more, a weekly one 4 to 5 weeks
    assert 7 * 86400 <= await redis.ttl(today_key) <= 8 * 86400
    assert 4 * 7 * 86400 <= await redis.ttl(week_key) <= 5 * 7 * 86400
    await analytics.record_scores(redis, prefix, [])


def test_board_names() -> None:
    assert analytics.board("eh", 3, "all", T0).key == "eh:lb:{t3}:all"
    day = analytics.board("eh", 3, "daily", T0)
    assert (day.key, day.expire_at) == ("eh:lb:{t3}:d:2024-03-06", datetime(2024, 3, 14, tzinfo=UTC))
    week = analytics.board("eh", 3, "weekly", T0)
    assert (week.key, week.start) == ("eh:lb:{t3}:w:2024-W10", datetime(2024, 3, 4, tzinfo=UTC))
    assert week.expire_at == datetime(2024, 4, 8, tzinfo=UTC) and week.marker == "eh:lb:{t3}:w:2024-W10:built"
    # the ISO year differs from the calendar year around New Year
    assert analytics.board("eh", 3, "weekly", datetime(2027, 1, 2, tzinfo=UTC)).key == "eh:lb:{t3}:w:2026-W53"


async def test_old_period_boards_expire_at_once(redis: Redis, prefix: str) -> None:
    u = str(uuid.uuid4())
    await analytics.record_scores(redis, prefix, [(9, "s", u, 10, T0)])
    # 2024-03-06 + 8 days is in the past: the daily and weekly boards are gone, the all-time one stays
    assert await redis.exists(f"{prefix}:lb:{{t9}}:d:2024-03-06", f"{prefix}:lb:{{t9}}:w:2024-W10") == 0
    assert await redis.zscore(f"{prefix}:lb:{{t9}}:all", u) == 10


async def test_boards_are_filled_and_rebuilt_from_postgres(pool: pg.Pool, redis: Redis, prefix: str) -> None:
    tid = await new_template(pool)
    now = datetime.now(UTC)
    users = [await new_user(pool, f"P{i}") for i in range(4)]
    await insert_attempt(pool, users[0], tid, 20, now - timedelta(days=40))
    await insert_attempt(pool, users[0], tid, 12, now)
    await insert_attempt(pool, users[1], tid, 30, now)
    await insert_attempt(pool, users[2], tid, 30, now - timedelta(days=40))
    await insert_attempt(pool, users[3], tid, -3, now)
    all_board = analytics.board(prefix, tid, "all", now)
    day_board = analytics.board(prefix, tid, "daily", now)
    # Redis has nothing yet (or lost it): the first read fills the three current boards
    assert await analytics.ensure_boards(redis, pool, prefix, tid, now) == 3
    assert await analytics.ensure_boards(redis, pool, prefix, tid, now) == 0
    top, mine = await analytics.read_board(redis, all_board, 10, me=str(users[0]))
    assert [(e.rank, e.score) for e in top] == [(1, 30), (1, 30), (3, 20), (4, -3)]
    assert {e.user_id for e in top[:2]} == {str(users[1]), str(users[2])}
    assert mine is not None and (mine.rank, mine.score) == (3, 20)
    top, _ = await analytics.read_board(redis, day_board, 10)
    assert [(e.user_id, e.score) for e in top] == [(str(users[1]), 30), (str(users[0]), 12), (str(users[3]), -3)]
    _, nobody = await analytics.read_board(redis, all_board, 10, me=str(uuid.uuid4()))
    assert nobody is None
    # a stale member (not in PostgreSQL) disappears on rebuild; the fill never removes anything
    await redis.zadd(all_board.key, {"ghost": 99})
    assert await analytics.rebuild_leaderboards(redis, pool, prefix, now, [tid]) == 3
    assert await redis.zscore(all_board.key, "ghost") is None
    assert await redis.zcard(all_board.key) == 4
    assert await redis.exists(f"{all_board.key}:tmp") == 0
    assert await redis.ttl(all_board.key) == -1  # the temporary key's TTL did not come along with RENAME
    assert 0 < await redis.ttl(day_board.key) <= 8 * 86400
    # a template without attempts: its boards are emptied and marked built
    empty = await new_template(pool)
    assert await analytics.rebuild_leaderboards(redis, pool, prefix, now, [empty]) == 3
    assert await redis.exists(analytics.board(prefix, empty, "all", now).marker) == 1
    assert await analytics.ensure_boards(redis, pool, prefix, empty, now) == 0
    names = await analytics.display_names(pool, [str(u) for u in users])
    assert names[str(users[2])] == "P2"


async def test_fill_after_a_score_arrived_keeps_both(pool: pg.Pool, redis: Redis, prefix: str) -> None:
    """Redis lost the board, then a new attempt was recorded before anyone read it: the fill adds the rest."""
    tid = await new_template(pool)
    now = datetime.now(UTC)
    old, new = await new_user(pool), await new_user(pool)
    await insert_attempt(pool, old, tid, 25, now - timedelta(days=3))
    await insert_attempt(pool, new, tid, 10, now)
    await analytics.record_scores(redis, prefix, [(tid, "x", new, 10, now)])
    await analytics.ensure_boards(redis, pool, prefix, tid, now)
    top, _ = await analytics.read_board(redis, analytics.board(prefix, tid, "all", now), 10)
    assert [(e.user_id, e.score) for e in top] == [(str(old), 25), (str(new), 10)]


# ---- standing, reports, retention ------------------------------------------------------------------------


async def test_attempt_standing_counts(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    sids = [await insert_attempt(pool, await new_user(pool), tid, s, T0) for s in (4, 3, 2, 2, 1)]
    got = [await analytics.attempt_standing(pool, sid) for sid in sids]
    assert [(r["higher"], r["at_or_below"]) for r in got if r] == [(0, 5), (1, 4), (2, 3), (2, 3), (4, 1)]
    assert await analytics.attempt_standing(pool, "0" * 32) is None


async def test_reports_by_hand_and_idempotent(pool: pg.Pool) -> None:
    tid = await new_template(pool)
    # a period nobody else uses: the UTC day 2003-02-01 (a Saturday; ISO week from Monday 27 January)
    day = datetime(2003, 2, 1, 9, tzinfo=UTC)
    a_user, b_user = await new_user(pool), await new_user(pool)
    q = await questions(pool, 2)
    for user, score in ((a_user, 4), (a_user, 3), (b_user, 2), (b_user, 2), (b_user, 1)):
        await insert_attempt(pool, user, tid, score, day)
    sid = await insert_attempt(pool, a_user, tid, 0, day - timedelta(days=1))  # the day before: not in it
    await pool.execute(
        """INSERT INTO attempt_analytics (session_id, topic, correct, wrong, skipped, score, max_score)
           VALUES ($1, $2, 1, 0, 0, 4, 4)""",
        sid, q[0]["topic"],
    )  # fmt: skip
    start, end = analytics.report_bounds("daily", day)
    assert (start, end) == (datetime(2003, 2, 1, tzinfo=UTC), datetime(2003, 2, 2, tzinfo=UTC))
    for _ in range(2):
        assert await analytics.write_reports(pool, "daily", start, end, per_user=True) == {"templates": 1, "users": 2}
    rows = await analytics.list_reports(pool, tid, None, None, 10)
    assert len(rows) == 1  # the rerun replaced it
    body = rows[0]["body"]
    # scores 4 3 2 2 1: mean 2.4, median 2, p90 3.6 (see tests/sessions/test_stats.py)
    assert (body["attempts"], body["users"], body["max_score"]) == (5, 2, 40)
    assert body["score"]["mean"] == 2.4 and body["score"]["median"] == 2
    assert abs(body["score"]["p90"] - 3.6) < 1e-9
    assert body["topics"] == {}
    assert rows[0]["kind"] == "template_daily" and rows[0]["period_start"] == start
    mine = await analytics.list_reports(pool, None, a_user, "user_daily", 10)
    assert len(mine) == 1
    # a's percents: 4/40 = 10%, 3/40 = 7.5% -> mean 8.75
    assert mine[0]["body"]["attempts"] == 2 and mine[0]["body"]["percent"]["mean"] == 8.75
    week_start, week_end = analytics.report_bounds("weekly", day)
    assert week_start == datetime(2003, 1, 27, tzinfo=UTC) and week_end - week_start == timedelta(days=7)
    assert await analytics.write_reports(pool, "weekly", week_start, week_end) == {"templates": 1, "users": 0}
    weekly = await analytics.list_reports(pool, tid, None, "template_weekly", 10)
    assert weekly[0]["body"]["attempts"] == 6
    assert weekly[0]["body"]["topics"] == {q[0]["topic"]: {"correct": 1, "wrong": 0, "skipped": 0, "accuracy": 1.0}}
    assert json.dumps(weekly[0]["body"])  # plain JSON


def test_last_complete_periods() -> None:
    now = datetime(2024, 3, 6, 0, 5, tzinfo=UTC)  # Wednesday just after midnight
    assert analytics.last_complete("daily", now) == (datetime(2024, 3, 5, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC))
    assert analytics.last_complete("weekly", now) == (
        datetime(2024, 2, 26, tzinfo=UTC),
        datetime(2024, 3, 4, tzinfo=UTC),
    )


async def test_purge_events_in_batches(pool: pg.Pool) -> None:
    kind = f"test-{secrets.token_hex(4)}"
    old = datetime(1990, 1, 1, tzinfo=UTC)
    await pool.executemany(
        "INSERT INTO analytics_events (kind, occurred_at) VALUES ($1, $2)",
        [(kind, old + timedelta(hours=i)) for i in range(7)] + [(kind, datetime.now(UTC))],
    )
    assert await analytics.purge_events(pool, datetime(1991, 1, 1, tzinfo=UTC), batch=3) == 7
    left = await pool.fetch("SELECT occurred_at FROM analytics_events WHERE kind = $1", kind)
    assert len(left) == 1
    assert await analytics.purge_events(pool, datetime(1991, 1, 1, tzinfo=UTC), batch=3) == 0


async def test_global_stats_counts_live_sessions(pool: pg.Pool, redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await redis.zadd(keys.due(0), {"a": 1, "b": 2})
    await redis.zadd(keys.due(5), {"c": 3})
    got = await analytics.global_stats(pool, redis, keys, datetime.now(UTC))
    assert got["sessions_live"] == 3
    assert got["questions"] >= 240 and got["templates"] >= 3
    assert got["users"] >= 1 and got["attempts"] >= 0 and got["attempts_24h"] <= got["attempts"]


async def test_seeded_template_id_helper(pool: pg.Pool) -> None:
    assert await analytics.template_row(pool, await template_id(pool, "biology-quick-10")) is not None
    assert await analytics.template_row(pool, 2**62) is None
