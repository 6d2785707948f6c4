"""The headless load-test runner: one command per scenario, a result table as JSON and markdown.

    python -m loadtest.run steady        --students 10000            # 2,000 answers/s, p99 ack, memory
    python -m loadtest.run start-storm   --students 10000 --window 20
    python -m loadtest.run submit-storm  --students 10000
    python -m loadtest.run proctors      --students 10000 --proctors 20
    python -m loadtest.run compare       --students 2000             # examhub vs ceiling vs HTTP->PostgreSQL
    python -m loadtest.run steady --workers 2 ...                    # two hub processes (SO_REUSEPORT)

(`examhub loadtest SCENARIO ...` is the same command.) Each run starts what it needs as subprocesses: a
fresh PostgreSQL database on --database-url's server, a redis-server of its own with the durable settings
(append-only, fsync always, no eviction), `examhub serve --workers N`, and for `compare` the baseline
servers of loadtest/baselines/ (with --workers N, N processes of each, so that N hub processes meet N of the
ceiling's and of the HTTP baseline's). The driver is the asyncio one (loadtest/driver.py), one process on uvloop
holding every WebSocket; it shares the machine's cores with the servers. Results go to
--out/<scenario>[-wN].json and .md, with the machine, the command and each target met or missed.
Exit status: 0 when every target is met, 3 when the run completed but missed a target, 2 on bad arguments
(1 is a crash).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from loadtest.config import SCENARIO_NAMES, TARGET_P99_MS, Config

RESULTS = Path(__file__).parent / "results"
MISSED = 3  # exit status: the run completed, a target was missed


def targets(scenario: str, r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, figure, met) for each of issue #6's targets that the scenario measures."""

    def le(value: Any, limit: float) -> bool:
        return value is not None and value <= limit

    if scenario in ("steady", "proctors"):
        out = [
            (f"p99 ack <= {TARGET_P99_MS:g} ms", f"{r['p99_ms']} ms", le(r["p99_ms"], TARGET_P99_MS)),
            ("0 lost", str(r["lost"]), r["lost"] == 0 and r["acked"] > 0),
            ("0 errors", str(r["errors"]), r["errors"] == 0),
        ]
        if scenario == "steady":
            out.append(("hub memory <= 25 KB per idle connection", f"{r['hub_kb_per_connection']} KB",
                        le(r["hub_kb_per_connection"], 25)))  # fmt: skip
        else:
            out.append(("p99 event-to-proctor <= 250 ms", f"{r['feed_p99_ms']} ms", le(r["feed_p99_ms"], 250)))
        return out
    if scenario == "start-storm":
        return [
            ("all started and connected within 30 s", f"{r['all_connected_s']} s", le(r["all_connected_s"], 30)),
            ("0 errors", str(r["errors"]), r["errors"] == 0 and r["connected"] == r["students"]),
            ("p99 start+connect <= 2 s", f"{r['p99_ms']} ms", le(r["p99_ms"], 2000)),
        ]
    if scenario == "submit-storm":
        return [
            ("all attempts in PostgreSQL within 60 s", f"{r['all_in_pg_s']} s", le(r["all_in_pg_s"], 60)),
            ("0 lost", str(r["lost"]), r["lost"] == 0 and r["missing_attempts"] == 0 and r["answers_acked"] > 0),
            (
                "0 duplicated",
                f"{r['duplicated_responses']} responses, {r['duplicated_attempts']} attempts",
                r["duplicated_responses"] == 0 and r["duplicated_attempts"] == 0,
            ),
        ]
    if scenario == "compare":
        c, h = r["ratio_examhub_to_ceiling"], r["ratio_examhub_to_http_pg"]
        return [
            ("examhub / ceiling >= 0.8 (throughput at p99 <= 50 ms)", str(c), c is not None and c >= 0.8),
            ("examhub / HTTP->PostgreSQL >= 3", str(h), h is not None and h >= 3),
        ]
    raise ValueError(scenario)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _processes(scenario: str, workers: int) -> str:
    if workers == 1:
        return ""
    return f" ({workers} processes of each server)" if scenario == "compare" else f" ({workers} hub processes)"


