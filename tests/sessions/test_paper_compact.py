"""Papers as the hub holds them (one per connected student): compact, sharing their parts, and still a plain
question id -> option order mapping to every caller."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from sessions.model import Option, PaperRule
from sessions.paper import OptionOrders, Paper, draw_paper
from tests.sessions.factories import bank

# ids beyond Python's small-int cache, so that sharing an id object is the paper's doing, not the interpreter's
BANK = [replace(q, id=q.id + 100_000) for q in bank(60)]
RULE = PaperRule(count=30)


def test_json_round_trip_keeps_the_paper() -> None:
    paper = draw_paper(BANK, RULE, "s1")
    again = Paper.from_json(json.loads(json.dumps(paper.to_json())))
    assert again == paper
    assert dict(again.option_order) == dict(paper.option_order)
    assert list(again.in_order()) == [(q, paper.option_order[q]) for q in paper.question_ids]


def test_papers_share_question_ids_and_option_orders() -> None:
    one = Paper.from_json(json.loads(json.dumps(draw_paper(BANK, RULE, "s1").to_json())))
    two = Paper.from_json(json.loads(json.dumps(draw_paper(BANK, RULE, "s2").to_json())))
    for q in set(one.question_ids) & set(two.question_ids):
        a = next(x for x in one.question_ids if x == q)
        b = next(x for x in two.question_ids if x == q)
        assert a is b  # one int object per question id, whatever the number of papers
        if one.option_order[q] == two.option_order[q]:
            assert one.option_order[q] is two.option_order[q]  # one tuple per distinct order


def test_option_orders_is_a_mapping() -> None:
    orders = OptionOrders.of([7, 3, 9], {3: ["b", "a"], 7: ("a", "b"), 9: ("b", "a")})
    assert list(orders) == [7, 3, 9] and len(orders) == 3
    assert orders[3] == ("b", "a") and orders.get(9) == ("b", "a") and orders.get(4) is None
    assert 7 in orders and 4 not in orders
    with pytest.raises(KeyError):
        orders[4]
    assert orders == {7: ("a", "b"), 3: ("b", "a"), 9: ("b", "a")}
    assert dict(orders) == {7: ("a", "b"), 3: ("b", "a"), 9: ("b", "a")}


def test_more_than_256_distinct_orders() -> None:
    many = {q: (f"x{q}", f"y{q}") for q in range(300)}  # each question its own option ids
    orders = OptionOrders.of(range(300), many)
    assert dict(orders) == many
    paper = Paper(orders.ids, orders)
    assert Paper.from_json(paper.to_json()) == paper


def test_shuffled_options_reach_every_order_about_equally_often() -> None:
    """One draw per question picks a permutation's rank: all 24 orders of four options, none favoured."""
    counts: dict[tuple[str, ...], int] = {}
    for i in range(400):
        paper = draw_paper(BANK, RULE, f"seed {i}")
        for order in paper.option_order.values():
            counts[order] = counts.get(order, 0) + 1
    assert set(counts) == {tuple(p) for p in itertools.permutations("abcd")}
    expected = 400 * RULE.count / 24  # 500 per order
    assert all(abs(n - expected) < 0.2 * expected for n in counts.values()), counts


def test_many_options_are_shuffled_too_and_the_draw_is_reproducible() -> None:
    letters = "abcdefghij"  # more options than the ranked draw takes: random.shuffle's path
    wide = [replace(q, options=tuple(Option(o, f"{o} of {q.id}") for o in letters)) for q in BANK]
    paper = draw_paper(wide, RULE, "wide")
    orders = list(paper.option_order.values())
    assert all(sorted(o) == list(letters) for o in orders)
    assert len(set(orders)) > 1
    assert draw_paper(wide, RULE, "wide") == paper
    assert Paper.from_json(json.loads(json.dumps(paper.to_json()))) == paper


def test_the_stored_form_joins_each_order_and_the_earlier_form_is_still_read() -> None:
    """Sessions stored before the joined form keep theirs ({"o": {"<id>": [...]}}) and load as before."""
    paper = draw_paper(BANK, RULE, "s1")
    stored = paper.to_json()
    assert stored["q"] == list(paper.question_ids)
    assert stored["o"] == [" ".join(order) for order in paper.option_order.values()]
    earlier = {"q": list(paper.question_ids), "o": {str(q): list(o) for q, o in paper.option_order.items()}}
    assert Paper.from_json(json.loads(json.dumps(earlier))) == paper
    assert Paper.from_json(json.loads(json.dumps(stored))) == paper
    with pytest.raises(ValueError, match="30 questions with 29 option orders"):
        Paper.from_json({"q": stored["q"], "o": stored["o"][:-1]})


def test_option_ids_with_a_space_keep_the_earlier_form() -> None:
    spaced = [replace(q, options=tuple(Option(f"{o} x", o) for o in "abcd")) for q in BANK]
    paper = draw_paper(spaced, RULE, "s1")
    stored = paper.to_json()
    assert isinstance(stored["o"], dict) and all(len(o) == 4 for o in stored["o"].values())
    assert Paper.from_json(json.loads(json.dumps(stored))) == paper
