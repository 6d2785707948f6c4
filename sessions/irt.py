"""Computerized adaptive testing with item response theory, pure: no I/O, no clock (numpy only).

The model is the three-parameter logistic (3PL) on the logistic metric (no 1.702 scaling constant):

    P(correct | theta) = c + (1 - c) / (1 + exp(-a (theta - b)))

with a the discrimination, b the difficulty and c the guessing floor; the 2PL is c = 0.

- Ability is the EAP (posterior mean) on a fixed grid of 61 points over [-4, 4] with a standard normal
  prior; its standard error is the posterior standard deviation. The posterior is a 61-float array
  (`AdaptiveState.posterior`, normalised to sum 1) multiplied by the item's probability row per answer.
- The next scored item maximises Fisher information at the current estimate, read from a precomputed
  grid x item table (linear interpolation between the two nearest grid points), among the items of the
  topic the blueprint needs most (see `topic_order`: every topic stays within one item of its target
  share at every length), under Sympson-Hetter exposure control: the best item is given
  with probability k (its exposure parameter, set by simulation); otherwise it is set aside for the rest
  of this test and the next best is tried. An item with k = 0 is never given.
- The test stops when the standard error reaches `target_se` with at least `min_items` scored items, or
  at `max_items`, or when no item is left.
- Unscored pretest items are seeded at given positions (1-based, counting every item given); their
  answers are recorded but never move the estimate.
- The scaled score is `400 + 100 * theta` rounded and clipped to 0..800 (theta -4 -> 0, 0 -> 400,
  +4 -> 800), so one scaled point is a hundredth of a population standard deviation.

The hub keeps one `AdaptiveState` per session (see `dump`/`load`) and per answer calls `update` then
`next_item`; the `Bank` (with its tables) is built once per item bank and shared.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

GRID_MIN, GRID_MAX, GRID_POINTS = -4.0, 4.0, 61
GRID: Floats = np.linspace(GRID_MIN, GRID_MAX, GRID_POINTS)
GRID_STEP = (GRID_MAX - GRID_MIN) / (GRID_POINTS - 1)
_GRID2: Floats = GRID * GRID
PRIOR: Floats = np.exp(-0.5 * _GRID2) / np.exp(-0.5 * _GRID2).sum()  # N(0, 1) weights on the grid

SCALE_CENTRE, SCALE_UNIT, SCALE_MAX = 400, 100, 800
ALL_TOPICS = "*"  # the one group of a test without a blueprint


# ---- the model ---------------------------------------------------------------------------------------------


def probability(theta: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike = 0.0) -> Floats:
    """P(correct) under the 3PL; broadcasts like numpy."""
    t, aa, bb, cc = (np.asarray(x, dtype=np.float64) for x in (theta, a, b, c))
    out: Floats = cc + (1.0 - cc) / (1.0 + np.exp(-aa * (t - bb)))
    return out


def information(theta: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike = 0.0) -> Floats:
    """Fisher information of the 3PL: a^2 (Q / P) ((P - c) / (1 - c))^2; the 2PL's a^2 P Q when c = 0."""
    aa, cc = np.asarray(a, dtype=np.float64), np.asarray(c, dtype=np.float64)
    p = probability(theta, a, b, c)
    out: Floats = aa * aa * ((1.0 - p) / p) * ((p - cc) / (1.0 - cc)) ** 2
    return out


@dataclass(frozen=True, slots=True)
class ItemParams:
    """One calibrated item: `id` is the question id; `topic` is what the blueprint balances."""

    id: int
    a: float
    b: float
    c: float = 0.0
    topic: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b) and math.isfinite(self.c)):
            raise ValueError(f"item {self.id}: parameters must be finite")
        if self.a <= 0:
            raise ValueError(f"item {self.id}: discrimination must be positive to be given adaptively")
        if not 0 <= self.c < 1:
            raise ValueError(f"item {self.id}: guessing must be within [0, 1)")


@dataclass(frozen=True, slots=True, eq=False)
class _Group:
    """The items of one topic: their bank positions and their own contiguous grid x item information table."""

    topic: int  # index into Bank.topic_names; -1 for the whole bank
    index: Ints  # positions in the bank
    info: Floats  # (GRID_POINTS, len(index))


