"""The moving parts a fault case needs, each of its own: a durable redis-server, a database, hub processes
(`examhub serve`, as the Docker image runs it), optionally a private PostgreSQL, and the REST calls that open
sessions. Everything starts on free ports and is stopped by the `Rig` context manager, faults or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from storage import pg
from storage.embedded import EmbeddedRedis, free_port
from storage.migrate import migrate
from storage.seed import seed_demo

SECRET = "faults-secret-" + "f" * 40
ADMIN_URL = os.environ.get("EXAMHUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database(server_url: str) -> str:
    """A new database on that server, migrated and seeded with the demo bank."""
    name = f"examhub_faults_{random.randrange(16**8):08x}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_db(server_url, name)
    pool = await pg.create_pool(url, 1, 2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        await seed_demo(pool)
    finally:
        await pool.close()
    return url


def _with_db(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    return f"{base.rpartition('/')[0]}/{name}{sep}{query}"


async def drop_database(server_url: str, url: str) -> None:
    name = url.partition("?")[0].rpartition("/")[2]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class PausableRedis(EmbeddedRedis):
    """The durable redis-server of storage.embedded, plus SIGSTOP/SIGCONT (a hung Redis)."""

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class PrivatePostgres:
    """A PostgreSQL of this case's own (pgserver's binaries, on a Unix socket), so that stopping it for a minute
    disturbs nobody else's tests on the machine's shared server."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server: Any = None

    def start(self) -> str:
        from pgserver.postgres_server import get_server

        self.server = get_server(str(self.folder.resolve()), cleanup_mode="stop")
        uri: str = self.server.get_uri()
        return uri

    def down(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def up(self) -> None:
        self.server.ensure_postgres_running()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.down()
            self.server = None


@dataclass
class Hub:
    """One `examhub serve` process; kill9() and start() again as often as a case likes."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    workers: int = 1  # `serve --workers N`: the process is the parent of N hub processes (server/workers.py)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, extra: dict[str, str] | None = None) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            workers = ("--workers", str(self.workers)) if self.workers > 1 else ()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", *workers],
                env={**self.env, "EXAMHUB_PORT": str(self.port), **(extra or {})},
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    async def start(self, extra: dict[str, str] | None = None, timeout_s: float = 60) -> None:
        self.spawn(extra)
        await self.ready(timeout_s)

    async def ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"hub on {self.port} exited during start-up:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hub on {self.port} did not start:\n{self.tail()}")
                await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def wait_exit(self, timeout_s: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, timeout_s)
        return proc.poll()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, AssertionError):
            pass
        return 0

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except (OSError, AssertionError):
            return 0


@dataclass
class Rig:
    """Redis, a database and `hubs` hub processes for one case. Use `async with Rig(...).up() as rig:`."""

    hubs_n: int = 2
    workers: int = 1  # hub processes per hub (serve --workers)
    hub_env: dict[str, str] = field(default_factory=dict)
    private_postgres: bool = False
    pg_server_url: str = ADMIN_URL
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="examhub-faults-")))
    redis: PausableRedis | None = None
    postgres: PrivatePostgres | None = None
    database_url: str = ""
    prefix: str = field(default_factory=lambda: f"flt{random.randrange(16**6):06x}")
    hubs: list[Hub] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[Rig]:
        server_url = self.pg_server_url
        try:
            self.redis = PausableRedis(self.folder / "redis", port=free_port())
            self.redis.start()
            if self.private_postgres:
                self.postgres = PrivatePostgres(self.folder / "pg")
                server_url = await asyncio.to_thread(self.postgres.start)
            self.database_url = await create_database(server_url)
            env = {
                **os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis.url,
                "EXAMHUB_REDIS_PREFIX": self.prefix, "EXAMHUB_SECRET": SECRET,
                "EXAMHUB_REDIS_DURABILITY": "require",  # our redis-server is append-only, fsync always
                "EXAMHUB_RATE_REST_IP": "off", "EXAMHUB_RATE_REST_USER": "off", "EXAMHUB_RATE_WS_MSGS": "off",
                "EXAMHUB_DATA_DIR": str(self.folder / "data"), **self.hub_env,
            }  # fmt: skip
            self.hubs = [Hub(env, free_port(), self.folder / f"hub{i}.log", workers=self.workers)
                         for i in range(self.hubs_n)]  # fmt: skip
            for hub in self.hubs:
                hub.spawn()
            for hub in self.hubs:
                await hub.ready()
            yield self
        finally:
            for hub in self.hubs:
                hub.stop()
            if self.redis is not None:
                with contextlib.suppress(Exception):
                    self.redis.resume()
            if self.database_url:
                with contextlib.suppress(Exception):
                    if self.postgres is not None:
                        self.postgres.up()
                    await drop_database(server_url, self.database_url)
            if self.redis is not None:
                self.redis.stop()
            if self.postgres is not None:
                self.postgres.stop()
            if os.environ.get("EXAMHUB_FAULTS_KEEP") != "1":
                shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def urls(self) -> list[str]:
        return [h.url for h in self.hubs]

    async def template_id(self, slug: str) -> int:
        conn = await asyncpg.connect(self.database_url)
        try:
            tid: int = await conn.fetchval("SELECT id FROM test_templates WHERE slug = $1", slug)
        finally:
            await conn.close()
        return tid

    async def open_sessions(self, n: int, slug: str = "neet-mock-180", concurrency: int = 50) -> list[tuple[str, str]]:
        """n guests, one session each, spread over the hubs: [(session id, session token)]."""
        tid = await self.template_id(slug)
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> tuple[str, str]:
                base = self.urls[i % len(self.urls)]
                async with sem:
                    async with http.post(base + "/api/auth/guest", json={"display_name": f"faults {i}"}) as r:
                        token = (await r.json())["token"]
                    async with http.post(base + "/api/sessions", json={"template_id": tid},
                                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                        body = await r.json()
                return body["session_id"], body["token"]

            return list(await asyncio.gather(*(one(i) for i in range(n))))
