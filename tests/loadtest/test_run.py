"""Smoke runs of every load scenario at small scale, so the harness cannot rot.

Each runs `python -m loadtest.run SCENARIO` as a user would (its own redis-server, a fresh database, the hub
as a subprocess) with 200 students for a few seconds, and checks the result table it writes: every answer
acknowledged is kept, nothing failed, the fields a reader of docs/performance.md relies on are there. Timings
are not asserted (they belong to the recorded runs); a missed timing target only changes the exit status to 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.cpu_per_answer import _redis_pid
from loadtest.scenarios import majority
from tests.conftest import ADMIN_URL

STUDENTS = "200"


def run(tmp_path: Path, *args: str, timeout: float = 240) -> dict[str, Any]:
    out = tmp_path / "results"
    # --pg-pool 5: the machine's PostgreSQL is shared by the whole suite (max_connections)
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", *args, "--out", str(out), "--database-url", ADMIN_URL,
                           "--pg-pool", "5"],
                          check=False, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr[-3000:] + proc.stdout[-2000:]
    name = args[0] + ("-w2" if "--workers" in args else "")
    doc: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    markdown = (out / f"{name}.md").read_text()
    assert doc["scenario"] == args[0]
    assert doc["met"] is (proc.returncode == 0)
    assert "| Target | Measured | Met |" in markdown and doc["command"].startswith("python -m loadtest.run")
    assert doc["machine"]["cpus"] >= 1 and doc["targets"]
    return dict(doc["result"])


def assert_latencies(r: dict[str, Any], prefix: str = "") -> None:
    p50, p99, top = r[f"{prefix}p50_ms"], r[f"{prefix}p99_ms"], r[f"{prefix}max_ms"]
    assert 0 < p50 <= p99 <= top, r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_steady(tmp_path: Path, workers: str) -> None:
    args = ["steady", "--students", STUDENTS, "--rate", "400", "--duration", "3"]
    r = run(tmp_path, *args, *(["--workers", "2"] if workers == "2" else []))
    assert r["workers"] == int(workers)
    assert r["lost"] == 0 and r["errors"] == 0
    assert r["acked"] == r["sent"] > 0.8 * 400 * 3
    assert_latencies(r)
    assert r["hub_kb_per_connection"] > 0 and r["hub_rss_mb_idle"] > r["hub_rss_mb_before_connect"]


@pytest.mark.timeout(300)
def test_start_storm(tmp_path: Path) -> None:
    r = run(tmp_path, "start-storm", "--students", STUDENTS, "--window", "2")
    assert r["connected"] == 200 and r["errors"] == 0 and r["first_error"] is None
    assert_latencies(r)
    assert_latencies(r, "start_")
    assert r["start_p99_ms"] <= r["max_ms"]


@pytest.mark.timeout(300)
def test_submit_storm(tmp_path: Path) -> None:
    r = run(tmp_path, "submit-storm", "--students", STUDENTS)
    assert r["answers_acked"] == 200 * 180 and r["fill_errors"] == 0
    assert r["submits_acked"] == r["finished_frames"] == 200
    assert r["attempts_in_pg"] == 200 and r["responses_in_pg"] == 200 * 180 and r["all_in_pg_s"] is not None
    assert r["lost"] == r["missing_attempts"] == r["duplicated_responses"] == r["duplicated_attempts"] == 0


@pytest.mark.timeout(300)
def test_proctors(tmp_path: Path) -> None:
    r = run(tmp_path, "proctors", "--students", STUDENTS, "--proctors", "3", "--rate", "200", "--duration", "4")
    assert r["proctors"] == 3 and r["lost"] == 0 and r["errors"] == 0 and r["feed_errors"] == 0
    assert r["feed_updates"] > 0
    assert_latencies(r, "feed_")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_compare(tmp_path: Path, workers: str) -> None:
    """--workers 2: two processes of each server (the baselines too: N against N)."""
    more = ["--workers", workers] if workers != "1" else []
    r = run(tmp_path, "compare", "--students", STUDENTS, "--rates", "100,200", "--step", "2", *more)
    assert r["workers"] == int(workers)
    assert sorted({row["target"] for row in r["rows"]}) == ["ceiling", "examhub", "http_pg"]
    for row in r["rows"]:
        assert row["errors"] == 0 and row["acked"] > 0, row
        assert_latencies(row)
    assert set(r["best_throughput_at_p99_50ms"]) == {"ceiling", "examhub", "http_pg"}
    # every rate got a verdict per target from its trials (2 of 3 decide when both meet the target)
    assert {(s["target"], s["offered_rate"]) for s in r["steps"]} == {
        (t, rate) for t in ("ceiling", "examhub", "http_pg") for rate in (100, 200)
    }
    for step in r["steps"]:
        trials = [x for x in r["rows"] if (x["target"], x["offered_rate"]) == (step["target"], step["offered_rate"])]
        assert step["trials"] == len(trials) and step["met"] == sum(x["met"] for x in trials)
        assert 2 <= step["trials"] <= 3 and step["counts"] == (step["met"] >= 2)
    assert r["first_trials_only"]["best"].keys() == r["best_throughput_at_p99_50ms"].keys()


@pytest.mark.parametrize(
    ("met", "verdict"),
    [
        ([], None),
        ([True], None),
        ([False], None),
        ([True, True], True),
        ([False, False], False),
        ([True, False], None),
        ([True, False, True], True),
        ([False, True, False], False),
    ],
)
def test_a_rate_counts_when_most_trials_meet_the_target(met: list[bool], verdict: bool | None) -> None:
    assert majority([{"met": m} for m in met], of=3) is verdict


def test_one_trial_decides_alone() -> None:
    assert majority([{"met": True}], of=1) is True and majority([{"met": False}], of=1) is False


@pytest.mark.timeout(300)
def test_cpu_per_answer() -> None:
    """The per-process CPU tool of docs/performance.md ("CPU per answer") runs end to end."""
    proc = subprocess.run([sys.executable, "-m", "loadtest.cpu_per_answer", "--rate", "100", "--seconds", "2",
                           "--students", "20", "--database-url", ADMIN_URL, "--pg-pool", "5"],
                          check=False, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("examhub", "ceiling"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{name}:"))
        assert "errors 0;" in line, line
        cpu = re.search(r"CPU per answer: server (\d+) us, redis (\d+) us, driver (\d+) us", line)
        assert cpu is not None and int(cpu[1]) > 0 and int(cpu[3]) > 0, line  # the server's process was found
    # (Redis' share of 200 answers is below /proc's 10 ms tick; its process is found as:)
    pid = _redis_pid("redis://127.0.0.1:6379/0")
    assert pid is not None and Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    assert _redis_pid("redis://127.0.0.1:637/0") is None
    bad = subprocess.run([sys.executable, "-m", "loadtest.cpu_per_answer", "--rate", "0"],
                         check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--rate" in bad.stderr


def test_lua_variants() -> None:
    """The script-variant benchmark of docs/performance.md runs end to end, every variant accepting every answer
    (it exits with the refusal otherwise), and refuses bad arguments."""
    proc = subprocess.run([sys.executable, "-m", "loadtest.lua_variants", "--rounds", "20", "--repeat", "1"],
                          check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("current", "inline", "no_last_seq", "seq_in_ans", "one_hash"):
        assert re.search(rf"^  {name} +\d+\.\d us", proc.stdout, re.M), proc.stdout
    bad = subprocess.run([sys.executable, "-m", "loadtest.lua_variants", "--batch", "0"],
                         check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--batch" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["steady", "--students", "0"], "--students must be in 1..20000"),
        (["compare", "--rates", "1,x"], "--rates: expected numbers"),
        (["compare", "--trials", "0"], "--trials must be in 1..9"),
        (["compare", "--trials", "10"], "--trials must be in 1..9"),
        (["nonsense"], "invalid choice"),
        (["submit-storm", "--answers", "181"], "--answers must be in 1..180"),
    ],
)
def test_bad_arguments(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.run", *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_examhub_loadtest_command_checks_its_arguments() -> None:
    """`examhub loadtest` is the same runner behind the CLI (server/commands/loadtest.py)."""
    proc = subprocess.run([sys.executable, "-m", "server.cli", "loadtest", "steady", "--pg-pool", "0"], check=False,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--pg-pool must be in 1..200" in proc.stderr
