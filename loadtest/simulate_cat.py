"""Simulated students through a simulated item bank: the figures of docs/adaptive.md.

    python -m loadtest.simulate_cat cat --items 1000 --simulees 3000 --r-max 0.25
    python -m loadtest.simulate_cat timing --items 20000
    python -m loadtest.simulate_cat recovery --persons 3000 --items 100

(`examhub simulate ...` runs the same.) Everything here is seeded: the same command prints the same
figures (except the timings). The simulated bank is 3PL with a ~ lognormal(0, 0.3) (median 1.0),
b ~ N(0, 1), c ~ Beta(5, 17) (mean 0.23, four-option items), spread evenly over `topics` topics; the
simulees' abilities are N(0, 1), the population the EAP prior assumes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sessions import calibrate, irt

Floats = npt.NDArray[np.float64]


def make_items(n: int, topics: int, rng: np.random.Generator) -> list[irt.ItemParams]:
    a = rng.lognormal(0.0, 0.3, n)
    b = rng.normal(0.0, 1.0, n)
    c = rng.beta(5, 17, n)
    return [irt.ItemParams(i + 1, float(a[i]), float(b[i]), float(c[i]), f"topic-{i % topics + 1:02d}")
            for i in range(n)]  # fmt: skip


def even_blueprint(topics: int) -> dict[str, float]:
    return {f"topic-{t + 1:02d}": 1.0 / topics for t in range(topics)}


# ---- adaptive tests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatRun:
    thetas: Floats
    estimates: Floats
    ses: Floats
    lengths: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]  # per item, how many simulees were given it (bank order)

    @property
    def exposure(self) -> Floats:
        out: Floats = self.counts / len(self.thetas)
        return out

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean((self.estimates - self.thetas) ** 2)))

    @property
    def overlap(self) -> float:
        """Mean number of items two simulees share, over the mean test length (Chen et al., 2003)."""
        n = len(self.thetas)
        shared = float(np.sum(self.counts * (self.counts - 1))) / (n * (n - 1))
        return shared / float(np.mean(self.lengths))


def run_cat(bank: irt.Bank, config: irt.AdaptiveConfig, thetas: Floats, rng: np.random.Generator) -> CatRun:
    n = len(thetas)
    est, ses = np.zeros(n), np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    counts = np.zeros(len(bank), dtype=np.int64)
    draws = rng.random((n, config.max_items))
    for s, theta in enumerate(thetas):
        state = irt.start()
        step = 0
        while True:
            item, state = irt.next_item(state, bank, config, rng)
            if item is None:
                break
            at = bank.position[item]
            right = bool(draws[s, step] < irt.probability(theta, bank.a[at], bank.b[at], bank.c[at]))
            state = irt.update(state, bank, item, right)
            counts[at] += 1
            step += 1
        e = irt.estimate(state)
        est[s], ses[s], lengths[s] = e.theta, e.se, e.scored
    return CatRun(thetas, est, ses, lengths, counts)


def tune_sympson_hetter(
    bank: irt.Bank,
    config: irt.AdaptiveConfig,
    r_max: float,
    simulees: int,
    rng: np.random.Generator,
    rounds: int = 40,
    report: Callable[[str], None] = print,
) -> tuple[irt.Bank, CatRun]:
    """Sympson and Hetter's iterations: simulate; for each item, P(A) = given / simulees, and k becomes
    k * aim / P(A) where P(A) > aim (and creeps back up towards 1 where it is well below); repeat with fresh
    simulees until the largest exposure has stayed at or under r_max for two rounds in a row.

    `aim` is r_max less two binomial standard errors of an exposure of r_max over `simulees`, so that the
    sampling noise of one round (about 0.008 at 3000 simulees) does not carry the tuned bank over r_max."""
    aim = r_max - 2 * math.sqrt(r_max * (1 - r_max) / simulees)
    k = np.ones(len(bank))
    tuned = bank.with_exposure(k)
    below = 0
    run = None
    for r in range(1, rounds + 1):
        run = run_cat(tuned, config, rng.normal(0, 1, simulees), rng)
        exp = run.exposure
        top = float(exp.max())
        report(f"  round {r:>2}: mean length {run.lengths.mean():5.1f}, max exposure {top:.3f}, "
               f"items held back (k < 1) {int((k < 1).sum())}")  # fmt: skip
        below = below + 1 if top <= r_max else 0
        if below >= 2:
            break
        k = np.where(exp > aim, k * aim / np.maximum(exp, 1e-12), k)
        k = np.where((exp < 0.8 * aim) & (k < 1), np.minimum(1.0, k * 1.1), k)
        tuned = bank.with_exposure(k)
    assert run is not None
    return tuned, run


# ---- fixed forms at the same precision ------------------------------------------------------------------------------


def fixed_form_rmse(bank: irt.Bank, order: npt.NDArray[np.int64], length: int, thetas: Floats,
                    rng: np.random.Generator) -> tuple[float, float]:  # fmt: skip
    """(RMSE, mean SE) of EAP scoring when every simulee takes the first `length` items of `order`."""
    idx = order[:length]
    p = irt.probability(thetas[:, None], bank.a[idx][None, :], bank.b[idx][None, :], bank.c[idx][None, :])
    x = (rng.random(p.shape) < p).astype(np.float64)
    lp, lq = np.log(bank.p_grid[idx]), np.log1p(-bank.p_grid[idx])
    loglik = x @ lp + (1 - x) @ lq + np.log(irt.PRIOR)[None, :]
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    mean = w @ irt.GRID
    sd = np.sqrt(np.maximum(w @ irt.GRID**2 - mean**2, 0))
    return float(np.sqrt(np.mean((mean - thetas) ** 2))), float(sd.mean())


def fixed_form_length(bank: irt.Bank, order: npt.NDArray[np.int64], thetas: Floats, target: float, seed: int,
                      by: int = 0) -> tuple[int, float, float]:  # fmt: skip
    """The shortest form (a prefix of `order`) whose RMSE (by=0) or mean SE (by=1) is at most `target`, with
    its (length, RMSE, mean SE); length -1 when even the whole order falls short. The same simulated answers
    (one seed) for every length, so that the lengths compare like with like."""

    def at(n: int) -> tuple[float, float]:
        return fixed_form_rmse(bank, order, n, thetas, np.random.default_rng(seed))

    lo, hi = 1, len(order)
    if at(hi)[by] > target:
        return -1, *at(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid)[by] <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo, *at(lo)


def best_fixed_order(bank: irt.Bank) -> npt.NDArray[np.int64]:
    """Items by their information averaged over the N(0, 1) population: the best fixed form's order."""
    info = irt.information(irt.GRID[:, None], bank.a[None, :], bank.b[None, :], bank.c[None, :])
    out: npt.NDArray[np.int64] = np.argsort(-(irt.PRIOR @ info)).astype(np.int64)
    return out


