"""Adaptive tests through the session machine (sessions/adaptive.py): one item at a time, only the current
item answerable, the posterior carried in the state, the test ending itself when precise enough."""

from __future__ import annotations

import numpy as np
import pytest

from sessions import adaptive, irt
from sessions.machine import (
    Ack,
    Answer,
    Decision,
    Finished,
    FinishReason,
    NextItem,
    Open,
    Refusal,
    Refused,
    SaveAnswer,
    SessionState,
    Status,
    decide,
)
from sessions.model import AntiCheatPolicy, Question
from tests.sessions.factories import bank as question_bank

QUESTIONS = {q.id: q for q in question_bank(30)}
# a, b spread so that information ranks the items differently at different abilities
ITEMS = [
    irt.ItemParams(q.id, 0.8 + (q.id % 5) * 0.3, -2.0 + 4.0 * (q.id - 1) / 29, 0.0, q.topic) for q in QUESTIONS.values()
]
BANK = irt.Bank.build(ITEMS)
RULES = irt.AdaptiveConfig(target_se=0.5, min_items=3, max_items=12)


def opened(sid: str = "adaptive-1", rules: irt.AdaptiveConfig = RULES) -> SessionState:
    paper, state = adaptive.begin(BANK, rules, QUESTIONS, sid)
    created = SessionState(id=sid, user_id="u1", template_id=1, status=Status.CREATED, paper=paper,
                           duration_ms=600_000, grace_ms=5_000, policy=AntiCheatPolicy(), adaptive=state)  # fmt: skip
    return decide(created, Open(), 1_000).state


def answer(state: SessionState, seq: int, q: int, choice: str | None, rules: irt.AdaptiveConfig = RULES) -> Decision:
    return adaptive.advance(decide(state, Answer(seq, q, choice), 2_000 + seq), BANK, rules, QUESTIONS)


def right(q: Question) -> str:
    return q.correct


def wrong(q: Question) -> str:
    return next(o for o in q.option_ids if o != q.correct)


def test_begin_gives_the_most_informative_item_at_the_prior_mean() -> None:
    state = opened()
    assert state.adaptive is not None and len(state.paper.question_ids) == 1
    first = state.paper.question_ids[0]
    info = irt.information(0.0, BANK.a, BANK.b, BANK.c)
    assert first == int(BANK.ids[int(np.argmax(info))])
    assert state.adaptive.pending == first
    assert sorted(state.paper.option_order[first]) == sorted(QUESTIONS[first].option_ids)


def test_each_answer_grows_the_paper_by_the_next_item_and_updates_the_posterior() -> None:
    state = opened()
    first = state.paper.question_ids[0]
    d = answer(state, 1, first, right(QUESTIONS[first]))
    assert isinstance(d.write, SaveAnswer) and d.write.step is not None
    (nxt,) = [e.question_id for e in d.effects if isinstance(e, NextItem)]
    assert d.effects[0] == Ack(1)
    assert d.state.paper.question_ids == (first, nxt) and d.state.adaptive is not None
    assert d.state.adaptive.pending == nxt and d.write.step.paper == d.state.paper
    # the posterior kept in the state is the one computed afresh from the answers
    expected = irt.posterior_of(BANK, [first], [True])
    assert np.allclose(d.state.adaptive.posterior, expected)
    assert irt.estimate(d.state.adaptive).theta > 0  # one right answer moves the estimate up


def test_only_the_current_item_takes_an_answer_and_no_skips() -> None:
    state = opened()
    first = state.paper.question_ids[0]
    after = answer(state, 1, first, right(QUESTIONS[first])).state
    again = answer(after, 2, first, wrong(QUESTIONS[first]))  # the earlier item is closed
    assert again.write is None and isinstance(again.effects[0], Refused)
    assert again.effects[0].code is Refusal.NOT_CURRENT and again.state == after
    current = after.paper.question_ids[-1]
    skip = answer(after, 2, current, None)
    assert skip.write is None and isinstance(skip.effects[0], Refused)
    assert skip.effects[0].code is Refusal.INVALID_CHOICE
    other = next(q for q in QUESTIONS if q not in after.paper.question_ids)
    unknown = answer(after, 2, other, "a")  # not given at all
    assert isinstance(unknown.effects[0], Refused) and unknown.effects[0].code is Refusal.UNKNOWN_QUESTION


