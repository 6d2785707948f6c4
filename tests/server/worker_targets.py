"""Worker bodies for tests/server/test_workers.py: the supervisor spawns them, so they live in a module of their own
that a fresh interpreter imports quickly."""

from __future__ import annotations

import os
import signal
import sys
import time

from server.workers import ready


def serve() -> None:
    """Listens (says so), then runs until SIGTERM, which ends it cleanly, as a hub does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready()
    while True:
        time.sleep(3600)


def fail_at_start(status: int) -> None:
    sys.exit(status)


def crash_after_start(status: int) -> None:
    ready()
    time.sleep(0.05)
    sys.exit(status)


def deaf() -> None:
    """Listens, and ignores SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready()
    while True:
        time.sleep(3600)


def serve_named(name: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready(name)
    while True:
        time.sleep(3600)


def record_death(name: str) -> None:
    """An on_death hook: appends the ended worker's name to the file $WORKER_DEATHS."""
    with open(os.environ["WORKER_DEATHS"], "a") as f:
        f.write(name + "\n")


def serve_unless(path: str) -> None:
    """Cannot start (exits 2 before it listens) while the file `path` exists; serves otherwise."""
    if os.path.exists(path):
        sys.exit(2)
    serve()
