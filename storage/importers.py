"""What a question must look like to enter the store, and the parsers that turn uploaded files into it.

Pure: every function takes the bytes it is given and returns values; nothing here touches a database, a
file or the network. The REST endpoints (server/routes/questions.py, banks.py) and `examhub import`
(server/commands/importer.py) validate through the same `QuestionDraft` and the same parsers.

Formats (row N is always the N-th question in the file, counted from 1):

- json: a list of question objects, or {"questions": [...]}; each object has the REST create body's shape
  (`QuestionDraft`).
- csv: UTF-8 (a BOM is allowed), comma-separated, one header line naming the columns, in any order:
  `ref,topic,difficulty,text,option_a,...,option_f,correct,explanation,marks,category,curriculum,grade,subject`.
  topic, difficulty, text, option_a, option_b and correct are required; empty cells take the defaults;
  option ids are the letters a-f of the columns used; `correct` is one of those letters.
- moodle: Moodle XML (<quiz><question type="multichoice">...). questiontext -> text, answers -> options
  a, b, c... (exactly one with fraction 100 is the correct one; partial credit and multiple-answer questions
  are refused per row), generalfeedback (else the correct answer's feedback) -> explanation, idnumber ->
  ref, a tag easy/medium/hard (or difficulty:X) -> difficulty (default medium), a tag topic:X or else the
  first other tag, else the last segment of the current <question type="category"> -> topic (made a slug).
  HTML is reduced to its text. Other question types are refused per row. DTDs (and so every entity trick:
  XXE, billion laughs) refuse the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Annotated, Any, Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as safe_xml  # type: ignore[import-untyped]
import pydantic_core
from defusedxml import DefusedXmlException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from sessions.model import Difficulty

MAX_IMPORT_BYTES = 8 * 1024 * 1024
Format = Literal["json", "csv", "moodle"]
FORMATS: tuple[Format, ...] = ("json", "csv", "moodle")
_EXTENSIONS: dict[str, Format] = {".json": "json", ".csv": "csv", ".xml": "moodle"}


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL; the JSON edge refuses it, but CSV and XML uploads reach here raw.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _has_word(value: str) -> str:
    if not any(ch.isalnum() for ch in value):
        raise ValueError("needs at least one letter or digit")
    return value


_Stripped = StringConstraints(strip_whitespace=True)
Text = Annotated[
    str, _Stripped, Field(min_length=1, max_length=2000), AfterValidator(_clean), AfterValidator(_has_word)
]
OptionText = Annotated[str, _Stripped, Field(min_length=1, max_length=500), AfterValidator(_clean)]
Explanation = Annotated[str, _Stripped, Field(max_length=4000), AfterValidator(_clean)]
Label = Annotated[str, _Stripped, Field(max_length=60), AfterValidator(_clean)]
Topic = Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[a-z0-9][a-z0-9-]*$")]
OptionId = Annotated[str, Field(pattern=r"^[a-z0-9]{1,8}$")]
Ref = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s\x00]+$")]


class OptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: OptionId
    text: OptionText


class QuestionFields(BaseModel):
    """A question's content: what an edit may change."""

    model_config = ConfigDict(extra="forbid")

    topic: Topic
    difficulty: Difficulty
    text: Text
    options: Annotated[list[OptionIn], Field(min_length=2, max_length=6)]
    correct: OptionId
    explanation: Explanation = ""
    marks: Annotated[int, Field(ge=1, le=100)] = 4
    category: Label = ""
    curriculum: Label = ""
    grade: Label = ""
    subject: Label = ""

    @model_validator(mode="after")
    def _correct_is_an_option(self) -> QuestionFields:
        ids = [o.id for o in self.options]
        if len(set(ids)) != len(ids):
            raise ValueError("options: option ids must be unique")
        if self.correct not in ids:
            raise ValueError(f"correct: {self.correct!r} is not one of the option ids {', '.join(ids)}")
        return self


class QuestionDraft(QuestionFields):
    """A new question: the REST create body, and one item of a JSON import."""

    ref: Ref | None = None  # an external id; an import skips a row whose ref is already stored
    allow_duplicate: bool = False  # store it even when an active question has the same normalized text


