"""The worker supervisor (server/workers.py) on real processes: a dead worker is replaced, a worker that cannot start
stops everything, a crash loop gives up, a stop is a stop; and `examhub serve --workers 2` on real PostgreSQL and
Redis stays at two hub processes when one is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.driver import worker_pids
from server.workers import exit_status
from storage.embedded import free_port
from tests.conftest import REDIS_URL
from tests.server.conftest import logged as logged_in
from tests.server.conftest import serve_process

ROOT = Path(__file__).resolve().parents[2]


def supervise(tmp_path: Path, target: str, args: tuple[object, ...] = (), n: int = 2, on_death: str | None = None,
              **options: float) -> subprocess.Popen[bytes]:  # fmt: skip
    """A parent process running Supervisor(tests.server.worker_targets.<target>, args, n, "w", **options), with
    worker_targets.<on_death> as its hook (writing to tmp_path/deaths)."""
    hook = f"worker_targets.{on_death}" if on_death else "None"
    code = (
        "import sys\n"
        "from server.workers import Supervisor\n"
        "from tests.server import worker_targets\n"
        f"s = Supervisor(worker_targets.{target}, {args!r}, {n}, 'w', on_death={hook}, **{options!r})\n"
        "sys.exit(s.run('w: all listen'))\n"
    )
    env = {**os.environ, "WORKER_DEATHS": str(tmp_path / "deaths")}
    with (tmp_path / "supervisor.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def until(check: Callable[[], object], what: str, within_s: float = 20.0) -> object:
    deadline = time.monotonic() + within_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        time.sleep(0.05)
    return found


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "supervisor.log").read_text(errors="replace")


def logged(tmp_path: Path, text: str, within_s: float = 20.0) -> None:
    until(lambda: text in log_of(tmp_path), f"{text!r} in the log", within_s)


def gone(pid: int) -> bool:
    """Exited (a zombie counts: an orphan is reaped by whoever is pid 1, if anyone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Parents to kill, with their workers, whatever the test did."""
    parents: list[subprocess.Popen[bytes]] = []
    yield parents
    for p in parents:
        kids = worker_pids(p.pid)
        p.kill()
        p.wait(10)
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


def test_exit_status_reads_as_a_shell_shows_it() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 137
    assert exit_status(None) == 0


def test_a_killed_worker_is_replaced_and_a_stop_stops_all(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    parent = supervise(tmp_path, "serve")
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    assert "w: all 2 workers listen" in log_of(tmp_path)  # what the load test's driver waits for
    first = worker_pids(parent.pid)
    assert len(first) == 2
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    logged(tmp_path, f"listens, in place of pid {victim}")
    after = worker_pids(parent.pid)
    assert len(after) == 2 and victim not in after
    assert first[1] in after, "the other worker was left alone"
    assert f"(pid {victim}) was killed by SIGKILL; starting another in 0 s" in log_of(tmp_path)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(20) == 0, log_of(tmp_path)
    for pid in after:
        until(lambda pid=pid: gone(pid), f"worker {pid} stopped", 5)


def test_a_worker_that_ends_by_itself_is_replaced_too(tmp_path: Path, stopped: list[subprocess.Popen[bytes]]) -> None:
    """A SIGTERM aimed at one worker (not at the parent) ends that worker cleanly; the parent starts another."""
    parent = supervise(tmp_path, "serve")
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    first = worker_pids(parent.pid)
    os.kill(first[1], signal.SIGTERM)
    logged(tmp_path, f"listens, in place of pid {first[1]}")
    assert first[0] in worker_pids(parent.pid)
    assert f"(pid {first[1]}) exited with status 0; starting another" in log_of(tmp_path)
    assert parent.poll() is None


def test_the_hook_hears_of_each_ended_worker_by_its_name(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    parent = supervise(tmp_path, "serve_named", ("hub-x",), n=1, on_death="record_death")
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    (first,) = worker_pids(parent.pid)
    os.kill(first, signal.SIGKILL)
    logged(tmp_path, f"listens, in place of pid {first}")
    assert (tmp_path / "deaths").read_text() == "hub-x\n"  # the killed one, before its replacement started
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(20) == 0, log_of(tmp_path)
    assert (tmp_path / "deaths").read_text() == "hub-x\nhub-x\n"  # and the replacement, stopped


def test_a_failing_hook_does_not_stop_the_supervisor(tmp_path: Path, stopped: list[subprocess.Popen[bytes]]) -> None:
    parent = supervise(tmp_path, "serve_named", ("hub-x",), n=1, on_death="record_death")
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    (tmp_path / "deaths").mkdir()  # the hook now fails: it cannot append to a folder
    (first,) = worker_pids(parent.pid)
    os.kill(first, signal.SIGKILL)
    logged(tmp_path, f"listens, in place of pid {first}")
    assert "after worker w-0 ended: IsADirectoryError" in log_of(tmp_path)
    assert parent.poll() is None


def test_a_worker_that_cannot_start_stops_everything_with_its_status(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    parent = supervise(tmp_path, "fail_at_start", (3,))
    stopped.append(parent)
    assert parent.wait(20) == 3, log_of(tmp_path)
    assert "exited with status 3 before it listened; stopping" in log_of(tmp_path)
    assert "starting another" not in log_of(tmp_path)
    assert "w: all listen" not in log_of(tmp_path) and "workers listen" not in log_of(tmp_path)


def test_a_crash_loop_gives_up(tmp_path: Path, stopped: list[subprocess.Popen[bytes]]) -> None:
    parent = supervise(tmp_path, "crash_after_start", (1,), n=1, max_deaths=3, backoff_s=0.05)
    stopped.append(parent)
    assert parent.wait(60) == 1, log_of(tmp_path)
    log = log_of(tmp_path)
    assert log.count("exited with status 1; starting another") == 3, log
    assert "4 workers ended within 60 s and none listens: stopping" in log


def test_a_replacement_that_cannot_start_is_tried_again_while_another_serves(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    """As a hub's replacement would while PostgreSQL is down: the healthy worker is not stopped for it, however
    often it fails; once it can start, it does."""
    blocker = tmp_path / "cannot-start"
    parent = supervise(tmp_path, "serve_unless", (str(blocker),), max_deaths=2, backoff_s=0.05, max_backoff_s=0.2)
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    healthy, victim = worker_pids(parent.pid)
    blocker.touch()
    os.kill(victim, signal.SIGKILL)
    until(lambda: log_of(tmp_path).count("exited with status 2; starting another") >= 6, "six failed starts")
    assert parent.poll() is None and healthy in worker_pids(parent.pid), log_of(tmp_path)
    assert "stopping" not in log_of(tmp_path)
    blocker.unlink()
    logged(tmp_path, "listens, in place of pid")
    assert healthy in worker_pids(parent.pid) and len(worker_pids(parent.pid)) == 2


def test_replacements_back_off(tmp_path: Path, stopped: list[subprocess.Popen[bytes]]) -> None:
    parent = supervise(tmp_path, "crash_after_start", (1,), n=1, max_deaths=4, backoff_s=0.2)
    stopped.append(parent)
    assert parent.wait(60) == 1, log_of(tmp_path)
    lines = log_of(tmp_path).splitlines()
    delays = [line.rsplit("starting another in ", 1)[1] for line in lines if "another in" in line]
    assert delays == ["0 s", "0.2 s", "0.4 s", "0.8 s"]


def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    parent = supervise(tmp_path, "deaf", n=1, stop_grace_s=1.0)
    stopped.append(parent)
    logged(tmp_path, "w: all listen")
    (worker,) = worker_pids(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(20) == 137, log_of(tmp_path)
    assert "still running 1 s after SIGTERM: killing it" in log_of(tmp_path)
    until(lambda: gone(worker), "the worker gone", 5)


def serve_two(database_url: str, prefix: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`examhub serve --workers 2` on a free port, on real PostgreSQL and Redis, its output in supervisor.log."""
    port = free_port()
    return serve_process(database_url, prefix, tmp_path, port, tmp_path / "supervisor.log", "--workers", "2"), port


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port` (IPv4), from /proc."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    try:
        links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def test_serve_with_two_workers_stays_at_two(own_database_url: str, prefix: str, tmp_path: Path,
                                             stopped: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    """`examhub serve --workers 2` on real PostgreSQL and Redis: kill -9 the hub process holding a student, and
    another takes its place on the port while the other one answers; the student, back on another process, is
    recorded as dropped (time ledger), not as a second device, since the parent released the dead process' lease;
    SIGTERM stops the lot with status 0."""
    parent, port = serve_two(own_database_url, prefix, tmp_path)
    stopped.append(parent)
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    logged(tmp_path, f"examhub: 2 hub processes on {base}", 60)
    first = worker_pids(parent.pid)
    assert len(first) == 2 and all(listening(p, port) for p in first)

    holder, after, events, ledger = asyncio.run(_kill_under_a_student(base, own_database_url, prefix, parent,
                                                                         tmp_path, serving))  # fmt: skip
    assert holder in first
    assert len(after) == 2 and holder not in after and set(first) - {holder} <= set(after)
    assert all(listening(p, port) for p in after), "the new hub process holds a socket on the port"
    assert all(serving() for _ in range(20))
    assert not [e for e in events if e.startswith("second_device")], events
    assert len(ledger) == 1, ledger  # the drop, from the release to the return
    # each process holds its slot's place on the port (server/succession.py); the replacement took the dead one's
    held = {int((tmp_path / f"hub-{port}-{slot}.lease").read_text().rsplit("-", 2)[-2]) for slot in (0, 1)}
    assert held == set(after), (held, after)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, log_of(tmp_path)
    for pid in after:
        until(lambda pid=pid: gone(pid), f"hub process {pid} stopped", 5)


def test_serve_workers_stop_when_their_parent_is_killed(own_database_url: str, prefix: str, tmp_path: Path) -> None:
    """kill -9 of the parent of `examhub serve --workers 2`: its hub processes notice within a second and shut
    down as on SIGTERM, so that a restarted parent does not find them still serving on its port."""
    parent, port = serve_two(own_database_url, prefix, tmp_path)
    kids: list[int] = []
    try:
        logged(tmp_path, f"examhub: 2 hub processes on http://127.0.0.1:{port}", 60)
        kids = worker_pids(parent.pid)
        assert len(kids) == 2
        parent.kill()
        parent.wait(10)
        for pid in kids:
            until(lambda pid=pid: gone(pid), f"orphaned hub process {pid} stopped", 15)
        for pid in kids:
            assert f"worker {pid}: its parent {parent.pid} has gone: stopping" in log_of(tmp_path)
        assert log_of(tmp_path).count("examhub: shutting down") == 2  # each as on SIGTERM
    finally:
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _kill_under_a_student(
    base: str, database_url: str, prefix: str, parent: subprocess.Popen[bytes], tmp_path: Path,
    serving: Callable[[], bool],
) -> tuple[int, list[int], list[str], list[str]]:  # fmt: skip
    """A guest starts a session, connects and has an answer acknowledged; the hub process holding the connection
    (its pid is in the host id the session names in Redis: hostname-pid-xxxx) is killed while the student is
    connected; once another process has taken its place, the student connects again. Returns the killed pid, the
    workers then, and the session's anti-cheat events and time ledger."""
    from redis.asyncio import Redis

    from storage.keys import Keys
    from tests.server.conftest import first_answer_acked, quick_template_id, start_live

    async def logged_async(text: str) -> None:
        await logged_in(tmp_path / "supervisor.log", text, 30)

    tid = await quick_template_id(database_url)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with aiohttp.ClientSession() as http:
            sid, url = await start_live(http, base, tid)
            k = Keys(prefix).session(sid)
            async with http.ws_connect(url) as ws:
                await first_answer_acked(ws)
                host = await redis.hget(k.meta, "host")
                assert host and await redis.hget(k.meta, "online") == "1"
                holder = int(host.rsplit("-", 2)[-2])

                os.kill(holder, signal.SIGKILL)  # the student is still connected to it
                await logged_async(f"(pid {holder}) was killed by SIGKILL; starting another in 0 s")  # reaped
                assert serving(), "the other hub process answers"
                await logged_async(f"listens, in place of pid {holder}")  # after the parent released the lease
                after = worker_pids(parent.pid)
                async with http.ws_connect(url) as again:
                    state = json.loads((await again.receive(timeout=10)).data)
                    assert state["type"] == "state" and state["last_seq"] == 1
        return holder, after, await redis.lrange(k.ev, 0, -1), await redis.lrange(k.ledger, 0, -1)
    finally:
        await redis.aclose()
