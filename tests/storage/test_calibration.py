"""Calibration storage against the real test database: responses in (skips and absent questions missing,
flagged attempts out), parameters out and back, the adaptive bank, and `examhub calibrate` end to end.

Each test makes its own bank, questions, archived template, attempts and responses (unique slugs), so
the shared database's other rows never enter its matrices."""

from __future__ import annotations

import argparse
import secrets
from typing import Any

import numpy as np
import pytest

from server.commands import adaptive
from server.settings import Settings
from sessions import irt
from sessions.calibrate import ItemFit
from storage import calibration, pg
from tests.conftest import template_id

SKIP = -1.0  # presented, no answer (a responses row with choice NULL); NaN: not in the paper (no row)


async def make_bank(pool: pg.Pool, n: int, topic: str = "irt") -> tuple[str, int, int, list[int]]:
    """A bank of n fresh questions and an archived template over it: (slug, bank id, template id, ids)."""
    slug = f"irt-{secrets.token_hex(4)}"
    bank_id = await pool.fetchval("INSERT INTO question_banks (slug, name) VALUES ($1, $1) RETURNING id", slug)
    ids = []
    for i in range(n):
        ids.append(await pool.fetchval(
            """INSERT INTO questions (ref, topic, difficulty, text, options, correct, normalized_hash)
               VALUES ($1, $2, 'medium', $1, $3, 'a', $1) RETURNING id""",
            f"{slug}-{i}", topic, [{"id": o, "text": o} for o in "abcd"],
        ))  # fmt: skip
        await pool.execute("INSERT INTO question_bank_members (bank_id, question_id) VALUES ($1, $2)", bank_id, ids[-1])
    config = await pool.fetchval("SELECT config FROM test_templates WHERE id = $1",
                                 await template_id(pool, "biology-quick-10"))  # fmt: skip
    tpl = await pool.fetchval(
        "INSERT INTO test_templates (slug, name, bank_id, config, status) VALUES ($1, $1, $2, $3, 'archived') "
        "RETURNING id",
        slug, bank_id, config,
    )  # fmt: skip
    return slug, bank_id, tpl, ids


