"""The import parsers and the question shape they validate into: pure, no database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from storage.importers import (
    ImportFormatError,
    QuestionDraft,
    format_for_filename,
    html_to_text,
    parse,
    parse_csv,
    parse_json,
    parse_moodle,
)


def q(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "topic": "genetics", "difficulty": "easy", "text": "Which base pairs with adenine in DNA?",
        "options": [{"id": "a", "text": "Thymine"}, {"id": "b", "text": "Guanine"}], "correct": "a",
    }  # fmt: skip
    return {**base, **over}


# ---- the question shape ----------------------------------------------------------------------------------


def test_a_valid_draft_takes_defaults_and_strips() -> None:
    d = QuestionDraft.model_validate(q(text="  Which base pairs with adenine?  "))
    assert d.text == "Which base pairs with adenine?"
    assert (d.marks, d.explanation, d.subject, d.ref, d.allow_duplicate) == (4, "", "", None, False)


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"correct": "c"}, "'c' is not one of the option ids a, b"),
        ({"options": [{"id": "a", "text": "x"}]}, "at least 2"),
        ({"options": [{"id": c, "text": c} for c in "abcdefg"], "correct": "a"}, "at most 6"),
        ({"options": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "unique"),
        ({"options": [{"id": "A", "text": "x"}, {"id": "b", "text": "y"}]}, "options.0.id"),
        ({"options": [{"id": "a" * 9, "text": "x"}, {"id": "b", "text": "y"}]}, "options.0.id"),
        ({"options": [{"id": "a", "text": " "}, {"id": "b", "text": "y"}]}, "options.0.text"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "???"}, "letter or digit"),
        ({"text": "x" * 2001}, "text"),
        ({"text": "nul \x00 inside"}, "NUL"),
        ({"topic": "Cell Biology"}, "topic"),
        ({"difficulty": "trivial"}, "difficulty"),
        ({"marks": 0}, "marks"),
        ({"marks": 101}, "marks"),
        ({"ref": "has space"}, "ref"),
        ({"explanation": "e" * 4001}, "explanation"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_drafts_are_refused_with_the_field_named(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        QuestionDraft.model_validate(q(**over))
    assert fragment in str(info.value)


def test_format_from_the_file_name() -> None:
    assert format_for_filename("bank.JSON") == "json"
    assert format_for_filename("a.b.csv") == "csv"
    assert format_for_filename("moodle-export.xml") == "moodle"
    assert format_for_filename("notes.txt") is None


def test_whole_file_problems_refuse_the_file() -> None:
    with pytest.raises(ImportFormatError, match="empty"):
        parse("json", b"  \n")
    with pytest.raises(ImportFormatError, match="larger than"):
        parse("csv", b"x" * 2048, max_bytes=1024)
    with pytest.raises(ImportFormatError, match="no questions"):
        parse("json", b"[]")


# ---- JSON ------------------------------------------------------------------------------------------------


def test_json_list_with_good_and_bad_rows() -> None:
    data = json.dumps([q(ref="j-1"), q(correct="z"), "not an object", q(text="Second question?", marks=2)])
    rows = parse_json(data.encode())
    assert [r.row for r in rows] == [1, 2, 3, 4]
    assert rows[0].draft is not None and rows[0].ref == "j-1" and rows[0].error is None
    assert rows[1].draft is None and rows[1].error is not None and "not one of the option ids" in rows[1].error
    assert rows[2].error == "a question must be an object"
    assert rows[3].draft is not None and rows[3].draft.marks == 2


def test_json_questions_wrapper() -> None:
    rows = parse_json(json.dumps({"questions": [q()]}).encode())
    assert len(rows) == 1 and rows[0].draft is not None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b'{"items": []}', "expected a list"),
        (b"42", "expected a list"),
        (b'["\\ud800"]', "not valid JSON"),  # a lone surrogate: PostgreSQL could not store it
        (b"\xff\xfe[]", "not valid JSON"),
    ],
)
def test_json_unreadable(raw: bytes, fragment: str) -> None:
    with pytest.raises(ImportFormatError, match=fragment):
        parse_json(raw)


# ---- CSV -------------------------------------------------------------------------------------------------

GOOD_CSV = (
    "\ufeffref,topic,difficulty,text,option_a,option_b,option_c,option_d,correct,explanation,marks,category\n"
    'c-1,genetics,Easy,"Which base pairs with adenine, in DNA?",Thymine,Guanine,Cytosine,Uracil,A,'
    '"A-T, G-C",4,NCERT-12\n'
    "c-2,genetics,medium,Who proposed the laws of inheritance?,Mendel,Darwin,,,a,,,\n"
    "\n"
    "c-3,genetics,hard,Bad answer key?,One,Two,,,c,,,\n"
    "c-4,genetics,hard,Bad marks?,One,Two,,,a,,four,\n"
    "c-5,genetics,hard,Too many cells?,One,Two,,,a,,,,extra\n"
)


def test_csv_good_and_bad_rows() -> None:
    rows = parse_csv(GOOD_CSV.encode())
    assert [r.row for r in rows] == [1, 2, 3, 4, 5]
    first = rows[0].draft
    assert first is not None
    assert first.ref == "c-1" and first.difficulty == "easy" and first.correct == "a"
    assert [o.id for o in first.options] == ["a", "b", "c", "d"]
    assert first.text == "Which base pairs with adenine, in DNA?" and first.explanation == "A-T, G-C"
    assert first.category == "NCERT-12"
    second = rows[1].draft
    assert second is not None and [o.id for o in second.options] == ["a", "b"] and second.marks == 4
    assert rows[2].error is not None and "not one of the option ids" in rows[2].error
    assert rows[3].error is not None and rows[3].error.startswith("marks")
    assert rows[4].error == "13 cells for 12 columns"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"topic,difficulty,text,option_a,correct\n", "lacks option_b"),
        (b"topic,difficulty,text,option_a,option_b,correct,colour\n", "unknown column"),
        (b"topic,topic,difficulty,text,option_a,option_b,correct\n", "twice"),
        (b"topic,difficulty,text,option_a,option_b,correct\n\xff\n", "not UTF-8"),
    ],
)
def test_csv_bad_header_or_encoding(raw: bytes, fragment: str) -> None:
    with pytest.raises(ImportFormatError, match=fragment):
        parse_csv(raw)


def test_csv_nul_is_a_row_error_not_a_crash() -> None:
    raw = b"topic,difficulty,text,option_a,option_b,correct\ngenetics,easy,Nul\x00here?,x,y,a\n"
    rows = parse_csv(raw)
    assert rows[0].draft is None and rows[0].error is not None and "NUL" in rows[0].error


# ---- Moodle XML ------------------------------------------------------------------------------------------

MOODLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<quiz>
  <question type="category"><category><text>$course$/top/Human Physiology</text></category></question>
  <question type="multichoice">
    <name><text>Heart chambers</text></name>
    <questiontext format="html">
      <text><![CDATA[<p>How many chambers has the <b>human</b> heart?</p>]]></text>
    </questiontext>
    <generalfeedback format="html"><text>Two atria &amp; two ventricles.</text></generalfeedback>
    <single>true</single>
    <answer fraction="100" format="html"><text>Four</text><feedback><text>Right</text></feedback></answer>
    <answer fraction="0" format="html"><text>Three</text></answer>
    <answer fraction="-25" format="html"><text>Two</text></answer>
    <idnumber>m-heart</idnumber>
  </question>
  <question type="truefalse">
    <name><text>TF</text></name>
    <questiontext format="plain_text"><text>The heart has four chambers.</text></questiontext>
    <answer fraction="100"><text>true</text></answer>
    <answer fraction="0"><text>false</text></answer>
  </question>
  <question type="multichoice">
    <name><text>Tagged</text></name>
    <questiontext format="plain_text"><text>Which organ pumps blood?</text></questiontext>
    <single>true</single>
    <answer fraction="0"><text>Lung</text></answer>
    <answer fraction="100.0000000"><text>Heart</text><feedback><text>The heart pumps.</text></feedback></answer>
    <tags><tag><text>hard</text></tag><tag><text>Circulation System</text></tag></tags>
  </question>
  <question type="multichoice">
    <name><text>Partial</text></name>
    <questiontext format="plain_text"><text>Partial credit?</text></questiontext>
    <answer fraction="50"><text>Half</text></answer>
    <answer fraction="100"><text>Full</text></answer>
  </question>
  <question type="multichoice">
    <name><text>Many</text></name>
    <questiontext format="plain_text"><text>Pick all that apply</text></questiontext>
    <single>false</single>
    <answer fraction="100"><text>A</text></answer>
    <answer fraction="0"><text>B</text></answer>
  </question>
  <question type="multichoice">
    <name><text>No key</text></name>
    <questiontext format="plain_text"><text>No correct answer?</text></questiontext>
    <answer fraction="0"><text>A</text></answer>
    <answer fraction="0"><text>B</text></answer>
  </question>
</quiz>
"""


