from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessions.anticheat import Level
from sessions.machine import (
    Ack,
    Activate,
    Answer,
    Expire,
    Finish,
    Finished,
    FinishReason,
    Heartbeat,
    Open,
    RecordCheat,
    Refusal,
    Refused,
    Report,
    SaveAnswer,
    SessionState,
    Status,
    Submit,
    TimeLeft,
    Warned,
    decide,
)
from sessions.model import AntiCheatPolicy, CheatKind, MarkingScheme
from sessions.scoring import score
from tests.sessions.factories import bank, fresh, template

T0 = 1_700_000_000_000


def opened(state: SessionState | None = None, now: int = T0) -> SessionState:
    d = decide(state or fresh(), Open(), now)
    assert isinstance(d.write, Activate)
    return d.state


def test_open_starts_the_clock_once() -> None:
    s = opened()
    assert s.status is Status.ACTIVE
    assert s.deadline_ms == T0 + 600_000
    again = decide(s, Open(), T0 + 1000)
    assert again.state is s and again.write is None


def test_answer_is_saved_acked_and_written() -> None:
    s = opened()
    q = s.paper.question_ids[0]
    choice = s.paper.option_order[q][2]
    d = decide(s, Answer(1, q, choice, marked=True, time_ms=1200), T0 + 10)
    assert d.effects == (Ack(1),)
    assert isinstance(d.write, SaveAnswer)
    assert d.state.answers[q].choice == choice and d.state.answers[q].marked
    assert d.state.last_seq == 1


def test_clearing_an_answer() -> None:
    s = opened()
    q = s.paper.question_ids[0]
    s = decide(s, Answer(1, q, "a"), T0).state
    d = decide(s, Answer(2, q, None), T0)
    assert d.state.answers[q].choice is None
    assert score([], {}, MarkingScheme()).score == 0


def test_duplicate_is_acked_again_and_changes_nothing() -> None:
    s = opened()
    q = s.paper.question_ids[0]
    s1 = decide(s, Answer(1, q, "a"), T0).state
    d = decide(s1, Answer(1, q, "b"), T0)
    assert d.effects == (Ack(1, duplicate=True),)
    assert d.state is s1 and d.write is None


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (Answer(1, 999_999, "a"), Refusal.UNKNOWN_QUESTION),
        (lambda q: Answer(1, q, "z"), Refusal.INVALID_CHOICE),
    ],
)
def test_bad_answers_are_refused_without_change(cmd: object, code: Refusal) -> None:
    s = opened()
    command = cmd(s.paper.question_ids[0]) if callable(cmd) else cmd
    d = decide(s, command, T0)  # type: ignore[arg-type]
    assert d.state is s and d.write is None
    assert isinstance(d.effects[0], Refused) and d.effects[0].code is code


def test_answer_before_open_and_after_submit_is_refused() -> None:
    s = fresh()
    d = decide(s, Answer(1, s.paper.question_ids[0], "a"), T0)
    assert d.effects[0].code is Refusal.NOT_ACTIVE  # type: ignore[union-attr]
    done = decide(opened(), Submit(1), T0).state
    assert done.status is Status.SUBMITTED
    d = decide(done, Answer(2, done.paper.question_ids[0], "a"), T0)
    assert d.state is done and d.effects[0].code is Refusal.NOT_ACTIVE  # type: ignore[union-attr]


def test_grace_then_too_late_expires() -> None:
    s = opened()
    q = s.paper.question_ids[0]
    deadline = s.deadline_ms
    assert deadline is not None
    within = decide(s, Answer(1, q, "a"), deadline + s.grace_ms)
    assert within.effects == (Ack(1),)
    late = decide(s, Answer(1, q, "a"), deadline + s.grace_ms + 1)
    assert isinstance(late.effects[0], Refused) and late.effects[0].code is Refusal.TOO_LATE
    assert late.effects[1] == Finished(Status.EXPIRED, FinishReason.TIMEOUT)
    assert late.state.status is Status.EXPIRED and q not in late.state.answers
    assert late.write == Finish(None, FinishReason.TIMEOUT)


