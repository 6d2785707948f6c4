"""Calibration data in PostgreSQL: the responses an item calibration reads, the parameters it writes, and the
adaptive bank the hub builds from them (the computations are in sessions/calibrate.py and sessions/irt.py).

- A person is one finished attempt (`test_attempts`); an answer is a `responses` row with a choice. A skipped
  question (choice NULL) and a question not in the attempt's paper are both missing, never wrong. Attempts
  flagged by the anti-cheat policy are left out unless asked for.
- `item_parameters` holds one row per calibrated question. Writing a fit replaces its parameters, fit and
  flags, and keeps the Sympson-Hetter parameter (`exposure_k`), which only `write_exposure` changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from sessions import irt
from sessions.calibrate import ItemFit
from storage import pg


@dataclass(frozen=True, slots=True)
class ResponseMatrix:
    question_ids: list[int]  # the columns
    session_ids: list[str]  # the rows
    matrix: npt.NDArray[np.float64]  # 1 right, 0 wrong, NaN missing

    @property
    def answered(self) -> npt.NDArray[np.int64]:
        """Per question, how many attempts answered it."""
        out: npt.NDArray[np.int64] = np.sum(~np.isnan(self.matrix), axis=0).astype(np.int64)
        return out

    def columns(self, keep: Sequence[int]) -> ResponseMatrix:
        """Only these columns (positions), and only the rows with at least one answer left."""
        m = self.matrix[:, keep]
        rows = np.flatnonzero(np.any(~np.isnan(m), axis=1))
        return ResponseMatrix([self.question_ids[j] for j in keep], [self.session_ids[i] for i in rows], m[rows])


_RESPONSES = """
    SELECT r.session_id, r.question_id, r.is_correct
      FROM responses r
      JOIN test_attempts t ON t.session_id = r.session_id
     WHERE r.choice IS NOT NULL
       AND ($1::bigint IS NULL
            OR r.question_id IN (SELECT question_id FROM question_bank_members WHERE bank_id = $1))
       AND ($2 OR NOT t.flagged)
     ORDER BY r.session_id, r.question_id"""


async def load_responses(
    pool: pg.Pool,
    *,
    bank_id: int | None = None,
    include_flagged: bool = False,
    batch: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> ResponseMatrix:
    """Every answered response (of the bank's questions, when `bank_id` is given) as an attempts x questions
    matrix. Streams through a cursor; `progress(rows read so far)` after each `batch` rows and at the end."""
    sessions: dict[str, int] = {}
    questions: dict[int, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    async with pool.acquire() as conn, conn.transaction():
        async for r in conn.cursor(_RESPONSES, bank_id, include_flagged, prefetch=min(batch, 10_000)):
            rows.append(sessions.setdefault(r["session_id"], len(sessions)))
            cols.append(questions.setdefault(r["question_id"], len(questions)))
            values.append(1.0 if r["is_correct"] else 0.0)
            if progress is not None and len(values) % batch == 0:
                progress(len(values))
    if progress is not None:
        progress(len(values))
    matrix = np.full((len(sessions), len(questions)), np.nan)
    matrix[rows, cols] = values
    ids = sorted(questions)
    return ResponseMatrix(ids, list(sessions), matrix[:, [questions[q] for q in ids]])


# ---- parameters ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredItem:
    question_id: int
    model: str
    a: float
    b: float
    c: float
    se_a: float | None
    se_b: float | None
    se_c: float | None
    n: int
    fit_chi2: float | None
    fit_df: int | None
    fit_p: float | None
    flagged: bool
    reason: str
    exposure_k: float
    calibrated_at: datetime


def _finite(x: float | None) -> float | None:
    return x if x is not None and np.isfinite(x) else None


async def write_parameters(pool: pg.Pool, model: str, fits: Iterable[tuple[int, ItemFit]]) -> int:
    """Insert or replace each question's parameters, fit and flags (not its exposure parameter); returns the
    number written. Items held fixed in the fit are left as they were."""
    rows = [
        (qid, model, f.a, f.b, f.c, _finite(f.se_a), _finite(f.se_b), _finite(f.se_c), f.n, _finite(f.chi2),
         f.df if f.chi2 is not None else None, _finite(f.p), bool(f.flags), "; ".join(f.flags))
        for qid, f in fits
        if not f.fixed
    ]  # fmt: skip
    if not rows:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO item_parameters (question_id, model, a, b, c, se_a, se_b, se_c, n, fit_chi2, fit_df, fit_p,
                                            flagged, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
               ON CONFLICT (question_id) DO UPDATE SET
                   model = EXCLUDED.model, a = EXCLUDED.a, b = EXCLUDED.b, c = EXCLUDED.c, se_a = EXCLUDED.se_a,
                   se_b = EXCLUDED.se_b, se_c = EXCLUDED.se_c, n = EXCLUDED.n, fit_chi2 = EXCLUDED.fit_chi2,
                   fit_df = EXCLUDED.fit_df, fit_p = EXCLUDED.fit_p, flagged = EXCLUDED.flagged,
                   reason = EXCLUDED.reason, calibrated_at = now()""",
            rows,
        )
    return len(rows)


