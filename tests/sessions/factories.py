"""Small, explicit domain objects for the pure tests."""

from __future__ import annotations

from sessions.machine import SessionState, Status
from sessions.model import AntiCheatPolicy, Difficulty, MarkingScheme, Option, PaperRule, Question, Template
from sessions.paper import Paper, draw_paper

TOPICS = ("cells", "genetics", "ecology")


def bank(n: int = 30) -> list[Question]:
    levels = list(Difficulty)
    return [
        Question(
            id=i,
            topic=TOPICS[i % len(TOPICS)],
            difficulty=levels[(i // 3) % 3],
            text=f"Question {i}?",
            options=tuple(Option(o, f"option {o} of {i}") for o in "abcd"),
            correct="abcd"[i % 4],
            explanation=f"because {i}",
        )
        for i in range(1, n + 1)
    ]


def template(count: int = 10, policy: AntiCheatPolicy | None = None, grace_ms: int = 5_000) -> Template:
    return Template(
        id=1,
        name="t",
        rule=PaperRule(count=count),
        duration_ms=600_000,
        scheme=MarkingScheme(),
        policy=policy or AntiCheatPolicy(),
        grace_ms=grace_ms,
    )


def fresh(tpl: Template | None = None, sid: str = "s1") -> SessionState:
    tpl = tpl or template()
    paper: Paper = draw_paper(bank(), tpl.rule, seed=sid)
    return SessionState(
        id=sid,
        user_id="u1",
        template_id=tpl.id,
        status=Status.CREATED,
        paper=paper,
        duration_ms=tpl.duration_ms,
        grace_ms=tpl.grace_ms,
        policy=tpl.policy,
    )
