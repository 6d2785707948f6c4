"""What a violation costs under a template's anti-cheat policy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sessions.model import VIOLATIONS, AntiCheatPolicy, CheatKind


class Level(StrEnum):
    NONE = "none"  # recorded only (a return to the exam, or below the warning threshold)
    WARN = "warn"
    FLAG = "flag"
    SUBMIT = "submit"


@dataclass(frozen=True, slots=True)
class Verdict:
    level: Level
    violations: int  # violations so far, this one included
    flag: bool  # this violation newly flags the attempt


def judge(policy: AntiCheatPolicy, kind: CheatKind, violations_before: int, flagged: bool) -> Verdict:
    if kind not in VIOLATIONS:
        return Verdict(Level.NONE, violations_before, False)
    n = violations_before + 1
    if policy.submit_at is not None and n >= policy.submit_at:
        return Verdict(Level.SUBMIT, n, False)
    if policy.flag_at is not None and n >= policy.flag_at:
        return Verdict(Level.FLAG, n, not flagged)
    if policy.warn_at is not None and n >= policy.warn_at:
        return Verdict(Level.WARN, n, False)
    return Verdict(Level.NONE, n, False)