async def make_attempts(pool: pg.Pool, tpl: int, ids: list[int], matrix: np.ndarray,
                        flagged: frozenset[int] = frozenset()) -> list[str]:  # fmt: skip
    """One finished attempt per row of `matrix` (1 right, 0 wrong, SKIP, NaN absent); returns session ids in
    row order (they sort in that order too)."""
    uid = await pg.create_guest(pool, "calibration test")
    run = secrets.token_hex(4)
    sids = [f"cal-{run}-{i:06d}" for i in range(len(matrix))]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO test_sessions (id, token_id, user_id, template_id, status, paper, finished_at)
               VALUES ($1, $1, $2, $3, 'submitted', '{}', now())""",
            [(s, uid, tpl) for s in sids],
        )
        await conn.copy_records_to_table(
            "test_attempts",
            columns=["session_id", "user_id", "template_id", "status", "reason", "score", "max_score", "min_score",
                     "correct", "wrong", "skipped", "flagged", "finished_at"],
            records=[(s, uid, tpl, "submitted", "student", 0, 0, 0, 0, 0, 0, i in flagged, pg.ms_to_dt(0))
                     for i, s in enumerate(sids)],
        )  # fmt: skip
        rows: list[tuple[Any, ...]] = []
        for i, s in enumerate(sids):
            for j, q in enumerate(ids):
                v = matrix[i, j]
                if np.isnan(v):
                    continue
                choice = None if v == SKIP else ("a" if v == 1 else "b")
                rows.append((s, q, uid, j + 1, choice, None if choice is None else bool(v == 1), 0))
        await conn.copy_records_to_table(
            "responses", columns=["session_id", "question_id", "user_id", "position", "choice", "is_correct", "marks"],
            records=rows,
        )  # fmt: skip
    return sids


async def test_responses_become_a_matrix_with_skips_and_absences_missing(pool: pg.Pool) -> None:
    _, bank_id, tpl, ids = await make_bank(pool, 3)
    _, _, other_tpl, outside = await make_bank(pool, 1)
    n = np.nan
    matrix = np.array([[1, 0, 1], [0, SKIP, 1], [n, 1, 0], [1, 1, n], [SKIP, SKIP, SKIP], [0, 0, 0]])
    sids = await make_attempts(pool, tpl, ids, matrix, flagged=frozenset({5}))
    await make_attempts(pool, other_tpl, outside, np.array([[1.0], [0.0]]))  # another bank's answers

    got = await calibration.load_responses(pool, bank_id=bank_id)
    assert got.question_ids == ids
    want = np.where(matrix == SKIP, np.nan, matrix)[:4]  # row 4 answered nothing, row 5 is flagged
    assert got.session_ids == sids[:4]
    assert np.array_equal(got.matrix, want, equal_nan=True)
    assert got.answered.tolist() == [3, 3, 3]

    with_flagged = await calibration.load_responses(pool, bank_id=bank_id, include_flagged=True)
    assert with_flagged.session_ids == [*sids[:4], sids[5]]
    assert with_flagged.matrix[-1].tolist() == [0, 0, 0]

    seen: list[int] = []
    everything = await calibration.load_responses(pool, batch=2, progress=seen.append)
    assert set(ids) | set(outside) <= set(everything.question_ids)
    assert seen[-1] >= 11 and seen == sorted(seen)
    assert everything.columns([everything.question_ids.index(q) for q in ids]).session_ids == sids[:4]


def item_fit(a: float, b: float, *, flags: tuple[str, ...] = (), fixed: bool = False,
             se: float | None = 0.1) -> ItemFit:  # fmt: skip
    return ItemFit(a, b, 0.0, se, se, None, 321, 7.5, 8, 0.48, fixed, flags)


async def test_parameters_round_trip_and_a_refit_keeps_the_exposure_parameter(pool: pg.Pool) -> None:
    _, _, _, ids = await make_bank(pool, 3)
    fits = [(ids[0], item_fit(1.2, -0.5)), (ids[1], item_fit(-0.4, 0.3, flags=("negative discrimination",
            "poor fit (p = 1e-05)"), se=float("inf"))), (ids[2], item_fit(1.0, 0.0, fixed=True))]  # fmt: skip
    assert await calibration.write_parameters(pool, "2pl", fits) == 2  # the fixed item is not written
    got = {s.question_id: s for s in await calibration.fetch_parameters(pool, ids)}
    assert set(got) == {ids[0], ids[1]}
    first = got[ids[0]]
    assert (first.model, first.a, first.b, first.c, first.se_a, first.n) == ("2pl", 1.2, -0.5, 0.0, 0.1, 321)
    assert (first.fit_chi2, first.fit_df, first.fit_p, first.flagged, first.reason) == (7.5, 8, 0.48, False, "")
    assert first.exposure_k == 1.0
    bad = got[ids[1]]
    assert bad.flagged and bad.reason == "negative discrimination; poor fit (p = 1e-05)" and bad.se_a is None

    assert await calibration.write_exposure(pool, {ids[0]: 0.4, ids[1]: 0.9, ids[2]: 0.5}) == 2
    await calibration.write_parameters(pool, "3pl", [(ids[0], item_fit(1.5, 0.25))])
    again = (await calibration.fetch_parameters(pool, [ids[0]]))[0]
    assert (again.model, again.a, again.b, again.exposure_k) == ("3pl", 1.5, 0.25, 0.4)
    assert again.calibrated_at >= first.calibrated_at
    with pytest.raises(ValueError):
        await calibration.write_exposure(pool, {ids[0]: 1.5})


async def test_the_adaptive_bank_takes_usable_items_and_lists_pretest_ones(pool: pg.Pool) -> None:
    _, bank_id, _, ids = await make_bank(pool, 5)
    assert await calibration.adaptive_bank(pool, bank_id) is None  # nothing calibrated yet
    await calibration.write_parameters(pool, "2pl", [
        (ids[0], item_fit(1.2, -0.5)), (ids[1], item_fit(0.9, 0.5)),
        (ids[2], item_fit(-0.3, 0.0, flags=("negative discrimination",))), (ids[3], item_fit(1.0, 1.0)),
    ])  # fmt: skip
    await calibration.write_exposure(pool, {ids[1]: 0.3})
    assert await calibration.set_pretest(pool, [ids[3], ids[4]], True) == 2
    bank = await calibration.adaptive_bank(pool, bank_id)
    assert bank is not None
    assert bank.ids.tolist() == [ids[0], ids[1]]
    assert bank.exposure.tolist() == [1.0, 0.3]
    assert bank.pretest_ids == (ids[3], ids[4])
    assert bank.items()[0] == irt.ItemParams(ids[0], 1.2, -0.5, 0.0, "irt")
    assert await calibration.set_pretest(pool, [ids[3]], False) == 1
    bank = await calibration.adaptive_bank(pool, bank_id)
    assert bank is not None and bank.ids.tolist() == [ids[0], ids[1], ids[3]]


def args(**kw: Any) -> argparse.Namespace:
    base = {"bank": None, "model": "2pl", "min_responses": 200, "include_flagged": False, "anchor": False,
            "exposure": None, "exposure_simulees": 2000, "dry_run": False}  # fmt: skip
    return argparse.Namespace(**(base | kw))


async def test_calibrate_on_the_demo_bank_says_there_are_too_few_responses(
    settings: Settings, pool: pg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM item_parameters")
    assert await adaptive.calibrate(settings, args(bank="neet-biology")) == 0
    out = capsys.readouterr().out
    assert "too few responses to calibrate" in out and "Nothing was written" in out
    assert await pool.fetchval("SELECT count(*) FROM item_parameters") == before
    assert await adaptive.calibrate(settings, args(bank="no-such-bank")) == 2
    assert "no bank 'no-such-bank'" in capsys.readouterr().out


async def test_calibrate_fits_writes_and_flags(settings: Settings, pool: pg.Pool,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    slug, _, tpl, ids = await make_bank(pool, 8)
    rng = np.random.default_rng(1)
    a = np.r_[rng.uniform(0.8, 2.0, 6), -1.2, 1.0]  # the 7th discriminates the wrong way
    b = np.r_[rng.normal(0, 1, 6), 0.0, 0.0]
    theta = rng.normal(0, 1, 400)
    x = (rng.random((400, 8)) < irt.probability(theta[:, None], a[None, :], b[None, :])).astype(float)
    x[rng.random(x.shape) < 0.1] = SKIP
    x[:, 7] = 1.0  # the 8th: everyone right, cannot be fitted
    x[:300, 5] = np.nan  # the 6th: too few answers
    await make_attempts(pool, tpl, ids, x)

    assert await adaptive.calibrate(settings, args(bank=slug, min_responses=150, dry_run=True)) == 0
    assert await calibration.fetch_parameters(pool, ids) == []
    capsys.readouterr()

    assert await adaptive.calibrate(settings, args(bank=slug, min_responses=150)) == 0
    out = capsys.readouterr().out
    assert "400 attempts answered 8 question(s); 7 have at least 150 answers" in out
    assert f"question {ids[7]} left out: every answer was right" in out
    assert "EM cycle    1" in out and "converged after" in out
    assert f"question {ids[6]}: a -" in out and "negative discrimination" in out
    assert "wrote parameters for 6 question(s)" in out
    stored = {s.question_id: s for s in await calibration.fetch_parameters(pool, ids)}
    assert set(stored) == set(ids[:5]) | {ids[6]}
    assert stored[ids[6]].flagged and stored[ids[6]].a < 0
    good = [stored[q] for q in ids[:5]]
    assert np.corrcoef(b[:5], [s.b for s in good])[0, 1] > 0.9
    assert all(s.n > 300 and s.fit_df is not None for s in good)

    # anchored refit: the five good items hold still, and the bank's exposure is tuned by simulation
    await calibration.set_pretest(pool, [ids[4]], True)  # a pretest item is estimated even if stored
    assert await adaptive.calibrate(settings, args(bank=slug, min_responses=150, anchor=True, exposure=0.8,
                                                   exposure_simulees=200)) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "anchoring 4 question(s)" in out
    assert "wrote parameters for 2 question(s)" in out  # the pretest item and the flagged one
    assert "wrote exposure parameters for 4 question(s)" in out
    after = {s.question_id: s for s in await calibration.fetch_parameters(pool, ids)}
    assert all(after[q].a == stored[q].a and after[q].calibrated_at == stored[q].calibrated_at for q in ids[:4])
    assert min(after[q].exposure_k for q in ids[:4]) < 1


async def test_pretest_command_marks_and_releases(settings: Settings, pool: pg.Pool,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, _, _, ids = await make_bank(pool, 2)
    assert await adaptive.pretest(settings, argparse.Namespace(action="add", ids=ids)) == 0
    assert "2 of 2 question(s) marked pretest" in capsys.readouterr().out
    flags = await pool.fetch("SELECT pretest FROM questions WHERE id = ANY($1) ORDER BY id", ids)
    assert [r["pretest"] for r in flags] == [True, True]
    assert await adaptive.pretest(settings, argparse.Namespace(action="remove", ids=[ids[0], 2**62])) == 1
    assert "1 of 2 question(s) released" in capsys.readouterr().out
    flags = await pool.fetch("SELECT pretest FROM questions WHERE id = ANY($1) ORDER BY id", ids)
    assert [r["pretest"] for r in flags] == [False, True]
