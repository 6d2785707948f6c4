"""The exam session as a state machine: `decide(state, command, now_ms) -> Decision`.

Everything that decides *what happens* in an attempt lives here; it takes `now` as an argument and does no
I/O. The hub feeds it validated commands and carries out the Decision: it persists `write` (atomically, in
Redis, where the race-sensitive checks are repeated against Redis' own clock and fencing epoch) and sends
`effects` to the student. Transitions:

    created --open--> active --submit / anti-cheat limit--> submitted
                      active --deadline + grace passed-----> expired
                      active <--pause / resume--> paused     (proctor, issue #4: not built yet)
                      active | paused --terminate----------> terminated  (proctor, issue #4: not built yet)

A command with a sequence number at or below the last accepted one is a duplicate: it changes nothing
and is acknowledged again. A rejected command changes nothing, its sequence number included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from sessions.anticheat import Level, judge
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

    @property
    def status(self) -> Status:
        return {
            FinishReason.STUDENT: Status.SUBMITTED,
            FinishReason.ANTICHEAT: Status.SUBMITTED,
            FinishReason.TIMEOUT: Status.EXPIRED,
            FinishReason.PROCTOR: Status.TERMINATED,
        }[self]


class Refusal(StrEnum):
    """Why a command was refused. The wire carries these codes verbatim (docs/protocol.md)."""

    NOT_ACTIVE = "not_active"
    TOO_LATE = "too_late"
    UNKNOWN_QUESTION = "unknown_question"
    INVALID_CHOICE = "invalid_choice"


# ---- state ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SavedAnswer:
    choice: str | None  # None: cleared
    marked: bool
    time_ms: int
    seq: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class CheatRecord:
    kind: CheatKind
    at_ms: int
    seq: int


_EMPTY: Mapping[int, SavedAnswer] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SessionState:
    id: str
    user_id: str
    template_id: int
    status: Status
    paper: Paper
    duration_ms: int
    grace_ms: int
    policy: AntiCheatPolicy
    deadline_ms: int | None = None  # set when the session opens
    started_ms: int | None = None
    last_seq: int = 0
    answers: Mapping[int, SavedAnswer] = field(default_factory=lambda: _EMPTY)
    cheats: tuple[CheatRecord, ...] = ()
    violations: int = 0
    flagged: bool = False
    finish_reason: FinishReason | None = None
    finished_ms: int | None = None

    def time_left_ms(self, now_ms: int) -> int:
        if self.status is Status.CREATED:
            return self.duration_ms
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


Command = Open | Answer | Report | Heartbeat | Submit | Expire


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


Effect = Ack | Refused | Warned | Finished | TimeLeft


@dataclass(frozen=True, slots=True)
class SaveAnswer:
    seq: int
    question_id: int
    answer: SavedAnswer


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


Write = SaveAnswer | RecordCheat | Finish | Activate


@dataclass(frozen=True, slots=True)
class Decision:
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
    raise TypeError(f"no transition for {type(command).__name__} in state {state.status}")


def _open(state: SessionState, now_ms: int) -> Decision:
    if state.status is Status.CREATED:
        opened = replace(state, status=Status.ACTIVE, started_ms=now_ms, deadline_ms=now_ms + state.duration_ms)
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
    if cmd.choice is not None and cmd.choice not in options:
        return _refuse(
            state, cmd.seq, Refusal.INVALID_CHOICE, f"question {cmd.question_id} has no option {cmd.choice!r}"
        )
    saved = SavedAnswer(cmd.choice, cmd.marked, cmd.time_ms, cmd.seq, now_ms)
    answers = dict(state.answers)
    answers[cmd.question_id] = saved
    new = replace(state, answers=MappingProxyType(answers), last_seq=cmd.seq)
    return Decision(new, (Ack(cmd.seq),), SaveAnswer(cmd.seq, cmd.question_id, saved))


def _report(state: SessionState, cmd: Report, now_ms: int) -> Decision:
    verdict = judge(state.policy, cmd.kind, state.violations, state.flagged)
    record = CheatRecord(cmd.kind, now_ms, cmd.seq)
    new = replace(
        state,
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
    return replace(state, status=reason.status, finish_reason=reason, finished_ms=now_ms)


def _finish(
    state: SessionState, seq: int | None, reason: FinishReason, now_ms: int, before: tuple[Effect, ...]
) -> Decision:
    new = _finished_state(state, reason, now_ms)
    if seq is not None:
        new = replace(new, last_seq=seq)
    return Decision(new, (*before, Finished(reason.status, reason)), Finish(seq, reason))
