"""storage.outage: a failure that repeats is logged once per interval, with how many were held back, and its end once.
(Pure: a fake clock. The hub's own outages, with Redis really down, are in tests/server/test_durability.py.)"""

from __future__ import annotations

import logging

import pytest

from storage.outage import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.outage"]


def test_the_first_failure_is_logged_and_its_repeats_once_per_interval(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "control listener", every_s=10.0, clock=clock)
    outage.failed("%s; resubscribing", "Connection refused")
    for _ in range(19):  # 0.5 s apart: the next 9.5 s
        clock.now += 0.5
        outage.failed("%s; resubscribing", "Connection refused")
    assert lines(caplog) == [(logging.WARNING, "control listener: Connection refused; resubscribing")]

    clock.now += 0.5  # 10 s after the first line
    outage.failed("%s; resubscribing", "Connection reset")
    assert lines(caplog)[1:] == [
        (logging.WARNING, "control listener: Connection reset; resubscribing (and 19 more since the line 10 s ago)"),
    ]
    assert outage.failures == 21


def test_recovery_is_logged_once_with_the_outage_length_and_a_new_outage_starts_afresh(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "lease", every_s=60.0, clock=clock)
    outage.recovered()  # nothing was wrong: nothing to say
    assert lines(caplog) == []

    outage.failed("not renewed: %s", "timeout")
    clock.now += 5
    outage.failed("not renewed: %s", "timeout")
    clock.now += 2.5
    outage.recovered()
    outage.recovered()
    assert lines(caplog) == [
        (logging.WARNING, "lease: not renewed: timeout"),
        (logging.INFO, "lease: working again after 7.5 s and 2 failures"),
    ]
    assert outage.since is None and outage.failures == 0

    clock.now += 1  # a new outage soon after: logged at once, with no count carried over
    outage.failed("not renewed: %s", "refused")
    outage.recovered()
    assert lines(caplog)[2:] == [
        (logging.WARNING, "lease: not renewed: refused"),
        (logging.INFO, "lease: working again after 0.0 s and 1 failure"),
    ]


def test_a_message_with_a_percent_sign_in_its_argument_is_logged_as_is(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "api", clock=clock)
    outage.failed("%s %s: %s", "GET", "/api/x?q=100%25", "down 100%")
    assert lines(caplog) == [(logging.WARNING, "api: GET /api/x?q=100%25: down 100%")]
