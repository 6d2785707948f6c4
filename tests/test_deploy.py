"""The deployment files (Dockerfile, docker-compose.yml). No Docker engine runs here, so what can be checked
without one is: the compose file brings up what it must (PostgreSQL, a durable Redis, two hubs with health
checks), and the image's entry command, with the image's ENV and the environment compose gives a hub, runs
as-is outside Docker: two such processes migrate an empty database, become ready (/readyz) and pass the
compose health check (`examhub health`); the same command refuses a Redis that could lose acknowledged writes."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from storage.embedded import EmbeddedRedis, free_port
from tests.conftest import ADMIN_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_lines() -> list[str]:
    """Instructions with their `\\` continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def instruction(name: str) -> list[str]:
    return [line[len(name) + 1 :].strip() for line in dockerfile_lines() if line.upper().startswith(name + " ")]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def exec_form(name: str) -> list[str]:
    """ENTRYPOINT / CMD in exec (JSON) form: the last one counts, as in Docker."""
    found = instruction(name)
    assert found, f"the Dockerfile has no {name}"
    value = json.loads(found[-1])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def hubs() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in COMPOSE["services"].items() if svc.get("build")}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (error when unset)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        assert op != ":?", f"compose would refuse to start: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


def test_compose_brings_up_postgres_durable_redis_and_two_hubs() -> None:
    services = COMPOSE["services"]
    assert "postgres" in services and "redis" in services
    assert len(hubs()) == 2, "two hub processes"
    for name, hub in hubs().items():
        assert hub["build"] == "." and "command" not in hub, f"{name} runs the image's own command (examhub serve)"
        assert hub["healthcheck"]["test"] == ["CMD", "examhub", "health"]
        assert {k: v["condition"] for k, v in hub["depends_on"].items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }
        env = hub["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:") and "@postgres:" in env["DATABASE_URL"]
        assert env["EXAMHUB_REDIS_DURABILITY"] == "require"
        assert "EXAMHUB_SECRET" in env  # shared: a token signed by one hub must verify on the other
    assert hubs()["hub-a"]["environment"]["EXAMHUB_SECRET"] == hubs()["hub-b"]["environment"]["EXAMHUB_SECRET"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_compose_redis_cannot_lose_acknowledged_answers() -> None:
    command = COMPOSE["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert flags == {"--appendonly": "yes", "--appendfsync": "always", "--maxmemory-policy": "noeviction"}
    assert any(v.endswith(":/data") for v in COMPOSE["services"]["redis"]["volumes"])  # the AOF outlives the container


def test_compose_secret_is_required() -> None:
    env = hubs()["hub-a"]["environment"]
    with pytest.raises(AssertionError, match="EXAMHUB_SECRET"):
        interpolate(env["EXAMHUB_SECRET"], {})
    assert interpolate(env["EXAMHUB_SECRET"], {"EXAMHUB_SECRET": "s3"}) == "s3"


def test_dockerfile_copies_every_package_the_wheel_needs() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {shlex.split(c)[0] for c in instruction("COPY")}
    for pattern in include:
        assert pattern.rstrip("*") in copied, f"{pattern} is packaged but not copied into the image"
    assert instruction("FROM")[-1].split(":")[-1].endswith("-slim")
    assert exec_form("ENTRYPOINT") + exec_form("CMD") == ["examhub", "serve"]
    assert "EXAMHUB_HOST" in dockerfile_env() and dockerfile_env()["EXAMHUB_HOST"] == "0.0.0.0"


@pytest.fixture
def empty_database() -> Iterator[str]:
    """An empty database, as compose's fresh PostgreSQL volume is: the hubs must migrate it themselves."""
    import asyncio

    name = f"examhub_deploy_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield f"{ADMIN_URL.rpartition('/')[0]}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    try:
        yield server.start()
    finally:
        server.stop()


def image_env(service: str, database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """What the container's process would see: the image's ENV, then the service's environment from compose
    (with the compose hosts pointed at this machine's servers). Two things differ, and only those: the port
    (8080 is taken here) and the data folder (the image's is /var/lib/examhub)."""
    secret = "deploy-secret-" + "d" * 40
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    env.update(dockerfile_env())
    for key, value in hubs()[service]["environment"].items():
        env[key] = interpolate(str(value), {"EXAMHUB_SECRET": secret})
    assert env["DATABASE_URL"] == "postgresql://examhub:examhub@postgres:5432/examhub"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    port = free_port()
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, EXAMHUB_PORT=str(port),
               EXAMHUB_DATA_DIR=str(tmp_path / service), EXAMHUB_PUBLIC_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    return env


def entry_command() -> list[str]:
    argv = exec_form("ENTRYPOINT") + exec_form("CMD")
    exe = Path(sys.executable).parent / argv[0]  # `pip install .` puts the script on the image's PATH
    assert exe.exists() or shutil.which(argv[0]), f"{argv[0]} is not installed"
    return [str(exe) if exe.exists() else argv[0], *argv[1:]]


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_image_entry_command_runs_outside_docker(empty_database: str, durable_redis: str, tmp_path: Path) -> None:
    procs: list[tuple[subprocess.Popen[bytes], dict[str, str], Path]] = []
    try:
        for service in hubs():  # both at once, as `docker compose up` starts them: they race the migrations
            env = image_env(service, empty_database, durable_redis, tmp_path)
            log = tmp_path / f"{service}.log"
            with log.open("wb") as out:
                procs.append((subprocess.Popen(entry_command(), env=env, stdout=out, stderr=out), env, log))
        for proc, env, log in procs:
            url = f"http://127.0.0.1:{env['EXAMHUB_PORT']}/readyz"
            deadline = time.monotonic() + 180  # a hang guard: a loaded 2-core machine can take a minute
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    status, body = get(url)
                    if status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            assert body["status"] == "ready", body
            check = hubs()["hub-a"]["healthcheck"]["test"]  # compose's health check, as-is: CMD examhub health
            done = subprocess.run(
                [entry_command()[0], *check[2:]], env=env, capture_output=True, timeout=30, check=False
            )
            assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        # the hubs share one secret: a guest token from one is accepted by the other
        a, b = (f"http://127.0.0.1:{env['EXAMHUB_PORT']}" for _, env, _ in procs)
        req = urllib.request.Request(a + "/api/auth/guest", data=b'{"display_name": "Asha"}',
                                     headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as r:
            token = json.loads(r.read())["token"]
        me = urllib.request.Request(b + "/api/users/me", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(me, timeout=5) as r:
            assert json.loads(r.read())["display_name"] == "Asha"
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            proc.wait(30)


def test_image_entry_command_refuses_a_redis_that_could_lose_answers(empty_database: str, tmp_path: Path) -> None:
    """This machine's Redis keeps nothing on disk: with compose's EXAMHUB_REDIS_DURABILITY=require the hub must
    not serve on it (the compose Redis flags are what make it start)."""
    env = image_env("hub-a", empty_database, REDIS_URL, tmp_path)
    done = subprocess.run(entry_command(), env=env, capture_output=True, timeout=60, check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode != 0, output
    assert "appendonly" in output or "appendfsync" in output, output