def first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


# ---- parsing -------------------------------------------------------------------------------------------


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (not UTF-8, not JSON/CSV/XML, wrong header or root, a DTD)."""


@dataclass(frozen=True, slots=True)
class ParsedRow:
    row: int
    draft: QuestionDraft | None  # None: the row is refused, see error
    error: str | None = None
    ref: str | None = None


def format_for_filename(name: str) -> Format | None:
    lowered = name.lower()
    return next((fmt for ext, fmt in _EXTENSIONS.items() if lowered.endswith(ext)), None)


def parse(fmt: Format, data: bytes, max_bytes: int | None = MAX_IMPORT_BYTES) -> list[ParsedRow]:
    """Every question row of the file, each validated or carrying its error. Raises ImportFormatError."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ImportFormatError(f"the file is larger than {max_bytes // (1024 * 1024)} MiB")
    if not data.strip():
        raise ImportFormatError("the file is empty")
    rows = {"json": parse_json, "csv": parse_csv, "moodle": parse_moodle}[fmt](data)
    if not rows:
        raise ImportFormatError("the file has no questions")
    return rows


def _validated(row: int, data: Any) -> ParsedRow:
    if not isinstance(data, dict):
        return ParsedRow(row, None, "a question must be an object")
    ref = data.get("ref") if isinstance(data.get("ref"), str) else None
    try:
        return ParsedRow(row, QuestionDraft.model_validate(data), None, ref)
    except ValidationError as exc:
        return ParsedRow(row, None, first_error(exc), ref)


def parse_json(data: bytes) -> list[ParsedRow]:
    try:
        doc = pydantic_core.from_json(data)  # strict UTF-8, no lone surrogates (PostgreSQL would refuse them)
    except ValueError as exc:
        raise ImportFormatError(f"not valid JSON: {exc}") from None
    if isinstance(doc, dict) and set(doc) == {"questions"}:
        doc = doc["questions"]
    if not isinstance(doc, list):
        raise ImportFormatError('expected a list of questions or {"questions": [...]}')
    return [_validated(i, item) for i, item in enumerate(doc, start=1)]


CSV_OPTION_COLUMNS = tuple(f"option_{c}" for c in "abcdef")
CSV_COLUMNS = ("ref", "topic", "difficulty", "text", *CSV_OPTION_COLUMNS, "correct", "explanation", "marks",
               "category", "curriculum", "grade", "subject")  # fmt: skip
CSV_REQUIRED = ("topic", "difficulty", "text", "option_a", "option_b", "correct")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"not UTF-8 text (byte {exc.start})") from None