@dataclass(frozen=True, slots=True, eq=False)
class Bank:
    """An item bank with its precomputed tables. Build once (`Bank.build`) and share between sessions."""

    ids: Ints
    a: Floats
    b: Floats
    c: Floats
    topic_names: tuple[str, ...]
    topic: Ints  # per item, an index into topic_names
    local: Ints  # per item, its position inside its topic's group
    exposure: Floats  # Sympson-Hetter k per item, in [0, 1]
    p_grid: Floats  # (items, GRID_POINTS): P(correct) at each grid point
    groups: Mapping[str, _Group]  # per topic, and ALL_TOPICS over the whole bank
    position: Mapping[int, int]  # question id -> position
    pretest_ids: tuple[int, ...] = ()

    @classmethod
    def build(
        cls,
        items: Sequence[ItemParams],
        exposure: Mapping[int, float] | None = None,
        pretest: Iterable[int] = (),
    ) -> Bank:
        """`exposure` maps item ids to Sympson-Hetter k (missing: 1, never held back); `pretest` lists the
        unscored items that may be seeded (they need no parameters)."""
        if not items:
            raise ValueError("an adaptive bank needs at least one calibrated item")
        ids = np.array([it.id for it in items], dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("item ids must be unique")
        a = np.array([it.a for it in items], dtype=np.float64)
        b = np.array([it.b for it in items], dtype=np.float64)
        c = np.array([it.c for it in items], dtype=np.float64)
        names = tuple(sorted({it.topic for it in items}))
        topic = np.array([names.index(it.topic) for it in items], dtype=np.int64)
        k = np.ones(len(items), dtype=np.float64)
        position = {int(i): n for n, i in enumerate(ids)}
        for item_id, value in (exposure or {}).items():
            if not 0 <= value <= 1:
                raise ValueError(f"item {item_id}: exposure parameter must be within [0, 1]")
            if item_id in position:
                k[position[item_id]] = value
        p_grid = probability(GRID[None, :], a[:, None], b[:, None], c[:, None])
        info = np.ascontiguousarray(information(GRID[:, None], a[None, :], b[None, :], c[None, :]))
        local = np.zeros(len(items), dtype=np.int64)
        groups = {ALL_TOPICS: _Group(-1, np.arange(len(items), dtype=np.int64), info)}
        for t, name in enumerate(names):
            index = np.flatnonzero(topic == t).astype(np.int64)
            local[index] = np.arange(len(index))
            groups[name] = _Group(t, index, np.ascontiguousarray(info[:, index]))
        scored = set(position)
        pre = tuple(dict.fromkeys(int(i) for i in pretest if int(i) not in scored))
        return cls(ids, a, b, c, names, topic, local, k, p_grid, groups, position, pre)

    def with_exposure(self, exposure: Floats) -> Bank:
        """The same bank (tables shared) with new Sympson-Hetter parameters, one per item in bank order."""
        k = np.asarray(exposure, dtype=np.float64)
        if k.shape != self.exposure.shape or np.any((k < 0) | (k > 1)):
            raise ValueError("one exposure parameter in [0, 1] per item")
        return replace(self, exposure=k.copy())

    def __len__(self) -> int:
        return len(self.ids)

    def items(self) -> list[ItemParams]:
        return [
            ItemParams(int(i), float(a), float(b), float(c), self.topic_names[t])
            for i, a, b, c, t in zip(self.ids, self.a, self.b, self.c, self.topic, strict=True)
        ]


# ---- the test's rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """A template's adaptive rules. `blueprint` maps topics to target shares of the scored items (normalised
    here; empty: no content balancing); `pretest_positions` are 1-based positions in the whole sequence."""

    target_se: float = 0.30
    min_items: int = 5
    max_items: int = 60
    blueprint: Mapping[str, float] = field(default_factory=dict)
    pretest_positions: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not 0 < self.target_se < 1:
            raise ValueError("target_se must be within (0, 1)")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError("need 1 <= min_items <= max_items")
        if any(not (math.isfinite(v) and v > 0) for v in self.blueprint.values()):
            raise ValueError("blueprint shares must be positive")
        if any(p < 1 for p in self.pretest_positions):
            raise ValueError("pretest positions are 1-based")
        total = sum(self.blueprint.values())
        object.__setattr__(self, "blueprint", {k: v / total for k, v in self.blueprint.items()})
        object.__setattr__(self, "pretest_positions", frozenset(self.pretest_positions))


# ---- the state one session carries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class AdaptiveState:
    """What one adaptive session carries between answers (about 1 KB as JSON; see `dump`)."""

    posterior: Floats  # on GRID, sums to 1
    items: tuple[int, ...] = ()  # scored items given, in order
    responses: tuple[bool, ...] = ()  # their answers
    pretest: tuple[int, ...] = ()  # unscored items given
    set_aside: tuple[int, ...] = ()  # held back by exposure control for the rest of this test
    pending: int | None = None  # the item on the student's screen
    done: bool = False

    @property
    def given(self) -> int:
        return len(self.items) + len(self.pretest)


@dataclass(frozen=True, slots=True)
class Estimate:
    theta: float
    se: float
    scaled: int
    scored: int
    pretest: int


def start() -> AdaptiveState:
    return AdaptiveState(PRIOR.copy())


def eap(posterior: Floats) -> tuple[float, float]:
    """(posterior mean, posterior standard deviation) on GRID."""
    mean = float(posterior @ GRID)
    return mean, math.sqrt(max(float(posterior @ _GRID2) - mean * mean, 0.0))


def scaled_score(theta: float) -> int:
    return int(min(max(round(SCALE_CENTRE + SCALE_UNIT * theta), 0), SCALE_MAX))


def estimate(state: AdaptiveState) -> Estimate:
    theta, se = eap(state.posterior)
    return Estimate(theta, se, scaled_score(theta), len(state.items), len(state.pretest))


def should_stop(state: AdaptiveState, config: AdaptiveConfig) -> bool:
    n = len(state.items)
    if n >= config.max_items:
        return True
    return n >= config.min_items and eap(state.posterior)[1] <= config.target_se


def posterior_of(bank: Bank, items: Sequence[int], responses: Sequence[bool]) -> Floats:
    """The posterior after these answers, computed afresh (the state's array is this, kept incrementally)."""
    post = PRIOR.copy()
    for item, right in zip(items, responses, strict=True):
        p = bank.p_grid[bank.position[item]]
        post *= p if right else 1.0 - p
    total = post.sum()
    if not total > 0:
        raise ValueError("the posterior vanished on the grid")
    out: Floats = post / total
    return out


def update(state: AdaptiveState, bank: Bank, item: int, correct: bool) -> AdaptiveState:
    """Record the answer to the pending item. A pretest item is recorded and leaves the estimate alone."""
    if state.pending is None or item != state.pending:
        raise ValueError(f"item {item} is not the pending item ({state.pending})")
    at = bank.position.get(item)
    if at is None:
        return replace(state, pretest=(*state.pretest, item), pending=None)
    p = bank.p_grid[at]
    post = state.posterior * (p if correct else 1.0 - p)
    post /= post.sum()
    return replace(state, posterior=post, items=(*state.items, item), responses=(*state.responses, bool(correct)),
                   pending=None)  # fmt: skip


def next_item(
    state: AdaptiveState, bank: Bank, config: AdaptiveConfig, rng: np.random.Generator
) -> tuple[int | None, AdaptiveState]:
    """The item to present (None: the test is over) and the state that remembers it.

    Idempotent while an item is pending (a reconnect asks again and gets the same item). `rng` decides the
    Sympson-Hetter draws and which pretest item is seeded: seed it from the session for reproducible tests.
    """
    if state.done:
        return None, state
    if state.pending is not None:
        return state.pending, state
    if should_stop(state, config):
        return None, replace(state, done=True)
    if state.given + 1 in config.pretest_positions:
        seen = set(state.pretest)
        fresh = [i for i in bank.pretest_ids if i not in seen]
        if fresh:
            return _present(state, fresh[int(rng.integers(len(fresh)))], ())
    theta = eap(state.posterior)[0]
    excluded = {bank.position[i] for i in (*state.items, *state.set_aside) if i in bank.position}
    aside: list[int] = []
    for topic in topic_order(bank, config.blueprint, state.items):
        chosen = _pick(bank, bank.groups[topic], theta, excluded, aside, rng)
        if chosen is not None:
            return _present(state, chosen, aside)
    return None, replace(state, done=True, set_aside=(*state.set_aside, *aside))


def _present(state: AdaptiveState, item: int, aside: Sequence[int]) -> tuple[int, AdaptiveState]:
    return item, replace(state, pending=item, set_aside=(*state.set_aside, *aside))


def topic_order(bank: Bank, blueprint: Mapping[str, float], given: Sequence[int]) -> list[str]:
    """Topics to draw the next scored item from, best first. Without a blueprint: the whole bank.

    Balinski and Young's quota method: a topic may have the n-th item only while its count is below
    share * n, and among those the earliest deadline (count + 1) / share goes first (ties: larger share,
    then name). Every topic then stays within one item of its target share * n at every length, as long as
    it has items left; the topics past their quota follow, in the same order, for when it has not."""
    if not blueprint:
        return [ALL_TOPICS]
    counts = dict.fromkeys(blueprint, 0)
    names = bank.topic_names
    for item in given:
        at = bank.position.get(item)  # None: recalibrated out of the bank since it was given
        name = names[bank.topic[at]] if at is not None else None
        if name in counts:
            counts[name] += 1
    n = len(given) + 1
    present = sorted((t for t in blueprint if t in bank.groups),
                     key=lambda t: ((counts[t] + 1) / blueprint[t], -blueprint[t], t))  # fmt: skip
    due = [t for t in present if counts[t] < blueprint[t] * n - 1e-9]
    return due + [t for t in present if t not in due]


def _pick(
    bank: Bank, group: _Group, theta: float, excluded: set[int], aside: list[int], rng: np.random.Generator
) -> int | None:
    x = min(max((theta - GRID_MIN) / GRID_STEP, 0.0), GRID_POINTS - 1.000001)
    q = int(x)
    w = x - q
    row = group.info[q] * (1.0 - w)
    row += group.info[q + 1] * w
    if group.topic < 0:
        local = list(excluded)
    else:
        local = [int(bank.local[i]) for i in excluded if bank.topic[i] == group.topic]
    if local:
        row[local] = -np.inf
    k = bank.exposure
    for _ in range(len(row)):
        j = int(np.argmax(row))
        if row[j] == -np.inf:
            return None
        at = int(group.index[j])
        if k[at] >= 1.0 or rng.random() < k[at]:
            return int(bank.ids[at])
        aside.append(int(bank.ids[at]))
        row[j] = -np.inf
    return None


# ---- the state in Redis -------------------------------------------------------------------------------------


def dump(state: AdaptiveState) -> dict[str, Any]:
    """A JSON-ready dict: the posterior as base64 of its 61 little-endian float64s (652 characters)."""
    return {
        "post": base64.b64encode(state.posterior.astype("<f8").tobytes()).decode("ascii"),
        "items": list(state.items),
        "resp": "".join("1" if r else "0" for r in state.responses),
        "pretest": list(state.pretest),
        "aside": list(state.set_aside),
        "pending": state.pending,
        "done": state.done,
    }


def load(data: Mapping[str, Any]) -> AdaptiveState:
    """The inverse of `dump`; raises ValueError on anything malformed."""
    try:
        raw = base64.b64decode(data["post"], validate=True)
        post = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        items = tuple(int(i) for i in data["items"])
        resp = str(data["resp"])
        pretest = tuple(int(i) for i in data["pretest"])
        aside = tuple(int(i) for i in data["aside"])
        pending = None if data["pending"] is None else int(data["pending"])
        done = bool(data["done"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed adaptive state: {exc}") from None
    if post.shape != (GRID_POINTS,) or not np.all(np.isfinite(post)) or abs(float(post.sum()) - 1) > 1e-9:
        raise ValueError("malformed adaptive state: posterior")
    if len(resp) != len(items) or set(resp) - {"0", "1"}:
        raise ValueError("malformed adaptive state: responses")
    return AdaptiveState(post, items, tuple(r == "1" for r in resp), pretest, aside, pending, done)
