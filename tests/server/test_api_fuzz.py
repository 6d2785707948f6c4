"""schemathesis against the served OpenAPI document of a real hub process: no input gives a 5xx."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.auth import Auth, Role
from storage import pg
from storage import users as repo
from storage.embedded import free_port
from tests.conftest import REDIS_URL

SECRET = "fuzz-secret-" + "f" * 40


async def _admin_token(database_url: str) -> str:
    pool = await pg.create_pool(database_url, 1, 1)
    try:
        user = await repo.create_user(pool, f"fuzz-admin-{os.getpid()}-{time.time_ns()}", None, "fuzz", role="admin")
    finally:
        await pool.close()
    return Auth(SECRET).user_token(user.id, Role.ADMIN, 3600)


FUZZ_SECONDS = os.environ.get("EXAMHUB_FUZZ_SECONDS", "60")  # CI budget; a longer run finds more


@pytest.mark.timeout(int(FUZZ_SECONDS) + 180)
def test_schemathesis_finds_no_server_error(own_database_url: str, prefix: str, tmp_path: Path) -> None:
    database_url = own_database_url  # the fuzzer acts as an admin: it archives and retires what it finds
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "EXAMHUB_REDIS_PREFIX": prefix,
           "EXAMHUB_SECRET": SECRET, "EXAMHUB_REDIS_DURABILITY": "warn", "EXAMHUB_PORT": str(port),
           "EXAMHUB_DATA_DIR": str(tmp_path),
           # the fuzzer is one address sending thousands of requests; rate limiting has tests of its own
           "EXAMHUB_RATE_REST_IP": "off", "EXAMHUB_RATE_REST_USER": "off"}  # fmt: skip
    log = (tmp_path / "hub.log").open("wb")
    hub = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        token = asyncio.run(_admin_token(database_url))
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "run", f"{base}/api/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "20", "--workers", "2",
             "--phases", "examples,coverage,fuzzing", "-H", f"Authorization: Bearer {token}",
             "--suppress-health-check", "all", "--max-time", FUZZ_SECONDS],
            capture_output=True, text=True, timeout=int(FUZZ_SECONDS) + 120, check=False,
        )  # fmt: skip
        out = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, out + "\n--- hub log ---\n" + (tmp_path / "hub.log").read_text()[-4000:]
        assert "not_a_server_error" in run.stdout or "passed" in run.stdout.lower(), out
    finally:
        hub.terminate()
        hub.wait(20)
        log.close()
