"""loadtest/locustfile.py runs headless against a live hub: students (WebSocket answers, anti-cheat events,
drops and resumes, submits), a proctor on the room's feed, REST readers; the WebSocket figures land in
locust's own statistics as request events."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import sys
from pathlib import Path

import asyncpg
import pytest

from loadtest import driver
from storage import users
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
async def test_locust_headless(own_database_url: str, prefix: str, tmp_path: Path) -> None:
    password = f"pw-{random.randrange(16**8):08x}"
    async with driver.hub_process(own_database_url, REDIS_URL, prefix) as hub:
        conn = await asyncpg.connect(own_database_url)
        try:
            await users.create_user(conn, "locust-admin", password, "Locust admin", role="admin")
        finally:
            await conn.close()
        env = {**os.environ, "EXAMHUB_LOCUST_ADMIN": "locust-admin", "EXAMHUB_LOCUST_PASSWORD": password}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "20", "-r", "10",
            "-t", "10s", "--host", hub.url, "--csv", str(tmp_path / "run"), "--only-summary",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )  # fmt: skip
        output = (await asyncio.wait_for(proc.communicate(), 120))[0].decode(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    with (tmp_path / "run_stats.csv").open() as f:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    for key in [("WS", "connect+state"), ("WS", "answer ack"), ("WS", "proctor snapshot"),
                ("POST", "/api/sessions"), ("GET", "/api/templates")]:  # fmt: skip
        assert int(stats[key]["Request Count"]) > 0, (key, sorted(stats))
    assert int(stats["WS", "answer ack"]["Request Count"]) >= 20
    assert float(stats["WS", "answer ack"]["Average Response Time"]) > 0
    assert all(int(row["Failure Count"]) == 0 for row in stats.values()), output[-4000:]
