"""The fault suite's test-only switches are read once, strictly, into Settings."""

from __future__ import annotations

import pytest

from server.settings import Settings, SettingsError


def test_crash_point_is_off_unless_set() -> None:
    assert Settings.from_env({}).crash_point is None
    assert Settings.from_env({"EXAMHUB_CRASH_POINT": "after_write"}).crash_point == ("after_write", 1)
    assert Settings.from_env({"EXAMHUB_CRASH_POINT": "after_commit:3"}).crash_point == ("after_commit", 3)


@pytest.mark.parametrize("raw", ["nowhere", "after_ack:0", "after_ack:x", "before_write:-1"])
def test_a_bad_crash_point_is_refused_with_a_clear_error(raw: str) -> None:
    with pytest.raises(SettingsError, match="EXAMHUB_CRASH_POINT must be one of"):
        Settings.from_env({"EXAMHUB_CRASH_POINT": raw})


def test_flush_claim_idle_is_bounded() -> None:
    assert Settings.from_env({"EXAMHUB_FLUSH_CLAIM_IDLE_MS": "1000"}).flush_claim_idle_ms == 1000
    with pytest.raises(SettingsError, match="EXAMHUB_FLUSH_CLAIM_IDLE_MS"):
        Settings.from_env({"EXAMHUB_FLUSH_CLAIM_IDLE_MS": "10"})
