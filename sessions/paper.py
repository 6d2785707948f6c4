"""Drawing a student's paper: which questions, in which order, with which option order.

The draw is a pure function of the bank, the rule and a seed, so the same session always gets the same
paper (the seed is the session id) and a test can reproduce any student's paper.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
import threading
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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
# Stored papers write each order as its option ids joined by a space (ids are [a-z0-9]{1,8}: storage/importers.py):
# one string to look up per question when a session is loaded, not a list to turn into a tuple and hash.
_ORDER_TEXT: list[str | None] = []  # aligned with _ORDER_TABLE; None when an id holds a space (the old form then)
_ORDER_BY_TEXT: dict[str, int] = {}


def _intern_id(q: int) -> int:
    return _IDS.setdefault(q, q)


def _order_index(order: tuple[str, ...]) -> int:
    index = _ORDER_INDEX.get(order)
    if index is None:
        index = _ORDER_INDEX[order] = len(_ORDER_TABLE)
        _ORDER_TABLE.append(order)
        text = " ".join(order) if order and all(o and " " not in o for o in order) else None
        _ORDER_TEXT.append(text)
        if text is not None:
            _ORDER_BY_TEXT[text] = index
    return index


def _text_index(text: str) -> int:
    index = _ORDER_BY_TEXT.get(text)
    return _order_index(tuple(text.split(" "))) if index is None else index


# Options are put in order by one draw per question, a permutation's rank: a plan per bank holds each question's
# order-table index per rank, up to MAX_RANKED options (4! = 24 orders; 6 would be 720 per question, in every
# process' order table). Beyond, a permutation drawn element by element.
MAX_RANKED = 4


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
        try:
            return cls(ids, bytes(index))
        except ValueError:  # an index past 255 (bytes() checks each, in C; max() first cost ~10 us a paper)
            return cls(ids, array("I", index))

    @property
    def ids(self) -> tuple[int, ...]:
        return self._ids

    @property
    def orders(self) -> Iterator[tuple[str, ...]]:
        return map(_ORDER_TABLE.__getitem__, self._orders)

    @property
    def order_indices(self) -> bytes | array[int]:
        """Aligned with ids: each question's place in the process' order table."""
        return self._orders

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
        """{"q": question ids in order, "o": each one's option order, its ids joined by spaces}; from_json also
        reads the earlier form, {"o": {"<question id>": [option ids]}}, which is still written for option ids
        that hold a space (none do through the API) and which sessions stored before it keep."""
        orders = self.option_order
        if isinstance(orders, OptionOrders) and orders.ids == self.question_ids:
            texts = list(map(_ORDER_TEXT.__getitem__, orders.order_indices))
        else:
            texts = [_ORDER_TEXT[_order_index(tuple(orders[q]))] for q in self.question_ids]
        if None not in texts:
            return {"q": list(self.question_ids), "o": texts}
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
        numbers = list(map(int, data["q"]))
        ids = tuple(map(_IDS.setdefault, numbers, numbers))  # interned (_intern_id), without a call per question
        orders = data["o"]
        if isinstance(orders, list):
            if len(orders) != len(ids):
                raise ValueError(f"a paper of {len(ids)} questions with {len(orders)} option orders")
            return cls(ids, OptionOrders.indexed(ids, list(map(_text_index, orders))))
        return cls(ids, OptionOrders.indexed(ids, [_order_index(tuple(orders[str(q)])) for q in ids]))


def allocate(count: int, mix: Mapping[Difficulty, float]) -> dict[Difficulty, int]:
    """Split `count` over difficulties by weight, largest remainder first (so the parts sum to count)."""
    total = sum(mix.values())
    exact = {d: count * w / total for d, w in mix.items()}
    parts = {d: int(v) for d, v in exact.items()}
    short = count - sum(parts.values())
    for d in sorted(exact, key=lambda d: (exact[d] - parts[d], d.value), reverse=True)[:short]:
        parts[d] += 1
    return parts


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every draw from one bank under one rule shares (a start storm draws thousands): the matching pool in id
    order with its interned ids, each question's difficulty and (difficulty, topic) group as numbers, and per
    question the order-table index of each option permutation's rank."""

    pool: tuple[Question, ...]
    ids: tuple[int, ...]
    level: npt.NDArray[np.intp]  # pool position -> difficulty (its place in Difficulty)
    group: npt.NDArray[np.intp]  # pool position -> level x topics + topic (topics in sorted order)
    topics: npt.NDArray[np.intp]  # pool position -> topic
    topic_count: int
    ranked: npt.NDArray[np.int32]  # pool position x permutation rank -> order-table index (4 bytes x 24 a question)
    permutations: npt.NDArray[np.int64]  # pool position -> n! (0: more than MAX_RANKED options)
    all_ranked: bool
    # Fixed by the pool and the rule, so worked out once, not per draw (~70 us a draw on a slow machine):
    group_start: npt.NDArray[np.intp]  # group -> where its questions start in the pool sorted by group
    take: npt.NDArray[np.intp]  # the places, in the pool sorted by (difficulty, round), of the questions each
    #                              difficulty gives the paper: the first allocate(count, mix)[d] of its block


_PLANS: dict[tuple[int, int], tuple[object, object, _Plan]] = {}
# Plans a process keeps (banks x template rules it draws from). Each pins its bank tuple and ~100 bytes a question
# (a 20,000-question bank: ~2 MB), so an edited bank or template must not pin its old versions for long.
_PLANS_MAX = 16
_LEVELS = tuple(Difficulty)


def _plan(bank: Iterable[Question], rule: PaperRule) -> _Plan:
    """The plan of a bank and a rule, kept for the catalog's cached bank tuples and template rules (held by identity:
    the entry keeps both alive, so an id is never reused while it is cached)."""
    key = (id(bank), id(rule))
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is bank and cached[1] is rule:
        return cached[2]
    wanted = set(rule.topics)
    pool = tuple(sorted((q for q in bank if not wanted or q.topic in wanted), key=lambda q: q.id))
    topic_of = {t: i for i, t in enumerate(sorted({q.topic for q in pool}))}
    level = np.array([_LEVELS.index(q.difficulty) for q in pool], dtype=np.intp)
    topics = np.array([topic_of[q.topic] for q in pool], dtype=np.intp)
    widest = max((math.factorial(len(q.option_ids)) for q in pool if len(q.option_ids) <= MAX_RANKED), default=1)
    ranked = np.zeros((len(pool), widest), dtype=np.int32)
    permutations = np.zeros(len(pool), dtype=np.int64)
    if rule.shuffle_options:
        for i, q in enumerate(pool):
            n = len(q.option_ids)
            if n <= MAX_RANKED:
                ranked[i, : math.factorial(n)] = [_order_index(o) for o in itertools.permutations(q.option_ids)]
                permutations[i] = math.factorial(n)
    group = level * len(topic_of) + topics
    group_start = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(_LEVELS) * len(topic_of)))])
    level_start = np.concatenate([[0], np.cumsum(np.bincount(level, minlength=len(_LEVELS)))])
    per_level = allocate(rule.count, rule.mix)
    blocks = [
        range(level_start[k], min(level_start[k + 1], level_start[k] + per_level.get(d, 0)))
        for k, d in enumerate(_LEVELS)
    ]
    take = np.fromiter(itertools.chain.from_iterable(blocks), dtype=np.intp)
    plan = _Plan(pool, tuple(_intern_id(q.id) for q in pool), level, group, topics, len(topic_of), ranked,
                 permutations, bool(np.all(permutations > 0)), group_start[:-1].astype(np.intp), take)  # fmt: skip
    if isinstance(bank, tuple):  # a list or a view may change under us: only the catalog's tuples are kept
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = (bank, rule, plan)
    return plan


