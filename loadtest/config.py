"""What a load run is asked to do (kept apart from the scenarios, so that `examhub --help` stays quick)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SCENARIO_NAMES = ("compare", "proctors", "start-storm", "steady", "submit-storm")
DEFAULT_DATABASE_URL = os.environ.get("EXAMHUB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_P99_MS = 50.0


@dataclass
class Config:
    students: int = 10_000
    workers: int = 1
    rate: float | None = None  # answers/s in total; default: one every 5 s per student
    duration: float = 30.0
    warmup: float = 5.0  # steady/proctors: seconds of load before the measured part (not counted)
    template: str = "neet-mock-180"
    msgpack: bool = False
    proctors: int = 0
    window: float = 20.0  # start storm: students arrive uniformly over this many seconds
    pipeline: int = 8  # submit storm: answers in flight per student while filling
    answers: int = 180  # submit storm: answers per attempt
    storm_timeout: float = 180.0  # submit storm: give up waiting for PostgreSQL after this many seconds
    # compare: offered answers/s; 500 apart where the knees are (HTTP->PostgreSQL ~2,000-3,500, examhub and the
    # ceiling 8,000-16,000), so that a ratio is not an artefact of the grid, and past the ceiling's knee, so that
    # its figure is not the grid's top (the hiredis ceiling passed 14,000 at p99 20 ms)
    rates: list[float] = field(
        default_factory=lambda: [
            1000, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 7000, 8000, 8500, 9000, 9500, 10000, 10500, 11000,
            11500, 12000, 12500, 13000, 14000, 15000, 16000, 18000,
        ]
    )  # fmt: skip
    step: float = 10.0  # compare: seconds per trial of a rate
    trials: int = 3  # compare: a rate counts for a target when most of up to this many trials meet the target
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_fsync: str = "always"  # "everysec" only to show where the time goes: not durable, examhub warns
    pg_pool: int = 30  # EXAMHUB_PG_POOL_MAX of each hub process (the default 10 caps session starts, see docs)
    # (PostgreSQL's max_connections, 100 by default, must cover workers x pg_pool plus the baselines' pools)
    nice: int = 0  # scheduling priority of the run and the servers it starts (negative: ahead of other work)