def test_moodle_multichoice_and_refused_rows() -> None:
    rows = parse_moodle(MOODLE)
    assert [r.row for r in rows] == [1, 2, 3, 4, 5, 6]  # the category entry is not a question
    heart = rows[0].draft
    assert heart is not None
    assert heart.text == "How many chambers has the human heart?"
    assert [(o.id, o.text) for o in heart.options] == [("a", "Four"), ("b", "Three"), ("c", "Two")]
    assert heart.correct == "a" and heart.ref == "m-heart"
    assert heart.explanation == "Two atria & two ventricles."
    assert heart.topic == "human-physiology" and heart.difficulty == "medium"
    assert rows[1].draft is None and rows[1].error == "type 'truefalse' is not supported, only multichoice (TF)"
    tagged = rows[2].draft
    assert tagged is not None
    assert tagged.topic == "circulation-system" and tagged.difficulty == "hard" and tagged.correct == "b"
    assert tagged.explanation == "The heart pumps."  # no general feedback: the right answer's feedback
    assert rows[3].error is not None and "partial credit" in rows[3].error
    assert rows[4].error is not None and "multiple-answer" in rows[4].error
    assert rows[5].error is not None and "exactly one answer" in rows[5].error


def test_moodle_without_topic_is_a_row_error() -> None:
    xml = b"""<quiz><question type="multichoice"><name><text>Q</text></name>
      <questiontext format="plain_text"><text>Orphan?</text></questiontext>
      <answer fraction="100"><text>A</text></answer><answer fraction="0"><text>B</text></answer>
    </question></quiz>"""
    rows = parse_moodle(xml)
    assert rows[0].draft is None and rows[0].error is not None and rows[0].error.startswith("no topic")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<quiz><question type="multichoice"><questiontext><text>&lol3;</text></questiontext></question></quiz>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE quiz [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<quiz><question type="multichoice"><questiontext><text>&xxe;</text></questiontext></question></quiz>
"""


@pytest.mark.parametrize("raw", [BILLION_LAUGHS, XXE, b'<!DOCTYPE quiz SYSTEM "http://127.0.0.1:1/x.dtd"><quiz/>'])
def test_moodle_entities_and_dtds_are_refused(raw: bytes) -> None:
    with pytest.raises(ImportFormatError, match="refused"):
        parse_moodle(raw)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"<quiz><question>", "not valid XML"), (b"<html/>", "<quiz> root"), (b"\x00\x01", "not valid XML")],
)
def test_moodle_unreadable(raw: bytes, fragment: str) -> None:
    with pytest.raises(ImportFormatError, match=fragment):
        parse_moodle(raw)


def test_html_to_text() -> None:
    assert html_to_text("<p>a &lt; b</p><p>second&nbsp;line<br>third</p>") == "a < b\nsecond line\nthird"