def test_expire_only_when_overdue() -> None:
    s = opened()
    assert s.deadline_ms is not None
    assert decide(s, Expire(), s.deadline_ms).write is None
    d = decide(s, Expire(), s.deadline_ms + s.grace_ms + 1)
    assert d.state.status is Status.EXPIRED and d.write == Finish(None, FinishReason.TIMEOUT)


def test_heartbeat_reports_time_left() -> None:
    s = opened()
    d = decide(s, Heartbeat(5), T0 + 1000)
    assert d.effects == (TimeLeft(5, 599_000),) and d.write is None and d.state is s


def test_anticheat_escalates_warn_flag_submit() -> None:
    s = opened(fresh(template(policy=AntiCheatPolicy(warn_at=1, flag_at=2, submit_at=3))))
    d1 = decide(s, Report(1, CheatKind.TAB_HIDDEN), T0)
    assert Warned(CheatKind.TAB_HIDDEN, 1, Level.WARN) in d1.effects
    d_back = decide(d1.state, Report(2, CheatKind.TAB_VISIBLE), T0)
    assert d_back.effects == (Ack(2),) and d_back.state.violations == 1  # a return is not a violation
    d2 = decide(d_back.state, Report(3, CheatKind.COPY), T0)
    assert d2.state.flagged and isinstance(d2.write, RecordCheat) and d2.write.flag
    d3 = decide(d2.state, Report(4, CheatKind.BLUR), T0)
    assert d3.state.status is Status.SUBMITTED and d3.state.finish_reason is FinishReason.ANTICHEAT
    assert isinstance(d3.write, RecordCheat) and d3.write.finish is FinishReason.ANTICHEAT
    assert Finished(Status.SUBMITTED, FinishReason.ANTICHEAT) in d3.effects
    assert len(d3.state.cheats) == 4


def test_policy_switched_off_only_records() -> None:
    s = opened(fresh(template(policy=AntiCheatPolicy(None, None, None))))
    for i in range(1, 20):
        s = decide(s, Report(i, CheatKind.PASTE), T0).state
    assert s.status is Status.ACTIVE and s.violations == 19 and not s.flagged


# ---- properties ----------------------------------------------------------------------------------------

QIDS = st.integers(min_value=1, max_value=35)  # includes ids outside every paper (bank ids go to 30)
CHOICES = st.sampled_from(["a", "b", "c", "d", "e", None])


@st.composite
def commands(draw: st.DrawFn) -> list[object]:
    n = draw(st.integers(0, 40))
    out: list[object] = []
    seq = 0
    for _ in range(n):
        seq += draw(st.integers(0, 2))  # repeats and gaps
        kind = draw(st.sampled_from(["answer", "answer", "answer", "event", "submit", "heartbeat"]))
        if kind == "answer":
            out.append(Answer(max(seq, 1), draw(QIDS), draw(CHOICES), draw(st.booleans()), draw(st.integers(0, 10**6))))
        elif kind == "event":
            out.append(Report(max(seq, 1), draw(st.sampled_from(list(CheatKind)))))
        elif kind == "submit":
            out.append(Submit(max(seq, 1)))
        else:
            out.append(Heartbeat(max(seq, 1)))
    return out


def run(state: SessionState, cmds: list[object], times: list[int]) -> SessionState:
    for c, t in zip(cmds, times, strict=False):
        state = decide(state, c, t).state  # type: ignore[arg-type]
    return state


@settings(max_examples=200, deadline=None)
@given(cmds=commands(), offsets=st.lists(st.integers(0, 700_000), min_size=40, max_size=40))
def test_replaying_a_sequence_twice_gives_the_same_state(cmds: list[object], offsets: list[int]) -> None:
    times = sorted(T0 + o for o in offsets)
    once = run(opened(), cmds, times)
    twice = run(once, cmds, times)  # the same messages at the same moments, sent again
    assert twice == once


