"""Progress, leaderboards, reports and the queries that feed sessions/stats.py.

Every query here is set-based (one statement for many rows); the arithmetic lives in sessions/stats.py.

Leaderboard keys (Redis is a cache: PostgreSQL's test_attempts is the truth, and every board can be
rebuilt from it). All boards of a template share the hash tag `{t<id>}`, so a rebuild's RENAME stays in
one slot on Redis Cluster.

Key                                    Type    Owner and lifetime
<prefix>:lb:{t<id>}:all                zset    user id -> best score ever on template <id>. No TTL: owned by
                                               this module (record_scores adds with ZADD GT, rebuild_leaderboards
                                               replaces it); one per template, and templates are archived, never
                                               deleted, so these keys are as many as the templates.
<prefix>:lb:{t<id>}:d:<YYYY-MM-DD>     zset    best score per user among attempts finished that UTC day;
                                               EXPIREAT the day's start + 8 days.
<prefix>:lb:{t<id>}:w:<YYYY>-W<ww>     zset    the same for an ISO week; EXPIREAT the week's Monday + 5 weeks.
<board>:built                          string  "1" once <board> was filled from PostgreSQL; the same TTL
                                               (or owner) as its board. Missing means Redis lost the board
                                               (or never had it): the next read fills it (ensure_boards).
<board>:tmp                            zset    a rebuild's board until it is renamed over <board>; TTL 600 s.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from sessions import stats
from storage import pg
from storage.keys import PARTITIONS, Keys
from storage.scripts import AnyRedis

Period = Literal["all", "daily", "weekly"]
ReportPeriod = Literal["daily", "weekly"]
PERIODS: tuple[Period, ...] = ("all", "daily", "weekly")
_BEST_COLUMN: dict[Period, str] = {"all": "best_all", "daily": "best_day", "weekly": "best_week"}
DAILY_TTL = timedelta(days=8)
WEEKLY_TTL = timedelta(weeks=5)
_CHUNK = 1000  # members per ZADD
_TMP_TTL_S = 600

# ---- progress --------------------------------------------------------------------------------------------

_APPLY_PROGRESS = """
WITH marked AS (
    INSERT INTO attempt_progress (session_id)
    SELECT session_id FROM test_attempts WHERE session_id = ANY($1::text[]) ORDER BY session_id
    ON CONFLICT DO NOTHING
    RETURNING session_id
), added AS (
    INSERT INTO user_topic_progress AS p
           (user_id, topic, attempted, correct, wrong, skipped, time_spent_ms, last_attempt_at)
    SELECT a.user_id, q.topic,
           count(*) FILTER (WHERE r.choice IS NOT NULL),
           count(*) FILTER (WHERE r.is_correct),
           count(*) FILTER (WHERE r.choice IS NOT NULL AND NOT r.is_correct),
           count(*) FILTER (WHERE r.choice IS NULL),
           coalesce(sum(r.time_spent_ms), 0),
           max(a.finished_at)
      FROM marked m
      JOIN test_attempts a ON a.session_id = m.session_id
      JOIN responses r ON r.session_id = m.session_id
      JOIN questions q ON q.id = r.question_id
     GROUP BY a.user_id, q.topic
     ORDER BY a.user_id, q.topic  -- one lock order for concurrent flushers
    ON CONFLICT (user_id, topic) DO UPDATE SET
           attempted = p.attempted + EXCLUDED.attempted,
           correct = p.correct + EXCLUDED.correct,
           wrong = p.wrong + EXCLUDED.wrong,
           skipped = p.skipped + EXCLUDED.skipped,
           time_spent_ms = p.time_spent_ms + EXCLUDED.time_spent_ms,
           last_attempt_at = GREATEST(p.last_attempt_at, EXCLUDED.last_attempt_at)
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS attempts, (SELECT count(*) FROM added) AS topics
"""


async def apply_progress(conn: asyncpg.Connection, session_ids: Sequence[str]) -> int:
    """Add these attempts' responses to user_topic_progress; return how many attempts were counted.

    Call it inside the transaction that inserted the attempts, after their responses. Each attempt is
    counted once: the same statement records it in attempt_progress and counts only the ids that insert
    added (a concurrent caller waits on the primary key, then skips), so ids that were not newly inserted,
    or that do not exist, are harmless.
    """
    if not session_ids:
        return 0
    row = await conn.fetchrow(_APPLY_PROGRESS, list(session_ids))
    return int(row["attempts"])


async def backfill_progress(pool: pg.Pool, batch: int = 500) -> int:
    """Count every attempt not yet in user_topic_progress (flushed before this existed); return how many."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            ids = await conn.fetch(
                """SELECT a.session_id FROM test_attempts a
                    WHERE NOT EXISTS (SELECT 1 FROM attempt_progress p WHERE p.session_id = a.session_id)
                    ORDER BY a.finished_at LIMIT $1""",
                batch,
            )
            done = await apply_progress(conn, [r["session_id"] for r in ids])
        total += done
        if len(ids) < batch:
            return total


