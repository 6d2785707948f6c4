"""How fast one flusher moves finished attempts into PostgreSQL (the submit storm's bottleneck, issue #6).

    python -m loadtest.flush_rate [--attempts 400] [--profile]

Builds N finished sessions of `neet-mock-180` (180 answers each) in Redis and their rows in a fresh database on
EXAMHUB_TEST_DATABASE_URL's server, then times `Flusher.flush_once` until the outbox is empty, and prints
attempts per second (`--profile`: the cProfile top 25 by cumulative time). Uses the machine's Redis
(EXAMHUB_TEST_REDIS_URL) under a key prefix of its own, and cleans both up.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import time

from redis.asyncio import Redis

from loadtest.driver import fresh_database
from sessions.machine import Activate, Finish, FinishReason, SaveAnswer, SavedAnswer
from sessions.model import Question, Template
from sessions.paper import draw_paper
from storage import pg
from storage.catalog import Catalog
from storage.flusher import Flusher
from storage.keys import Keys
from storage.migrate import migrate
from storage.scripts import Scripts
from storage.seed import seed_demo
from storage.session_store import RedisSessionStore
from storage.writer import CoalescingWriter

REDIS_URL = os.environ.get("EXAMHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("EXAMHUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def finished(pool: pg.Pool, store: RedisSessionStore, tpl: Template, bank: tuple[Question, ...]) -> None:
    sid = secrets.token_hex(16)
    paper = draw_paper(bank, tpl.rule, sid)
    uid = await pg.create_guest(pool, "flush rate")
    await pg.insert_session(pool, sid, secrets.token_hex(8), uid, tpl.id, paper)
    await store.create(sid, str(uid), tpl, paper, 0)
    opened = await store.open(sid, str(uid))
    assert not isinstance(opened, str), opened
    epoch = opened.stored.epoch
    await store.apply(sid, epoch, Activate())
    await asyncio.gather(*(
        store.apply(sid, epoch, SaveAnswer(k, q, SavedAnswer(paper.option_order[q][0], False, 100, k, 1000 + k)))
        for k, q in enumerate(paper.question_ids, 1)
    ))  # fmt: skip
    await store.apply(sid, epoch, Finish(len(paper.question_ids) + 1, FinishReason.STUDENT))


async def run(attempts: int, profile: bool) -> float:
    async with fresh_database(PG_URL) as url:
        pool = await pg.create_pool(url, 2, 8)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await seed_demo(pool)
            return await timed(pool, attempts, profile)
        finally:
            await pool.close()


async def timed(pool: pg.Pool, attempts: int, profile: bool) -> float:
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"flush{secrets.token_hex(3)}"
    writer = CoalescingWriter(redis, Scripts.load())
    await writer.start()
    try:
        store = RedisSessionStore(redis, writer, Scripts.load(), Keys(prefix), 3600)
        catalog = Catalog(pool)
        found = await catalog.template(int(await pool.fetchval("SELECT id FROM test_templates WHERE slug = $1",
                                                                "neet-mock-180")))  # fmt: skip
        assert found is not None
        tpl, bank_id = found
        bank = await catalog.bank(bank_id)
        for start in range(0, attempts, 50):
            await asyncio.gather(*(finished(pool, store, tpl, bank) for _ in range(start, min(attempts, start + 50))))
        flusher = Flusher(redis, pool, store, Scripts.load(), catalog, "flush-rate", batch=200)
        await flusher.ensure_groups()
        profiler = cProfile.Profile()
        began, total = time.perf_counter(), 0
        if profile:
            profiler.enable()
        while n := await flusher.flush_once():
            total += n
        profiler.disable()
        rate = total / (time.perf_counter() - began)
        print(f"flushed {total} attempts of 180 answers at {rate:.0f} attempts/s")
        if profile:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return rate
    finally:
        await writer.close()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attempts", type=int, default=400)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    asyncio.run(run(args.attempts, args.profile))


if __name__ == "__main__":
    main()
