"""The exam's vocabulary: questions, templates and their rules, as plain frozen values.

Nothing here does I/O or reads a clock. storage/ builds these from rows; server/ builds them from
validated requests; the rest of sessions/ computes with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from sessions.irt import AdaptiveConfig


class Difficulty(StrEnum):
    EASY = "easy"
    MEDIUM = "medium"
    HARD = "hard"


class CheatKind(StrEnum):
    """Anti-cheating signals a browser reports. The `*_visible/focus/enter` kinds are returns, not violations."""

    TAB_HIDDEN = "tab_hidden"
    TAB_VISIBLE = "tab_visible"
    BLUR = "blur"
    FOCUS = "focus"
    FULLSCREEN_EXIT = "fullscreen_exit"
    FULLSCREEN_ENTER = "fullscreen_enter"
    COPY = "copy"
    PASTE = "paste"
    CONTEXT_MENU = "context_menu"
    SECOND_DEVICE = "second_device"  # recorded by the server when a newer connection fences an older one


VIOLATIONS: frozenset[CheatKind] = frozenset(
    {
        CheatKind.TAB_HIDDEN,
        CheatKind.BLUR,
        CheatKind.FULLSCREEN_EXIT,
        CheatKind.COPY,
        CheatKind.PASTE,
        CheatKind.CONTEXT_MENU,
        CheatKind.SECOND_DEVICE,
    }
)


@dataclass(frozen=True, slots=True)
class Option:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    topic: str
    difficulty: Difficulty
    text: str
    options: tuple[Option, ...]
    correct: str  # the id of the correct option; never sent to a student before the attempt ends
    explanation: str = ""
    marks: int = 4

    # computed once: every paper drawn and every answer checked asks for it
    option_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_ids", tuple(o.id for o in self.options))


@dataclass(frozen=True, slots=True)
class MarkingScheme:
    """NEET by default: +4 right, -1 wrong, 0 skipped."""

    correct: int = 4
    wrong: int = -1
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.correct <= 0 or self.wrong > 0 or self.skipped < self.wrong or self.skipped > self.correct:
            raise ValueError("marking scheme needs correct > 0 >= wrong and wrong <= skipped <= correct")


@dataclass(frozen=True, slots=True)
class AntiCheatPolicy:
    """Maps the count of violations (see VIOLATIONS) in one attempt to consequences.

    Every violation from `warn_at` on earns a warning; reaching `flag_at` flags the attempt for a proctor;
    reaching `submit_at` submits it automatically. `None` switches a consequence off.
    """

    warn_at: int | None = 1
    flag_at: int | None = 3
    submit_at: int | None = 6

    def __post_init__(self) -> None:
        for name in ("warn_at", "flag_at", "submit_at"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")


def _freeze(mix: Mapping[Difficulty, float]) -> Mapping[Difficulty, float]:
    return MappingProxyType(dict(mix))


DEFAULT_MIX: Mapping[Difficulty, float] = _freeze({Difficulty.EASY: 0.3, Difficulty.MEDIUM: 0.5, Difficulty.HARD: 0.2})


@dataclass(frozen=True, slots=True)
class PaperRule:
    """How a template draws its questions from a bank."""

    count: int
    topics: tuple[str, ...] = ()  # empty: every topic of the bank
    mix: Mapping[Difficulty, float] = field(default_factory=lambda: DEFAULT_MIX)
    shuffle_questions: bool = True
    shuffle_options: bool = True

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("difficulty mix needs non-negative weights with a positive sum")


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    name: str
    rule: PaperRule
    duration_ms: int
    scheme: MarkingScheme = MarkingScheme()
    policy: AntiCheatPolicy = AntiCheatPolicy()
    grace_ms: int = 5_000  # answers in flight when the clock runs out still count
    disconnect_credit_cap_ms: int = 0  # time lost to dropped connections given back automatically; 0: by a proctor
    adaptive: AdaptiveConfig | None = None  # an adaptive test (item response theory) instead of a fixed paper

    def __post_init__(self) -> None:
        if self.duration_ms < 1_000:
            raise ValueError("duration must be at least one second")
        if not 0 <= self.grace_ms <= 60_000:
            raise ValueError("grace must be between 0 and 60 s")
        if not 0 <= self.disconnect_credit_cap_ms <= 3_600_000:
            raise ValueError("the disconnect credit cap must be between 0 and 1 h")
