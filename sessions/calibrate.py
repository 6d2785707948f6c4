"""Item calibration, pure: marginal maximum likelihood with EM (Bock and Aitkin, 1981) for the 2PL and 3PL.

Input: a persons x items matrix of 1 (right), 0 (wrong) and NaN (not presented or skipped: missing, never
wrong). Abilities are integrated out over 41 quadrature points on [-4, 4] with an N(0, 1) population, which
also fixes the scale (mean 0, SD 1 over the calibration sample).

- E-step: each person's posterior over the points; expected counts n_jq (persons answering item j at point
  q) and r_jq (of them, right).
- M-step, 2PL: one Newton step per item on the slope-intercept form a*theta + d, all items at once, with
  weak normal priors a ~ N(1, 2^2), d ~ N(0, 5^2) that only keep degenerate items finite (a negative
  discrimination can still come out, and is flagged).
- M-step, 3PL: the 3PL is a mixture (the student knows the answer with the 2PL's probability, or guesses
  right with probability c), so the right answers split into expected "knew" and "guessed" counts; the
  2PL step runs on the "knew" counts and c has a closed form with a Beta(5, 17) prior (mean 0.23). This
  keeps every step a concave problem, which is what makes the 3PL stable here.
- Standard errors: per item, from the cross-product of the persons' marginal scores (the XPD estimate of the
  observed information); b's by the delta method from (a, d).
- Fit: observed against expected proportion right over 10 ability groups (Yen's Q1 done with the rest-score
  posterior: each person's expected probability and group come from the posterior without the item itself),
  chi-square with 10 - (number of estimated parameters) degrees of freedom.
- Flags: negative discrimination (a < 0), near-zero discrimination (a < 0.3), poor fit (p < 0.001),
  difficulty outside [-4, 4].

Items may be held at known parameters (`fixed`): their parameters anchor the scale while the others
(pretest items, say) are estimated around them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

NODES: Floats = np.linspace(-4.0, 4.0, 41)
_LOG_PRIOR: Floats = -0.5 * NODES**2 - np.log(np.exp(-0.5 * NODES**2).sum())  # N(0, 1) weights, logged
A_PRIOR = (1.0, 2.0)  # mean, SD of the normal prior on a
D_PRIOR_SD = 5.0
C_PRIOR = (5.0, 17.0)  # Beta(alpha, beta) on c for the 3PL
NEAR_ZERO_A = 0.3
POOR_FIT_P = 0.001
FIT_GROUPS = 10
MODELS = ("2pl", "3pl")


@dataclass(frozen=True, slots=True)
class ItemFit:
    a: float
    b: float
    c: float
    se_a: float | None
    se_b: float | None
    se_c: float | None
    n: int  # persons who answered
    chi2: float | None
    df: int
    p: float | None
    fixed: bool
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Calibration:
    model: str
    items: list[ItemFit]
    theta: Floats  # each person's EAP under the final parameters
    log_likelihood: float
    iterations: int
    converged: bool


def _sigmoid(z: Floats) -> Floats:
    out: Floats = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out


def _posterior(x1: Floats, x0: Floats, p: Floats) -> tuple[Floats, float]:
    """Each person's posterior weights over NODES (persons x nodes) and the marginal log-likelihood."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    logl = x1 @ np.log(p) + x0 @ np.log1p(-p) + _LOG_PRIOR[None, :]
    top = logl.max(axis=1, keepdims=True)
    w = np.exp(logl - top)
    total = w.sum(axis=1, keepdims=True)
    w /= total
    return w, float(np.sum(np.log(total) + top))


