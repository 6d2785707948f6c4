from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sessions.anticheat import Level, judge
from sessions.model import AntiCheatPolicy, CheatKind, Difficulty, MarkingScheme, PaperRule
from sessions.paper import PaperError, allocate, draw_paper
from sessions.scoring import score
from tests.sessions.factories import bank


def test_allocation_sums_to_count() -> None:
    mix = {Difficulty.EASY: 0.3, Difficulty.MEDIUM: 0.5, Difficulty.HARD: 0.2}
    for n in range(1, 200):
        parts = allocate(n, mix)
        assert sum(parts.values()) == n
    assert allocate(10, mix) == {Difficulty.EASY: 3, Difficulty.MEDIUM: 5, Difficulty.HARD: 2}


def test_draw_is_reproducible_and_seed_dependent() -> None:
    rule = PaperRule(count=12)
    a = draw_paper(bank(), rule, "alpha")
    assert a == draw_paper(bank(), rule, "alpha")
    assert a != draw_paper(bank(), rule, "beta")
    assert len(set(a.question_ids)) == 12
    for q in a.question_ids:
        assert sorted(a.option_order[q]) == ["a", "b", "c", "d"]


def test_draw_follows_topics_and_mix() -> None:
    questions = {q.id: q for q in bank(60)}
    rule = PaperRule(count=10, topics=("cells", "genetics"))
    paper = draw_paper(questions.values(), rule, "s")
    drawn = [questions[q] for q in paper.question_ids]
    assert {q.topic for q in drawn} == {"cells", "genetics"}
    levels = [q.difficulty for q in drawn]
    assert levels.count(Difficulty.EASY) == 3 and levels.count(Difficulty.MEDIUM) == 5
    assert levels.count(Difficulty.HARD) == 2


def test_draw_tops_up_when_a_level_runs_short() -> None:
    only_easy = [q for q in bank(60) if q.difficulty is Difficulty.EASY]
    paper = draw_paper(only_easy, PaperRule(count=10), "s")
    assert len(paper.question_ids) == 10


def test_no_shuffle_keeps_option_order() -> None:
    paper = draw_paper(bank(), PaperRule(count=5, shuffle_options=False, shuffle_questions=False), "s")
    assert all(paper.option_order[q] == ("a", "b", "c", "d") for q in paper.question_ids)


def test_too_small_bank_is_an_error() -> None:
    with pytest.raises(PaperError, match="needs 50"):
        draw_paper(bank(30), PaperRule(count=50), "s")


def test_neet_marking_by_hand() -> None:
    qs = bank(6)  # correct answers: b c d a b c for ids 1..6
    choices = {1: "b", 2: "c", 3: "a", 4: None, 5: "d"}  # 2 right, 2 wrong, 2 skipped (4 and 6)
    r = score(qs, choices, MarkingScheme())
    assert (r.score, r.correct, r.wrong, r.skipped) == (2 * 4 - 2, 2, 2, 2)
    assert (r.max_score, r.min_score) == (24, -6)
    assert r.topics["cells"].to_json() == {"correct": 0, "wrong": 1, "skipped": 1, "score": -1, "max_score": 8}


def test_bad_schemes_and_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        MarkingScheme(correct=0)
    with pytest.raises(ValueError):
        MarkingScheme(wrong=1)
    with pytest.raises(ValueError):
        AntiCheatPolicy(warn_at=0)


def test_judge_levels() -> None:
    p = AntiCheatPolicy(warn_at=2, flag_at=3, submit_at=4)
    assert judge(p, CheatKind.COPY, 0, False).level is Level.NONE
    assert judge(p, CheatKind.COPY, 1, False).level is Level.WARN
    flag = judge(p, CheatKind.COPY, 2, False)
    assert flag.level is Level.FLAG and flag.flag
    assert not judge(p, CheatKind.COPY, 2, True).flag  # already flagged
    assert judge(p, CheatKind.COPY, 3, True).level is Level.SUBMIT
    assert judge(p, CheatKind.FOCUS, 3, True).level is Level.NONE


def test_a_draw_spreads_each_difficulty_over_the_topics_and_uses_the_whole_pool() -> None:
    """Round-robin over topics: within one difficulty, no topic gets two questions more than another while each
    has questions left; and over many seeds every question of a difficulty is drawn about equally often."""
    questions = bank(240)  # 3 topics x 3 difficulties, ~27 questions each
    by_id = {q.id: q for q in questions}
    rule = PaperRule(count=90)
    drawn: dict[int, int] = dict.fromkeys(by_id, 0)
    for i in range(300):
        paper = draw_paper(tuple(questions), rule, f"seed {i}")
        assert len(set(paper.question_ids)) == 90
        for level in Difficulty:
            per_topic = [sum(1 for q in paper.question_ids if by_id[q].difficulty is level and by_id[q].topic == t)
                         for t in ("cells", "genetics", "ecology")]  # fmt: skip
            assert max(per_topic) - min(per_topic) <= 1, (level, per_topic)
        for q in paper.question_ids:
            drawn[q] += 1
    wanted = allocate(90, rule.mix)
    for level in Difficulty:  # every question of a difficulty about equally often (the mix sets how often)
        counts = [n for q, n in drawn.items() if by_id[q].difficulty is level]
        expected = 300 * wanted[level] / len(counts)
        assert all(0.7 * expected < n < 1.3 * expected for n in counts), (level, sorted(counts))


def test_a_draw_is_the_same_in_every_process_and_with_or_without_the_cached_plan() -> None:
    """The paper is a function of the seed alone: not of Python's per-process hash seed, nor of whether the bank
    came as the catalog's tuple (whose plan is cached) or as any other iterable."""
    rule = PaperRule(count=20)
    here = draw_paper(tuple(bank(60)), rule, "3f9c2a7be1d04c5a8f6e2b9d0c1a4e77")
    assert draw_paper(tuple(bank(60)), rule, "3f9c2a7be1d04c5a8f6e2b9d0c1a4e77") == here  # cached this time
    assert draw_paper(iter(bank(60)), rule, "3f9c2a7be1d04c5a8f6e2b9d0c1a4e77") == here
    code = ("import json; from sessions.model import PaperRule; from sessions.paper import draw_paper; "
            "from tests.sessions.factories import bank; "
            "paper = draw_paper(bank(60), PaperRule(count=20), '3f9c2a7be1d04c5a8f6e2b9d0c1a4e77'); "
            "print(json.dumps(paper.to_json()))")  # fmt: skip
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed})  # fmt: skip
        assert json.loads(out.stdout) == json.loads(json.dumps(here.to_json()))
