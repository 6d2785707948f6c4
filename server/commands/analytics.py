"""`examhub report`, `examhub cleanup`, `examhub leaderboard rebuild`, `examhub progress backfill`: the
periodic and maintenance jobs of storage/analytics.py (run them from cron or a scheduler)."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta

from server.commands import positive_int
from server.settings import Settings
from storage import analytics, pg


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="write periodic performance reports into performance_reports")
    p.add_argument("--period", choices=["daily", "weekly"], default="daily")
    p.add_argument("--date", type=_day, help="a day inside the period (default: the last complete period)")
    p.add_argument("--per-user", action="store_true", help="also one report per user active in the period")
    p.set_defaults(run=report)

    p = sub.add_parser("cleanup", help="delete analytics events older than N days")
    p.add_argument("--older-than-days", type=positive_int, required=True)
    p.add_argument("--batch", type=positive_int, default=5000, help="rows per DELETE statement")
    p.set_defaults(run=cleanup)

    p = sub.add_parser("leaderboard", help="leaderboards in Redis")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("rebuild", help="rebuild the current boards from PostgreSQL")
    r.add_argument("--template", type=positive_int, action="append", help="template id (repeat; default: all)")
    r.set_defaults(run=rebuild)

    p = sub.add_parser("progress", help="per-topic progress")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser("backfill", help="count stored attempts not yet in user_topic_progress")
    b.set_defaults(run=backfill)


async def _pool(settings: Settings) -> pg.Pool:
    assert settings.database_url is not None
    return await pg.create_pool(settings.database_url, 1, 2)


async def report(settings: Settings, args: argparse.Namespace) -> int:
    if args.date is not None:
        at = datetime(args.date.year, args.date.month, args.date.day, tzinfo=UTC)
        start, end = analytics.report_bounds(args.period, at)
    else:
        start, end = analytics.last_complete(args.period, datetime.now(UTC))
    pool = await _pool(settings)
    try:
        n = await analytics.write_reports(pool, args.period, start, end, per_user=args.per_user)
    finally:
        await pool.close()
    print(f"examhub: {args.period} reports for {start:%Y-%m-%d} to {end:%Y-%m-%d}: {n['templates']} template(s), "
          f"{n['users']} user(s)")  # fmt: skip
    return 0


async def cleanup(settings: Settings, args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - timedelta(days=args.older_than_days)
    pool = await _pool(settings)
    try:
        n = await analytics.purge_events(pool, before, args.batch)
    finally:
        await pool.close()
    print(f"examhub: deleted {n} analytics event(s) older than {args.older_than_days} day(s)")
    return 0


async def rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import connect_redis

    pool = await _pool(settings)
    redis = connect_redis(settings)
    try:
        n = await analytics.rebuild_leaderboards(redis, pool, settings.redis_prefix, datetime.now(UTC), args.template)
    finally:
        await redis.aclose()
        await pool.close()
    print(f"examhub: rebuilt {n} leaderboard(s) from PostgreSQL")
    return 0


async def backfill(settings: Settings, args: argparse.Namespace) -> int:
    pool = await _pool(settings)
    try:
        n = await analytics.backfill_progress(pool)
    finally:
        await pool.close()
    print(f"examhub: added {n} attempt(s) to per-topic progress")
    return 0
