"""The comparison servers of loadtest/baselines/ as the load drivers use them: separate processes on a port,
against the machine's Redis and PostgreSQL. An ack must mean the answer is stored; bad input gets a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from loadtest.driver import wait_workers, worker_pids
from storage.embedded import EmbeddedRedis, free_port
from tests.conftest import REDIS_URL


@contextmanager
def server(module: str, *args: str, log_path: Path) -> Iterator[str]:
    """`python -m loadtest.baselines.<module> --port P ...` until /healthz answers; stopped with SIGTERM."""
    with server_process(module, *args, log_path=log_path) as (url, _):
        yield url


@contextmanager
def server_process(module: str, *args: str, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"loadtest.baselines.{module}", "--port", str(port), *args],
                                stdout=log, stderr=log)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    import urllib.request

                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            yield url, proc
        finally:
            proc.terminate()
            assert proc.wait(20) == 0, log_path.read_text()  # a clean shutdown on SIGTERM


def worker_sockets(parent: int) -> dict[int, int]:
    """Sockets held by each worker process of a baseline started with --workers."""
    held = {}
    for child in worker_pids(parent):
        fds = Path(f"/proc/{child}/fd")
        held[child] = sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))
    return held


async def both_listening(parent: int, log: Path) -> dict[int, int]:
    """/healthz answers once the first worker listens: wait for the second, as the load driver does."""
    await wait_workers(parent, 2, log)
    held = worker_sockets(parent)
    assert len(held) == 2, held
    return held


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_ceiling_acks_only_what_redis_holds(redis: Redis, prefix: str, http: aiohttp.ClientSession,
                                                  tmp_path: Path) -> None:  # fmt: skip
    with server("ceiling", "--redis-url", REDIS_URL, "--prefix", prefix, "--ttl", "600",
                log_path=tmp_path / "ceiling.log") as url:  # fmt: skip
        students = {f"s{i}": await http.ws_connect(f"{url}/ws?student=s{i}") for i in range(3)}
        for seq in range(1, 11):  # all students at once: their answers share pipelines
            for ws in students.values():
                frame = {"type": "answer", "seq": seq, "q": 100 + seq % 4, "choice": "ABCD"[seq % 4]}
                await ws.send_str(json.dumps(frame))
            for ws in students.values():
                assert json.loads((await ws.receive(timeout=5)).data) == {"type": "ack", "seq": seq}
        for name in students:
            key = f"{prefix}:{{{name}}}:ans"
            saved = await redis.hgetall(key)
            # the last answer to each question wins: seq 7..10 answered q 103, 100, 101, 102
            assert saved == {"103": "D|7", "100": "A|8", "101": "B|9", "102": "C|10"}
            assert 0 < await redis.ttl(key) <= 600
        for ws in students.values():
            await ws.close()


async def test_ceiling_workers_share_the_port(redis: Redis, prefix: str, http: aiohttp.ClientSession,
                                             tmp_path: Path) -> None:  # fmt: skip
    """--workers 2: two processes on one port (SO_REUSEPORT, as `examhub serve --workers 2`), both taking students,
    each ack still only after Redis holds the answer; SIGTERM stops both (server() checks the exit status)."""
    with server_process("ceiling", "--redis-url", REDIS_URL, "--prefix", prefix, "--workers", "2",
                        log_path=tmp_path / "ceiling.log") as (url, proc):  # fmt: skip
        before = await both_listening(proc.pid, tmp_path / "ceiling.log")
        students = [await http.ws_connect(f"{url}/ws?student=w{i}") for i in range(40)]
        for i, ws in enumerate(students):
            await ws.send_str(json.dumps({"type": "answer", "seq": 1, "q": i, "choice": "A"}))
        for ws in students:
            assert json.loads((await ws.receive(timeout=5)).data) == {"type": "ack", "seq": 1}
        after = worker_sockets(proc.pid)
        assert after.keys() == before.keys() and all(after[p] > before[p] for p in before), (before, after)
        for i in range(40):
            assert await redis.hgetall(f"{prefix}:{{w{i}}}:ans") == {str(i): "A|1"}
        for ws in students:
            await ws.close()
    assert not any(map(alive, before))


async def test_ceiling_bad_input(redis: Redis, prefix: str, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with server("ceiling", "--redis-url", REDIS_URL, "--prefix", prefix, log_path=tmp_path / "ceiling.log") as url:
        async with http.get(f"{url}/ws?student=") as r:
            assert r.status == 400
            assert (await r.json())["error"] == "bad_request"
        async with http.get(f"{url}/ws", params={"student": "a b/c"}) as r:
            assert r.status == 400
        ws = await http.ws_connect(f"{url}/ws?student=bad")
        cases = [
            ("not json", None, "not JSON"),
            (json.dumps({"type": "submit", "seq": 1}), 1, "expected"),
            (json.dumps({"type": "answer", "seq": -1, "q": 1, "choice": "A"}), None, "seq"),
            (json.dumps({"type": "answer", "seq": 2, "q": "1", "choice": "A"}), 2, "q must"),
            (json.dumps({"type": "answer", "seq": 3, "q": 1, "choice": ""}), 3, "choice"),
            (json.dumps({"type": "answer", "seq": 4, "q": 1, "choice": ["A"]}), 4, "choice"),
        ]
        for data, seq, words in cases:
            await ws.send_str(data)
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["type"] == "error" and reply["code"] == "bad_frame" and reply["seq"] == seq, reply
            assert words in reply["message"]
        await ws.send_bytes(b"\x81")
        assert json.loads((await ws.receive(timeout=5)).data)["code"] == "bad_frame"
        # the connection survives bad frames: a good answer is still saved and acked
        await ws.send_str(json.dumps({"type": "answer", "seq": 5, "q": 7, "choice": "B"}))
        assert json.loads((await ws.receive(timeout=5)).data) == {"type": "ack", "seq": 5}
        await ws.close()
    assert await redis.hgetall(f"{prefix}:{{bad}}:ans") == {"7": "B|5"}


async def test_ceiling_reports_a_lost_redis_and_reconnects(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Redis killed between answers: the answer in flight gets `unavailable`, never an ack; once Redis is back on its
    port, the writer's connection is made again and the next answer is saved and acked."""
    store = EmbeddedRedis(tmp_path / "redis", port=free_port())
    url = store.start()
    try:
        with server("ceiling", "--redis-url", url, log_path=tmp_path / "ceiling.log") as ceiling:
            ws = await http.ws_connect(f"{ceiling}/ws?student=s1")
            await ws.send_str(json.dumps({"type": "answer", "seq": 1, "q": 1, "choice": "A"}))
            assert json.loads((await ws.receive(timeout=5)).data) == {"type": "ack", "seq": 1}
            store.kill()
            await ws.send_str(json.dumps({"type": "answer", "seq": 2, "q": 2, "choice": "B"}))
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "error" and reply["code"] == "unavailable" and reply["seq"] == 2, reply
            store.start()  # the same port, the same append-only file
            await ws.send_str(json.dumps({"type": "answer", "seq": 3, "q": 3, "choice": "C"}))
            assert json.loads((await ws.receive(timeout=10)).data) == {"type": "ack", "seq": 3}
            await ws.close()
        redis = Redis.from_url(url, decode_responses=True)
        assert await redis.hgetall("ceiling:{s1}:ans") == {"1": "A|1", "3": "C|3"}
        await redis.aclose()
    finally:
        store.stop()


