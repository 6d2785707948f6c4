"""The exam session as a state machine: `decide(state, command, now_ms) -> Decision`.

Everything that decides *what happens* in an attempt lives here; it takes `now` as an argument and does no
I/O. The hub feeds it validated commands and carries out the Decision: it persists `write` (atomically, in
Redis, where the race-sensitive checks are repeated against Redis' own clock and fencing epoch) and sends
`effects` to the student. Transitions:

    created --open--> active --submit / anti-cheat limit--> submitted
                      active --deadline + grace passed-----> expired
                      active <--pause / resume--> paused     (proctor; the clock stops while paused)
                      active | paused --terminate----------> terminated  (proctor)
                      active | paused --force-submit-------> submitted   (proctor)
A proctor may also extend or shorten the time (active: the deadline moves; paused: the remaining time; created:
the duration) and flag or unflag the attempt.

A command with a sequence number at or below the last accepted one is a duplicate: it changes nothing
and is acknowledged again. A rejected command changes nothing, its sequence number included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from sessions.anticheat import Level, judge
from sessions.irt import AdaptiveState
from sessions.model import AntiCheatPolicy, CheatKind
from sessions.paper import Paper


class Status(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    PAUSED = "paused"
    SUBMITTED = "submitted"
    EXPIRED = "expired"
    TERMINATED = "terminated"

    @property
    def finished(self) -> bool:
        return self in (Status.SUBMITTED, Status.EXPIRED, Status.TERMINATED)


class FinishReason(StrEnum):
    STUDENT = "student"  # the student submitted
    TIMEOUT = "timeout"  # the deadline (plus grace) passed
    ANTICHEAT = "anticheat"  # the template's anti-cheat policy submitted it
    PROCTOR = "proctor"  # a proctor terminated it
    FORCED = "forced"  # a proctor submitted it
    COMPLETED = "completed"  # an adaptive test reached its precision (or its maximum length)

    @property
    def status(self) -> Status:
        return {
            FinishReason.STUDENT: Status.SUBMITTED,
            FinishReason.ANTICHEAT: Status.SUBMITTED,
            FinishReason.TIMEOUT: Status.EXPIRED,
            FinishReason.PROCTOR: Status.TERMINATED,
            FinishReason.FORCED: Status.SUBMITTED,
            FinishReason.COMPLETED: Status.SUBMITTED,
        }[self]


class Refusal(StrEnum):
    """Why a command was refused. The wire carries these codes verbatim (docs/protocol.md)."""

    NOT_ACTIVE = "not_active"
    TOO_LATE = "too_late"
    UNKNOWN_QUESTION = "unknown_question"
    INVALID_CHOICE = "invalid_choice"
    NOT_CURRENT = "not_current"  # adaptive tests: only the item on the screen can be answered


# ---- state ---------------------------------------------------------------------------------------------


class SavedAnswer(NamedTuple):
    choice: str | None  # None: cleared
    marked: bool
    time_ms: int
    seq: int
    at_ms: int

    def encode(self) -> str:
        """The compact text a session keeps (Answers) and Redis stores: "choice|marked|time_ms|seq|at_ms"
        (option ids are letters, digits, _ and -: server/wire.py)."""
        return f"{self.choice or ''}|{int(self.marked)}|{self.time_ms}|{self.seq}|{self.at_ms}"

    @classmethod
    def decode(cls, raw: str) -> SavedAnswer:
        choice, marked, time_ms, seq, at_ms = raw.split("|")
        return cls(choice or None, marked == "1", int(time_ms), int(seq), int(at_ms))


class Answers(Mapping[int, SavedAnswer]):
    """A session's answers by question id (immutable), kept as their compact text: a dict of ints to strings.

    Every answer makes a new state with a new answers dict (the old state must stay as it was: the write may
    fail). Holding SavedAnswer objects, each such dict was tracked by Python's cyclic collector, and every pass
    of its youngest generation walked every session's dict again, all of them new since the last pass: 20-85 ms
    pauses every few seconds in a hub of 2,000 students at 7,000 answers/s (docs/performance.md, "Garbage
    collection"). A dict of ints to strings is never tracked, so the collector skips it whole; a SavedAnswer is
    made when one is read."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[int, str] | None = None) -> None:
        self._raw: dict[int, str] = {} if raw is None else raw

    @classmethod
    def of(cls, answers: Mapping[int, SavedAnswer]) -> Answers:
        if isinstance(answers, Answers):
            return answers
        return cls({q: a.encode() for q, a in answers.items()})

    def with_answer(self, question_id: int, saved: SavedAnswer) -> Answers:
        raw = self._raw.copy()
        raw[question_id] = saved.encode()
        return Answers(raw)

    def __getitem__(self, question_id: int) -> SavedAnswer:
        return SavedAnswer.decode(self._raw[question_id])

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._raw

    def __iter__(self) -> Iterator[int]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Answers):
            return self._raw == other._raw
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Answers({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class CheatRecord:
    kind: CheatKind
    at_ms: int
    seq: int


_EMPTY = Answers()


class SessionState(NamedTuple):
    """One attempt's whole state, immutable: every decision makes a new one (the old must stay as it was, since
    its write may fail). A NamedTuple, not a frozen dataclass: a new state per answer costs ~0.5 us so (see
    _answered) against ~2.5 us for a frozen dataclass of 19 fields, which sets each through object.__setattr__.
    Change a state with `state._replace(...)`."""

    id: str
    user_id: str
    template_id: int
    status: Status
    paper: Paper
    duration_ms: int
    grace_ms: int
    policy: AntiCheatPolicy
    deadline_ms: int | None = None  # set when the session opens
    remaining_ms: int | None = None  # while paused: the time left when the clock stopped
    started_ms: int | None = None
    last_seq: int = 0
    answers: Mapping[int, SavedAnswer] = _EMPTY
    cheats: tuple[CheatRecord, ...] = ()
    violations: int = 0
    flagged: bool = False
    finish_reason: FinishReason | None = None
    finished_ms: int | None = None
    adaptive: AdaptiveState | None = None  # adaptive tests: the ability posterior and the item on the screen

    def time_left_ms(self, now_ms: int) -> int:
        if self.status is Status.CREATED:
            return self.duration_ms
        if self.status is Status.PAUSED:
            return self.remaining_ms or 0
        if self.deadline_ms is None or self.status.finished:
            return 0
        return max(0, self.deadline_ms - now_ms)

    def overdue(self, now_ms: int) -> bool:
        return (
            self.status is Status.ACTIVE and self.deadline_ms is not None and now_ms > self.deadline_ms + self.grace_ms
        )

    def choices(self) -> dict[int, str | None]:
        return {q: a.choice for q, a in self.answers.items()}


# ---- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    """The student's connection opens the exam; the first one starts the clock."""


@dataclass(frozen=True, slots=True)
class Answer:
    seq: int
    question_id: int
    choice: str | None
    marked: bool = False
    time_ms: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    """An anti-cheating signal from the browser (or the server, for a second device)."""

    seq: int
    kind: CheatKind


@dataclass(frozen=True, slots=True)
class Heartbeat:
    seq: int


@dataclass(frozen=True, slots=True)
class Submit:
    seq: int


@dataclass(frozen=True, slots=True)
class Expire:
    """The server's clock: finish the session if its deadline plus grace has passed."""


@dataclass(frozen=True, slots=True)
class Pause:
    """A proctor stops the clock."""


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class Extend:
    """A proctor gives (positive) or takes (negative) time; `credit` marks time given back for disconnects."""

    delta_ms: int
    credit: bool = False


@dataclass(frozen=True, slots=True)
class Terminate:
    """A proctor ends the attempt as terminated."""


@dataclass(frozen=True, slots=True)
class ForceSubmit:
    """A proctor submits the attempt on the student's behalf."""


@dataclass(frozen=True, slots=True)
class SetFlag:
    flagged: bool


ProctorCommand = Pause | Resume | Extend | Terminate | ForceSubmit | SetFlag
Command = Open | Answer | Report | Heartbeat | Submit | Expire | ProctorCommand


# ---- what comes out ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    seq: int | None
    code: Refusal
    message: str


@dataclass(frozen=True, slots=True)
class Warned:
    kind: CheatKind
    violations: int
    level: Level


@dataclass(frozen=True, slots=True)
class Finished:
    status: Status
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class TimeLeft:
    seq: int | None
    time_left_ms: int


@dataclass(frozen=True, slots=True)
class ClockChanged:
    """The student's clock moved (pause, resume, extension): the hub pushes the new time."""

    status: Status
    time_left_ms: int
    deadline_ms: int | None


@dataclass(frozen=True, slots=True)
class FlagChanged:
    flagged: bool


@dataclass(frozen=True, slots=True)
class NextItem:
    """Adaptive tests: the item to show next (the paper has just grown by it)."""

    question_id: int


Effect = Ack | Refused | Warned | Finished | TimeLeft | ClockChanged | FlagChanged | NextItem


@dataclass(frozen=True, slots=True)
class AdaptiveStep:
    """What an answer in an adaptive test changes besides the answer, persisted in the same atomic write:
    the new posterior and pending item, the paper grown by that item, and the end of the test when it stops."""

    adaptive: AdaptiveState
    paper: Paper
    finish: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class SaveAnswer:
    seq: int
    question_id: int
    answer: SavedAnswer
    step: AdaptiveStep | None = None  # adaptive tests only (sessions/adaptive.py fills it in)


@dataclass(frozen=True, slots=True)
class RecordCheat:
    seq: int
    record: CheatRecord
    flag: bool
    finish: FinishReason | None


@dataclass(frozen=True, slots=True)
class Finish:
    seq: int | None
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class Activate:
    pass


@dataclass(frozen=True, slots=True)
class Control:
    """A proctor's change, persisted by control.lua (no connection epoch: a proctor acts from anywhere)."""

    op: str  # pause | resume | extend | credit | flag
    delta_ms: int = 0
    flagged: bool = False


Write = SaveAnswer | RecordCheat | Finish | Activate | Control


class Decision(NamedTuple):  # one per message: a tuple is ~2x cheaper to make than a frozen dataclass
    state: SessionState
    effects: tuple[Effect, ...] = ()
    write: Write | None = None


# ---- the rules -----------------------------------------------------------------------------------------


def decide(state: SessionState, command: Command, now_ms: int) -> Decision:
    match command:
        case Open():
            return _open(state, now_ms)
        case Expire():
            if state.overdue(now_ms):
                return _finish(state, None, FinishReason.TIMEOUT, now_ms, ())
            return Decision(state)
        case Heartbeat(seq=seq):
            if state.overdue(now_ms):
                return _finish(state, None, FinishReason.TIMEOUT, now_ms, (TimeLeft(seq, 0),))
            return Decision(state, (TimeLeft(seq, state.time_left_ms(now_ms)),))
        case Answer() | Report() | Submit():
            return _sequenced(state, command, now_ms)
        case Pause() | Resume() | Extend() | Terminate() | ForceSubmit() | SetFlag():
            return _proctor(state, command, now_ms)
    raise TypeError(f"no transition for {type(command).__name__} in state {state.status}")


def _open(state: SessionState, now_ms: int) -> Decision:
    if state.status is Status.CREATED:
        opened = state._replace(status=Status.ACTIVE, started_ms=now_ms, deadline_ms=now_ms + state.duration_ms)
        return Decision(opened, (), Activate())
    if state.overdue(now_ms):
        return _finish(state, None, FinishReason.TIMEOUT, now_ms, ())
    return Decision(state)


def _sequenced(state: SessionState, command: Answer | Report | Submit, now_ms: int) -> Decision:
    seq = command.seq
    if seq <= state.last_seq:
        return Decision(state, (Ack(seq, duplicate=True),))
    if state.status is not Status.ACTIVE:
        return _refuse(state, seq, Refusal.NOT_ACTIVE, f"the session is {state.status.value}")
    if state.overdue(now_ms):
        late = Refused(seq, Refusal.TOO_LATE, "the time for this exam is over")
        return _finish(state, None, FinishReason.TIMEOUT, now_ms, (late,))

    match command:
        case Answer():
            return _answer(state, command, now_ms)
        case Report():
            return _report(state, command, now_ms)
        case Submit():
            return _finish(state, seq, FinishReason.STUDENT, now_ms, (Ack(seq),))


def _answer(state: SessionState, cmd: Answer, now_ms: int) -> Decision:
    options = state.paper.option_order.get(cmd.question_id)
    if options is None:
        return _refuse(state, cmd.seq, Refusal.UNKNOWN_QUESTION, f"question {cmd.question_id} is not in this paper")
    if state.adaptive is not None:
        # An adaptive test moves on with each answer: earlier items are closed, and a skip would let a student
        # steer around hard items, so the current item takes exactly one answer.
        if cmd.question_id != state.adaptive.pending:
            return _refuse(state, cmd.seq, Refusal.NOT_CURRENT,
                           f"question {cmd.question_id} is not the current item of this adaptive test")  # fmt: skip
        if cmd.choice is None:
            return _refuse(state, cmd.seq, Refusal.INVALID_CHOICE, "an adaptive test needs an answer to its item")
    if cmd.choice is not None and cmd.choice not in options:
        return _refuse(
            state, cmd.seq, Refusal.INVALID_CHOICE, f"question {cmd.question_id} has no option {cmd.choice!r}"
        )
    saved = SavedAnswer(cmd.choice, cmd.marked, cmd.time_ms, cmd.seq, now_ms)
    return Decision(
        _answered(state, cmd.question_id, saved), (Ack(cmd.seq),), SaveAnswer(cmd.seq, cmd.question_id, saved)
    )


def _answered(s: SessionState, question_id: int, saved: SavedAnswer) -> SessionState:
    """`s` with one more answer and its sequence number. The answer path, so built as a tuple from `s`'s own
    fields around the two that change (~0.5 us; `_replace` ~1.1 us): every other field comes through as it was,
    whatever is added later (tests/sessions/test_machine.py, test_an_answer_carries_every_other_field)."""
    answers = Answers.of(s.answers).with_answer(question_id, saved)
    return SessionState._make((*s[:_LAST_SEQ], saved.seq, answers, *s[_ANSWERS + 1 :]))


_LAST_SEQ, _ANSWERS = SessionState._fields.index("last_seq"), SessionState._fields.index("answers")
if _ANSWERS != _LAST_SEQ + 1:  # (not an assert: python -O would drop it, and _answered would mix up fields)
    raise TypeError("SessionState: _answered replaces last_seq and answers as one run of fields; keep them adjacent")


def _report(state: SessionState, cmd: Report, now_ms: int) -> Decision:
    verdict = judge(state.policy, cmd.kind, state.violations, state.flagged)
    record = CheatRecord(cmd.kind, now_ms, cmd.seq)
    new = state._replace(
        cheats=(*state.cheats, record),
        violations=verdict.violations,
        flagged=state.flagged or verdict.flag,
        last_seq=cmd.seq,
    )
    effects: list[Effect] = [Ack(cmd.seq)]
    if verdict.level is not Level.NONE:
        effects.append(Warned(cmd.kind, verdict.violations, verdict.level))
    finish = None
    if verdict.level is Level.SUBMIT:
        finish = FinishReason.ANTICHEAT
        new = _finished_state(new, finish, now_ms)
        effects.append(Finished(finish.status, finish))
    return Decision(new, tuple(effects), RecordCheat(cmd.seq, record, verdict.flag, finish))


def _refuse(state: SessionState, seq: int, code: Refusal, message: str) -> Decision:
    return Decision(state, (Refused(seq, code, message),))


def _finished_state(state: SessionState, reason: FinishReason, now_ms: int) -> SessionState:
    return state._replace(status=reason.status, finish_reason=reason, finished_ms=now_ms)


def _finish(
    state: SessionState, seq: int | None, reason: FinishReason, now_ms: int, before: tuple[Effect, ...]
) -> Decision:
    new = _finished_state(state, reason, now_ms)
    if seq is not None:
        new = new._replace(last_seq=seq)
    return Decision(new, (*before, Finished(reason.status, reason)), Finish(seq, reason))


# ---- proctor actions -----------------------------------------------------------------------------------

_REFUSED_WHEN_FINISHED = "the attempt has already ended"


def _proctor(state: SessionState, command: ProctorCommand, now_ms: int) -> Decision:
    if state.status.finished:
        return _refuse_unsequenced(state, Refusal.NOT_ACTIVE, _REFUSED_WHEN_FINISHED)
    if state.overdue(now_ms):  # the clock ran out before the proctor acted: the session simply expires
        late = Refused(None, Refusal.TOO_LATE, "the time for this exam is over")
        return _finish(state, None, FinishReason.TIMEOUT, now_ms, (late,))
    match command:
        case Pause():
            if state.status is not Status.ACTIVE or state.deadline_ms is None:
                return _refuse_unsequenced(
                    state, Refusal.NOT_ACTIVE, f"only an active session can be paused, not {state.status.value}"
                )
            left = max(0, state.deadline_ms - now_ms)
            paused = state._replace(status=Status.PAUSED, remaining_ms=left)
            return Decision(paused, (ClockChanged(Status.PAUSED, left, None),), Control("pause"))
        case Resume():
            if state.status is not Status.PAUSED:
                return _refuse_unsequenced(
                    state, Refusal.NOT_ACTIVE, f"only a paused session can be resumed, not {state.status.value}"
                )
            left = state.remaining_ms or 0
            resumed = state._replace(status=Status.ACTIVE, deadline_ms=now_ms + left, remaining_ms=None)
            return Decision(resumed, (ClockChanged(Status.ACTIVE, left, now_ms + left),), Control("resume"))
        case Extend(delta_ms=delta, credit=credit):
            return _extend(state, delta, now_ms, credit)
        case Terminate():
            return _finish(state, None, FinishReason.PROCTOR, now_ms, ())
        case ForceSubmit():
            if state.status is Status.CREATED:
                return _refuse_unsequenced(
                    state, Refusal.NOT_ACTIVE, "a session that never started cannot be submitted; terminate it"
                )
            return _finish(state, None, FinishReason.FORCED, now_ms, ())
        case SetFlag(flagged=flag):
            return Decision(state._replace(flagged=flag), (FlagChanged(flag),), Control("flag", flagged=flag))


def _extend(state: SessionState, delta: int, now_ms: int, credit: bool = False) -> Decision:
    match state.status:
        case Status.CREATED:
            new = state._replace(duration_ms=max(1000, state.duration_ms + delta))
            effect = ClockChanged(Status.CREATED, new.duration_ms, None)
        case Status.PAUSED:
            new = state._replace(remaining_ms=max(0, (state.remaining_ms or 0) + delta))
            effect = ClockChanged(Status.PAUSED, new.remaining_ms or 0, None)
        case _:
            assert state.deadline_ms is not None
            deadline = max(now_ms, state.deadline_ms + delta)  # shortening never reaches into the past
            new = state._replace(deadline_ms=deadline)
            effect = ClockChanged(Status.ACTIVE, deadline - now_ms, deadline)
    return Decision(new, (effect,), Control("credit" if credit else "extend", delta_ms=delta))


def _refuse_unsequenced(state: SessionState, code: Refusal, message: str) -> Decision:
    return Decision(state, (Refused(None, code, message),))