def fit(
    responses: npt.ArrayLike,
    model: str = "2pl",
    *,
    fixed: Mapping[int, tuple[float, float, float]] | None = None,
    max_iter: int = 2000,
    tol: float = 1e-4,
    progress: Callable[[int, float, float], None] | None = None,
) -> Calibration:
    """Calibrate the items (columns) of `responses`. `fixed` maps column numbers to known (a, b, c).
    `progress(iteration, log_likelihood, largest parameter change)` is called once per EM cycle.

    Raises ValueError for a malformed matrix and for free items without both a right and a wrong answer."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}")
    x1, x0 = _split(responses)
    held = np.zeros(x1.shape[1], dtype=bool)
    held[list(fixed or {})] = True
    flat = ~held & ((x1.sum(axis=0) == 0) | (x0.sum(axis=0) == 0))
    if np.any(flat):
        raise ValueError(f"items {np.flatnonzero(flat).tolist()} have no right or no wrong answers: drop them")
    guess = model == "3pl"
    a, d, c = _start(x1, x0, guess, fixed or {})
    loglik, converged, it = -math.inf, False, 0
    for it in range(1, max_iter + 1):
        (a, d, c), loglik, change = _cycle(a, d, c, x1, x0, ~held, guess)
        if progress is not None:
            progress(it, loglik, change)
        if change < tol:
            converged = True
            break
    ps = _sigmoid(a[:, None] * NODES[None, :] + d[:, None])
    p = c[:, None] + (1 - c[:, None]) * ps
    w, loglik = _posterior(x1, x0, p)
    se = _standard_errors(a, d, c, ps, p, w, x1, x0, guess)
    n_item = (x1 + x0).sum(axis=0)
    items = []
    for j in range(x1.shape[1]):
        b = -d[j] / a[j] if a[j] != 0 else math.copysign(math.inf, -d[j])
        chi2, df, pval = _item_fit(p[j], w, x1[:, j], x0[:, j], 0 if held[j] else (3 if guess else 2))
        se_a, se_b, se_c = (None, None, None) if held[j] else se[j]
        items.append(ItemFit(float(a[j]), float(b), float(c[j]), se_a, se_b, se_c, int(n_item[j]), chi2, df, pval,
                             bool(held[j]), _flags(float(a[j]), float(b), pval)))  # fmt: skip
    return Calibration(model, items, w @ NODES, loglik, it, converged)


def _split(responses: npt.ArrayLike) -> tuple[Floats, Floats]:
    """Indicator matrices of right and of wrong answers (both 0 where missing)."""
    x = np.asarray(responses, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError("responses must be a persons x items matrix with at least two persons")
    seen = ~np.isnan(x)
    if np.any(seen & (x != 0) & (x != 1)):
        raise ValueError("responses must be 0, 1 or NaN")
    return np.where(seen & (x == 1), 1.0, 0.0), np.where(seen & (x == 0), 1.0, 0.0)


def _start(x1: Floats, x0: Floats, guess: bool, fixed: Mapping[int, tuple[float, float, float]]
           ) -> tuple[Floats, Floats, Floats]:  # fmt: skip
    """a = 1, c at its prior mean, d the logit of the facility above c; fixed items at their values."""
    facility = np.clip(x1.sum(axis=0) / np.maximum((x1 + x0).sum(axis=0), 1), 0.02, 0.98)
    a = np.ones(x1.shape[1])
    c = np.full(x1.shape[1], C_PRIOR[0] / sum(C_PRIOR) if guess else 0.0)
    d = np.log((facility - c).clip(0.01) / (1 - facility))
    for j, (fa, fb, fc) in fixed.items():
        a[j], d[j], c[j] = fa, -fa * fb, fc
    return a, d, c


def _cycle(a: Floats, d: Floats, c: Floats, x1: Floats, x0: Floats, free: npt.NDArray[np.bool_], guess: bool
           ) -> tuple[tuple[Floats, Floats, Floats], float, float]:  # fmt: skip
    """One EM cycle: ((a, d, c), log-likelihood before it, largest change of a free parameter)."""
    ps = _sigmoid(a[:, None] * NODES[None, :] + d[:, None])
    p = c[:, None] + (1 - c[:, None]) * ps
    w, loglik = _posterior(x1, x0, p)
    n = (x1 + x0).T @ w  # items x nodes: expected persons answering
    r = x1.T @ w  # of them, expected right
    knew = r * ps / np.clip(p, 1e-12, None) if guess else r  # the right answers not guessed
    da, dd = _newton(a, d, ps, knew, n)
    step = np.maximum(np.abs(da), np.abs(dd))
    if guess:
        al, be = C_PRIOR
        c_new = np.clip(((r - knew).sum(axis=1) + al - 1) / ((n - knew).sum(axis=1) + al + be - 2), 0.0, 0.5)
        step = np.maximum(step, np.abs(c_new - c))
        c = np.where(free, c_new, c)
    change = float(step[free].max()) if free.any() else 0.0
    return (np.where(free, a + da, a), np.where(free, d + dd, d), c), loglik, change


def _newton(a: Floats, d: Floats, ps: Floats, s: Floats, n: Floats) -> tuple[Floats, Floats]:
    """One Newton step per item for sum_q s log P + (n - s) log(1 - P), P = sigmoid(a q + d), with the priors."""
    ma, sa = A_PRIOR
    resid = s - n * ps
    ga = resid @ NODES - (a - ma) / sa**2
    gd = resid.sum(axis=1) - d / D_PRIOR_SD**2
    v = n * ps * (1 - ps)
    haa = v @ (NODES * NODES) + 1 / sa**2
    had = v @ NODES
    hdd = v.sum(axis=1) + 1 / D_PRIOR_SD**2
    det = haa * hdd - had * had
    da = (hdd * ga - had * gd) / det
    dd = (haa * gd - had * ga) / det
    big = np.maximum(np.maximum(np.abs(da), np.abs(dd)), 1.0)  # at most 1 per step: no wild jumps early on
    return da / big, dd / big


def _standard_errors(
    a: Floats, d: Floats, c: Floats, ps: Floats, p: Floats, w: Floats, x1: Floats, x0: Floats, guess: bool
) -> list[tuple[float | None, float | None, float | None]]:
    """Per item, the XPD information from each person's marginal score E[d log P(x | theta) / d params]."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    dz = (1 - c[:, None]) * ps * (1 - ps)  # dP / dz
    right, wrong = 1 / p, -1 / (1 - p)  # d log P(x) / dP for x = 1, 0

    def score(g: Floats) -> Floats:  # persons x items: E_w[g(x, theta)]
        out: Floats = x1 * (w @ (right * g).T) + x0 * (w @ (wrong * g).T)
        return out

    s_a, s_d = score(dz * NODES[None, :]), score(dz)
    cols = [s_a, s_d] + ([score(1 - ps)] if guess else [])
    k = len(cols)
    info = np.empty((a.size, k, k))
    for i in range(k):
        for j in range(i, k):
            info[:, i, j] = info[:, j, i] = np.einsum("pi,pi->i", cols[i], cols[j])
    if guess:  # the Beta prior's curvature keeps c's block invertible when c is barely identified
        al, be = C_PRIOR
        cc = np.clip(c, 1e-3, 1 - 1e-3)
        info[:, 2, 2] += (al - 1) / cc**2 + (be - 1) / (1 - cc) ** 2
    out: list[tuple[float | None, float | None, float | None]] = []
    for j in range(a.size):
        try:
            cov = np.linalg.inv(info[j])
        except np.linalg.LinAlgError:
            out.append((None, None, None))
            continue
        grad_b = np.zeros(k)
        grad_b[0], grad_b[1] = d[j] / a[j] ** 2, -1 / a[j]
        var = (cov[0, 0], float(grad_b @ cov @ grad_b), cov[2, 2] if guess else None)
        se_a, se_b, se_c = (math.sqrt(v) if v is not None and v >= 0 else None for v in var)
        out.append((se_a, se_b, se_c))
    return out