# ---- leaderboards ----------------------------------------------------------------------------------------


def day_start(at: datetime) -> datetime:
    d = at.astimezone(UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def week_start(at: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week holding `at`."""
    d = day_start(at)
    return d - timedelta(days=d.weekday())


@dataclass(frozen=True, slots=True)
class Board:
    key: str
    start: datetime | None  # None: all time
    end: datetime | None
    expire_at: datetime | None  # None: no TTL (owned by this module)

    @property
    def marker(self) -> str:
        return f"{self.key}:built"


def board(prefix: str, template_id: int, period: Period, at: datetime) -> Board:
    base = f"{prefix}:lb:{{t{template_id}}}"
    if period == "all":
        return Board(f"{base}:all", None, None, None)
    if period == "daily":
        start = day_start(at)
        return Board(f"{base}:d:{start.date().isoformat()}", start, start + timedelta(days=1), start + DAILY_TTL)
    start = week_start(at)
    year, week, _ = start.isocalendar()
    return Board(f"{base}:w:{year}-W{week:02d}", start, start + timedelta(weeks=1), start + WEEKLY_TTL)


def _boards(prefix: str, template_id: int, at: datetime) -> list[Board]:
    return [board(prefix, template_id, p, at) for p in PERIODS]


ScoreEntry = tuple[int, str, str | uuid.UUID, int, datetime]  # template_id, session_id, user_id, score, finished_at


async def record_scores(redis: AnyRedis, prefix: str, attempts: Iterable[ScoreEntry]) -> None:
    """Add newly stored attempts to their template's boards (one pipeline; ZADD GT keeps each user's best).

    Call after the commit that stored them. A board whose period has already expired is written and
    dropped at once by its EXPIREAT in the past, which is harmless.
    """
    pipe = redis.pipeline(transaction=False)
    n = 0
    for template_id, _sid, user_id, score, finished_at in attempts:
        for b in _boards(prefix, template_id, finished_at):
            pipe.zadd(b.key, {str(user_id): score}, gt=True)
            if b.expire_at is not None:
                pipe.expireat(b.key, b.expire_at)
            n += 1
    if n:
        await pipe.execute()


_BEST = """
SELECT template_id, user_id::text AS user_id, max(score) AS best_all,
       max(score) FILTER (WHERE finished_at >= $2 AND finished_at < $3) AS best_day,
       max(score) FILTER (WHERE finished_at >= $4 AND finished_at < $5) AS best_week
  FROM test_attempts
 WHERE template_id = ANY($1::bigint[])
 GROUP BY template_id, user_id
"""


async def _best_scores(
    pool: pg.Pool, template_ids: Sequence[int], at: datetime
) -> dict[tuple[int, Period], dict[str, int]]:
    d, w = day_start(at), week_start(at)
    rows = await pool.fetch(_BEST, list(template_ids), d, d + timedelta(days=1), w, w + timedelta(weeks=1))
    out: dict[tuple[int, Period], dict[str, int]] = {}
    for r in rows:
        for period, col in _BEST_COLUMN.items():
            if r[col] is not None:
                out.setdefault((r["template_id"], period), {})[r["user_id"]] = r[col]
    return out


def _zadd_chunks(pipe: Any, key: str, members: dict[str, int], gt: bool) -> None:
    items = list(members.items())
    for i in range(0, len(items), _CHUNK):
        pipe.zadd(key, dict(items[i : i + _CHUNK]), gt=gt)


def _finish_board(pipe: Any, b: Board) -> None:
    pipe.set(b.marker, "1")
    if b.expire_at is None:
        pipe.persist(b.key)  # a RENAME brought the temporary key's TTL along
    else:
        pipe.expireat(b.key, b.expire_at)
        pipe.expireat(b.marker, b.expire_at)


async def ensure_boards(redis: AnyRedis, pool: pg.Pool, prefix: str, template_id: int, at: datetime) -> int:
    """Fill from PostgreSQL the current boards Redis does not have (first read, or Redis lost them); return
    how many were filled. Filling adds with ZADD GT into the live board, so scores recorded meanwhile are
    never lost."""
    boards = _boards(prefix, template_id, at)
    pipe = redis.pipeline(transaction=False)
    for b in boards:
        pipe.exists(b.marker)
    missing = [b for b, there in zip(boards, await pipe.execute(), strict=True) if not there]
    if not missing:
        return 0
    best = await _best_scores(pool, [template_id], at)
    pipe = redis.pipeline(transaction=False)
    for b, period in zip(boards, PERIODS, strict=True):
        if b not in missing:
            continue
        _zadd_chunks(pipe, b.key, best.get((template_id, period), {}), gt=True)
        _finish_board(pipe, b)
    await pipe.execute()
    return len(missing)


async def rebuild_leaderboards(
    redis: AnyRedis, pool: pg.Pool, prefix: str, at: datetime, template_ids: Sequence[int] | None = None
) -> int:
    """Replace the all-time, today's and this week's boards of these templates (default: all) with what
    PostgreSQL holds; return the number of boards written. Each board is built under a temporary key and
    renamed over the live one, so readers never see half a board. A score recorded between the read from
    PostgreSQL and the rename is dropped from the cache (not from PostgreSQL) until the next rebuild; this
    is the operator's tool for a board gone wrong, the read path uses ensure_boards."""
    if template_ids is None:
        template_ids = [r["id"] for r in await pool.fetch("SELECT id FROM test_templates ORDER BY id")]
    best = await _best_scores(pool, template_ids, at)
    pipe = redis.pipeline(transaction=False)
    n = 0
    for tid in template_ids:
        for b, period in zip(_boards(prefix, tid, at), PERIODS, strict=True):
            members = best.get((tid, period), {})
            tmp = f"{b.key}:tmp"
            pipe.delete(tmp)
            if members:
                _zadd_chunks(pipe, tmp, members, gt=False)
                pipe.expire(tmp, _TMP_TTL_S)  # left behind only if this pipeline breaks off
                pipe.execute_command("RENAME", tmp, b.key)  # not pipe.rename: redis-py's cluster pipelines refuse it
            else:
                pipe.delete(b.key)
            _finish_board(pipe, b)
            n += 1
    if n:
        await pipe.execute()
    return n


@dataclass(frozen=True, slots=True)
class BoardEntry:
    rank: int
    user_id: str
    score: int


async def read_board(
    redis: AnyRedis, b: Board, limit: int, me: str | None = None
) -> tuple[list[BoardEntry], BoardEntry | None]:
    """The top `limit` (equal scores share a rank) and, when given, that user's own place."""
    pipe = redis.pipeline(transaction=False)
    pipe.zrevrange(b.key, 0, limit - 1, withscores=True)
    if me is not None:
        pipe.zscore(b.key, me)
    res = await pipe.execute()
    top: list[tuple[str, float]] = res[0]
    ranks = stats.competition_ranks([s for _, s in top])
    entries = [BoardEntry(r, uid, int(s)) for r, (uid, s) in zip(ranks, top, strict=True)]
    mine = None
    if me is not None and res[1] is not None:
        higher = await redis.zcount(b.key, f"({res[1]}", "+inf")
        mine = BoardEntry(int(higher) + 1, me, int(res[1]))
    return entries, mine


async def display_names(pool: pg.Pool, user_ids: Sequence[str]) -> dict[str, str]:
    ids = []
    for u in user_ids:
        try:
            ids.append(uuid.UUID(u))
        except ValueError:
            continue  # not ours: boards hold user ids only
    rows = await pool.fetch("SELECT id::text AS id, display_name, username FROM users WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r["display_name"] or r["username"] for r in rows}


# ---- a student's record ----------------------------------------------------------------------------------


async def topic_tallies(pool: pg.Pool, user_id: uuid.UUID) -> list[stats.Tally]:
    rows = await pool.fetch(
        """SELECT topic, attempted, correct, skipped, time_spent_ms FROM user_topic_progress
            WHERE user_id = $1 ORDER BY topic""",
        user_id,
    )
    return [stats.Tally(r["topic"], r["attempted"], r["correct"], r["skipped"], r["time_spent_ms"]) for r in rows]


async def level_tallies(pool: pg.Pool, user_id: uuid.UUID, last_attempts: int = 20) -> dict[str, stats.Tally]:
    """Answers by difficulty over the user's most recent attempts (recent form, not the whole history)."""
    rows = await pool.fetch(
        """SELECT q.difficulty, count(*) FILTER (WHERE r.choice IS NOT NULL) AS attempted,
                  count(*) FILTER (WHERE r.is_correct) AS correct, count(*) FILTER (WHERE r.choice IS NULL) AS skipped,
                  coalesce(sum(r.time_spent_ms), 0) AS ms
             FROM (SELECT session_id FROM test_attempts WHERE user_id = $1
                    ORDER BY finished_at DESC LIMIT $2) a
             JOIN responses r ON r.session_id = a.session_id
             JOIN questions q ON q.id = r.question_id
            GROUP BY q.difficulty""",
        user_id,
        last_attempts,
    )
    return {r["difficulty"]: stats.Tally(r["difficulty"], r["attempted"], r["correct"], r["skipped"], r["ms"])
            for r in rows}  # fmt: skip


async def available_topics(pool: pg.Pool) -> list[str]:
    """Topics of the live questions in the banks of active templates: what a student could practise."""
    rows = await pool.fetch(
        """SELECT DISTINCT q.topic FROM test_templates t
             JOIN question_bank_members m ON m.bank_id = t.bank_id
             JOIN questions q ON q.id = m.question_id
            WHERE t.status = 'active' AND q.retired_at IS NULL ORDER BY q.topic"""
    )
    return [r["topic"] for r in rows]


async def attempt_totals(pool: pg.Pool, user_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        """SELECT count(*) AS attempts, coalesce(sum(correct), 0) AS correct, coalesce(sum(wrong), 0) AS wrong,
                  coalesce(sum(skipped), 0) AS skipped FROM test_attempts WHERE user_id = $1""",
        user_id,
    )
    return row


async def recent_attempts(pool: pg.Pool, user_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """The user's last `limit` stored attempts, oldest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT * FROM (SELECT a.session_id, a.template_id, t.name AS template, a.score, a.max_score,
                                 a.finished_at
                            FROM test_attempts a JOIN test_templates t ON t.id = a.template_id
                           WHERE a.user_id = $1 ORDER BY a.finished_at DESC LIMIT $2) x
            ORDER BY finished_at""",
        user_id,
        limit,
    )
    return rows


async def attempt_history(
    pool: pg.Pool, user_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Every session the user started, newest first, with the stored result when there is one."""
    rows = await pool.fetch(
        """SELECT s.id AS session_id, s.template_id, t.slug AS template_slug, t.name AS template,
                  coalesce(a.status, s.status) AS status, a.reason, a.score, a.max_score, a.correct, a.wrong,
                  a.skipped, s.created_at, coalesce(a.started_at, s.started_at) AS started_at,
                  coalesce(a.finished_at, s.finished_at) AS finished_at, a.session_id IS NOT NULL AS stored
             FROM test_sessions s
             JOIN test_templates t ON t.id = s.template_id
             LEFT JOIN test_attempts a ON a.session_id = s.id
            WHERE s.user_id = $1
            ORDER BY s.created_at DESC, s.id LIMIT $2 OFFSET $3""",
        user_id,
        limit,
        offset,
    )
    total = await pool.fetchval("SELECT count(*) FROM test_sessions WHERE user_id = $1", user_id)
    return rows, int(total)


# ---- platform and template analytics ---------------------------------------------------------------------


async def global_stats(pool: pg.Pool, redis: AnyRedis, keys: Keys, now: datetime) -> dict[str, Any]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM users WHERE disabled_at IS NULL) AS users,
                  (SELECT count(*) FROM test_sessions) AS sessions,
                  (SELECT count(*) FROM test_attempts) AS attempts,
                  (SELECT count(*) FROM test_attempts WHERE finished_at >= $1) AS attempts_24h,
                  (SELECT avg(score)::float8 FROM test_attempts) AS average_score,
                  (SELECT avg(100.0 * score / max_score)::float8 FROM test_attempts WHERE max_score > 0)
                      AS average_percent,
                  (SELECT count(*) FROM questions WHERE retired_at IS NULL) AS questions,
                  (SELECT count(*) FROM test_templates WHERE status = 'active') AS templates""",
        now - timedelta(hours=24),
    )
    return {**dict(row), "sessions_live": await live_sessions(redis, keys)}


async def live_sessions(redis: AnyRedis, keys: Keys) -> int:
    """Running sessions, from Redis (each has a deadline until it finishes); cheap enough to read every time."""
    pipe = redis.pipeline(transaction=False)
    for p in range(PARTITIONS):
        pipe.zcard(keys.due(p))
    return int(sum(await pipe.execute()))


async def topic_stats(pool: pg.Pool, template_id: int | None, since: datetime | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT q.topic, count(DISTINCT r.session_id) AS attempts, count(*) AS seen,
                  count(*) FILTER (WHERE r.choice IS NOT NULL) AS answered,
                  count(*) FILTER (WHERE r.is_correct) AS correct,
                  (avg(r.time_spent_ms) FILTER (WHERE r.choice IS NOT NULL))::float8 AS avg_time_ms
             FROM responses r
             JOIN test_attempts a ON a.session_id = r.session_id
             JOIN questions q ON q.id = r.question_id
            WHERE ($1::bigint IS NULL OR a.template_id = $1) AND ($2::timestamptz IS NULL OR a.finished_at >= $2)
            GROUP BY q.topic ORDER BY q.topic""",
        template_id,
        since,
    )
    return rows


async def template_row(pool: pg.Pool, template_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT id, slug, name, status FROM test_templates WHERE id = $1", template_id
    )
    return row


async def template_responses(pool: pg.Pool, template_id: int, last_attempts: int) -> list[stats.Response]:
    """Every response of the template's `last_attempts` most recent attempts."""
    rows = await pool.fetch(
        """SELECT r.session_id, r.question_id, r.choice, coalesce(r.is_correct, false) AS correct
             FROM (SELECT session_id FROM test_attempts WHERE template_id = $1
                    ORDER BY finished_at DESC LIMIT $2) a
             JOIN responses r ON r.session_id = a.session_id""",
        template_id,
        last_attempts,
    )
    return [stats.Response(r["session_id"], r["question_id"], r["choice"], r["correct"]) for r in rows]


async def question_meta(pool: pg.Pool, ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT id, topic, difficulty, correct, options FROM questions WHERE id = ANY($1::bigint[])", list(ids)
    )
    return {r["id"]: r for r in rows}


async def attempt_standing(pool: pg.Pool, sid: str) -> asyncpg.Record | None:
    """The attempt with the two counts NTA's rank and percentile need (over its template's attempts)."""
    row: asyncpg.Record | None = await pool.fetchrow(
        """SELECT a.session_id, a.user_id, a.template_id, a.score, a.max_score,
                  (SELECT count(*) FROM test_attempts b
                    WHERE b.template_id = a.template_id AND b.score > a.score) AS higher,
                  (SELECT count(*) FROM test_attempts b
                    WHERE b.template_id = a.template_id AND b.score <= a.score) AS at_or_below
             FROM test_attempts a WHERE a.session_id = $1""",
        sid,
    )
    return row


async def session_owner(pool: pg.Pool, sid: str) -> tuple[uuid.UUID, int] | None:
    """The session's student and template (who may see it: server/routes/sessions.py, check_reader)."""
    row = await pool.fetchrow("SELECT user_id, template_id FROM test_sessions WHERE id = $1", sid)
    return None if row is None else (row["user_id"], row["template_id"])


# ---- periodic reports and retention ----------------------------------------------------------------------


def report_bounds(period: ReportPeriod, at: datetime) -> tuple[datetime, datetime]:
    """The UTC day, or the ISO week (Monday to Monday), holding `at`."""
    if period == "daily":
        start = day_start(at)
        return start, start + timedelta(days=1)
    start = week_start(at)
    return start, start + timedelta(weeks=1)


def last_complete(period: ReportPeriod, now: datetime) -> tuple[datetime, datetime]:
    start, _ = report_bounds(period, now)
    return report_bounds(period, start - timedelta(seconds=1))


def _topics_body(rows: Iterable[asyncpg.Record]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in rows:
        t = stats.Tally(r["topic"], r["correct"] + r["wrong"], r["correct"], r["skipped"])
        out[r["topic"]] = {"correct": t.correct, "wrong": t.wrong, "skipped": t.skipped, "accuracy": t.accuracy}
    return out


def _summary(xs: Sequence[float]) -> dict[str, Any]:
    s = stats.summary(xs)
    return {"mean": s.mean, "median": s.median, "p90": s.p90, "min": s.min, "max": s.max, "stdev": s.stdev}


async def write_reports(
    pool: pg.Pool, period: ReportPeriod, start: datetime, end: datetime, per_user: bool = False
) -> dict[str, int]:
    """Write (or replace) one report per template with attempts in [start, end), and optionally one per
    active user; return how many of each kind."""
    where = "a.finished_at >= $1 AND a.finished_at < $2"
    templates = await pool.fetch(
        f"""SELECT a.template_id, array_agg(a.score) AS scores, max(a.max_score) AS max_score,
                   count(DISTINCT a.user_id) AS users
              FROM test_attempts a WHERE {where} GROUP BY a.template_id""",
        start, end,
    )  # fmt: skip
    topic_rows = await pool.fetch(
        f"""SELECT a.template_id, t.topic, sum(t.correct)::int AS correct, sum(t.wrong)::int AS wrong,
                   sum(t.skipped)::int AS skipped
              FROM attempt_analytics t JOIN test_attempts a ON a.session_id = t.session_id
             WHERE {where} GROUP BY a.template_id, t.topic ORDER BY t.topic""",
        start, end,
    )  # fmt: skip
    kinds: list[str] = []
    users: list[uuid.UUID | None] = []
    tids: list[int | None] = []
    bodies: list[str] = []
    for r in templates:
        body = {"period": period, "attempts": len(r["scores"]), "users": r["users"], "max_score": r["max_score"],
                "score": _summary(r["scores"]),
                "topics": _topics_body(t for t in topic_rows if t["template_id"] == r["template_id"])}  # fmt: skip
        kinds.append(f"template_{period}")
        users.append(None)
        tids.append(r["template_id"])
        bodies.append(json.dumps(body))
    n_users = 0
    if per_user:
        people = await pool.fetch(
            f"""SELECT a.user_id, array_agg(100.0 * a.score / a.max_score)::float8[] AS percents,
                       array_agg(DISTINCT a.template_id) AS templates, sum(a.correct)::int AS correct,
                       sum(a.wrong)::int AS wrong, sum(a.skipped)::int AS skipped
                  FROM test_attempts a WHERE {where} AND a.max_score > 0 GROUP BY a.user_id""",
            start, end,
        )  # fmt: skip
        user_topics = await pool.fetch(
            f"""SELECT a.user_id, t.topic, sum(t.correct)::int AS correct, sum(t.wrong)::int AS wrong,
                       sum(t.skipped)::int AS skipped
                  FROM attempt_analytics t JOIN test_attempts a ON a.session_id = t.session_id
                 WHERE {where} GROUP BY a.user_id, t.topic ORDER BY t.topic""",
            start, end,
        )  # fmt: skip
        by_user: dict[uuid.UUID, list[asyncpg.Record]] = {}
        for t in user_topics:
            by_user.setdefault(t["user_id"], []).append(t)
        for r in people:
            tally = stats.Tally("all", r["correct"] + r["wrong"], r["correct"], r["skipped"])
            body = {"period": period, "attempts": len(r["percents"]), "templates": sorted(r["templates"]),
                    "percent": _summary(r["percents"]), "correct": tally.correct, "wrong": tally.wrong,
                    "skipped": tally.skipped, "accuracy": tally.accuracy,
                    "topics": _topics_body(by_user.get(r["user_id"], []))}  # fmt: skip
            kinds.append(f"user_{period}")
            users.append(r["user_id"])
            tids.append(None)
            bodies.append(json.dumps(body))
        n_users = len(people)
    if kinds:
        await pool.execute(
            """INSERT INTO performance_reports (kind, user_id, template_id, period_start, period_end, body)
               SELECT k, u, t, $4, $5, b::jsonb FROM unnest($1::text[], $2::uuid[], $3::bigint[], $6::text[])
                                                    AS x(k, u, t, b)
               ON CONFLICT (kind, template_id, user_id, period_start)
               DO UPDATE SET period_end = EXCLUDED.period_end, body = EXCLUDED.body, created_at = now()""",
            kinds, users, tids, start, end, bodies,
        )  # fmt: skip
    return {"templates": len(templates), "users": n_users}


async def list_reports(
    pool: pg.Pool, template_id: int | None, user_id: uuid.UUID | None, kind: str | None, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT id, kind, user_id, template_id, period_start, period_end, body, created_at
             FROM performance_reports
            WHERE ($1::bigint IS NULL OR template_id = $1) AND ($2::uuid IS NULL OR user_id = $2)
              AND ($3::text IS NULL OR kind = $3)
            ORDER BY period_start DESC, id DESC LIMIT $4""",
        template_id, user_id, kind, limit,
    )  # fmt: skip
    return rows


async def purge_events(pool: pg.Pool, before: datetime, batch: int = 5000) -> int:
    """Delete analytics_events that occurred before `before`, `batch` rows per statement (short locks, no
    huge transaction); return how many."""
    total = 0
    while True:
        status = await pool.execute(
            """DELETE FROM analytics_events WHERE id IN (
                   SELECT id FROM analytics_events WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2)""",
            before,
            batch,
        )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total
