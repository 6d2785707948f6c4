"""Several processes of one server on one port, kept at strength: `examhub serve --workers N` and the load test's
baseline servers (loadtest/baselines/) run this way.

The parent spawns N workers and watches them. A worker that exits while nobody asked it to (killed by the kernel's
OOM killer, a crash in a C extension, a `kill` aimed at it) is replaced, so that a machine serving N processes' worth
of students does not go on at N-1 unnoticed: every live session it held reconnects to a surviving process at once
(sessions are not pinned to a process) and the replacement takes new connections as soon as it listens. A
replacement that cannot start (PostgreSQL down: a hub migrates at start) is tried again, for as long as another
worker serves: the others must not be stopped for it (answers go on through Redis alone). Two cases end everything,
since restarting cannot mend them and the outer supervisor (systemd, Docker's restart policy) should see a failure:

- a worker of the first generation that exits before it listens (a taken port, bad settings): the exit status is
  that worker's;
- more than `max_deaths` deaths within `window_s` with no worker left listening (a crash loop): status 1.

The parent hands the name each worker said it goes by (ready()) to `on_death` once that worker has ended: the hub
releases the ended process' lease in Redis then, so that its students, reconnecting to the others, count as dropped
at once and not as second devices (storage/lua/lease.lua).

A replacement starts at once after a lone death, and 1, 2, 4... seconds later (at most 10) when deaths come closer
together (within `window_s`), so that a worker that keeps dying does not spin the machine. SIGTERM or SIGINT stops
every worker (each shuts down as it would alone); a worker still running `stop_grace_s` later is killed. A worker
whose parent has gone (kill -9 of the parent) stops by itself within a second (on_orphaned()).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

_to_parent: list[Connection] = []  # in a worker: the pipe its parent waits on (ready())
_parent: list[int] = []  # in a worker: its parent's pid (on_orphaned())
_slot: list[int] = []  # in a worker: its slot, 0 to N-1, which its replacements take over (slot())


def ready(name: str = "") -> None:
    """Called by a server once it listens. In a worker, tells the parent (once), with the name it goes by (the hub:
    its lease's host id), which the parent hands to `on_death` when the worker has ended; elsewhere, nothing."""
    while _to_parent:
        conn = _to_parent.pop()
        with contextlib.suppress(OSError):
            conn.send_bytes(b"listening " + name.encode())
        conn.close()


def slot() -> int:
    """In a worker, its slot (0 to N-1; a replacement takes the slot of the worker it replaces); elsewhere 0."""
    return _slot[0] if _slot else 0


def on_orphaned(stop: Callable[[], None], every_s: float = 1.0) -> None:
    """In a worker, on a running event loop: call `stop` once the parent has gone (killed without stopping its
    workers), so that a restarted parent does not find the old workers still serving on its port beside its new
    ones; elsewhere, nothing."""
    if not _parent:
        return
    loop = asyncio.get_running_loop()

    def look() -> None:
        if os.getppid() != _parent[0]:
            print(f"worker {os.getpid()}: its parent {_parent[0]} has gone: stopping", file=sys.stderr, flush=True)
            stop()
        else:
            loop.call_later(every_s, look)

    loop.call_later(every_s, look)


def _child(conn: Connection, index: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    _to_parent.append(conn)
    _parent.append(os.getppid())
    _slot.append(index)
    target(*args)


def all_listen(n: int) -> str:
    """What the parent says once all n workers of the first generation listen (after its name and a colon)."""
    return f"all {n} workers listen"


def exit_status(exitcode: int | None) -> int:
    """A process' exit code as a shell shows it: 128 + N for a process killed by signal N."""
    if exitcode is None:
        return 0
    return 128 - exitcode if exitcode < 0 else exitcode


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


@dataclass
class _Slot:
    index: int
    process: BaseProcess
    pipe: Connection | None  # closed and None once the worker said it listens (or died)
    first: bool  # of the first generation: an exit before it listens stops everything
    replaces: int | None = None  # the pid of the worker it took the place of
    listening: bool = False
    name: str = ""  # what it said when it listened (ready())


@dataclass
class Supervisor:
    target: Callable[..., None]
    args: tuple[Any, ...]
    n: int
    name: str
    max_deaths: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 10.0
    stop_grace_s: float = 30.0
    on_death: Callable[[str], None] | None = None  # called in the parent with the name of each worker that listened
    # and has ended, whatever ended it (the hub releases its lease: server/cli.py)
    _slots: dict[int, _Slot] = field(default_factory=dict, init=False)
    _deaths: deque[float] = field(default_factory=deque, init=False)
    # slot -> (when its replacement may start, the pid it replaces)
    _pending: dict[int, tuple[float, int | None]] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _banner: str | None = field(default=None, init=False)  # None once every first worker listens

    def _ctx(self) -> Any:
        return multiprocessing.get_context("spawn")

    def _start(self, index: int, replaces: int | None = None) -> None:
        ctx = self._ctx()
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(writer, index, self.target, self.args), name=f"{self.name}-{index}")
        process.start()
        writer.close()  # the worker has its own end: the parent's reader sees EOF when the worker dies
        self._slots[index] = _Slot(index, process, reader, first=replaces is None, replaces=replaces)
        if self._stopping and process.pid is not None:  # a stop signal came while it was being started
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    def stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self._stopping = True  # (replacements not yet started never will be: run() stops watching)
        for slot in self._slots.values():
            if slot.process.is_alive() and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)

    def run(self, banner: str = "") -> int:
        """Until stopped; the banner is printed once every worker of the first generation listens."""
        self._banner = banner
        signal.signal(signal.SIGTERM, self.stop)  # (first: a stop while they start must reach them; _start)
        signal.signal(signal.SIGINT, self.stop)
        for i in range(self.n):
            self._start(i)
        status = 0
        while not self._stopping:
            status = self._watch()
        drained = self._drain()
        return status or drained  # stopped for a failure: that one's status, not the others' SIGTERM

    def _watch(self) -> int:
        """Wait for a worker to exit or a replacement to fall due (at most a second: a stop signal is looked at
        that often); deal with it. A status other than 0 means everything is being stopped for it."""
        now = time.monotonic()
        due = [(i, pid) for i, (at, pid) in self._pending.items() if at <= now]
        for index, pid in due:
            del self._pending[index]
            self._start(index, replaces=pid)
        timeout = min([1.0, *(max(0.0, at - now) for at, _ in self._pending.values())])
        waitables: list[Connection | int] = [s.process.sentinel for s in self._slots.values()]
        waitables += [s.pipe for s in self._slots.values() if s.pipe is not None]
        ready = wait(waitables, timeout=timeout)
        if self._stopping:
            return 0
        for slot in self._slots.values():
            if slot.pipe is not None and slot.pipe in ready:
                self._heard(slot)
        for slot in [s for s in self._slots.values() if s.process.sentinel in ready]:
            slot.process.join()
            del self._slots[slot.index]
            code = slot.process.exitcode
            who = f"{self.name}: worker {slot.process.name} (pid {slot.process.pid})"
            if slot.pipe is not None:
                self._heard(slot)  # it may have said it listens before it died
            self._ended(slot)
            if slot.first and not slot.listening:
                print(f"{who} {_describe(code)} before it listened; stopping", file=sys.stderr, flush=True)
                self.stop()
                return exit_status(code) or 1
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - self.window_s:
                self._deaths.popleft()
            serving = any(s.listening for s in self._slots.values())
            if len(self._deaths) > self.max_deaths and not serving:
                print(f"{who} {_describe(code)}; {len(self._deaths)} workers ended within {self.window_s:g} s and "
                      "none listens: stopping", file=sys.stderr, flush=True)  # fmt: skip
                self.stop()
                return 1
            recent = len(self._deaths)
            delay = 0.0 if recent == 1 else min(self.max_backoff_s, self.backoff_s * 2 ** (recent - 2))
            print(f"{who} {_describe(code)}; starting another in {delay:g} s", file=sys.stderr, flush=True)
            self._pending[slot.index] = (now + delay, slot.process.pid)
        return 0

    def _heard(self, slot: _Slot) -> None:
        """The worker's pipe is readable: it says it listens, or it closed without saying so (it died)."""
        assert slot.pipe is not None
        with contextlib.suppress(EOFError, OSError):
            said = slot.pipe.recv_bytes()
            slot.listening = said.startswith(b"listening")
            slot.name = said[len(b"listening ") :].decode(errors="replace")
        slot.pipe.close()
        slot.pipe = None
        if not slot.listening:
            return
        if slot.replaces is not None:
            print(f"{self.name}: worker {slot.process.name} (pid {slot.process.pid}) listens, in place of pid "
                  f"{slot.replaces}", file=sys.stderr, flush=True)  # fmt: skip
        elif self._banner is not None and all(s.listening for s in self._slots.values() if s.first):
            # (the load test's driver waits for this line: loadtest/driver.py, wait_workers)
            print(f"{self.name}: {all_listen(self.n)}", file=sys.stderr, flush=True)
            if self._banner:
                print(self._banner, flush=True)
            self._banner = None

    def _drain(self) -> int:
        """After a stop: wait for every worker, killing any still running stop_grace_s later; the highest status."""
        deadline = time.monotonic() + self.stop_grace_s
        status = 0
        for slot in self._slots.values():
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.exitcode is None:
                print(f"{self.name}: worker {slot.process.name} (pid {slot.process.pid}) still running "
                      f"{self.stop_grace_s:g} s after SIGTERM: killing it", file=sys.stderr, flush=True)  # fmt: skip
                slot.process.kill()
                slot.process.join()
            self._ended(slot)
            status = max(status, exit_status(slot.process.exitcode))
        return status

    def _ended(self, slot: _Slot) -> None:
        if self.on_death is None or not slot.listening:
            return
        try:
            self.on_death(slot.name)
        except Exception as exc:  # the supervisor goes on whatever the hook does
            print(f"{self.name}: after worker {slot.process.name} ended: {exc!r}", file=sys.stderr, flush=True)


def run_processes(target: Callable[..., None], args: tuple[Any, ...], n: int, name: str, banner: str = "",
                  on_death: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """`target(*args)` in n spawned processes, kept at strength and stopped together on SIGTERM or SIGINT (see the
    module's text); the exit status. The target calls ready() once it listens."""
    return Supervisor(target, args, n, name, on_death=on_death).run(banner)