# ---- the commands -------------------------------------------------------------------------------------------------


def _summary(name: str, run: CatRun, config: irt.AdaptiveConfig) -> list[str]:
    exp, n = run.exposure, run.lengths
    return [
        f"{name}:",
        f"  test length      mean {n.mean():.1f}, median {np.median(n):.0f}, min {n.min()}, max {n.max()}; "
        f"{np.mean(n >= config.max_items) * 100:.1f}% stopped at the maximum",
        f"  precision        RMSE {run.rmse:.3f}, mean SE {run.ses.mean():.3f}, "
        f"bias {np.mean(run.estimates - run.thetas):+.3f}, SE <= {config.target_se}: "
        f"{np.mean(run.ses <= config.target_se) * 100:.1f}%",
        f"  exposure         max {exp.max():.3f}, mean {exp.mean():.3f}; "
        f"{int(np.sum(run.counts == 0))} of {len(exp)} items never given",
        f"  overlap rate     {run.overlap:.3f}",
    ]


def cmd_cat(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    bank = irt.Bank.build(make_items(args.items, args.topics, rng))
    blueprint = even_blueprint(args.topics) if args.topics > 1 else {}
    config = irt.AdaptiveConfig(args.se, args.min_items, args.max_items, blueprint)
    thetas = rng.normal(0, 1, args.simulees)
    print(f"bank: {args.items} simulated 3PL items, {args.topics} topic(s) with equal blueprint shares; "
          f"{args.simulees} simulees ~ N(0, 1); stop at SE <= {args.se} within {args.min_items}..{args.max_items} "
          f"scored items; seed {args.seed}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    runs = [("maximum information, no exposure control", run_cat(bank, config, thetas, np.random.default_rng(7)))]
    print("\n".join([*_summary(*runs[0], config), f"  ({time.perf_counter() - t0:.1f} s)"]), flush=True)
    if args.r_max > 0:
        print(f"\nSympson-Hetter: tuning k for r_max {args.r_max}, {args.tune_simulees} fresh simulees a round",
              flush=True)  # fmt: skip
        tuned, _ = tune_sympson_hetter(bank, config, args.r_max, args.tune_simulees, np.random.default_rng(8))
        runs.append((f"with Sympson-Hetter (r_max {args.r_max}), the same simulees",
                     run_cat(tuned, config, thetas, np.random.default_rng(7))))  # fmt: skip
        print("\n".join(_summary(*runs[1], config)))
        print(f"  k < 1 for {int(np.sum(tuned.exposure < 1))} items; smallest k {tuned.exposure.min():.3f}")
    best, rand = best_fixed_order(bank), np.random.default_rng(9).permutation(len(bank)).astype(np.int64)
    print("\nfixed forms for the same simulees, scored by the same EAP: the length for the adaptive run's RMSE "
          "(and for its mean SE)")  # fmt: skip
    for name, run in runs:
        print(f"  {name.split(',')[0]}: RMSE {run.rmse:.3f}, mean SE {run.ses.mean():.3f} in "
              f"{run.lengths.mean():.1f} items on average")  # fmt: skip
        for form, order in (("best fixed form (most informative items for N(0, 1))", best),
                            ("random fixed form from the bank", rand)):  # fmt: skip
            rmse = fixed_form_length(bank, order, thetas, run.rmse, 10)
            se = fixed_form_length(bank, order, thetas, float(run.ses.mean()), 10, by=1)
            print(f"    {form:<54} {rmse[0]:>3} items ({se[0]} for the mean SE)")
    return 0


def cmd_timing(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    items = make_items(args.items, args.topics, rng)
    t0 = time.perf_counter()
    k = np.clip(rng.uniform(0.2, 1.4, args.items), 0, 1)  # a mix of held-back and free items
    bank = irt.Bank.build(items, {it.id: float(v) for it, v in zip(items, k, strict=True)})
    build = time.perf_counter() - t0
    blueprint = even_blueprint(args.topics) if args.topics > 1 else {}
    config = irt.AdaptiveConfig(args.se, args.min_items, args.max_items, blueprint)
    step_ns: list[int] = []
    thetas = rng.normal(0, 1, args.simulees)
    draws = rng.random((args.simulees, config.max_items))
    for s, theta in enumerate(thetas):
        item, state = irt.next_item(irt.start(), bank, config, rng)
        step = 0
        while item is not None:
            at = bank.position[item]
            right = bool(draws[s, step] < irt.probability(theta, bank.a[at], bank.b[at], bank.c[at]))
            t = time.perf_counter_ns()
            state = irt.update(state, bank, item, right)
            item, state = irt.next_item(state, bank, config, rng)
            step_ns.append(time.perf_counter_ns() - t)
            step += 1
    us = np.array(step_ns, dtype=np.float64) / 1e3
    print(f"bank: {args.items} simulated 3PL items, {args.topics} topic(s) with equal blueprint shares, "
          f"Sympson-Hetter k ~ U(0.2, 1.4) clipped to 1; tables built in {build:.2f} s")  # fmt: skip
    print(f"update + next_item, {len(us)} steps of {args.simulees} simulees: median {np.median(us):.1f} us, "
          f"p99 {np.percentile(us, 99):.1f} us, max {us.max():.1f} us")  # fmt: skip
    return 0


def recovery_once(
    model: str, persons: int, items: int, seed: int
) -> tuple[calibrate.Calibration, Floats, Floats, Floats]:
    """Simulate a persons x items matrix from a bank like make_items' (c = 0 for the 2PL) and fit it."""
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0.0, 0.3, items)
    b = rng.normal(0.0, 1.0, items)
    c = rng.beta(5, 17, items) if model == "3pl" else np.zeros(items)
    theta = rng.normal(0, 1, persons)
    p = irt.probability(theta[:, None], a[None, :], b[None, :], c[None, :])
    x = (rng.random(p.shape) < p).astype(np.float64)
    return calibrate.fit(x, model), a, b, c


def cmd_recovery(args: argparse.Namespace) -> int:
    for model in args.model:
        rows = []
        t0 = time.perf_counter()
        for r in range(args.replications):
            fit, a, b, c = recovery_once(model, args.persons, args.items, args.seed + r)
            ea, eb, ec = (np.array([getattr(f, k) for f in fit.items]) for k in "abc")
            se_a = np.nanmean([np.nan if f.se_a is None else f.se_a for f in fit.items])
            se_b = np.nanmean([np.nan if f.se_b is None else f.se_b for f in fit.items])
            rows.append((np.corrcoef(a, ea)[0, 1], np.corrcoef(b, eb)[0, 1],
                         np.corrcoef(c, ec)[0, 1] if model == "3pl" else np.nan,
                         np.sqrt(np.mean((ea - a) ** 2)), np.sqrt(np.mean((eb - b) ** 2)), se_a, se_b,
                         fit.iterations, sum(1 for f in fit.items if f.flags), fit.converged))  # fmt: skip
        t = np.array(rows, dtype=np.float64)
        print(f"{model.upper()} data and fit, {args.persons} persons x {args.items} items, {args.replications} "
              f"replication(s) from seed {args.seed}: {(time.perf_counter() - t0) / args.replications:.1f} s each, "
              f"{t[:, 7].mean():.0f} EM cycles on average, {int(t[:, 9].sum())} converged")  # fmt: skip
        for name, col in (("corr(a)", 0), ("corr(b)", 1), ("corr(c)", 2), ("RMSE(a)", 3), ("RMSE(b)", 4),
                          ("mean SE(a)", 5), ("mean SE(b)", 6)):  # fmt: skip
            if not np.all(np.isnan(t[:, col])):
                print(f"  {name:<11} mean {t[:, col].mean():.3f}, min {t[:, col].min():.3f}, max {t[:, col].max():.3f}")
        print(f"  items flagged (false alarms: the data follow the model): {int(t[:, 8].sum())} of "
              f"{args.items * args.replications}")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    """Run what the parsed options of server.commands.adaptive.simulate_arguments ask for."""
    if args.what == "recovery" and args.model is None:
        args.model = ["2pl", "3pl"]
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "cat": cmd_cat, "timing": cmd_timing, "recovery": cmd_recovery,
    }  # fmt: skip
    return commands[args.what](args)


def main(argv: Sequence[str] | None = None) -> int:
    from server.commands.adaptive import simulate_arguments

    p = argparse.ArgumentParser(prog="simulate_cat", description=(__doc__ or "").split("\n\n")[0])
    simulate_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