def to_markdown(doc: dict[str, Any]) -> str:
    r = doc["result"]
    m = doc["machine"]
    lines = [
        f"# Load test: {doc['scenario']}" + _processes(doc["scenario"], r.get("workers", 1)),
        "",
        f"- Command: `{doc['command']}`",
        f"- Date: {doc['date']}; driver: {doc['driver']}",
        f"- Machine: {m['cpus']} cores ({m['cpu']}), {m['ram_gib']} GiB, Python {m['python']}, kernel {m['kernel']};"
        " the load generator runs on the same cores",
        f"- Load average (1 min) before / after: {doc['load_before']} / {doc['load_after']}; "
        f"priority (nice) of the run and its servers: {doc.get('nice', 0)}",
        f"- One durable Redis write (appendfsync always, sequential) before the run: {_probe(doc)}",
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
        *(f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in doc["targets"]),
        "",
        "| Figure | Value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r.items() if k not in ("rows", "steps")),
    ]
    if "steps" in r:
        lines += [
            "",
            f"Each rate per target: up to {r['trials']} trials of {r['step_s']:g} s; it counts when most meet the"
            " target (medians of its trials):",
            "",
            "| Target | Offered /s | Trials | Met | Counts | Throughput /s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
            *(
                f"| {x['target']} | {x['offered_rate']:g} | {x['trials']} | {x['met']} | "
                f"{'yes' if x['counts'] else 'no'} | {x['throughput']} | {x['p50_ms']} | {x['p99_ms']} |"
                for x in r["steps"]
            ),
        ]
    if "rows" in r:
        lines += [
            "",
            "| Target | Offered /s | Trial | Throughput /s | p50 ms | p95 ms | p99 ms | max ms | Errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {x['target']} | {x['offered_rate']:g} | {x.get('trial', 1)} | {x['throughput']} | {x['p50_ms']} | "
                f"{x['p95_ms']} | {x['p99_ms']} | {x['max_ms']} | {x['errors']} |"
                for x in r["rows"]
            ),
        ]
    return "\n".join(lines) + "\n"


def _probe(doc: dict[str, Any]) -> str:
    p = doc.get("durable_redis_write_before")
    return f"p50 {p['fsync_write_p50_ms']} ms, p99 {p['fsync_write_p99_ms']} ms" if p else "not measured"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("scenario", choices=SCENARIO_NAMES)
    p.add_argument("--students", type=int, default=d.students)
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        choices=(1, 2, 3, 4),
        help="hub processes (compare: processes of each server)",
    )
    p.add_argument("--rate", type=float, help="steady/proctors: answers/s in total (default: students / 5)")
    p.add_argument("--duration", type=float, default=d.duration, help="steady/proctors: seconds of load")
    p.add_argument("--warmup", type=float, default=d.warmup, help="steady/proctors: uncounted seconds of load first")
    p.add_argument("--template", default=d.template, help="steady/proctors/start-storm/compare: template slug")
    p.add_argument("--msgpack", action="store_true", help="steady/proctors: binary frames")
    p.add_argument("--proctors", type=int, default=0, help="proctors on the room's feed (proctors: default 20)")
    p.add_argument("--window", type=float, default=d.window, help="start-storm: arrivals spread over this many s")
    p.add_argument("--answers", type=int, default=d.answers, help="submit-storm: answers per attempt")
    p.add_argument("--pipeline", type=int, default=d.pipeline, help="submit-storm: answers in flight per student")
    p.add_argument("--storm-timeout", type=float, default=d.storm_timeout,
                   help="submit-storm: stop waiting for PostgreSQL after this many s")  # fmt: skip
    p.add_argument("--rates", default=",".join(f"{x:g}" for x in d.rates), help="compare: offered answers/s steps")
    p.add_argument("--step", type=float, default=d.step, help="compare: seconds per trial of a rate and target")
    p.add_argument("--trials", type=int, default=d.trials,
                   help="compare: a rate counts when most of up to this many trials meet it (1: one)")  # fmt: skip
    p.add_argument("--database-url", default=d.database_url,
                   help="a PostgreSQL server; each run creates and drops a database of its own there")  # fmt: skip
    p.add_argument("--redis-url", help="default: a durable redis-server of the run's own")
    p.add_argument("--redis-fsync", choices=("always", "everysec"), default="always",
                   help="the run's redis-server: everysec is NOT durable, only to show what fsync costs")  # fmt: skip
    p.add_argument("--pg-pool", type=int, default=d.pg_pool, help="EXAMHUB_PG_POOL_MAX of each hub process")
    p.add_argument("--nice", type=int, default=0,
                   help="priority for the run and the servers it starts, -20..19 (negative needs root): on a shared "
                        "machine, -10 keeps other work from being measured as latency")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for <scenario>[-wN].json and .md")