def sit(state: SessionState, choose: object, rules: irt.AdaptiveConfig = RULES) -> tuple[SessionState, int]:
    seq = 0
    while not state.status.finished:
        seq += 1
        assert state.adaptive is not None and state.adaptive.pending is not None
        q = QUESTIONS[state.adaptive.pending]
        d = answer(state, seq, q.id, choose(q), rules)  # type: ignore[operator]
        assert d.write is not None, d.effects
        state = d.state
        assert seq <= rules.max_items
    return state, seq


def test_the_test_ends_itself_at_the_target_precision_or_the_maximum_length() -> None:
    precise, n = sit(opened(), right)
    assert precise.status is Status.SUBMITTED and precise.finish_reason is FinishReason.COMPLETED
    assert precise.adaptive is not None and precise.adaptive.done
    est = irt.estimate(precise.adaptive)
    assert n == len(precise.answers) == len(precise.paper.question_ids)
    assert est.se <= RULES.target_se or n == RULES.max_items
    assert RULES.min_items <= n <= RULES.max_items

    strict = irt.AdaptiveConfig(target_se=0.06, min_items=3, max_items=7)  # unreachable: stops at 7
    capped, m = sit(opened(rules=strict), wrong, strict)
    assert m == 7 and capped.finish_reason is FinishReason.COMPLETED
    assert irt.estimate(capped.adaptive).theta < 0  # type: ignore[arg-type]


def test_the_last_answer_carries_the_end_in_the_same_write() -> None:
    state = opened(rules=irt.AdaptiveConfig(target_se=0.9, min_items=1, max_items=1))
    first = state.paper.question_ids[0]
    d = answer(state, 1, first, right(QUESTIONS[first]), irt.AdaptiveConfig(target_se=0.9, min_items=1, max_items=1))
    assert isinstance(d.write, SaveAnswer) and d.write.step is not None
    assert d.write.step.finish is FinishReason.COMPLETED
    assert d.effects == (Ack(1), Finished(Status.SUBMITTED, FinishReason.COMPLETED))


def test_the_same_session_draws_the_same_items_and_orders() -> None:
    one, _ = sit(opened("same"), right)
    two, _ = sit(opened("same"), right)
    assert one.paper == two.paper
    other, _ = sit(opened("different"), right)
    assert any(one.paper.option_order[q] != other.paper.option_order[q]
               for q in set(one.paper.question_ids) & set(other.paper.question_ids))  # fmt: skip


def test_pretest_items_are_given_but_not_scored() -> None:
    extra = Question(99, "cells", QUESTIONS[1].difficulty, "New?", QUESTIONS[1].options, "a", "")
    questions = {**QUESTIONS, 99: extra}
    bank = irt.Bank.build(ITEMS, None, [99])
    rules = irt.AdaptiveConfig(target_se=0.5, min_items=3, max_items=6, pretest_positions=frozenset({2}))
    paper, st = adaptive.begin(bank, rules, questions, "p")
    state = decide(opened()._replace(paper=paper, adaptive=st, id="p"), Open(), 1_000).state
    seq = 0
    while not state.status.finished:
        seq += 1
        assert state.adaptive is not None and state.adaptive.pending is not None
        q = questions[state.adaptive.pending]
        state = adaptive.advance(decide(state, Answer(seq, q.id, q.correct), 2_000), bank, rules, questions).state
    assert state.paper.question_ids[1] == 99
    assert 99 not in adaptive.scored_ids(state) and len(adaptive.scored_ids(state)) == len(state.paper.question_ids) - 1
    assert state.adaptive is not None and state.adaptive.pretest == (99,)


def test_a_fixed_form_decision_passes_through_unchanged() -> None:
    from tests.sessions.factories import fresh

    state = decide(fresh(), Open(), 1_000).state
    q = state.paper.question_ids[0]
    d = decide(state, Answer(1, q, None), 2_000)
    assert adaptive.advance(d, BANK, RULES, QUESTIONS) is d
    assert adaptive.scored_ids(state) == state.paper.question_ids


@pytest.mark.parametrize("given", [0, 3])
def test_rng_is_a_function_of_session_and_step(given: int) -> None:
    assert adaptive.rng("s", given).random() == adaptive.rng("s", given).random()
    assert adaptive.rng("s", given).random() != adaptive.rng("t", given).random()