@settings(max_examples=200, deadline=None)
@given(cmds=commands(), offsets=st.lists(st.integers(0, 700_000), min_size=40, max_size=40))
def test_nothing_is_accepted_after_deadline_plus_grace(cmds: list[object], offsets: list[int]) -> None:
    state = opened()
    assert state.deadline_ms is not None
    limit = state.deadline_ms + state.grace_ms
    for c, o in zip(cmds, sorted(offsets), strict=False):
        before = state
        d = decide(state, c, T0 + o)  # type: ignore[arg-type]
        if T0 + o > limit:
            accepted = [e for e in d.effects if isinstance(e, Ack) and not e.duplicate]
            assert not accepted
            assert d.state.answers == before.answers and d.state.cheats == before.cheats
        state = d.state


@settings(max_examples=300, deadline=None)
@given(cmds=commands(), wrong=st.integers(-4, 0), right=st.integers(1, 5))
def test_score_stays_within_bounds(cmds: list[object], wrong: int, right: int) -> None:
    scheme = MarkingScheme(correct=right, wrong=wrong, skipped=0)
    state = run(opened(), cmds, [T0] * len(cmds))
    questions = {q.id: q for q in bank()}
    result = score([questions[q] for q in state.paper.question_ids], state.choices(), scheme)
    assert result.min_score <= result.score <= result.max_score
    assert result.correct + result.wrong + result.skipped == len(state.paper.question_ids)
    assert sum(t.score for t in result.topics.values()) == result.score


def test_an_answer_carries_every_other_field() -> None:
    """The answer path builds its new state field by field (machine._answered, for speed): every other field of
    SessionState, whatever is added later, must come through unchanged."""
    from sessions.machine import SavedAnswer, SessionState, _answered

    marks = {name: object() for name in SessionState._fields}  # a distinct value per field, none a default
    marks["answers"] = {7: SavedAnswer("a", False, 1, 1, 1)}
    state = SessionState(**marks)  # type: ignore[arg-type]
    saved = SavedAnswer("b", True, 2, 9, 3)
    new = _answered(state, 8, saved)
    assert type(new) is SessionState and len(new) == len(SessionState._fields)
    for name in SessionState._fields:
        if name == "answers":
            assert dict(new.answers) == {7: marks["answers"][7], 8: saved}
        elif name == "last_seq":
            assert new.last_seq == 9
        else:
            assert getattr(new, name) is marks[name], name
    assert dict(state.answers) == {7: marks["answers"][7]}  # the old state is untouched


def test_answers_are_kept_where_the_cyclic_collector_does_not_look() -> None:
    """Every answer makes a new answers mapping; holding objects, each was one more thing for every pass of the
    cyclic collector to walk (20-85 ms pauses in a busy hub). Its dict holds ints and strings: never tracked."""
    import gc

    from sessions.machine import Answers, SavedAnswer

    state = decide(fresh(), Open(), 0).state
    for seq, q in enumerate(state.paper.question_ids, start=1):
        state = decide(state, Answer(seq, q, state.paper.option_order[q][0], marked=seq % 2 == 0), 10 + seq).state
    answers = state.answers
    assert isinstance(answers, Answers) and len(answers) == len(state.paper.question_ids)
    assert not gc.is_tracked(answers._raw)
    first = state.paper.question_ids[0]
    assert answers[first] == SavedAnswer(state.paper.option_order[first][0], False, 0, 1, 11)
    assert dict(answers) == {q: answers[q] for q in state.paper.question_ids}  # reads back what was written


def test_answers_are_immutable_and_compare_by_content() -> None:
    from sessions.machine import Answers, SavedAnswer

    a, b = SavedAnswer("a", False, 5, 1, 100), SavedAnswer(None, True, 0, 2, 200)
    one = Answers.of({1: a})
    two = one.with_answer(2, b)
    assert dict(one) == {1: a} and dict(two) == {1: a, 2: b}  # the older mapping is unchanged
    assert two == {1: a, 2: b} and two == Answers.of({1: a, 2: b}) and two != one
    assert SavedAnswer.decode(b.encode()) == b and 2 in two and 3 not in two
    with pytest.raises(KeyError):
        two[3]
