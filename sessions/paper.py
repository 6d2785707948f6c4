"""Drawing a student's paper: which questions, in which order, with which option order.

The draw is a pure function of the bank, the rule and a seed, so the same session always gets the same
paper (the seed is the session id) and a test can reproduce any student's paper.
"""

from __future__ import annotations

import itertools
import random
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.model import Difficulty, PaperRule, Question


class PaperError(ValueError):
    """The bank cannot satisfy the template's rule."""


# A hub holds one paper per connected student, 180 questions each in a NEET mock: interned question ids and
# option orders (4 options have only 24, kept once in _ORDER_TABLE; a paper holds one byte per question) make
# the papers share their parts instead of each holding ~18 KB of its own ints, tuples and dict
# (docs/performance.md, "Memory per connection"). Both grow only with the question banks, not with students.
_IDS: dict[int, int] = {}
_ORDER_INDEX: dict[tuple[str, ...], int] = {}
_ORDER_TABLE: list[tuple[str, ...]] = []


def _intern_id(q: int) -> int:
    return _IDS.setdefault(q, q)


def _order_index(order: tuple[str, ...]) -> int:
    index = _ORDER_INDEX.get(order)
    if index is None:
        index = _ORDER_INDEX[order] = len(_ORDER_TABLE)
        _ORDER_TABLE.append(order)
    return index


# Shuffling options draws one number per question, a permutation's rank, instead of random.shuffle's one per
# option (a 180-question paper: 180 draws, not 540; the shuffle was ~45% of drawing a paper). Up to
# MAX_RANKED options; beyond, random.shuffle. (option ids, rank) -> order-table index, bounded by the banks'
# distinct option-id tuples x n!.
MAX_RANKED = 6
_PERMUTATIONS: dict[int, tuple[tuple[int, ...], ...]] = {}
_SHUFFLED: dict[tuple[tuple[str, ...], int], int] = {}


def _shuffled_index(ids: tuple[str, ...], rng: random.Random) -> int:
    n = len(ids)
    if n > MAX_RANKED:
        shuffled = list(ids)
        rng.shuffle(shuffled)
        return _order_index(tuple(shuffled))
    perms = _PERMUTATIONS.get(n)
    if perms is None:
        perms = _PERMUTATIONS[n] = tuple(itertools.permutations(range(n)))
    rank = rng.randrange(len(perms))
    index = _SHUFFLED.get((ids, rank))
    if index is None:
        index = _SHUFFLED[(ids, rank)] = _order_index(tuple(ids[i] for i in perms[rank]))
    return index


class OptionOrders(Mapping[int, tuple[str, ...]]):
    """Question id -> option ids in display order: the paper's ids and, aligned with them, an index per question
    into the shared order table (bytes while there are at most 256 distinct orders). No per-paper dict: a lookup
    scans the paper's ids, ~1 us for 180, once per answer."""

    __slots__ = ("_ids", "_orders")

    def __init__(self, ids: tuple[int, ...], orders: bytes | array[int]) -> None:
        self._ids = ids
        self._orders = orders

    @classmethod
    def of(cls, ids: Iterable[int], order: Mapping[int, Sequence[str]]) -> OptionOrders:
        interned = tuple(_intern_id(q) for q in ids)
        return cls.indexed(interned, [_order_index(tuple(str(o) for o in order[q])) for q in interned])

    @classmethod
    def indexed(cls, ids: tuple[int, ...], index: list[int]) -> OptionOrders:
        """From interned ids and, aligned with them, order-table indices."""
        return cls(ids, bytes(index) if max(index, default=0) < 256 else array("I", index))

    @property
    def ids(self) -> tuple[int, ...]:
        return self._ids

    @property
    def orders(self) -> Iterator[tuple[str, ...]]:
        return map(_ORDER_TABLE.__getitem__, self._orders)

    def __getitem__(self, q: int) -> tuple[str, ...]:
        try:
            return _ORDER_TABLE[self._orders[self._ids.index(q)]]
        except ValueError:
            raise KeyError(q) from None

    def get(self, q: int, default: Any = None) -> Any:  # the answer path's lookup: no KeyError round trip
        try:
            return _ORDER_TABLE[self._orders[self._ids.index(q)]]
        except ValueError:
            return default

    def __contains__(self, q: object) -> bool:
        return q in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"OptionOrders({dict(zip(self._ids, self.orders, strict=True))!r})"


@dataclass(frozen=True, slots=True)
class Paper:
    question_ids: tuple[int, ...]
    option_order: Mapping[int, tuple[str, ...]]  # question id -> option ids in display order

    def to_json(self) -> dict[str, object]:
        return {"q": list(self.question_ids), "o": {str(q): list(order) for q, order in self.in_order()}}

    def in_order(self) -> Iterator[tuple[int, tuple[str, ...]]]:
        """(question id, option order) in the paper's order, without a lookup per question."""
        orders = self.option_order
        if isinstance(orders, OptionOrders) and orders.ids == self.question_ids:
            return zip(self.question_ids, orders.orders, strict=True)  # both as long as the paper
        return ((q, orders[q]) for q in self.question_ids)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Paper:
        """The inverse of to_json. Every load of a session from Redis parses its paper: no intermediate dict."""
        ids = tuple(_intern_id(int(q)) for q in data["q"])
        by_id = data["o"]
        orders = OptionOrders.indexed(ids, [_order_index(tuple(by_id[str(q)])) for q in ids])
        return cls(ids, orders)


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
    ids = tuple(_intern_id(q.id) for q in chosen)
    if rule.shuffle_options:
        index = [_shuffled_index(q.option_ids, rng) for q in chosen]
    else:
        index = [_order_index(q.option_ids) for q in chosen]
    return Paper(ids, OptionOrders.indexed(ids, index))


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