async def test_http_pg_acks_only_committed_answers(own_database_url: str, http: aiohttp.ClientSession,
                                                   tmp_path: Path) -> None:  # fmt: skip
    with server("http_pg", "--database-url", own_database_url, "--pool-size", "4",
                log_path=tmp_path / "http_pg.log") as url:  # fmt: skip

        async def post(student: object, seq: int, q: int, choice: str) -> None:
            body = {"student": student, "seq": seq, "q": q, "choice": choice}
            async with http.post(f"{url}/answer", json=body) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"ack": seq}

        await asyncio.gather(*(post(f"st{i}", s, 10 + s % 3, "ABC"[s % 3]) for i in range(5) for s in (1, 2, 3)))
        await post(42, 1, 10, "D")  # integer student ids are accepted (stored as text)
        await post("st0", 4, 10, "B")  # a newer answer replaces the saved one
        await post("st0", 2, 10, "A")  # an older resent one does not (acked: it is saved, as a duplicate)
    conn = await asyncpg.connect(own_database_url)
    try:
        rows = await conn.fetch("SELECT student, q, choice, seq FROM baseline_answers ORDER BY student, q")
    finally:
        await conn.close()
    saved = {(r["student"], r["q"]): (r["choice"], r["seq"]) for r in rows}
    assert saved[("st0", 10)] == ("B", 4)
    assert saved[("st1", 10)] == ("A", 3) and saved[("st1", 11)] == ("B", 1) and saved[("st1", 12)] == ("C", 2)
    assert saved[("42", 10)] == ("D", 1)
    assert len(saved) == 5 * 3 + 1