def parse_csv(data: bytes) -> list[ParsedRow]:
    reader = csv.reader(io.StringIO(_decode(data), newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if unknown:
            raise ImportFormatError(f"unknown column(s) {', '.join(unknown)}; the columns are {','.join(CSV_COLUMNS)}")
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise ImportFormatError(f"the header lacks {', '.join(missing)}; the columns are {','.join(CSV_COLUMNS)}")
        if len(set(header)) != len(header):
            raise ImportFormatError("a column appears twice in the header")
        rows: list[ParsedRow] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            n = len(rows) + 1
            if len(cells) != len(header):
                rows.append(ParsedRow(n, None, f"{len(cells)} cells for {len(header)} columns"))
                continue
            rows.append(_csv_row(n, dict(zip(header, cells, strict=True))))
    except csv.Error as exc:
        raise ImportFormatError(f"not valid CSV: {exc}") from None
    return rows


def _csv_row(n: int, cells: dict[str, str]) -> ParsedRow:
    item: dict[str, Any] = {k: v for k, v in cells.items() if v.strip() and k not in CSV_OPTION_COLUMNS}
    item["options"] = [{"id": col[-1], "text": cells[col]} for col in CSV_OPTION_COLUMNS if cells.get(col, "").strip()]
    if "correct" in item:
        item["correct"] = item["correct"].strip().lower()
    if "difficulty" in item:
        item["difficulty"] = item["difficulty"].strip().lower()
    return _validated(n, item)


class _HtmlText(HTMLParser):
    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _text_of(el: Element | None) -> str:
    """The text of a Moodle <x format=...><text>...</text></x> element, HTML reduced to text."""
    if el is None:
        return ""
    node = el.find("text")
    raw = (node.text if node is not None else el.text) or ""
    if el.get("format", "html") == "html":
        return html_to_text(raw)
    return raw.strip()


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:60].strip("-")


def _tags(q: Element) -> list[str]:
    return [t.strip() for t in (tag.findtext("text") or "" for tag in q.iterfind("tags/tag")) if t.strip()]


def _difficulty_and_topic(tags: Iterable[str], category: str) -> tuple[str, str]:
    difficulty, topic, first_other = "medium", "", ""
    levels = {d.value for d in Difficulty}
    for tag in tags:
        low = tag.lower()
        key, sep, value = low.partition(":")
        if low in levels or (sep and key == "difficulty"):
            difficulty = value.strip() if sep else low
        elif sep and key == "topic":
            topic = slug(value)
        elif not first_other:
            first_other = slug(tag)
    return difficulty, topic or first_other or category


def parse_moodle(data: bytes) -> list[ParsedRow]:
    try:
        root = safe_xml.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ImportFormatError(f"refused: the XML declares a DTD or entities ({type(exc).__name__})") from None
    except (ParseError, ValueError) as exc:
        raise ImportFormatError(f"not valid XML: {exc}") from None
    if root.tag != "quiz":
        raise ImportFormatError(f"expected a Moodle XML <quiz> root, found <{root.tag}>")
    rows: list[ParsedRow] = []
    category = ""
    for q in root.iterfind("question"):
        kind = q.get("type", "")
        if kind == "category":  # a directive for the questions after it, not a question
            path = q.findtext("category/text") or ""
            last = path.rstrip("/").rsplit("/", 1)[-1]
            category = "" if last in ("top", "$course$", "$system$", "$module$") else slug(last)
            continue
        rows.append(_moodle_row(len(rows) + 1, q, kind, category))
    return rows


def _moodle_row(n: int, q: Element, kind: str, category: str) -> ParsedRow:
    name = (q.findtext("name/text") or "").strip()
    ref = (q.findtext("idnumber") or "").strip() or None
    where = f" ({name})" if name else ""
    if kind != "multichoice":
        return ParsedRow(n, None, f"type {kind!r} is not supported, only multichoice{where}", ref)
    if (q.findtext("single") or "true").strip().lower() not in ("true", "1"):
        return ParsedRow(n, None, f"multiple-answer questions are not supported{where}", ref)
    options, correct, feedback = [], [], ""
    for i, answer in enumerate(q.iterfind("answer")):
        oid = "abcdefghijklmnopqrstuvwxyz"[i] if i < 26 else f"o{i}"
        try:
            fraction = float(answer.get("fraction", "0"))
        except ValueError:
            return ParsedRow(n, None, f"answer {i + 1}: fraction is not a number{where}", ref)
        if 0 < fraction < 100:
            return ParsedRow(n, None, f"answer {i + 1}: partial credit ({fraction:g}%) is not supported{where}", ref)
        if fraction >= 100:
            correct.append(oid)
            feedback = _text_of(answer.find("feedback"))
        options.append({"id": oid, "text": _text_of(answer)})
    if len(correct) != 1:
        return ParsedRow(n, None, f"needs exactly one answer with fraction 100, found {len(correct)}{where}", ref)
    difficulty, topic = _difficulty_and_topic(_tags(q), category)
    if not topic:
        return ParsedRow(n, None, f"no topic: give the question a tag or put it in a category{where}", ref)
    item: dict[str, Any] = {
        "topic": topic, "difficulty": difficulty, "text": _text_of(q.find("questiontext")), "options": options,
        "correct": correct[0], "explanation": _text_of(q.find("generalfeedback")) or feedback,
    }  # fmt: skip
    if ref is not None:
        item["ref"] = ref
    parsed = _validated(n, item)
    if parsed.error is not None and where:
        return ParsedRow(n, None, parsed.error + where, ref)
    return parsed
