"""State frames built from encoded question fragments say exactly what the plain views say."""

from __future__ import annotations

import itertools
import tracemalloc
from dataclasses import replace

import orjson

from server import frames, wire
from sessions.model import MarkingScheme
from tests.sessions.factories import bank, fresh, template


def test_a_json_state_frame_of_fragments_decodes_to_the_plain_frame() -> None:
    state = fresh(template(count=20), sid="frames")
    questions = {q.id: q for q in bank()}
    plain = frames.state_frame(state, questions, MarkingScheme(), 1_000, 3)
    fast = frames.state_frame(state, questions, MarkingScheme(), 1_000, 3, json=True)
    assert orjson.loads(wire.encode(fast, False)) == orjson.loads(wire.encode(plain, False))
    assert [q["id"] for q in plain["questions"]] == list(state.paper.question_ids)
    # each question's options in this student's order, texts and ids only (no key)
    for view, (_, order) in zip(plain["questions"], state.paper.in_order(), strict=True):
        assert [o["id"] for o in view["options"]] == list(order)
        assert "correct" not in view and "explanation" not in view


def test_an_edited_question_gets_a_fresh_fragment() -> None:
    q = bank(1)[0]
    order = q.option_ids
    before = orjson.loads(orjson.dumps([frames.question_fragment(q, order)]))[0]
    edited = replace(q, text="Edited?")
    after = orjson.loads(orjson.dumps([frames.question_fragment(edited, order)]))[0]
    assert before["text"] == "Question 1?" and after["text"] == "Edited?"
    reversed_order = tuple(reversed(order))
    again = orjson.loads(orjson.dumps([frames.question_fragment(q, reversed_order)]))[0]
    assert [o["id"] for o in again["options"]] == list(reversed_order)


def test_fragments_hold_about_what_they_encode() -> None:
    """The fragment cache lives as long as the process (one entry per question and option order): each entry must
    cost about its JSON, not orjson's working buffer (~4 KB each, 23 MB for a 240-question bank of 4 options)."""
    questions = [replace(q, id=q.id + 700_000) for q in bank(40)]
    orders = [tuple(p) for p in itertools.permutations("abcd")]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        encoded = sum(len(orjson.dumps(frames.question_view(q, o))) for q in questions for o in orders)
        middle = tracemalloc.get_traced_memory()[0]
        for q in questions:
            for o in orders:
                frames.question_fragment(q, o)
        held = tracemalloc.get_traced_memory()[0] - middle
    finally:
        tracemalloc.stop()
    assert middle - before < 64 * 1024  # the measuring loop itself keeps nothing
    assert held < 2 * encoded, (held, encoded)
