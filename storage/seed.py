"""The demo content: the NEET biology bank (storage/seed_data/) and three templates. Idempotent."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from storage import pg

DEMO_TEMPLATES: list[dict[str, Any]] = [
    {
        "slug": "biology-quick-10",
        "name": "Biology quick test (10 questions, 10 minutes)",
        "config": {"count": 10, "duration_s": 600, "grace_s": 5,
                   "mix": {"easy": 0.3, "medium": 0.5, "hard": 0.2}},
    },
    {
        "slug": "neet-biology-90",
        "name": "NEET biology section (90 questions, 90 minutes)",
        "config": {"count": 90, "duration_s": 5400, "grace_s": 5,
                   "mix": {"easy": 0.3, "medium": 0.45, "hard": 0.25}},
    },
    {
        "slug": "neet-mock-180",
        "name": "NEET-scale mock (180 questions, 180 minutes)",
        "config": {"count": 180, "duration_s": 10800, "grace_s": 5,
                   "mix": {"easy": 0.3, "medium": 0.45, "hard": 0.25}},
    },
]  # fmt: skip


def normalized_hash(text: str) -> str:
    """For the duplicate check: case, punctuation and spacing do not make a question new."""
    norm = re.sub(r"[\W_]+", " ", text.casefold()).strip()  # any script's letters and digits count
    return hashlib.sha256(norm.encode()).hexdigest()


def load_demo_bank() -> dict[str, Any]:
    raw = resources.files("storage.seed_data").joinpath("neet_biology.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(raw)
    return data


@dataclass(frozen=True, slots=True)
class SeedReport:
    bank_id: int
    questions: int
    new_questions: int
    templates: dict[str, int]


async def seed_demo(pool: pg.Pool) -> SeedReport:
    data = load_demo_bank()
    bank = data["bank"]
    async with pool.acquire() as conn, conn.transaction():
        bank_id = await conn.fetchval(
            """INSERT INTO question_banks (slug, name, subject, curriculum, grade) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
            bank["slug"], bank["name"], bank["subject"], bank["curriculum"], bank["grade"],
        )  # fmt: skip
        before = await conn.fetchval("SELECT count(*) FROM questions")
        await conn.executemany(
            """INSERT INTO questions (ref, subject, curriculum, grade, topic, type, difficulty, text, options,
                                      correct, explanation, marks, category, verification_status, normalized_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'verified', $14)
               ON CONFLICT (ref) DO NOTHING""",
            [
                (q["ref"], bank["subject"], bank["curriculum"], bank["grade"], q["topic"], q["type"],
                 q["difficulty"], q["text"], q["options"], q["correct"], q["explanation"], q["marks"],
                 q["category"], normalized_hash(q["text"]))
                for q in data["questions"]
            ],
        )  # fmt: skip
        after = await conn.fetchval("SELECT count(*) FROM questions")
        await conn.execute(
            """INSERT INTO question_bank_members (bank_id, question_id)
               SELECT $1, id FROM questions WHERE ref = ANY($2::text[]) ON CONFLICT DO NOTHING""",
            bank_id,
            [q["ref"] for q in data["questions"]],
        )
        templates = {}
        for t in DEMO_TEMPLATES:
            templates[t["slug"]] = await conn.fetchval(
                """INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
                t["slug"], t["name"], bank_id, t["config"],
            )  # fmt: skip
    return SeedReport(bank_id, len(data["questions"]), after - before, templates)
