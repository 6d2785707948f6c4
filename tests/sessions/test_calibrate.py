"""MML-EM calibration: recovery of known parameters, the EM's fixed point against a direct maximisation of the
same marginal likelihood with scipy, missing answers as missing, flags, anchors, and the chi-square tail."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special, stats

from sessions import calibrate, irt


def simulate(persons: int, a: np.ndarray, b: np.ndarray, c: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, persons)
    p = irt.probability(theta[:, None], a[None, :], b[None, :], c[None, :])
    return (rng.random(p.shape) < p).astype(np.float64)


def params(fit: calibrate.Calibration, name: str) -> np.ndarray:
    return np.array([getattr(f, name) for f in fit.items])


def test_2pl_recovery_on_1000_by_20() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.5, 2.0, 20), rng.normal(0, 1, 20)
    fit = calibrate.fit(simulate(1000, a, b, np.zeros(20), seed=2), "2pl")
    assert fit.converged
    assert np.corrcoef(a, params(fit, "a"))[0, 1] > 0.9
    assert np.corrcoef(b, params(fit, "b"))[0, 1] > 0.95
    assert np.all(params(fit, "c") == 0)
    # the standard errors are of the size of the actual errors
    se_a = np.array([f.se_a for f in fit.items])
    assert 0.5 < np.sqrt(np.mean((params(fit, "a") - a) ** 2)) / se_a.mean() < 2
    assert not [f.flags for f in fit.items if f.flags]
    assert np.corrcoef(fit.theta, fit.theta)[0, 1] == pytest.approx(1) and fit.theta.shape == (1000,)


def test_the_em_fixed_point_maximises_the_penalised_marginal_likelihood() -> None:
    # the same objective (marginal log-likelihood over NODES + the priors on a and d), maximised directly
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.3, 5), rng.normal(0, 1, 5)
    x = simulate(400, a, b, np.zeros(5), seed=4)
    x[rng.random(x.shape) < 0.2] = np.nan
    seen = ~np.isnan(x)
    logw = stats.norm.logpdf(calibrate.NODES)
    logw -= special.logsumexp(logw)

    def negative(v: np.ndarray) -> float:
        aa, dd = v[:5], v[5:]
        logit = aa[:, None] * calibrate.NODES[None, :] + dd[:, None]
        lp, lq = -np.logaddexp(0, -logit), -np.logaddexp(0, logit)
        ll = np.where(seen & (x == 1), 1, 0) @ lp + np.where(seen & (x == 0), 1, 0) @ lq + logw
        prior = -((aa - calibrate.A_PRIOR[0]) ** 2) / (2 * calibrate.A_PRIOR[1] ** 2)
        prior -= dd**2 / (2 * calibrate.D_PRIOR_SD**2)
        return -float(special.logsumexp(ll, axis=1).sum() + prior.sum())

    best = optimize.minimize(negative, np.r_[np.ones(5), np.zeros(5)], method="BFGS", options={"gtol": 1e-8}).x
    fit = calibrate.fit(x, "2pl", tol=1e-7)
    assert np.allclose(params(fit, "a"), best[:5], atol=1e-4)
    assert np.allclose(-params(fit, "a") * params(fit, "b"), best[5:], atol=1e-4)
    assert fit.log_likelihood == pytest.approx(-negative(best) - 0, rel=1e-3)


def test_missing_answers_are_missing_not_wrong() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(0, 0.3, 8), rng.normal(0, 1, 8)
    x = simulate(600, a, b, np.zeros(8), seed=6)
    base = calibrate.fit(x, "2pl")
    # people who answered nothing change nothing
    padded = calibrate.fit(np.vstack([x, np.full((300, 8), np.nan)]), "2pl")
    assert np.allclose(params(base, "a"), params(padded, "a"), atol=1e-6)
    assert np.allclose(params(base, "b"), params(padded, "b"), atol=1e-6)
    # hiding a third of one item's answers at random leaves its difficulty about where it was;
    # counting them as wrong makes it much harder
    hidden = x.copy()
    gone = rng.random(600) < 1 / 3
    hidden[gone, 0] = np.nan
    as_missing = calibrate.fit(hidden, "2pl")
    hidden[gone, 0] = 0
    as_wrong = calibrate.fit(hidden, "2pl")
    assert abs(as_missing.items[0].b - base.items[0].b) < 0.25
    assert as_wrong.items[0].b - base.items[0].b > 0.4
    assert as_missing.items[0].n == 600 - gone.sum()


def test_bad_items_are_flagged() -> None:
    rng = np.random.default_rng(7)
    a = np.r_[rng.lognormal(0, 0.3, 10), -1.0, 0.05]
    b = np.r_[rng.normal(0, 1, 10), 0.0, 0.0]
    x = simulate(2000, a, b, np.zeros(12), seed=8)
    # item 12 instead: right in the middle of the ability range and wrong at both ends (not monotone)
    theta = np.random.default_rng(8).normal(0, 1, 2000)  # the same abilities simulate() drew
    x[:, 11] = (np.random.default_rng(9).random(2000) < np.where(np.abs(theta) < 0.7, 0.95, 0.15)).astype(float)
    fit = calibrate.fit(x, "2pl")
    assert any(f.startswith("negative discrimination") for f in fit.items[10].flags)
    assert any(f.startswith("poor fit") for f in fit.items[11].flags)
    assert sum(bool(f.flags) for f in fit.items[:10]) <= 1


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_an_item_unrelated_to_ability_is_flagged(seed: int) -> None:
    rng = np.random.default_rng(10)
    a = np.r_[rng.lognormal(0, 0.3, 10), 0.0, 0.1]
    b = np.r_[rng.normal(0, 1, 10), 0.0, 0.0]
    fit = calibrate.fit(simulate(3000, a, b, np.zeros(12), seed=seed), "2pl")
    # a = 0 comes out a little either side of zero
    assert any(f.startswith(("near-zero discrimination", "negative discrimination")) for f in fit.items[10].flags)
    assert any(f.startswith("near-zero discrimination") for f in fit.items[11].flags)


def test_fixed_items_anchor_the_scale_and_stay_put() -> None:
    rng = np.random.default_rng(12)
    a, b = rng.lognormal(0, 0.3, 10), rng.normal(0, 1, 10)
    # a able population (mean 1): free calibration puts it at 0; anchors keep the items' own scale
    theta = rng.normal(1, 1, 3000)
    p = irt.probability(theta[:, None], a[None, :], b[None, :])
    x = (rng.random(p.shape) < p).astype(np.float64)
    fixed = {j: (float(a[j]), float(b[j]), 0.0) for j in range(8)}
    fit = calibrate.fit(x, "2pl", fixed=fixed)
    for j in range(8):
        f = fit.items[j]
        assert f.fixed and (f.a, f.b) == pytest.approx((a[j], b[j])) and f.se_a is None
    free = calibrate.fit(x, "2pl")
    assert abs(fit.items[9].b - b[9]) < abs(free.items[9].b - b[9])


def test_3pl_runs_and_recovers_difficulty() -> None:
    rng = np.random.default_rng(13)
    a, b, c = rng.lognormal(0, 0.3, 15), rng.normal(0, 1, 15), rng.beta(5, 17, 15)
    fit = calibrate.fit(simulate(2000, a, b, c, seed=14), "3pl")
    assert fit.converged
    assert np.corrcoef(b, params(fit, "b"))[0, 1] > 0.9
    assert np.all((params(fit, "c") > 0) & (params(fit, "c") < 0.5))
    assert all(f.se_c is not None for f in fit.items)


def test_progress_is_reported_each_cycle() -> None:
    seen: list[tuple[int, float, float]] = []
    x = simulate(200, np.ones(4), np.zeros(4), np.zeros(4), seed=15)
    fit = calibrate.fit(x, "2pl", progress=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == list(range(1, fit.iterations + 1))
    assert seen[-1][2] < 1e-4


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([[1, 0], [0, 2]], "0, 1 or NaN"),
        ([[1, 0]], "at least two persons"),
        ([[1, 0], [1, 1]], r"items \[0\] have no right or no wrong"),
    ],
)
def test_bad_input_is_refused(data: list[list[float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibrate.fit(data, "2pl")
    with pytest.raises(ValueError, match="model"):
        calibrate.fit([[1, 0], [0, 1]], "4pl")


def test_chi2_tail_matches_scipy() -> None:
    for df in range(1, 30):
        for x in (0.0, 0.3, 1.0, 4.5, 12.0, 40.0, 150.0):
            assert calibrate.chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)
