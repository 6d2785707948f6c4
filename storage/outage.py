"""Warnings about a failure that repeats, logged once per interval instead of once per failure.

While Redis is down a loaded hub fails the same way thousands of times a second: every request, every closing
connection, every pipeline, and every 0.5 s retry of each subscriber. Logged one line each, the outage buries
whatever else the log says, and the lines themselves cost CPU when the process most needs it to recover. An `Outage`
logs the first failure at once, then at most one line per `every_s` that says how many more there were, and one
line when it is over, with how long it lasted.

Each loop or object that can fail this way holds its own `Outage`. Its methods are plain calls on the event loop's
thread (no lock): `recovered()` costs one attribute test while nothing is wrong, so it can sit on a success path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    __slots__ = ("_clock", "_every_s", "_held", "_log", "_logged_at", "_name", "failures", "since")

    def __init__(
        self, log: logging.Logger, name: str, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._name = name
        self._every_s = every_s
        self._clock = clock
        self.since: float | None = None  # when the current outage began (clock()), None while all is well
        self.failures = 0  # in the current outage
        self._held = 0  # failures not logged since the last line
        self._logged_at = 0.0  # when the last line was logged (clock())

    def failed(self, message: str, *args: object) -> None:
        """One more failure: `message % args` is logged (WARNING) if it is the first, or if `every_s` has passed
        since the last line logged, which then also says how many were held back."""
        now = self._clock()
        self.failures += 1
        if self.since is None:
            self.since = now
        elif now < self._logged_at + self._every_s:
            self._held += 1
            return
        if self._held:
            self._log.warning(
                "%s: " + message + " (and %d more since the line %.0f s ago)",
                self._name, *args, self._held, now - self._logged_at,
            )  # fmt: skip
        else:
            self._log.warning("%s: " + message, self._name, *args)
        self._logged_at = now
        self._held = 0

    def recovered(self) -> None:
        """It worked: if an outage was logged, say that it is over (INFO) and start afresh."""
        if self.since is None:
            return
        n, lasted_s = self.failures, self._clock() - self.since
        self._log.info(
            "%s: working again after %.1f s and %d failure%s", self._name, lasted_s, n, "" if n == 1 else "s"
        )
        self.since = None
        self.failures = self._held = 0
