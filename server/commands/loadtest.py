"""`examhub loadtest SCENARIO ...`: certify a deployment's capacity with one command (= python -m loadtest.run).

    examhub loadtest steady --students 10000 [--workers 2]
    examhub loadtest start-storm | submit-storm | proctors | compare ...

It starts its own servers (a fresh database on --database-url's server, a durable redis-server, the hub as a
subprocess, the baselines for `compare`) and writes loadtest/results/<scenario>[-wN].json and .md. It does
not use DATABASE_URL or REDIS_URL (a load test must not touch a live deployment's data), so it starts no
embedded servers either. Exit status: 0 every target met, 3 a target missed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from typing import Any

from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # Imported by name: the load harness is a tool beside the server, outside its strictly typed packages.
    runner: Any = importlib.import_module("loadtest.run")
    p = sub.add_parser("loadtest", help="run a load scenario headless and write its result table",
                       description=runner.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    runner.add_arguments(p)
    p.set_defaults(run=loadtest, storage=False, parser=p)


async def loadtest(settings: Settings, args: argparse.Namespace) -> int:
    runner: Any = importlib.import_module("loadtest.run")
    cfg = runner.config(args.parser, args)
    command = "examhub loadtest " + shlex.join(sys.argv[2:])
    doc = await runner.execute(args.scenario, cfg, args.out, command)
    return 0 if doc["met"] else int(runner.MISSED)
