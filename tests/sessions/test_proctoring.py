from __future__ import annotations

from sessions.machine import (
    Activate,
    Answer,
    ClockChanged,
    Control,
    Extend,
    Finish,
    FinishReason,
    FlagChanged,
    ForceSubmit,
    Open,
    Pause,
    Refusal,
    Refused,
    Report,
    Resume,
    SessionState,
    SetFlag,
    Status,
    Terminate,
    decide,
)
from sessions.model import CheatKind
from sessions.proctoring import RISK_HALF_LIFE_MS, alerts, disconnect_credit, risk, summary
from tests.sessions.factories import fresh

T0 = 1_700_000_000_000


def opened() -> SessionState:
    d = decide(fresh(), Open(), T0)
    assert isinstance(d.write, Activate)
    return d.state


def test_pause_stops_the_clock_and_resume_restarts_it() -> None:
    s = opened()  # 600 s
    paused = decide(s, Pause(), T0 + 100_000)
    assert paused.state.status is Status.PAUSED and paused.write == Control("pause")
    assert paused.effects == (ClockChanged(Status.PAUSED, 500_000, None),)
    # while paused, time does not pass and answers are refused
    assert paused.state.time_left_ms(T0 + 400_000) == 500_000
    q = s.paper.question_ids[0]
    refused = decide(paused.state, Answer(1, q, "a"), T0 + 200_000)
    assert refused.effects[0].code is Refusal.NOT_ACTIVE  # type: ignore[union-attr]
    assert not paused.state.overdue(T0 + 10**9)  # a paused session never expires
    resumed = decide(paused.state, Resume(), T0 + 1_000_000)
    assert resumed.state.status is Status.ACTIVE and resumed.state.deadline_ms == T0 + 1_500_000
    assert resumed.write == Control("resume")


def test_extend_and_shorten() -> None:
    s = opened()
    longer = decide(s, Extend(60_000), T0)
    assert longer.state.deadline_ms == T0 + 660_000 and longer.write == Control("extend", delta_ms=60_000)
    shorter = decide(s, Extend(-(10**9)), T0 + 5000)
    assert shorter.state.deadline_ms == T0 + 5000  # never into the past
    paused = decide(s, Pause(), T0 + 100_000).state
    assert decide(paused, Extend(30_000), T0).state.remaining_ms == 530_000
    created = decide(fresh(), Extend(-(10**9)), T0).state
    assert created.duration_ms == 1000


def test_terminate_force_submit_and_flags() -> None:
    s = opened()
    t = decide(s, Terminate(), T0)
    assert t.state.status is Status.TERMINATED and t.write == Finish(None, FinishReason.PROCTOR)
    f = decide(s, ForceSubmit(), T0)
    assert f.state.status is Status.SUBMITTED and f.state.finish_reason is FinishReason.FORCED
    assert decide(fresh(), ForceSubmit(), T0).write is None
    assert decide(fresh(), Terminate(), T0).state.status is Status.TERMINATED
    flag = decide(s, SetFlag(True), T0)
    assert flag.state.flagged and flag.effects == (FlagChanged(True),)
    for cmd in (Pause(), Resume(), Extend(1), Terminate(), ForceSubmit(), SetFlag(False)):
        d = decide(t.state, cmd, T0)
        assert d.state is t.state and isinstance(d.effects[0], Refused)


def test_acting_on_an_overdue_session_expires_it() -> None:
    s = opened()
    assert s.deadline_ms is not None
    d = decide(s, Extend(60_000), s.deadline_ms + s.grace_ms + 1)
    assert d.state.status is Status.EXPIRED and d.effects[0].code is Refusal.TOO_LATE  # type: ignore[union-attr]


def test_risk_weighs_kind_and_fades_with_time() -> None:
    s = opened()
    for i, kind in enumerate([CheatKind.PASTE, CheatKind.TAB_HIDDEN], start=1):
        s = decide(s, Report(i, kind), T0).state
    fresh_risk = risk(s, T0)
    assert fresh_risk.score == 12 and fresh_risk.reasons == ("1 x paste", "1 x tab_hidden")
    assert risk(s, T0 + RISK_HALF_LIFE_MS).score == 6  # half as much ten minutes later
    assert risk(s, T0, ip_changes=1).score == 27
    assert risk(opened(), T0).score == 0


def test_fast_answers_count_after_a_few() -> None:
    s = opened()
    for i, q in enumerate(s.paper.question_ids[:6], start=1):
        s = decide(s, Answer(i, q, "a", time_ms=1000), T0).state
    r = risk(s, T0)
    assert r.score == 6 and "6 answers in under 3 s" in r.reasons


def test_disconnect_credit_is_capped() -> None:
    assert disconnect_credit(30_000, 0, 120_000) == 30_000
    assert disconnect_credit(300_000, 100_000, 120_000) == 20_000
    assert disconnect_credit(300_000, 120_000, 120_000) == 0
    assert disconnect_credit(30_000, 0, 0) == 0


def test_summary_and_alert_ranking() -> None:
    calm, risky = opened(), opened()
    risky = decide(risky, Report(1, CheatKind.COPY), T0).state
    rows = [summary(calm, T0, online=True, display_name="A"), summary(risky, T0, online=False, display_name="B")]
    assert rows[0]["risk"] == 0 and rows[1]["events"] == {"copy": 1} and rows[1]["online"] is False
    assert rows[0]["time_left_ms"] == 600_000 and "correct" not in str(rows)
    ranked = alerts(rows)
    assert [a["name"] for a in ranked] == ["B"]
