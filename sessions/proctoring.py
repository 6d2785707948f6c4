"""What a proctor sees of a session: its summary, its risk score with reasons, and the time owed to a
student for a dropped connection. Pure: the hub gathers the inputs, this decides."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sessions.machine import SessionState, Status
from sessions.model import CheatKind

# How much one event of each kind weighs, before it fades (half-life RISK_HALF_LIFE_MS).
RISK_WEIGHTS: Mapping[CheatKind, float] = {
    CheatKind.TAB_HIDDEN: 4.0,
    CheatKind.BLUR: 2.0,
    CheatKind.FULLSCREEN_EXIT: 4.0,
    CheatKind.COPY: 6.0,
    CheatKind.PASTE: 8.0,
    CheatKind.CONTEXT_MENU: 1.0,
    CheatKind.SECOND_DEVICE: 20.0,
}
RISK_HALF_LIFE_MS = 10 * 60_000
FAST_ANSWER_MS = 3_000  # a NEET question takes a minute on average; under 3 s is implausible for most
FAST_ANSWER_WEIGHT = 2.0
FAST_ANSWERS_FORGIVEN = 3  # a few quick ones (a known fact, a changed mind) are normal
IP_CHANGE_WEIGHT = 15.0


@dataclass(frozen=True, slots=True)
class Risk:
    score: int  # 0..100
    reasons: tuple[str, ...]


def risk(state: SessionState, now_ms: int, ip_changes: int = 0) -> Risk:
    total = 0.0
    reasons: list[str] = []
    by_kind: Counter[CheatKind] = Counter()
    for c in state.cheats:
        weight = RISK_WEIGHTS.get(c.kind, 0.0)
        if weight:
            age = max(0, now_ms - c.at_ms)
            total += weight * math.exp(-math.log(2) * age / RISK_HALF_LIFE_MS)
            by_kind[c.kind] += 1
    for kind, n in by_kind.most_common():
        reasons.append(f"{n} x {kind.value}")
    fast = sum(1 for a in state.answers.values() if a.choice is not None and 0 < a.time_ms < FAST_ANSWER_MS)
    if fast > FAST_ANSWERS_FORGIVEN:
        total += FAST_ANSWER_WEIGHT * (fast - FAST_ANSWERS_FORGIVEN)
        reasons.append(f"{fast} answers in under {FAST_ANSWER_MS // 1000} s")
    if ip_changes:
        total += IP_CHANGE_WEIGHT * ip_changes
        reasons.append(f"{ip_changes} change(s) of IP address")
    return Risk(min(100, round(total)), tuple(reasons))


def disconnect_credit(gap_ms: int, credited_ms: int, cap_ms: int) -> int:
    """Time to give back for a connection that was down for gap_ms, when the template credits disconnects
    automatically up to cap_ms per attempt (credited_ms already given)."""
    if gap_ms <= 0 or cap_ms <= 0:
        return 0
    return max(0, min(gap_ms, cap_ms - credited_ms))


def summary(
    state: SessionState,
    now_ms: int,
    *,
    online: bool,
    display_name: str = "",
    ip_changes: int = 0,
    offline_ms: int = 0,
) -> dict[str, Any]:
    """One row of the proctor's grid (what the feed sends, for a snapshot and for each change)."""
    r = risk(state, now_ms, ip_changes)
    counts = Counter(c.kind.value for c in state.cheats)
    return {
        "session": state.id,
        "user": state.user_id,
        "name": display_name,
        "status": state.status.value,
        "reason": state.finish_reason.value if state.finish_reason else None,
        "answered": sum(1 for a in state.answers.values() if a.choice is not None),
        "marked": sum(1 for a in state.answers.values() if a.marked),
        "total": len(state.paper.question_ids),
        "last_seq": state.last_seq,
        "time_left_ms": state.time_left_ms(now_ms),
        "deadline_ms": state.deadline_ms if state.status is Status.ACTIVE else None,
        "online": online and not state.status.finished,
        "offline_ms": offline_ms,
        "violations": state.violations,
        "events": dict(sorted(counts.items())),
        "flagged": state.flagged,
        "risk": r.score,
        "risk_reasons": list(r.reasons),
    }


def alerts(rows: list[dict[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """The ranked alert list: the riskiest live sessions first (flagged ones ahead of equal scores)."""
    live = [r for r in rows if r["status"] in ("active", "paused") and (r["risk"] > 0 or r["flagged"])]
    live.sort(key=lambda r: (-r["risk"], not r["flagged"], r["session"]))
    return [{"session": r["session"], "name": r["name"], "risk": r["risk"], "flagged": r["flagged"],
             "reasons": r["risk_reasons"]} for r in live[:limit]]  # fmt: skip
