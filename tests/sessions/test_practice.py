"""Practice mode's staircase: the moves worked out by hand, then the level it settles at for simulated students."""

from __future__ import annotations

import random

import pytest

from sessions import practice
from sessions.model import Difficulty
from sessions.practice import PracticeState, Staircase

E, M, H = Difficulty.EASY, Difficulty.MEDIUM, Difficulty.HARD


def walk(answers: str, rule: Staircase = practice.DEFAULT) -> list[tuple[float, Difficulty]]:
    state = practice.start(rule)
    out = []
    for a in answers:
        state = practice.record(state, a == "1", rule)
        out.append((round(state.level, 6), state.difficulty))
    return out


def test_the_moves_by_hand() -> None:
    # up 0.25 per right answer; down 0.25 * 0.6 / 0.4 = 0.375 per wrong one; clipped to [0, 2]; rounded
    assert practice.start().difficulty is M
    assert walk("1111") == [(1.25, M), (1.5, H), (1.75, H), (2.0, H)]
    assert walk("11111" + "00") == [(1.25, M), (1.5, H), (1.75, H), (2.0, H), (2.0, H), (1.625, H), (1.25, M)]
    assert walk("000") == [(0.625, M), (0.25, E), (0.0, E)]
    s = practice.record(practice.record(practice.start(), True), False)
    assert (s.answered, s.correct) == (2, 1)


@pytest.mark.parametrize("target", [0.5, 0.6, 0.7])
def test_the_staircase_settles_where_the_student_is_right_target_of_the_time(target: float) -> None:
    # a student right 90% of the time on easy questions, 60% on medium, 25% on hard; levels mixed in between
    chance = {E: 0.9, M: 0.6, H: 0.25}
    rule = Staircase(target=target)
    rng = random.Random(1)
    state, right = practice.start(rule), 0
    for _ in range(20000):
        ok = rng.random() < chance[state.difficulty]
        right += ok
        state = practice.record(state, ok, rule)
    assert right / 20000 == pytest.approx(target, abs=0.03)


def test_strong_and_weak_students_end_at_the_ends() -> None:
    assert walk("1" * 10)[-1][1] is H
    assert walk("0" * 10)[-1][1] is E


def test_choose_prefers_the_level_then_the_nearest_unseen() -> None:
    questions = {E: [1, 2], M: [3, 4], H: [5]}
    rng = random.Random(2)
    assert practice.choose(PracticeState(1.0), questions, set(), rng) in {3, 4}
    assert practice.choose(PracticeState(1.0), questions, {3, 4}, rng) in {1, 2}  # a tie goes to the easier
    assert practice.choose(PracticeState(1.4), questions, {3, 4}, rng) == 5  # leaning towards hard
    assert practice.choose(PracticeState(2.0), questions, {5}, rng) in {3, 4}
    assert practice.choose(PracticeState(0.0), questions, {1, 2, 3, 4}, rng) == 5
    assert practice.choose(PracticeState(0.0), questions, {1, 2, 3, 4, 5}, rng) is None
    assert practice.choose(PracticeState(2.0), {E: [1]}, set(), rng) == 1  # a level with no questions at all


@pytest.mark.parametrize("kw", [{"target": 0.0}, {"target": 1.0}, {"step": 0.0}, {"step": 2.0}, {"start": 3.0}])
def test_bad_rules_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Staircase(**kw)
