"""Adaptive tests in the session machine's terms: the paper grows by one item per answer.

`sessions/irt.py` estimates ability and picks items; this module carries that through a session. An adaptive
session starts with a paper of one item (`begin`). Each accepted answer (the machine accepts only the current
item, and no skips) goes through `advance`, which updates the posterior with the answer's correctness, picks
the next item and returns the decision with an `AdaptiveStep` on its write: the store persists the answer,
the new posterior, the grown paper and, when the test stops, its end, in one atomic write.

Every choice is a pure function of the session: the random draws (exposure control, pretest seeding) come
from a generator seeded with the session id and the number of items given, and option orders from the
session id and the question, so a retried or replayed step picks the same item in the same order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

import numpy as np

from sessions import irt
from sessions.machine import (
    Ack,
    AdaptiveStep,
    Decision,
    Finished,
    FinishReason,
    NextItem,
    SaveAnswer,
    SessionState,
    Status,
)
from sessions.model import Question
from sessions.paper import Paper


def rng(seed: str, given: int) -> np.random.Generator:
    """The generator for the step after `given` items: the same session and step always draw the same."""
    digest = hashlib.sha256(seed.encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[:8], "little"), given])


def option_order(question: Question, seed: str, shuffle: bool) -> tuple[str, ...]:
    ids = list(question.option_ids)
    if shuffle:
        random.Random(f"{seed}:{question.id}").shuffle(ids)
    return tuple(ids)


def begin(
    bank: irt.Bank, config: irt.AdaptiveConfig, questions: Mapping[int, Question], seed: str, shuffle: bool = True
) -> tuple[Paper, irt.AdaptiveState]:
    """The first item: a paper of one question and the state with it pending. Raises ValueError when the
    bank has nothing to give (or its first item is not among `questions`)."""
    item, state = irt.next_item(irt.start(), bank, config, rng(seed, 0))
    if item is None or item not in questions:
        raise ValueError("the adaptive bank has no item to give")
    return Paper((item,), MappingProxyType({item: option_order(questions[item], seed, shuffle)})), state


def advance(
    decision: Decision,
    bank: irt.Bank,
    config: irt.AdaptiveConfig,
    questions: Mapping[int, Question],
    shuffle: bool = True,
) -> Decision:
    """The machine accepted an answer to the current item: update the ability, choose the next item (or end
    the test) and say so in the decision's effects and write. Other decisions pass through unchanged."""
    write = decision.write
    state = decision.state
    if not isinstance(write, SaveAnswer) or state.adaptive is None:
        return decision
    item = questions[write.question_id]
    after = irt.update(state.adaptive, bank, item.id, write.answer.choice == item.correct)
    following, after = irt.next_item(after, bank, config, rng(state.id, after.given))
    if following is not None and following not in questions:
        following, after = None, replace(after, pending=None, done=True)  # retired since: end rather than fail
    if following is None:
        reason = FinishReason.COMPLETED
        ended = state._replace(adaptive=after, status=reason.status, finish_reason=reason,
                                finished_ms=write.answer.at_ms)  # fmt: skip
        step = AdaptiveStep(after, state.paper, reason)
        return Decision(ended, (Ack(write.seq), Finished(Status.SUBMITTED, reason)), replace(write, step=step))
    order = dict(state.paper.option_order)
    order[following] = option_order(questions[following], state.id, shuffle)
    paper = Paper((*state.paper.question_ids, following), MappingProxyType(order))
    grown = state._replace(adaptive=after, paper=paper)
    return Decision(grown, (Ack(write.seq), NextItem(following)), replace(write, step=AdaptiveStep(after, paper)))


def scored_ids(state: SessionState) -> tuple[int, ...]:
    """The paper's questions that count for the score: all of them, but for an adaptive test's pretest items."""
    if state.adaptive is None or not state.adaptive.pretest:
        return state.paper.question_ids
    pretest = set(state.adaptive.pretest)
    return tuple(q for q in state.paper.question_ids if q not in pretest)