def _item_fit(pj: Floats, w: Floats, right: Floats, wrong: Floats, estimated: int
              ) -> tuple[float | None, int, float | None]:  # fmt: skip
    """Q1-style chi-square over ability groups, each person's expectation from the posterior without item j."""
    who = np.flatnonzero(right + wrong)
    groups = min(FIT_GROUPS, len(who) // 20)
    df = groups - estimated
    if df < 1:
        return None, max(df, 0), None
    pj = np.clip(pj, 1e-12, 1 - 1e-12)
    xj = right[who]
    own = np.where(xj[:, None] == 1, pj[None, :], 1 - pj[None, :])
    rest = w[who] / own
    rest /= rest.sum(axis=1, keepdims=True)
    expected = rest @ pj
    order = np.argsort(rest @ NODES, kind="stable")
    chi2 = 0.0
    for part in np.array_split(order, groups):
        e = float(expected[part].mean())
        o = float(xj[part].mean())
        chi2 += len(part) * (o - e) ** 2 / (e * (1 - e))
    return chi2, df, chi2_sf(chi2, df)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square with a whole number of degrees of freedom, in closed form."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if x <= 0:
        return 1.0
    h = x / 2
    if df % 2 == 0:  # e^-h * sum_{k < df/2} h^k / k!
        term = total = 1.0
        for k in range(1, df // 2):
            term *= h / k
            total += term
        return min(1.0, math.exp(-h) * total)
    # odd: erfc(sqrt(h)) + e^-h * sum_{k=1}^{(df-1)/2} h^(k - 1/2) / Gamma(k + 1/2)
    term = math.sqrt(h) / math.gamma(1.5)
    total = 0.0
    for k in range(1, (df - 1) // 2 + 1):
        if k > 1:
            term *= h / (k - 0.5)
        total += term
    return min(1.0, math.erfc(math.sqrt(h)) + math.exp(-h) * total)


def _flags(a: float, b: float, p: float | None) -> tuple[str, ...]:
    out = []
    if a < 0:
        out.append(f"negative discrimination (a = {a:.2f})")
    elif a < NEAR_ZERO_A:
        out.append(f"near-zero discrimination (a = {a:.2f})")
    if p is not None and p < POOR_FIT_P:
        out.append(f"poor fit (p = {p:.2g})")
    if not -4 <= b <= 4:
        out.append(f"difficulty outside [-4, 4] (b = {b:.2f})")
    return tuple(out)
