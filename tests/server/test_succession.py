"""How a hub process that ended without a word is told from a live one, on real processes: its successor on its port
(server/succession.py: real files, real locks) and its silent alive channel (storage/lua/open.lua)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server import succession
from storage.embedded import free_port
from tests.conftest import REDIS_URL
from tests.server.conftest import ROOT, logged, serve_process, text_of

HOLD = """
import sys, time
from pathlib import Path
from server import succession
place = succession.take(Path(sys.argv[1]), int(sys.argv[2]))
assert place is not None
place.record(sys.argv[3])
print("held", flush=True)
time.sleep(60)
"""


def _holder(data_dir: Path, port: int, host: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir), str(port), host], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def test_the_first_process_on_a_port_has_no_predecessor(tmp_path: Path) -> None:
    place = succession.take(tmp_path / "data", 8080)
    assert place is not None and place.previous is None
    assert place.path == tmp_path / "data" / "hub-8080-0.lease"  # the data directory is made
    place.record("host-1-abcd")
    assert place.path.read_text() == "host-1-abcd"
    place.close()


def test_the_next_process_reads_the_one_before_and_records_itself(tmp_path: Path) -> None:
    first = succession.take(tmp_path, 8080)
    assert first is not None
    first.record("a-long-host-name-of-the-first-process-1-abcd")
    first.close()  # it ends
    second = succession.take(tmp_path, 8080)
    assert second is not None and second.previous == "a-long-host-name-of-the-first-process-1-abcd"
    second.record("b-2-ef01")  # shorter: nothing of the longer id is left behind
    second.close()
    third = succession.take(tmp_path, 8080)
    assert third is not None and third.previous == "b-2-ef01"
    third.close()


def test_a_place_held_by_a_live_process_is_not_taken(tmp_path: Path) -> None:
    holder = _holder(tmp_path, 8080, "alive-1-0001")
    try:
        assert succession.take(tmp_path, 8080) is None  # its lease must not be ended: it is alive
        other = succession.take(tmp_path, 8081)  # another port, another place
        assert other is not None and other.previous is None
        other.close()
        worker = succession.take(tmp_path, 8080, slot=1)  # another worker slot of `serve --workers`
        assert worker is not None and worker.previous is None
        worker.close()
    finally:
        _end(holder)


def test_a_killed_process_leaves_its_place_and_its_name(tmp_path: Path) -> None:
    holder = _holder(tmp_path, 8080, "killed-7-0bad")
    _end(holder, signal.SIGKILL)  # no clean-up runs: the kernel frees the lock
    place = succession.take(tmp_path, 8080)
    assert place is not None and place.previous == "killed-7-0bad"
    place.close()


def test_a_data_directory_that_cannot_hold_the_file_raises(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(OSError):
        succession.take(blocked, 8080)


async def _back_within_the_lease(http: aiohttp.ClientSession, url: str, redis: Redis | RedisCluster,
                                 seen: int) -> None:  # fmt: skip
    """The student connects again, and finds their answer, before the dead process' lease (renewed at `seen`) ran
    out: otherwise the lease alone would have told, and the test would show nothing."""
    from storage.session_store import LEASE_TTL_MS

    async with http.ws_connect(url) as again:
        state = json.loads((await again.receive(timeout=10)).data)
        assert state["type"] == "state" and state["last_seq"] == 1
    seconds, _ = await redis.time()
    assert int(seconds) * 1000 - seen < LEASE_TTL_MS, "back too late to tell: the lease ran out anyway"


def test_a_data_folder_that_cannot_hold_the_place_is_logged_and_the_hub_serves(own_database_url: str, prefix: str,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    """A data folder the hub cannot write (here a file): its successor will not know of it, which is said once in
    the log; the hub serves all the same (the lease still runs out by itself)."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file")
    port = free_port()
    hub = serve_process(own_database_url, prefix, blocked, port, tmp_path / "hub.log")
    try:
        asyncio.run(logged(tmp_path / "hub.log", "examhub: serving on"))
        assert f"no place in {blocked}" in text_of(tmp_path / "hub.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0, text_of(tmp_path / "hub.log")


def test_a_killed_hub_restarted_on_its_port_ends_its_own_lease(own_database_url: str, prefix: str,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """A single `examhub serve` is killed (kill -9) under a connected student and started again on its port, as a
    container's restart policy does. The new process ends the dead one's lease before it listens, so the student,
    back within the lease's 15 s, is recorded as dropped since the dead process' last renewal (time ledger), not as
    a second device (which the proctor's risk score counts)."""
    asyncio.run(_kill_and_restart(own_database_url, prefix, tmp_path))


async def _kill_and_restart(database_url: str, prefix: str, tmp_path: Path) -> None:
    from storage.keys import Keys, partition_of
    from tests.server.conftest import first_answer_acked, quick_template_id, start_live

    port, data = free_port(), tmp_path / "data"
    base = f"http://127.0.0.1:{port}"
    tid = await quick_template_id(database_url)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    first = serve_process(database_url, prefix, data, port, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        await logged(tmp_path / "first.log", "examhub: serving on")
        async with aiohttp.ClientSession() as http:
            sid, url = await start_live(http, base, tid)
            k, hosts = Keys(prefix).session(sid), Keys(prefix).hosts(partition_of(sid))
            async with http.ws_connect(url) as ws:
                await first_answer_acked(ws)
                host = await redis.hget(k.meta, "host")
                assert host and int(host.rsplit("-", 2)[-2]) == first.pid
                assert text_of(data / f"hub-{port}-0.lease") == host

                first.send_signal(signal.SIGKILL)  # the student is still connected: nobody marks them offline
                first.wait()
                seen = int(await redis.hget(hosts, host) or 0)
                assert seen and await redis.hget(hosts, f"{host}|gone") is None  # its lease still holds

                second = serve_process(database_url, prefix, data, port, tmp_path / "second.log")
                await logged(tmp_path / "second.log", "examhub: serving on")
                assert f"ended the lease of {host}" in text_of(tmp_path / "second.log")
                assert await redis.hget(hosts, f"{host}|gone") == str(seen)  # as of its last renewal
                await _back_within_the_lease(http, url, redis, seen)
        events, ledger = await redis.lrange(k.ev, 0, -1), await redis.lrange(k.ledger, 0, -1)
        assert not [e for e in events if e.startswith("second_device")], events
        ((since, returned, gap, _),) = [tuple(int(x) for x in e.split("|")) for e in ledger]
        assert since == seen and gap == returned - seen > 0
        assert text_of(data / f"hub-{port}-0.lease") != host  # the new process' own id, for its successor
    finally:
        await redis.aclose()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def test_a_killed_hubs_student_back_on_another_hub_at_once_is_a_drop(own_database_url: str, prefix: str,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    """Two `examhub serve` processes, as behind a load balancer: the one holding a connected student is killed
    (kill -9) and the student comes straight back on the other, seconds within the dead one's lease. The dead
    process' alive channel has no subscriber any more (Redis dropped it with the process' connection), so the
    student is a drop since that process' last renewal, not a second device. And while both live, a second
    connection on the other hub is one."""
    asyncio.run(kill_and_move(own_database_url, prefix, tmp_path))


async def kill_and_move(database_url: str, prefix: str, tmp_path: Path, cluster_url: str | None = None) -> None:
    """The test above; with `cluster_url`, on that Redis Cluster (tests/cluster/test_e2e.py)."""
    from storage.keys import Keys, partition_of
    from tests.server.conftest import first_answer_acked, quick_template_id, start_live

    ports = free_port(), free_port()
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    tid = await quick_template_id(database_url)
    redis: Redis | RedisCluster = (RedisCluster.from_url(cluster_url, decode_responses=True) if cluster_url
                                   else Redis.from_url(REDIS_URL, decode_responses=True))  # fmt: skip
    procs = [serve_process(database_url, prefix, tmp_path / f"data{i}", p, tmp_path / f"hub{i}.log",
                           cluster_url=cluster_url) for i, p in enumerate(ports)]  # fmt: skip
    try:
        for i in (0, 1):
            await logged(tmp_path / f"hub{i}.log", "examhub: serving on")
        async with aiohttp.ClientSession() as http:
            sid, url = await start_live(http, bases[0], tid)
            k, hosts = Keys(prefix).session(sid), Keys(prefix).hosts(partition_of(sid))
            other = url.replace(bases[0].replace("http", "ws"), bases[1].replace("http", "ws"))
            async with http.ws_connect(url) as ws:
                await first_answer_acked(ws)
                async with http.ws_connect(other) as second:  # both hubs alive: a second device
                    assert json.loads((await second.receive(timeout=10)).data)["type"] == "state"
            assert await redis.lrange(k.ev, 0, -1) != []
            async with http.ws_connect(url) as ws:  # back on the first hub, then it is killed under the student
                assert json.loads((await ws.receive(timeout=10)).data)["type"] == "state"
                host = await redis.hget(k.meta, "host")
                assert host and int(host.rsplit("-", 2)[-2]) == procs[0].pid
                events_before = await redis.lrange(k.ev, 0, -1)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                seen = int(await redis.hget(hosts, host) or 0)
                await _back_within_the_lease(http, other, redis, seen)
        events, ledger = await redis.lrange(k.ev, 0, -1), await redis.lrange(k.ledger, 0, -1)
        assert events == events_before, events  # no second device for the return after the kill
        assert [e for e in events if e.startswith("second_device")], events  # (the one while both lived)
        since, returned, gap, _ = (int(x) for x in ledger[-1].split("|"))
        assert since == seen and gap == returned - seen > 0
    finally:
        await redis.aclose()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
