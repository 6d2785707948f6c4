"""Frames the hub sends to a student, built from the pure core's state and effects.

Nothing here may put an answer key into a frame a student receives before the attempt ends: questions
go out as text and options only; `result` frames are built only for finished sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sessions import adaptive, irt
from sessions.anticheat import Level
from sessions.machine import Ack, Effect, Finished, Refused, SessionState, Status, TimeLeft, Warned
from sessions.model import MarkingScheme, Question
from sessions.scoring import Result, score

_WARNING_TEXT = {
    Level.WARN: "Leaving the exam window is recorded. Please stay on this page.",
    Level.FLAG: "Your attempt has been flagged for review by a proctor.",
    Level.SUBMIT: "Too many violations: your attempt has been submitted.",
}


def question_view(q: Question, option_order: tuple[str, ...]) -> dict[str, Any]:
    text = {o.id: o.text for o in q.options}
    return {
        "id": q.id,
        "topic": q.topic,
        "text": q.text,
        "options": [{"id": o, "text": text[o]} for o in option_order],
    }


# Encoded question views for JSON state frames, per question object and option order: every student of an exam
# receives the same questions in one of a few orders (24 for four options), so a state frame is mostly a join of
# fragments encoded once per process (orjson.Fragment). Keyed by the object's identity (the catalog holds one object
# per question version; a stale entry is rebuilt when its id is reused), cleared past a bound.
_FRAGMENTS: dict[int, tuple[Question, dict[tuple[str, ...], orjson.Fragment]]] = {}
MAX_FRAGMENT_QUESTIONS = 50_000


def question_fragment(q: Question, option_order: tuple[str, ...]) -> orjson.Fragment:
    """question_view(q, option_order), encoded as JSON once per process."""
    entry = _FRAGMENTS.get(id(q))
    if entry is None or entry[0] is not q:
        if len(_FRAGMENTS) >= MAX_FRAGMENT_QUESTIONS:
            _FRAGMENTS.clear()
        entry = _FRAGMENTS[id(q)] = (q, {})
    fragment = entry[1].get(option_order)
    if fragment is None:
        # copied to its own size: orjson's output keeps its ~4 KB working buffer (5,760 fragments of a 240-question
        # bank held 23 MB, not 2)
        encoded = bytes(memoryview(orjson.dumps(question_view(q, option_order))))
        fragment = entry[1][option_order] = orjson.Fragment(encoded)
    return fragment


def answers_view(state: SessionState) -> dict[str, Any]:
    return {
        str(q): {"choice": a.choice, "marked": a.marked, "time_ms": a.time_ms, "seq": a.seq}
        for q, a in state.answers.items()
    }


def result_of(state: SessionState, questions: Mapping[int, Question], scheme: MarkingScheme) -> Result:
    return score([questions[q] for q in adaptive.scored_ids(state)], state.choices(), scheme)


def ability_view(state: SessionState) -> dict[str, Any] | None:
    """An adaptive test's ability estimate (EAP), its standard error and the scaled score; None otherwise."""
    if state.adaptive is None:
        return None
    est = irt.estimate(state.adaptive)
    return {"theta": round(est.theta, 4), "se": round(est.se, 4), "scaled": est.scaled, "items": est.scored,
            "pretest_items": est.pretest}  # fmt: skip


def item_frame(state: SessionState, question: Question) -> dict[str, Any]:
    """Adaptive tests: the next item, sent after the acknowledgement of the answer that chose it."""
    return {"type": "item", "number": len(state.paper.question_ids),
            "question": question_view(question, state.paper.option_order[question.id])}  # fmt: skip


def state_frame(
    state: SessionState,
    questions: Mapping[int, Question],
    scheme: MarkingScheme,
    now_ms: int,
    epoch: int,
    json: bool = False,
) -> dict[str, Any]:
    """`json`: the frame goes out as JSON (wire.encode with binary=False), so its questions may be fragments."""
    view = question_fragment if json else question_view
    frame: dict[str, Any] = {
        "type": "state",
        "session": state.id,
        "status": state.status.value,
        "epoch": epoch,
        "server_time_ms": now_ms,
        "deadline_ms": state.deadline_ms if state.status is Status.ACTIVE else None,
        "duration_ms": state.duration_ms,
        "grace_ms": state.grace_ms,
        "time_left_ms": state.time_left_ms(now_ms),
        "last_seq": state.last_seq,
        "marking": {"correct": scheme.correct, "wrong": scheme.wrong, "skipped": scheme.skipped},
        "questions": [view(questions[q], order) for q, order in state.paper.in_order()],
        "answers": answers_view(state),
        "violations": state.violations,
        "flagged": state.flagged,
    }
    if state.adaptive is not None:  # only the items given so far are in `questions`; the last is the current one
        frame["adaptive"] = {"current": state.adaptive.pending}
    if state.status.finished:
        frame["result"] = result_of(state, questions, scheme).to_json()
        frame["reason"] = state.finish_reason.value if state.finish_reason else None
        if state.adaptive is not None:
            frame["ability"] = ability_view(state)
    return frame


def error_frame(code: str, message: str, seq: int | None = None, *, retry: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "seq": seq, "code": code, "message": message}
    if retry:
        frame["retry"] = True
    return frame


def effect_frame(effect: Effect, now_ms: int) -> dict[str, Any] | None:
    """The frame for one effect; Finished is sent by the hub with the result (see finished_frame)."""
    match effect:
        case Ack(seq=seq, duplicate=dup):
            return {"type": "ack", "seq": seq, "duplicate": True} if dup else {"type": "ack", "seq": seq}
        case Refused(seq=seq, code=code, message=message):
            return error_frame(code.value, message, seq)
        case Warned(kind=kind, violations=n, level=level):
            return {
                "type": "warning",
                "kind": kind.value,
                "violations": n,
                "level": level.value,
                "message": _WARNING_TEXT.get(level, ""),
            }
        case TimeLeft(seq=seq, time_left_ms=left):
            return {"type": "time", "seq": seq, "time_left_ms": left, "server_time_ms": now_ms}
        case Finished():
            return None
    return None


def finished_frame(state: SessionState, result: Result) -> dict[str, Any]:
    frame = {
        "type": "finished",
        "status": state.status.value,
        "reason": state.finish_reason.value if state.finish_reason else None,
        "result": result.to_json(),
    }
    if state.adaptive is not None:
        frame["ability"] = ability_view(state)
    return frame
