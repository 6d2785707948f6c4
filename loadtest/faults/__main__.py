"""Run fault cases with the issue's sizes (or yours), print what the checker found, exit 1 on any failure.

    python -m loadtest.faults all                         # every case, the issue's sizes (~15 min)
    python -m loadtest.faults hub_kill                    # 500 students, 20 x kill -9 of a hub process
    python -m loadtest.faults redis_kill --students 50 --repeat 3
    python -m loadtest.faults soak --minutes 60           # 1,000 students, a random fault every 5 minutes
    python -m loadtest.faults list

Each case starts its own redis-server (append-only, fsync always), database (on EXAMHUB_TEST_DATABASE_URL's
server; pg_down starts a private PostgreSQL) and hub processes on free ports, and stops them at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.faults.cases import CASES, Result


def _print(result: Result, seconds: float) -> None:
    status = "ok" if result.ok else "FAILED"
    print(f"== {result.case} {status} in {seconds:.0f} s  params={json.dumps(result.params)}")
    for r in result.reports:
        d = r.as_dict()
        problems = d.pop("problems")
        print("   " + "  ".join(f"{k}={v}" for k, v in d.items()))
        for p in problems:
            print(f"     ! {p}")
    print("   figures: " + json.dumps(result.figures))
    for f in result.failures:
        print(f"   FAILURE: {f}")
    sys.stdout.flush()


async def _run(names: list[str], params: dict[str, Any], repeat: int) -> list[dict[str, Any]]:
    out = []
    for name in names:
        for _ in range(repeat):
            t0 = time.monotonic()
            result = await CASES[name](**params)
            _print(result, time.monotonic() - t0)
            out.append({**result.as_dict(), "seconds": round(time.monotonic() - t0, 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", help=f"one of {', '.join(CASES)}, 'all', 'soak' or 'list'")
    p.add_argument("--students", type=int, help="override the case's number of students")
    p.add_argument("--repeat", type=int, default=1, help="run each case this many times")
    p.add_argument("--minutes", type=float, default=60.0, help="soak: how long")
    p.add_argument("--fault-every", type=float, default=300.0, help="soak: seconds between faults")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override another parameter of the case, e.g. --set kills=5 --set down_s=10")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    gc.set_threshold(100_000, 50, 1000)  # the load generator's GC pauses would show up as hub latency
    import uvloop

    if args.case == "list":
        for name, fn in CASES.items():
            print(f"{name:14} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.case == "soak":
        from loadtest.faults.soak import soak

        students = args.students or 1000
        summary = uvloop.run(soak(students=students, minutes=args.minutes, fault_every_s=args.fault_every))
        print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0 if summary["ok"] else 1
    names = list(CASES) if args.case == "all" else [args.case]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; try 'list'")
    params: dict[str, Any] = {}
    if args.students:
        params["students"] = args.students
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = float(value) if "." in value else int(value)
    results = uvloop.run(_run(names, params, args.repeat))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [r["case"] for r in results if not r["ok"]]
    print(f"\n{len(results) - len(failed)} of {len(results)} runs ok" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