_BIT_GENERATORS = threading.local()  # one PCG64 per thread, its state set per draw (seeding one anew costs ~15 us)


def _generator(seed: str) -> np.random.Generator:
    """The draw's random numbers, a pure function of the seed: PCG64's 128-bit state and odd increment from a
    BLAKE2b digest of it (the same in every process, platform and Python version)."""
    digest = hashlib.blake2b(seed.encode(), digest_size=32).digest()
    generator: np.random.Generator | None = getattr(_BIT_GENERATORS, "generator", None)
    if generator is None:
        generator = _BIT_GENERATORS.generator = np.random.Generator(np.random.PCG64(0))
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(digest[:16], "big"), "inc": int.from_bytes(digest[16:], "big") | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return generator


def draw_paper(bank: Iterable[Question], rule: PaperRule, seed: str) -> Paper:
    """The student's paper: per difficulty (allocate), questions taken round-robin over the topics (topics in a
    random order, each topic's questions in a random order, so that no topic crowds out the others), topped up from
    the rest of the pool when a difficulty runs short; then the questions shuffled, and each question's options put
    in one of its n! orders, uniformly. Vectorised with numpy over a plan cached per bank and rule: a 180-question
    paper from 240 took ~60 us on an Intel Xeon, against ~490 us with `random` and a loop per topic (17% of the
    hub's CPU in a start storm); on a slower AMD machine 220 us, 150 us once the plan held what the rule fixes
    (each difficulty's share and where each block starts)."""
    plan = _plan(bank, rule)
    pool = plan.pool
    if len(pool) < rule.count:
        raise PaperError(f"the bank has {len(pool)} matching questions; the template needs {rule.count}")
    rng = _generator(seed)
    # Round r of a difficulty takes the r-th question of each topic, the topics in a random order per difficulty:
    # sort by (difficulty, place within its topic, the topic's turn), then take each difficulty's first n.
    size, topic_count = len(pool), plan.topic_count
    by_group = np.argsort(plan.group + rng.random(size))  # each (difficulty, topic) together, shuffled
    place = np.empty(size, dtype=np.intp)
    place[by_group] = np.arange(size) - plan.group_start[plan.group[by_group]]
    turns = rng.random((len(_LEVELS), topic_count)).argsort(axis=1)  # each difficulty's order of topics
    order = np.argsort((plan.level * (size + 1) + place) * topic_count + turns[plan.level, plan.topics])  # unique
    chosen = order[plan.take]  # order is by difficulty first: each difficulty's block starts where the plan says
    if len(chosen) < rule.count:  # a difficulty ran short: top up from whatever is left
        rest = np.setdiff1d(np.arange(size, dtype=np.intp), chosen, assume_unique=True)
        chosen = np.concatenate([chosen, rng.choice(rest, rule.count - len(chosen), replace=False)])
    if rule.shuffle_questions:
        chosen = chosen[rng.permutation(len(chosen))]
    else:
        chosen = np.array(sorted(chosen.tolist(), key=lambda i: (pool[i].topic, pool[i].id)), dtype=np.intp)
    positions: list[int] = chosen.tolist()
    ids: tuple[int, ...] = (
        operator.itemgetter(*positions)(plan.ids) if len(positions) > 1 else (plan.ids[positions[0]],)
    )
    if not rule.shuffle_options:
        index = [_order_index(pool[i].option_ids) for i in positions]
    else:
        ranks = (rng.random(len(chosen)) * plan.permutations[chosen]).astype(np.intp)  # floor([0, 1) x n!) < n!
        index = plan.ranked[chosen, ranks].tolist()
        if not plan.all_ranked:
            counts = plan.permutations[chosen].tolist()
            index = [
                i if n else _shuffled(pool[p].option_ids, rng) for p, i, n in zip(positions, index, counts, strict=True)
            ]
    return Paper(ids, OptionOrders.indexed(ids, index))


def _shuffled(ids: tuple[str, ...], rng: np.random.Generator) -> int:
    """Options beyond MAX_RANKED: a permutation drawn element by element."""
    return _order_index(tuple(ids[i] for i in rng.permutation(len(ids)).tolist()))