async def test_http_pg_workers_share_the_port(own_database_url: str, http: aiohttp.ClientSession,
                                              tmp_path: Path) -> None:  # fmt: skip
    """--workers 2: both processes make the table at start-up without tripping over each other, both take
    requests, and every ack is a committed row."""
    with server_process("http_pg", "--database-url", own_database_url, "--pool-size", "2", "--workers", "2",
                        log_path=tmp_path / "http_pg.log") as (url, proc):  # fmt: skip
        before = await both_listening(proc.pid, tmp_path / "http_pg.log")

        async def post(i: int) -> None:
            async with http.post(f"{url}/answer", json={"student": f"w{i}", "seq": 1, "q": 1, "choice": "A"}) as r:
                assert r.status == 200 and await r.json() == {"ack": 1}, await r.text()

        await asyncio.gather(*(post(i) for i in range(40)))  # 40 at once: 40 connections
        after = worker_sockets(proc.pid)
        assert all(after[p] > before[p] for p in before), (before, after)
    conn = await asyncpg.connect(own_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM baseline_answers WHERE choice = 'A'") == 40
    finally:
        await conn.close()


async def test_a_server_short_of_workers_is_an_error(tmp_path: Path) -> None:
    """The load must not start on fewer processes than asked for: the wait says how many it found, with the log."""
    log = tmp_path / "server.log"
    log.write_text("worker 1 failed: address in use")
    with pytest.raises(RuntimeError, match=r"0 of 2 worker processes running, not all listening after 0.5 s:\n"
                                           r".*address in use"):  # fmt: skip
        await wait_workers(os.getpid(), 2, log, timeout_s=0.5)  # this process has no spawned workers


@pytest.mark.parametrize("module", ["ceiling", "http_pg"])
@pytest.mark.parametrize("workers", ["0", "5", "x"])
def test_baselines_refuse_bad_worker_counts(module: str, workers: str) -> None:
    store = ["--redis-url", "redis://127.0.0.1:1/0"] if module == "ceiling" else ["--database-url", "postgresql://x"]
    proc = subprocess.run([sys.executable, "-m", f"loadtest.baselines.{module}", "--port", "1", *store,
                           "--workers", workers], check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--workers" in proc.stderr, proc.stderr


async def test_http_pg_bad_input(own_database_url: str, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with server("http_pg", "--database-url", own_database_url, "--pool-size", "2",
                log_path=tmp_path / "http_pg.log") as url:  # fmt: skip
        good = {"student": "s", "seq": 1, "q": 1, "choice": "A"}
        cases = [
            (b"not json", "not JSON"),
            (b"[1, 2]", "expected"),
            (json.dumps({**good, "student": "a b"}).encode(), "student"),
            (json.dumps({**good, "student": True}).encode(), "student"),
            (json.dumps({**good, "seq": "1"}).encode(), "seq"),
            (json.dumps({**good, "q": 2**40}).encode(), "q must"),
            (json.dumps({k: v for k, v in good.items() if k != "choice"}).encode(), "choice"),
        ]
        for body, words in cases:
            async with http.post(f"{url}/answer", data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400, body
                reply = await r.json()
                assert reply["error"] == "bad_request" and words in reply["message"], reply
        async with http.post(f"{url}/answer", json={**good, "pad": "x" * 10_000}) as r:
            assert r.status == 413 and (await r.json())["error"] == "too_large"
        async with http.get(f"{url}/answer") as r:
            assert r.status == 405
    conn = await asyncpg.connect(own_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM baseline_answers") == 0  # nothing bad was stored
    finally:
        await conn.close()
