"""PostgreSQL access: the pool, row <-> domain conversion, and the queries the hub needs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg
import orjson

from sessions.irt import AdaptiveConfig
from sessions.model import (
    AntiCheatPolicy,
    Difficulty,
    MarkingScheme,
    Option,
    PaperRule,
    Question,
    Template,
)
from sessions.paper import Paper

Pool: TypeAlias = asyncpg.Pool


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Run on every release to the pool. asyncpg's default sends a reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL): one more round trip per query, ~11% of the hub's CPU in a start storm. examhub keeps
    no session state on pooled connections (no LISTEN, no SET, no cursors outside transactions; the one
    session advisory lock, migrate's, is released in its own finally), so only an unfinished transaction,
    left by a cancelled task, needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_reset_connection
    )
    assert pool is not None
    return pool


def ms_to_dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


# ---- content -------------------------------------------------------------------------------------------


def question_from_row(row: Mapping[str, Any]) -> Question:
    return Question(
        id=row["id"],
        topic=row["topic"],
        difficulty=Difficulty(row["difficulty"]),
        text=row["text"],
        options=tuple(Option(o["id"], o["text"]) for o in row["options"]),
        correct=row["correct"],
        explanation=row["explanation"],
        marks=row["marks"],
    )


def template_from_config(template_id: int, name: str, cfg: Mapping[str, Any]) -> Template:
    """The inverse of `template_config`; configs are validated at the REST edge before they are stored."""
    rule = PaperRule(
        count=int(cfg["count"]),
        topics=tuple(cfg.get("topics", ())),
        mix={Difficulty(k): float(v) for k, v in cfg["mix"].items()} if "mix" in cfg else PaperRule(1).mix,
        shuffle_questions=bool(cfg.get("shuffle_questions", True)),
        shuffle_options=bool(cfg.get("shuffle_options", True)),
    )
    scheme = MarkingScheme(**cfg["scheme"]) if "scheme" in cfg else MarkingScheme()
    policy = AntiCheatPolicy(**cfg["policy"]) if "policy" in cfg else AntiCheatPolicy()
    adaptive = None
    if cfg.get("adaptive") is not None:  # the test's length is at most `count` items
        a = cfg["adaptive"]
        adaptive = AdaptiveConfig(
            target_se=float(a.get("target_se", 0.30)),
            min_items=min(int(a.get("min_items", 5)), rule.count),
            max_items=rule.count,
            blueprint={str(k): float(v) for k, v in (a.get("blueprint") or {}).items()},
            pretest_positions=frozenset(int(p) for p in a.get("pretest_positions", ())),
        )
    return Template(
        id=template_id,
        name=name,
        rule=rule,
        duration_ms=int(cfg["duration_s"]) * 1000,
        scheme=scheme,
        policy=policy,
        grace_ms=int(cfg.get("grace_s", 5)) * 1000,
        disconnect_credit_cap_ms=int(cfg.get("disconnect_credit_cap_s", 0)) * 1000,
        adaptive=adaptive,
    )


def template_config(t: Template) -> dict[str, Any]:
    return {
        "count": t.rule.count,
        "topics": list(t.rule.topics),
        "mix": {d.value: w for d, w in t.rule.mix.items()},
        "shuffle_questions": t.rule.shuffle_questions,
        "shuffle_options": t.rule.shuffle_options,
        "duration_s": t.duration_ms // 1000,
        "grace_s": t.grace_ms // 1000,
        "disconnect_credit_cap_s": t.disconnect_credit_cap_ms // 1000,
        "scheme": {"correct": t.scheme.correct, "wrong": t.scheme.wrong, "skipped": t.scheme.skipped},
        "policy": {"warn_at": t.policy.warn_at, "flag_at": t.policy.flag_at, "submit_at": t.policy.submit_at},
        "adaptive": None
        if t.adaptive is None
        else {
            "target_se": t.adaptive.target_se,
            "min_items": t.adaptive.min_items,
            "blueprint": dict(t.adaptive.blueprint),
            "pretest_positions": sorted(t.adaptive.pretest_positions),
        },
    }


_QUESTION_COLUMNS = "id, topic, difficulty, text, options, correct, explanation, marks"


async def fetch_questions(pool: Pool, ids: Sequence[int]) -> list[Question]:
    rows = await pool.fetch(f"SELECT {_QUESTION_COLUMNS} FROM questions WHERE id = ANY($1::bigint[])", list(ids))
    return [question_from_row(r) for r in rows]


async def fetch_bank_questions(pool: Pool, bank_id: int) -> list[Question]:
    rows = await pool.fetch(
        f"""SELECT {", ".join("q." + c for c in _QUESTION_COLUMNS.split(", "))}
              FROM questions q JOIN question_bank_members m ON m.question_id = q.id
             WHERE m.bank_id = $1 AND q.retired_at IS NULL AND q.verification_status <> 'rejected'
             ORDER BY q.id""",
        bank_id,
    )
    return [question_from_row(r) for r in rows]


async def fetch_template(pool: Pool, template_id: int) -> tuple[Template, int] | None:
    """The template and its bank id, or None when it does not exist or is archived."""
    row = await pool.fetchrow(
        "SELECT id, name, bank_id, config FROM test_templates WHERE id = $1 AND status = 'active'", template_id
    )
    if row is None:
        return None
    return template_from_config(row["id"], row["name"], row["config"]), row["bank_id"]


async def list_templates(pool: Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT t.id, t.slug, t.name, t.config, b.slug AS bank FROM test_templates t
             JOIN question_banks b ON b.id = t.bank_id WHERE t.status = 'active' ORDER BY t.id"""
    )
    return [dict(r) for r in rows]


# ---- users and sessions --------------------------------------------------------------------------------


async def create_guest(pool: Pool, display_name: str) -> uuid.UUID:
    uid = uuid.uuid4()
    await pool.execute(
        "INSERT INTO users (id, username, display_name, tier) VALUES ($1, $2, $3, 'free')",
        uid,
        f"guest-{uid.hex[:12]}",
        display_name,
    )
    return uid


async def insert_session(
    pool: Pool, sid: str, token_id: str, user_id: uuid.UUID, template_id: int, paper: Paper
) -> None:
    await pool.execute(
        """INSERT INTO test_sessions (id, token_id, user_id, template_id, paper)
           VALUES ($1, $2, $3, $4, $5)""",
        sid,
        token_id,
        user_id,
        template_id,
        paper.to_json(),
    )


async def fetch_session(pool: Pool, sid: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        """SELECT s.id, s.user_id, s.template_id, s.status, s.paper, s.created_at, s.started_at,
                  s.finished_at, s.finish_reason, a.score, a.max_score, a.min_score, a.correct, a.wrong,
                  a.skipped, a.violations, a.flagged, a.flushed_at, a.ability, a.ability_se, a.scaled_score
             FROM test_sessions s LEFT JOIN test_attempts a ON a.session_id = s.id
            WHERE s.id = $1""",
        sid,
    )


async def fetch_topic_breakdown(pool: Pool, sid: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT topic, correct, wrong, skipped, score, max_score FROM attempt_analytics WHERE session_id = $1"
        " ORDER BY topic",
        sid,
    )
    return rows


async def fetch_responses(pool: Pool, sid: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT question_id, position, choice, is_correct, marks, marked_for_review, time_spent_ms, seq
             FROM responses WHERE session_id = $1 ORDER BY position""",
        sid,
    )
    return rows
