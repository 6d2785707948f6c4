"""Drawing a student's paper: which questions, in which order, with which option order.

The draw is a pure function of the bank, the rule and a seed, so the same session always gets the same
paper (the seed is the session id) and a test can reproduce any student's paper.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.model import Difficulty, PaperRule, Question


class PaperError(ValueError):
    """The bank cannot satisfy the template's rule."""


@dataclass(frozen=True, slots=True)
class Paper:
    question_ids: tuple[int, ...]
    option_order: Mapping[int, tuple[str, ...]]  # question id -> option ids in display order

    def to_json(self) -> dict[str, object]:
        return {"q": list(self.question_ids), "o": {str(q): list(self.option_order[q]) for q in self.question_ids}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Paper:
        ids = tuple(int(q) for q in data["q"])
        order = {int(k): tuple(str(o) for o in v) for k, v in data["o"].items()}
        return cls(ids, order)


def allocate(count: int, mix: Mapping[Difficulty, float]) -> dict[Difficulty, int]:
    """Split `count` over difficulties by weight, largest remainder first (so the parts sum to count)."""
    total = sum(mix.values())
    exact = {d: count * w / total for d, w in mix.items()}
    parts = {d: int(v) for d, v in exact.items()}
    short = count - sum(parts.values())
    for d in sorted(exact, key=lambda d: (exact[d] - parts[d], d.value), reverse=True)[:short]:
        parts[d] += 1
    return parts


def draw_paper(bank: Iterable[Question], rule: PaperRule, seed: str) -> Paper:
    rng = random.Random(seed)
    wanted = set(rule.topics)
    pool = sorted((q for q in bank if not wanted or q.topic in wanted), key=lambda q: q.id)
    if len(pool) < rule.count:
        raise PaperError(f"the bank has {len(pool)} matching questions; the template needs {rule.count}")

    by_level: dict[Difficulty, list[Question]] = {d: [] for d in Difficulty}
    for q in pool:
        by_level[q.difficulty].append(q)

    chosen: list[Question] = []
    for level, n in allocate(rule.count, rule.mix).items():
        chosen.extend(_spread_over_topics(by_level[level], n, rng))
    if len(chosen) < rule.count:  # a difficulty ran short: top up from whatever is left
        taken = {q.id for q in chosen}
        rest = [q for q in pool if q.id not in taken]
        chosen.extend(rng.sample(rest, rule.count - len(chosen)))

    if rule.shuffle_questions:
        rng.shuffle(chosen)
    else:
        chosen.sort(key=lambda q: (q.topic, q.id))
    order: dict[int, tuple[str, ...]] = {}
    for q in chosen:
        ids = list(q.option_ids)
        if rule.shuffle_options:
            rng.shuffle(ids)
        order[q.id] = tuple(ids)
    return Paper(tuple(q.id for q in chosen), order)


def _spread_over_topics(questions: Sequence[Question], n: int, rng: random.Random) -> list[Question]:
    """Take up to n questions, round-robin over topics, so that no topic crowds out the others."""
    by_topic: dict[str, list[Question]] = {}
    for q in questions:
        by_topic.setdefault(q.topic, []).append(q)
    queues = []
    for topic in sorted(by_topic):
        items = by_topic[topic][:]
        rng.shuffle(items)
        queues.append(items)
    rng.shuffle(queues)
    out: list[Question] = []
    while len(out) < n and any(queues):
        for items in queues:
            if items and len(out) < n:
                out.append(items.pop())
    return out
