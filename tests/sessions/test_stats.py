"""The statistics against values worked out by hand on small fixtures (the working is in the comments)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions import stats
from sessions.stats import Response, Tally

# Five students, four items (1 = right, 0 = wrong or skipped):
#
#          i1 i2 i3 i4 | total
#   s1      1  1  1  1 |  4
#   s2      1  1  1  0 |  3
#   s3      1  1  0  0 |  2
#   s4      1  0  1  0 |  2
#   s5      0  0  0  1 |  1
#
# facility p: i1 4/5 = 0.8, i2 3/5 = 0.6, i3 3/5 = 0.6, i4 2/5 = 0.4
# totals 4 3 2 2 1: mean 12/5 = 2.4; deviations 1.6 .6 -.4 -.4 -1.4; squares 2.56 .36 .16 .16 1.96 = 5.2;
#   population variance 5.2/5 = 1.04
# sum p*q = .8*.2 + .6*.4 + .6*.4 + .4*.6 = .16 + .24 + .24 + .24 = .88
# KR-20 = 4/3 * (1 - .88/1.04) = 4/3 * .16/1.04 = 4/3 * 2/13 = 8/39 = 0.205128...
# KR-21 = 4/3 * (1 - M(k-M)/(k var)) = 4/3 * (1 - 2.4*1.6/(4*1.04)) = 4/3 * (1 - 3.84/4.16) = 4/3 * 1/13 = 4/39
#
# item-rest correlations (x = the item, y = total minus the item):
#   i1: x 1 1 1 1 0, y 3 2 1 1 1; means .8, 1.6; dx .2 .2 .2 .2 -.8; dy 1.4 .4 -.6 -.6 -.6
#       sum dx*dy = .28 + .08 - .12 - .12 + .48 = .6; sum dx^2 = .8; sum dy^2 = 3.2
#       r = .6 / sqrt(.8 * 3.2) = .6 / 1.6 = 0.375
#   i2: x 1 1 1 0 0, y 3 2 1 2 1; means .6, 1.8; dx .4 .4 .4 -.6 -.6; dy 1.2 .2 -.8 .2 -.8
#       sum dx*dy = .48 + .08 - .32 - .12 + .48 = .6; sum dx^2 = 1.2; sum dy^2 = 2.8
#       r = .6 / sqrt(3.36) = 3 / (2 sqrt 21) = sqrt(21)/14 = 0.327327...
#   i3: x 1 1 0 1 0, y 3 2 2 1 1; dx .4 .4 -.6 .4 -.6; dy 1.2 .2 .2 -.8 -.8 -> .48 + .08 - .12 - .32 + .48 = .6,
#       same sums of squares: r = sqrt(21)/14
#   i4: x 1 0 0 0 1, y 3 3 2 2 0; means .4, 2; dx .6 -.4 -.4 -.4 .6; dy 1 1 0 0 -2
#       sum dx*dy = .6 - .4 + 0 + 0 - 1.2 = -1; sum dx^2 = 1.2; sum dy^2 = 6
#       r = -1 / sqrt(7.2) = -sqrt(5)/6 = -0.372678...
MATRIX = [
    [1, 1, 1, 1],
    [1, 1, 1, 0],
    [1, 1, 0, 0],
    [1, 0, 1, 0],
    [0, 0, 0, 1],
]
STUDENTS = ["s1", "s2", "s3", "s4", "s5"]
ITEMS = [11, 12, 13, 14]


def responses_of(matrix: list[list[int]]) -> list[Response]:
    return [
        Response(STUDENTS[i], ITEMS[j], "a" if v else "b", bool(v))
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
    ]


def test_kr20_kr21_and_alpha_by_hand() -> None:
    assert stats.kr20(MATRIX) == pytest.approx(8 / 39)
    assert stats.kr21(4, [4, 3, 2, 2, 1]) == pytest.approx(4 / 39)
    # alpha on a 3 x 3 rating matrix: item variances 2/3 each (2 4 3; 3 4 5; 3 5 4),
    # totals 8 13 12: mean 11, variance (9 + 4 + 1)/3 = 14/3; alpha = 3/2 * (1 - 2 / (14/3)) = 3/2 * 8/14 = 6/7
    assert stats.cronbach_alpha([[2, 3, 3], [4, 4, 5], [3, 5, 4]]) == pytest.approx(6 / 7)


def test_reliability_undefined_cases() -> None:
    assert stats.kr20([[1, 0]]) is None  # one student
    assert stats.kr20([[1], [0]]) is None  # one item
    assert stats.kr20([[1, 0], [1, 0]]) is None  # every total equal: no variance
    assert stats.kr21(1, [1.0, 0.0]) is None
    assert stats.kr21(4, [2.0]) is None


def test_item_analysis_by_hand() -> None:
    items = stats.item_analysis(responses_of(MATRIX), {i: "a" for i in ITEMS}, {i: ["a", "b"] for i in ITEMS}, min_n=1)
    by = {s.item: s for s in items}
    assert [by[i].facility for i in ITEMS] == pytest.approx([0.8, 0.6, 0.6, 0.4])
    assert [by[i].discrimination for i in ITEMS] == pytest.approx(
        [0.375, math.sqrt(21) / 14, math.sqrt(21) / 14, -math.sqrt(5) / 6]
    )
    assert all(s.n == 5 for s in items)
    # groups: ceil(0.27 * 5) = 2 attempts each; ranked by total then id: s1 s2 | s3 | s4 s5.
    # i4: upper s1 s2 -> 1 of 2 right; lower s4 s5 -> 1 of 2 right: D = 0.5 - 0.5 = 0
    # i1: upper 2/2, lower s4 s5 -> 1/2: D = 0.5
    assert by[14].upper_lower == pytest.approx(0.0)
    assert by[11].upper_lower == pytest.approx(0.5)
    assert "negative_discrimination" in by[14].flags
    assert by[11].flags == ()  # r .375, facility .8, key chosen most by the upper group
    assert [(o.option, o.count, o.upper, o.is_key) for o in by[14].options] == [
        ("a", 2, 1, True),
        ("b", 3, 1, False),
    ]


def test_item_flags() -> None:
    # Ten attempts x0..x9 of item 1, key "a": x0-x2 choose "c", x3 x4 choose "a", x5-x9 skip.
    # Items 2 and 3 are right only for x0-x2, so totals are x0-x2: 2, x3 x4: 1, the rest 0, and the upper
    # group (ceil(0.27 * 10) = 3 attempts) is x0 x1 x2: all chose "c", none the key. Nobody chose "b" or "d".
    rs: list[Response] = []
    for n in range(10):
        sid = f"x{n}"
        choice = "c" if n < 3 else ("a" if n in (3, 4) else None)
        rs.append(Response(sid, 1, choice, choice == "a"))
        rs.append(Response(sid, 2, "a" if n < 3 else "b", n < 3))
        rs.append(Response(sid, 3, "a" if n < 3 else "b", n < 3))
    keys = {1: "a", 2: "a", 3: "a"}
    options = {1: ["a", "b", "c", "d"], 2: ["a", "b"], 3: ["a", "b"]}
    items = {s.item: s for s in stats.item_analysis(rs, keys, options)}
    one = items[1]
    # facility 2/10 = 0.2 is not "too hard" (below 0.2 is)
    assert one.facility == pytest.approx(0.2) and one.skipped == 5
    assert [(o.option, o.count, o.upper) for o in one.options] == [("a", 2, 0), ("b", 0, 0), ("c", 3, 3), ("d", 0, 0)]
    assert set(one.flags) == {"distractor_beats_key", "unchosen_distractor", "negative_discrimination"}
    # items 2 and 3: facility .3, and the key is what the upper group chose
    assert items[2].facility == pytest.approx(0.3) and items[2].flags == ()
    # fewer attempts than min_n: no flags at all
    few = stats.item_analysis(rs, keys, options, min_n=11)
    assert all(s.flags == () for s in few)


def test_item_constant_column_has_no_discrimination() -> None:
    rs = [Response(s, 1, "a", True) for s in STUDENTS] + [Response(s, 2, "a", s < "s3") for s in STUDENTS]
    items = {s.item: s for s in stats.item_analysis(rs, {1: "a", 2: "a"}, {}, min_n=1)}
    assert items[1].facility == 1.0 and items[1].discrimination is None and "too_easy" in items[1].flags


def test_reliability_common_items_and_random_papers() -> None:
    full = {STUDENTS[i]: dict(zip(ITEMS, row, strict=True)) for i, row in enumerate(MATRIX)}
    r = stats.reliability(full)
    assert (r.attempts, r.common_items, r.paper_length, r.paper_attempts) == (5, 4, 4, 5)
    assert r.kr20 == pytest.approx(8 / 39) and r.kr21 == pytest.approx(4 / 39)
    assert r.common_mean == pytest.approx(2.4) and r.common_variance == pytest.approx(1.04)
    # s5 drew a different paper (items 11, 12, 13, 99): the common items are 11 12 13 only.
    # Restricted matrix totals: 3 3 2 2 0 -> mean 2, deviations 1 1 0 0 -2, variance 6/5 = 1.2
    # p: .8 .6 .6 -> sum pq = .16 + .24 + .24 = .64; KR-20 = 3/2 * (1 - .64/1.2) = 3/2 * 7/15 = 0.7
    mixed = dict(full)
    mixed["s5"] = {11: 0, 12: 0, 13: 0, 99: 1}
    r = stats.reliability(mixed)
    assert r.common_items == 3 and r.kr20 == pytest.approx(0.7)
    # every paper still has 4 items: KR-21 on the whole-paper totals 4 3 2 2 1 is unchanged
    assert r.paper_length == 4 and r.kr21 == pytest.approx(4 / 39)
    # no two papers share an item: no KR-20, KR-21 still there
    disjoint = {f"p{i}": {10 * i + j: v for j, v in enumerate(row)} for i, row in enumerate(MATRIX)}
    r = stats.reliability(disjoint)
    assert r.common_items == 0 and r.kr20 is None and r.kr21 == pytest.approx(4 / 39)
    empty = stats.reliability({})
    assert empty.attempts == 0 and empty.kr20 is None and empty.kr21 is None


def test_standing_nta_definition() -> None:
    # scores 4 3 2 2 1 (five candidates):
    #   4: nobody higher -> rank 1; 5 of 5 at or below -> 100
    #   3: one higher -> rank 2; 4 of 5 -> 80
    #   2: two higher -> rank 3 (shared by both 2s); 3 of 5 -> 60
    #   1: four higher -> rank 5 (no rank 4: the tie used it); 1 of 5 -> 20
    scores = [4, 3, 2, 2, 1]
    got = [stats.standing_in(s, scores) for s in scores]
    assert [(g.rank, g.percentile, g.total) for g in got] == [(1, 100.0, 5), (2, 80.0, 5), (3, 60.0, 5), (3, 60.0, 5),
                                                              (5, 20.0, 5)]  # fmt: skip
    assert stats.competition_ranks([9, 7, 7, 7, 3]) == [1, 2, 2, 2, 5]
    assert stats.standing(2, 1).percentile == pytest.approx(33.3333333)  # 100/3 to 7 decimals
    with pytest.raises(ValueError):
        stats.standing(3, 0)


def test_quantiles_summary_and_slope() -> None:
    # sorted 1 2 2 3 4: median at h = 4*.5 = 2 -> 2; p90 at h = 3.6 -> 3 + .6*(4 - 3) = 3.6
    s = stats.summary([4, 3, 2, 2, 1])
    assert (s.count, s.mean, s.median, s.min, s.max) == (5, 2.4, 2, 1, 4) and s.p90 == pytest.approx(3.6)
    assert s.stdev == pytest.approx(math.sqrt(1.04))
    assert stats.quantile([10, 20], 0.5) == 15
    assert stats.summary([]).mean is None
    with pytest.raises(ValueError):
        stats.quantile([1], 1.5)
    # ys 10 12 11 15 at x 0..3: x mean 1.5, y mean 12; dx -1.5 -.5 .5 1.5; dy -2 0 -1 3
    # sum dx*dy = 3 + 0 - .5 + 4.5 = 7; sum dx^2 = 5; slope 1.4
    assert stats.slope([10, 12, 11, 15]) == pytest.approx(1.4)
    assert stats.slope([5]) is None
    assert stats.trend([10, 12, 11, 15]).direction == "improving"
    assert stats.trend([15, 11, 12, 10]).direction == "declining"
    assert stats.trend([50, 50.2, 49.9]).direction == "steady"
    assert stats.trend([50]).direction == "unknown"


@given(st.lists(st.lists(st.integers(0, 1), min_size=3, max_size=3), min_size=2, max_size=30))
def test_kr20_is_alpha_and_at_most_one(rows: list[list[int]]) -> None:
    k = stats.kr20(rows)
    if k is not None:
        assert k <= 1 + 1e-9
        p = [sum(r[j] for r in rows) / len(rows) for j in range(3)]
        var = stats.variance([float(sum(r)) for r in rows]) or 0
        assert k == pytest.approx(3 / 2 * (1 - sum(x * (1 - x) for x in p) / var))


@given(st.lists(st.integers(-20, 80), min_size=1, max_size=40))
def test_standing_properties(scores: list[int]) -> None:
    for s in scores:
        got = stats.standing_in(s, scores)
        assert 1 <= got.rank <= len(scores) and 0 < got.percentile <= 100
        assert (got.rank == 1) == (s == max(scores))
        assert (got.percentile == 100) == (s == max(scores))


def test_strengths_and_weaknesses() -> None:
    tallies = [
        Tally("cells", 20, 18),  # 90%
        Tally("genetics", 20, 8),  # 40%
        Tally("ecology", 10, 7),  # 70%
        Tally("evolution", 12, 3),  # 25%
        Tally("plants", 4, 0),  # too few answers to judge
    ]
    strong, weak = stats.strengths_and_weaknesses(tallies, min_answered=10)
    # four eligible topics -> two each, weakest first
    assert strong == ["cells", "ecology"] and weak == ["evolution", "genetics"]
    assert stats.strengths_and_weaknesses([Tally("cells", 20, 18)], 10) == ([], [])


def test_recommendations() -> None:
    topics = [
        Tally("cells", 20, 18, time_spent_ms=20 * 30_000),
        Tally("genetics", 20, 8, time_spent_ms=20 * 30_000),  # 40%: weak
        Tally("evolution", 12, 3, time_spent_ms=12 * 30_000),  # 25%: weakest
        Tally("plants", 4, 2, skipped=1, time_spent_ms=5 * 30_000),  # 4 answers: thin
    ]
    levels = {"easy": Tally("easy", 30, 27), "medium": Tally("medium", 20, 10)}
    recs = stats.recommend(topics, ["cells", "genetics", "evolution", "plants", "ecology", "animals"], levels,
                           min_answered=10)  # fmt: skip
    assert [(r.kind, r.topic, r.difficulty) for r in recs] == [
        ("practise_weak_topic", "evolution", None),
        ("practise_weak_topic", "genetics", None),
        ("try_new_topic", "animals", None),
        ("try_new_topic", "ecology", None),
        ("build_evidence", "plants", None),
        ("difficulty", None, "medium"),  # easy 90% mastered, medium 50% not
    ]
    assert "25%" in recs[0].reason
    # 61 questions at 30 s each: faster than NEET pace, no pace advice; at 90 s each there is
    slow = [Tally("cells", 20, 18, time_spent_ms=20 * 90_000)]
    assert stats.recommend(slow, [], {}, min_answered=10)[-1].kind == "pace"


def test_suggest_difficulty() -> None:
    assert stats.suggest_difficulty({}, 10)[0] == "easy"
    assert stats.suggest_difficulty({"easy": Tally("easy", 10, 5)}, 10)[0] == "easy"
    mastered = {lvl: Tally(lvl, 10, 8) for lvl in ("easy", "medium", "hard")}
    assert stats.suggest_difficulty(mastered, 10)[0] == "hard"
    assert stats.suggest_difficulty({**mastered, "hard": Tally("hard", 3, 3)}, 10)[0] == "hard"
    assert stats.suggest_difficulty({**mastered, "medium": Tally("medium", 10, 7)}, 10)[0] == "medium"


def test_pearson_and_tally_edges() -> None:
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1], [1]) is None
    with pytest.raises(ValueError):
        stats.pearson([1, 2], [1])
    t = Tally("x", 0, 0, skipped=2, time_spent_ms=100)
    assert t.accuracy is None and t.ms_per_question == 50 and t.wrong == 0
