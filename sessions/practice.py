"""Practice mode's dynamic difficulty adjustment, pure: the next question's difficulty follows the student's
recent correctness. It needs no calibrated parameters, only the bank's easy/medium/hard labels.

Kaernbach's weighted up-down staircase (1991) over a level in [0, 2] (easy 0, medium 1, hard 2): a right
answer moves the level up by `step`, a wrong one down by `step * target / (1 - target)`. The level drifts
up while the student answers more than `target` of the questions right and down while fewer, so it settles
where the student is right `target` of the time: 60% by default, hard enough to learn from and easy enough
to keep going. With step 0.25 and target 0.6 (down 0.375), starting at medium (1.0): two right answers in
a row reach hard (1.5 rounds up), and from the top (2.0) two wrong answers bring medium back (1.25).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from sessions.model import Difficulty

LEVELS = (Difficulty.EASY, Difficulty.MEDIUM, Difficulty.HARD)
TOP = float(len(LEVELS) - 1)


@dataclass(frozen=True, slots=True)
class Staircase:
    target: float = 0.6  # the share of right answers the staircase settles at
    step: float = 0.25  # the move up after a right answer
    start: float = 1.0  # medium

    def __post_init__(self) -> None:
        if not 0.05 <= self.target <= 0.95:
            raise ValueError("target must be within [0.05, 0.95]")
        if not 0 < self.step <= 1:
            raise ValueError("step must be within (0, 1]")
        if not 0 <= self.start <= TOP:
            raise ValueError(f"start must be within [0, {TOP:g}]")

    @property
    def down(self) -> float:
        return self.step * self.target / (1 - self.target)


@dataclass(frozen=True, slots=True)
class PracticeState:
    level: float
    answered: int = 0
    correct: int = 0

    @property
    def difficulty(self) -> Difficulty:
        return LEVELS[min(int(self.level + 0.5), len(LEVELS) - 1)]


DEFAULT = Staircase()


def start(rule: Staircase = DEFAULT) -> PracticeState:
    return PracticeState(rule.start)


def record(state: PracticeState, correct: bool, rule: Staircase = DEFAULT) -> PracticeState:
    """The state after one answer: the level moves up or down and stays within [0, 2]."""
    move = rule.step if correct else -rule.down
    return replace(state, level=min(max(state.level + move, 0.0), TOP), answered=state.answered + 1,
                   correct=state.correct + bool(correct))  # fmt: skip


def choose(
    state: PracticeState, questions: Mapping[Difficulty, Sequence[int]], seen: Collection[int], rng: random.Random
) -> int | None:
    """An unseen question at the state's difficulty, else at the nearest difficulty that has one (the easier
    of two equally near); None when every question has been seen."""
    own = LEVELS.index(state.difficulty)
    for level in sorted(range(len(LEVELS)), key=lambda i: (i != own, abs(i - state.level), i)):
        fresh = [q for q in questions.get(LEVELS[level], ()) if q not in seen]
        if fresh:
            return rng.choice(fresh)
    return None