def config(p: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    if not 0 < args.students <= 20_000:
        p.error("--students must be in 1..20000")
    if not 0 < args.duration <= 600 or not 0 < args.step <= 120:
        p.error("--duration must be in (0, 600] s and --step in (0, 120] s")
    if not 1 <= args.trials <= 9:
        p.error("--trials must be in 1..9")
    if not 1 <= args.pg_pool <= 200:
        p.error("--pg-pool must be in 1..200")
    if not -20 <= args.nice <= 19:
        p.error("--nice must be in -20..19")
    if not 0 <= args.warmup <= 120:
        p.error("--warmup must be in [0, 120] s")
    if not 0 < args.window <= 600:
        p.error("--window must be in (0, 600] s")
    if not 1 <= args.answers <= 180 or not 1 <= args.pipeline <= 64:
        p.error("--answers must be in 1..180 and --pipeline in 1..64")
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        p.error(f"--rates: expected numbers separated by commas, got {args.rates!r}")
    if not rates or min(rates) <= 0 or (args.rate is not None and args.rate <= 0):
        p.error("rates must be > 0")
    return Config(students=args.students, workers=args.workers, rate=args.rate, duration=args.duration,
                  warmup=args.warmup, template=args.template, msgpack=args.msgpack, proctors=args.proctors,
                  window=args.window, pipeline=args.pipeline, answers=args.answers,
                  storm_timeout=args.storm_timeout, rates=rates, step=args.step, trials=args.trials,
                  database_url=args.database_url, redis_url=args.redis_url, nice=args.nice,
                  pg_pool=args.pg_pool, redis_fsync=args.redis_fsync)  # fmt: skip


async def execute(scenario: str, cfg: Config, out: Path, command: str) -> dict[str, Any]:
    """Run one scenario; write <out>/<scenario>[-wN].json and .md; return the document."""
    from loadtest import driver
    from loadtest.scenarios import SCENARIOS

    fds = driver.raise_fd_limit()
    need = cfg.students + 1000  # the hub is another process, with a limit of its own
    if fds < need:
        print(f"loadtest: warning: the open-files limit is {fds}; {cfg.students} students need about {need}",
              file=sys.stderr)  # fmt: skip
    gc.set_threshold(100_000, 50, 1000)  # the generator's own GC pauses would count as hub latency
    if cfg.nice:
        os.setpriority(os.PRIO_PROCESS, 0, cfg.nice)  # inherited by the hub, redis-server and the baselines
    load_before = round(os.getloadavg()[0], 2)
    started = dt.datetime.now(dt.UTC)
    probe_before = await driver.probe_fsync()
    result = await SCENARIOS[scenario](cfg)
    doc: dict[str, Any] = {
        "scenario": scenario,
        "command": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "driver": "asyncio (loadtest/driver.py, one process on uvloop, aiohttp client)",
        "machine": machine(),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "fd_limit": fds,
        "durable_redis_write_before": probe_before,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "result": result,
    }
    doc["targets"] = targets(scenario, result)
    doc["met"] = all(ok for _, _, ok in doc["targets"])
    suffix = (f"-w{cfg.workers}" if cfg.workers > 1 else "") + ("-everysec" if cfg.redis_fsync != "always" else "")
    write(doc, out / (scenario + suffix))
    return doc


def write(doc: dict[str, Any], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(doc))
    sys.stdout.write(to_markdown(doc))


def main(argv: list[str] | None = None, prog: str = "python -m loadtest.run") -> int:
    p = parser()
    args = p.parse_args(argv)
    cfg = config(p, args)
    command = prog + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    import uvloop

    doc = uvloop.run(execute(args.scenario, cfg, args.out, command))
    return 0 if doc["met"] else MISSED


if __name__ == "__main__":
    sys.exit(main())
