"""Marking an attempt: total, bounds and the per-topic breakdown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sessions.model import MarkingScheme, Question


@dataclass(slots=True)
class TopicScore:
    correct: int = 0
    wrong: int = 0
    skipped: int = 0
    score: int = 0
    max_score: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "correct": self.correct,
            "wrong": self.wrong,
            "skipped": self.skipped,
            "score": self.score,
            "max_score": self.max_score,
        }


@dataclass(frozen=True, slots=True)
class Result:
    score: int
    max_score: int
    min_score: int
    correct: int
    wrong: int
    skipped: int
    topics: Mapping[str, TopicScore] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "score": self.score,
            "max_score": self.max_score,
            "min_score": self.min_score,
            "correct": self.correct,
            "wrong": self.wrong,
            "skipped": self.skipped,
            "topics": {t: s.to_json() for t, s in sorted(self.topics.items())},
        }


def mark(question: Question, choice: str | None, scheme: MarkingScheme) -> int:
    if choice is None:
        return scheme.skipped
    return scheme.correct if choice == question.correct else scheme.wrong


def score(questions: Iterable[Question], choices: Mapping[int, str | None], scheme: MarkingScheme) -> Result:
    """`choices` maps question id to the chosen option id (missing or None: skipped)."""
    topics: dict[str, TopicScore] = {}
    total = correct = wrong = skipped = n = 0
    for q in questions:
        n += 1
        choice = choices.get(q.id)
        t = topics.setdefault(q.topic, TopicScore())
        points = mark(q, choice, scheme)
        t.score += points
        t.max_score += scheme.correct
        total += points
        if choice is None:
            skipped += 1
            t.skipped += 1
        elif choice == q.correct:
            correct += 1
            t.correct += 1
        else:
            wrong += 1
            t.wrong += 1
    return Result(
        score=total,
        max_score=n * scheme.correct,
        min_score=n * min(scheme.wrong, scheme.skipped),
        correct=correct,
        wrong=wrong,
        skipped=skipped,
        topics=topics,
    )