async def write_exposure(pool: pg.Pool, k: Mapping[int, float]) -> int:
    """Set the Sympson-Hetter parameters of calibrated questions; returns how many rows changed."""
    if any(not 0 <= v <= 1 for v in k.values()):
        raise ValueError("exposure parameters must be within [0, 1]")
    done = await pool.execute(
        """UPDATE item_parameters p SET exposure_k = v.k
             FROM unnest($1::bigint[], $2::float8[]) AS v (id, k) WHERE p.question_id = v.id""",
        list(k), list(k.values()),
    )  # fmt: skip
    return int(done.split()[-1])


async def fetch_parameters(pool: pg.Pool, question_ids: Sequence[int] | None = None) -> list[StoredItem]:
    rows = await pool.fetch(
        """SELECT question_id, model, a, b, c, se_a, se_b, se_c, n, fit_chi2, fit_df, fit_p, flagged, reason,
                  exposure_k, calibrated_at
             FROM item_parameters WHERE $1::bigint[] IS NULL OR question_id = ANY($1) ORDER BY question_id""",
        None if question_ids is None else list(question_ids),
    )
    return [StoredItem(**dict(r)) for r in rows]


async def set_pretest(pool: pg.Pool, question_ids: Sequence[int], pretest: bool) -> int:
    """Mark questions as unscored pretest items (or release them); returns how many exist."""
    done = await pool.execute("UPDATE questions SET pretest = $2 WHERE id = ANY($1::bigint[])", list(question_ids),
                              pretest)  # fmt: skip
    return int(done.split()[-1])


async def adaptive_bank(pool: pg.Pool, bank_id: int) -> irt.Bank | None:
    """The bank's adaptive item bank: its active questions with usable parameters (not flagged, a > 0, not
    pretest) and their exposure parameters, plus its active pretest questions. None when none is usable."""
    rows = await pool.fetch(
        """SELECT q.id, q.topic, q.pretest, p.a, p.b, p.c, p.exposure_k, p.flagged
             FROM question_bank_members m
             JOIN questions q ON q.id = m.question_id
             LEFT JOIN item_parameters p ON p.question_id = q.id
            WHERE m.bank_id = $1 AND q.retired_at IS NULL
            ORDER BY q.id""",
        bank_id,
    )
    usable = [r for r in rows if not r["pretest"] and r["a"] is not None and not r["flagged"] and r["a"] > 0]
    if not usable:
        return None
    items = [irt.ItemParams(r["id"], r["a"], r["b"], r["c"], r["topic"]) for r in usable]
    return irt.Bank.build(items, {r["id"]: r["exposure_k"] for r in usable}, [r["id"] for r in rows if r["pretest"]])
