"""Which hub process served this port before this one, known for certain to have ended.

A hub process killed outright (kill -9, the OOM killer, a crash in a C extension, a container or unit that Docker or
systemd restarts) cannot mark its students offline: its lease in Redis runs out instead (storage/lua/lease.lua,
LEASE_TTL_MS after its last renewal), and until then its students, coming back, count as second devices in the
proctor's risk score rather than as dropped. Under `serve --workers N` the parent sees a worker die and ends its lease
at once (server/cli.py, _released). A process that is its own parent has nobody to do that for it, so its successor
does, at start:

- every hub process holds, for its whole life, an exclusive lock (flock) on a small file in its data directory named
  after its port and its worker slot (`hub-8080-0.lease`), and writes its lease's host id there;
- its successor on that port takes the lock. The kernel frees a lock only once the process holding it has ended,
  however it ended, so a lock taken is proof: the id in the file is a dead process', and its lease can end now.

Not by host name (two machines may share one, and a live process must never read as gone), nor by guessing from the
lease's age. A lock held by another live process (two servers on one port under `--workers`, a predecessor still
shutting down: it marks its own students offline) says nothing, and nothing is released. One folder shared by two
machines on a file system whose locks are not shared between them (NFS without its lock service) would defeat the
proof: each could end the other's live lease, which its next renewal (within 5 s) undoes. Give each its own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

MAX_ID_BYTES = 512  # a host id is '<hostname>-<pid>-<4 hex digits>' (server/app.py); a hostname is at most 253 bytes


@dataclass(frozen=True, slots=True)
class Place:
    """This process' place on its port: the lock is held while `fd` is open (for the process' life)."""

    path: Path
    fd: int
    previous: str | None  # the host id of the process that held the place before, now ended; None: nobody known

    def record(self, host: str) -> None:
        """Write this process' host id, for its successor (after the predecessor's lease has been released: were this
        process to die in between, its successor still finds the predecessor's id)."""
        data = host.encode()[:MAX_ID_BYTES]
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def take(data_dir: Path, port: int, slot: int = 0) -> Place | None:
    """Take this process' place on `port` (worker `slot` of `serve --workers`), or None when another live process holds
    it. Raises OSError when the data directory cannot hold the file (the caller goes on without)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"hub-{port}-{slot}.lease"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    try:
        previous = os.pread(fd, MAX_ID_BYTES, 0).decode(errors="replace").strip()
    except OSError:
        os.close(fd)
        raise
    return Place(path, fd, previous or None)
