"""The checker itself (pure): it must see a lost, a phantom and a refused-but-stored answer, or the fault
suite proves nothing."""

from __future__ import annotations

from loadtest.faults.checker import judge
from loadtest.faults.client import ACKED, REFUSED, UNKNOWN, Sent


def sent() -> dict[str, list[Sent]]:
    return {"s1": [Sent(1, 10, "a", ACKED), Sent(2, 11, "b", ACKED), Sent(3, 10, "c", UNKNOWN),
                   Sent(4, 12, "d", REFUSED)]}  # fmt: skip


def test_clean_state_passes() -> None:
    report = judge("redis", sent(), {"s1": {10: ("c", 3), 11: ("b", 2)}})  # a later unknown answer replaced seq 1
    assert report.ok and (report.acked, report.refused, report.unknown) == (2, 1, 1)


def test_an_acknowledged_answer_missing_or_older_is_lost() -> None:
    assert judge("redis", sent(), {"s1": {10: ("a", 1)}}).lost == 1  # q11 missing
    assert judge("redis", sent(), {"s1": {10: ("x", 1), 11: ("b", 2)}}).phantom == 1
    report = judge("redis", sent(), {"s1": {11: ("b", 2)}})
    assert report.lost == 1 and not report.ok


def test_a_stored_value_nobody_sent_or_a_refused_one_is_caught() -> None:
    assert judge("redis", sent(), {"s1": {10: ("a", 1), 11: ("b", 2), 13: ("z", 9)}}).phantom == 1
    report = judge("redis", sent(), {"s1": {10: ("a", 1), 11: ("b", 2), 12: ("d", 4)}})
    assert report.refused_stored == 1 and not report.ok
