"""Test statistics, pure: classical item analysis, reliability, NTA-style standing, trends and the rules that
turn a student's record into advice. No I/O; storage/analytics.py feeds it rows.

Conventions (each test states the hand-computed values these give):
- An item scores 1 when answered correctly and 0 otherwise: a skipped item counts as wrong.
- Variances are population variances (divide by n), for items and totals alike, so that KR-20 is exactly
  Cronbach's alpha of a 0/1 matrix.
- A statistic that is undefined for the data (a constant column, fewer than two attempts) is None, never 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# ---- basics ----------------------------------------------------------------------------------------------


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def variance(xs: Sequence[float]) -> float | None:
    """Population variance (divide by n)."""
    m = mean(xs)
    if m is None:
        return None
    return sum((x - m) ** 2 for x in xs) / len(xs)


def quantile(xs: Sequence[float], q: float) -> float | None:
    """Linear interpolation between order statistics (Hyndman & Fan type 7, numpy's default)."""
    if not 0 <= q <= 1:
        raise ValueError("q must be within [0, 1]")
    if not xs:
        return None
    s = sorted(xs)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r; None when either side is constant or there are fewer than two pairs."""
    if len(xs) != len(ys):
        raise ValueError("pearson needs two sequences of the same length")
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def slope(ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against their positions 0, 1, 2, ... (change per step)."""
    n = len(ys)
    if n < 2:
        return None
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx


# ---- reliability -----------------------------------------------------------------------------------------


def cronbach_alpha(matrix: Sequence[Sequence[float]]) -> float | None:
    """alpha = k/(k-1) * (1 - sum of item variances / variance of totals); rows are people, columns items."""
    if len(matrix) < 2:
        return None
    k = len(matrix[0])
    if k < 2 or any(len(row) != k for row in matrix):
        return None
    item_var = sum(variance([row[j] for row in matrix]) or 0.0 for j in range(k))
    total_var = variance([sum(row) for row in matrix])
    if not total_var:
        return None
    return k / (k - 1) * (1 - item_var / total_var)


def kr20(matrix: Sequence[Sequence[int]]) -> float | None:
    """Kuder-Richardson 20 for 0/1 items: k/(k-1) * (1 - sum p*q / variance of totals)."""
    return cronbach_alpha(matrix)


def kr21(k: int, totals: Sequence[float]) -> float | None:
    """Kuder-Richardson 21: needs only the totals of k-item papers; assumes equally hard items (so it is a
    lower bound of KR-20). Usable when every student sat different items of the same length."""
    m, v = mean(totals), variance(totals)
    if k < 2 or len(totals) < 2 or m is None or not v:
        return None
    return k / (k - 1) * (1 - m * (k - m) / (k * v))


@dataclass(frozen=True, slots=True)
class Reliability:
    """KR-20 on the items every attempt saw, and KR-21 on whole papers (see `reliability`)."""

    attempts: int
    common_items: int
    common_mean: float | None
    common_variance: float | None
    kr20: float | None
    paper_length: int
    paper_attempts: int
    paper_mean: float | None
    paper_variance: float | None
    kr21: float | None


def reliability(attempts: Mapping[str, Mapping[int, int]]) -> Reliability:
    """Reliability of a template whose students may have drawn different papers from the bank.

    `attempts` maps an attempt to {item: 0/1} over the items of its paper. KR-20 needs one attempts x items
    matrix, so it is computed on the items common to every attempt (all of them for a fixed paper; often
    none for a paper drawn at random, and then it is None). KR-21 needs only each attempt's number correct
    and the paper length, so it covers random papers too: over the attempts whose paper has the most common
    length.
    """
    rows = list(attempts.values())
    common: set[int] = set(rows[0]) if rows else set()
    for r in rows[1:]:
        common &= set(r)
    items = sorted(common)
    matrix = [[r[i] for i in items] for r in rows]
    common_totals = [float(sum(r)) for r in matrix] if items else []
    lengths = Counter(len(r) for r in rows)
    k = max(lengths, key=lambda n: (lengths[n], n)) if lengths else 0
    totals = [float(sum(r.values())) for r in rows if len(r) == k]
    return Reliability(
        attempts=len(rows),
        common_items=len(items),
        common_mean=mean(common_totals),
        common_variance=variance(common_totals),
        kr20=kr20(matrix) if items else None,
        paper_length=k,
        paper_attempts=len(totals),
        paper_mean=mean(totals),
        paper_variance=variance(totals),
        kr21=kr21(k, totals),
    )


# ---- item analysis ---------------------------------------------------------------------------------------

GROUP_FRACTION = 0.27  # Kelley's upper and lower 27%


@dataclass(frozen=True, slots=True)
class Response:
    attempt: str
    item: int
    choice: str | None  # None: skipped
    correct: bool


@dataclass(frozen=True, slots=True)
class OptionCount:
    option: str
    count: int
    upper: int  # chosen by this many of the upper group
    lower: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class ItemStats:
    item: int
    n: int  # attempts whose paper had this item
    facility: float  # proportion correct (skipped counts as wrong)
    discrimination: float | None  # corrected item-rest correlation
    upper_lower: float | None  # facility in the upper group minus facility in the lower group
    skipped: int
    options: tuple[OptionCount, ...]
    flags: tuple[str, ...] = field(default_factory=tuple)


FLAG_RULES = {
    "too_hard": "facility below 0.2",
    "too_easy": "facility above 0.95",
    "low_discrimination": "item-rest correlation below 0.2",
    "negative_discrimination": "item-rest correlation below 0: strong students get it wrong more often",
    "distractor_beats_key": "the upper group chose a wrong option more often than the key",
    "unchosen_distractor": "a wrong option nobody chose",
}


def item_flags(s: ItemStats) -> tuple[str, ...]:
    out = []
    if s.facility < 0.2:
        out.append("too_hard")
    if s.facility > 0.95:
        out.append("too_easy")
    if s.discrimination is not None and s.discrimination < 0:
        out.append("negative_discrimination")
    elif s.discrimination is not None and s.discrimination < 0.2:
        out.append("low_discrimination")
    key_upper = sum(o.upper for o in s.options if o.is_key)
    if any(not o.is_key and o.upper > key_upper for o in s.options):
        out.append("distractor_beats_key")
    if any(not o.is_key and o.count == 0 for o in s.options):
        out.append("unchosen_distractor")
    return tuple(out)


def item_analysis(
    responses: Iterable[Response],
    keys: Mapping[int, str],
    options: Mapping[int, Sequence[str]],
    *,
    min_n: int = 10,
) -> list[ItemStats]:
    """Per item, over the attempts whose paper had it: facility, discrimination, options, flags.

    Discrimination is the corrected item-total (item-rest) correlation: Pearson's r between the item's 0/1
    and the attempt's number correct on its OTHER items (the point-biserial without the item's own part).
    The upper and lower groups are the top and bottom 27% (at least one attempt) of those attempts by
    number correct, ties broken by attempt id. Items seen by fewer than `min_n` attempts get no flags.
    """
    by_attempt: dict[str, dict[int, Response]] = {}
    for r in responses:
        by_attempt.setdefault(r.attempt, {})[r.item] = r
    totals = {a: sum(r.correct for r in items.values()) for a, items in by_attempt.items()}
    ranked = sorted(by_attempt, key=lambda a: (-totals[a], a))
    seen_by: dict[int, list[str]] = {}
    for a in ranked:
        for item in by_attempt[a]:
            seen_by.setdefault(item, []).append(a)  # in rank order
    out = []
    for item in sorted(seen_by):
        who = seen_by[item]
        n = len(who)
        x = [float(by_attempt[a][item].correct) for a in who]
        rest = [totals[a] - xi for a, xi in zip(who, x, strict=True)]
        g = max(1, math.ceil(GROUP_FRACTION * n)) if n >= 2 else 0
        upper, lower = who[:g], who[n - g :]
        choices = [by_attempt[a][item].choice for a in who]
        upper_choices = Counter(by_attempt[a][item].choice for a in upper)
        lower_choices = Counter(by_attempt[a][item].choice for a in lower)
        counts = Counter(choices)
        listed = list(options.get(item, ()))
        names = listed + sorted(c for c in counts if c is not None and c not in listed)  # a since-removed option
        key = keys.get(item)
        opts = tuple(OptionCount(o, counts[o], upper_choices[o], lower_choices[o], o == key) for o in names)
        p_upper = sum(by_attempt[a][item].correct for a in upper) / g if g else None
        p_lower = sum(by_attempt[a][item].correct for a in lower) / g if g else None
        stats = ItemStats(
            item=item,
            n=n,
            facility=sum(x) / n,
            discrimination=pearson(x, rest),
            upper_lower=None if p_upper is None or p_lower is None else p_upper - p_lower,
            skipped=counts[None],
            options=opts,
        )
        out.append(stats if n < min_n else _with_flags(stats))
    return out


def _with_flags(s: ItemStats) -> ItemStats:
    return ItemStats(s.item, s.n, s.facility, s.discrimination, s.upper_lower, s.skipped, s.options, item_flags(s))


# ---- standing --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Standing:
    rank: int
    percentile: float
    total: int


def standing(higher: int, at_or_below: int) -> Standing:
    """NTA's definition, from two counts over the template's attempts:

    rank       = 1 + the number of attempts with a strictly higher score (equal scores share a rank; NTA
                 breaks NEET ties by subject marks and fewer wrong answers, which we do not);
    percentile = 100 * (the number of attempts scoring at most this) / (all attempts), to 7 decimals.
    """
    total = higher + at_or_below
    if at_or_below < 1:
        raise ValueError("the attempt itself scores at most its own score")
    return Standing(rank=1 + higher, percentile=round(100 * at_or_below / total, 7), total=total)


def standing_in(score: float, scores: Sequence[float]) -> Standing:
    """`standing` for a score within a list of scores that contains it."""
    return standing(sum(1 for s in scores if s > score), sum(1 for s in scores if s <= score))


def competition_ranks(scores: Sequence[float]) -> list[int]:
    """Ranks of scores already sorted high to low, equal scores sharing the better rank ("1224")."""
    ranks: list[int] = []
    for i, s in enumerate(scores):
        ranks.append(ranks[-1] if i and s == scores[i - 1] else i + 1)
    return ranks


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    mean: float | None
    median: float | None
    p90: float | None
    min: float | None
    max: float | None
    stdev: float | None


def summary(xs: Sequence[float]) -> Summary:
    v = variance(xs)
    return Summary(
        count=len(xs),
        mean=mean(xs),
        median=quantile(xs, 0.5),
        p90=quantile(xs, 0.9),
        min=min(xs) if xs else None,
        max=max(xs) if xs else None,
        stdev=None if v is None else math.sqrt(v),
    )


# ---- a student's record ----------------------------------------------------------------------------------

STEADY_BAND = 0.5  # percentage points per attempt: slopes within +/- this are "steady"


@dataclass(frozen=True, slots=True)
class Trend:
    percents: tuple[float, ...]  # oldest first
    slope: float | None  # percentage points per attempt
    direction: str  # improving | declining | steady | unknown


def trend(percents: Sequence[float]) -> Trend:
    """Scores as percentages of the maximum (so papers of different lengths compare), oldest first."""
    b = slope(percents)
    if b is None:
        direction = "unknown"
    elif b > STEADY_BAND:
        direction = "improving"
    elif b < -STEADY_BAND:
        direction = "declining"
    else:
        direction = "steady"
    return Trend(tuple(percents), b, direction)


@dataclass(frozen=True, slots=True)
class Tally:
    """Answers in one topic (or at one difficulty). `attempted` is NEET's sense: answered, not skipped."""

    name: str
    attempted: int
    correct: int
    skipped: int = 0
    time_spent_ms: int = 0

    @property
    def wrong(self) -> int:
        return self.attempted - self.correct

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.attempted if self.attempted else None

    @property
    def ms_per_question(self) -> float | None:
        seen = self.attempted + self.skipped
        return self.time_spent_ms / seen if seen else None


def strengths_and_weaknesses(tallies: Iterable[Tally], min_answered: int, k: int = 3) -> tuple[list[str], list[str]]:
    """The best and the worst topics by accuracy among those with at least `min_answered` answers; at most
    k each and never the same topic in both (so k shrinks to half the eligible topics)."""
    eligible = sorted(
        (t for t in tallies if t.attempted >= min_answered and t.accuracy is not None),
        key=lambda t: (-(t.accuracy or 0.0), -t.attempted, t.name),
    )
    n = min(k, len(eligible) // 2)
    return [t.name for t in eligible[:n]], [t.name for t in reversed(eligible[len(eligible) - n :])]


@dataclass(frozen=True, slots=True)
class Recommendation:
    kind: str  # practise_weak_topic | try_new_topic | build_evidence | difficulty | pace
    reason: str
    topic: str | None = None
    difficulty: str | None = None


WEAK_BELOW = 0.6  # a topic answered this badly or worse needs practice
MASTERED_AT = 0.75  # a difficulty level answered this well is mastered
NEET_PACE_MS = 200 * 60 * 1000 // 180  # NEET: 180 questions in 200 minutes, about 67 s each
LEVELS = ("easy", "medium", "hard")


def suggest_difficulty(levels: Mapping[str, Tally], min_answered: int) -> tuple[str, str]:
    """The first level (easy, medium, hard) not yet mastered: at least `min_answered` answers there with
    accuracy >= 0.75. All mastered: hard."""
    for level in LEVELS:
        t = levels.get(level)
        if t is None or t.attempted < min_answered:
            return level, f"not enough {level} questions answered yet ({t.attempted if t else 0} of {min_answered})"
        acc = t.accuracy or 0.0
        if acc < MASTERED_AT:
            return level, f"{level} accuracy {acc:.0%} is below {MASTERED_AT:.0%}"
    return "hard", f"every level at {MASTERED_AT:.0%} or better"


def recommend(
    topics: Iterable[Tally],
    all_topics: Iterable[str],
    levels: Mapping[str, Tally],
    *,
    min_answered: int,
    limit: int = 3,
    pace_ms: float = NEET_PACE_MS,
) -> list[Recommendation]:
    """What to practise next, most useful first:
    1. weak topics: at least `min_answered` answers and accuracy below 60%, worst first;
    2. topics never seen (in a bank the student can sit, with no question of it on any paper yet);
    3. topics with too few answers to judge, fewest first;
    4. the difficulty to work at (`suggest_difficulty`);
    5. pace, when the average time per question is slower than NEET's (~67 s).
    """
    tallies = {t.name: t for t in topics}
    out: list[Recommendation] = []
    weak = sorted(
        (t for t in tallies.values() if t.attempted >= min_answered and (t.accuracy or 0.0) < WEAK_BELOW),
        key=lambda t: (t.accuracy or 0.0, -t.attempted, t.name),
    )
    for t in weak[:limit]:
        out.append(Recommendation("practise_weak_topic", f"accuracy {t.accuracy or 0.0:.0%} over {t.attempted} answers",
                                  topic=t.name))  # fmt: skip
    never = sorted(
        name for name in set(all_topics) if name not in tallies or tallies[name].attempted + tallies[name].skipped == 0
    )
    for name in never[:limit]:
        out.append(Recommendation("try_new_topic", "no question of this topic answered yet", topic=name))
    thin = sorted(
        (t for t in tallies.values() if t.attempted + t.skipped > 0 and t.attempted < min_answered),
        key=lambda t: (t.attempted, t.name),
    )
    for t in thin[:limit]:
        out.append(Recommendation("build_evidence", f"only {t.attempted} of {min_answered} answers needed to judge",
                                  topic=t.name))  # fmt: skip
    level, why = suggest_difficulty(levels, min_answered)
    out.append(Recommendation("difficulty", why, difficulty=level))
    seen = sum(t.attempted + t.skipped for t in tallies.values())
    spent = sum(t.time_spent_ms for t in tallies.values())
    if seen >= min_answered and spent / seen > pace_ms:
        out.append(Recommendation("pace", f"{spent / seen / 1000:.0f} s per question; NEET pace is about "
                                          f"{pace_ms / 1000:.0f} s"))  # fmt: skip
    return out
