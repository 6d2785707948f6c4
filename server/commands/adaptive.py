"""`examhub calibrate`, `examhub simulate`, `examhub pretest`: item response theory at the command line
(docs/adaptive.md).

- `calibrate` fits item parameters from the responses in PostgreSQL (MML-EM, sessions/calibrate.py), writes
  them with their fit into item_parameters, and prints the flagged items; with `--exposure R` it then sets
  the bank's Sympson-Hetter parameters by simulation. With too few responses it says so and writes nothing.
- `simulate` runs simulated students through a simulated bank (loadtest/simulate_cat.py); no storage.
- `pretest add|remove` marks questions as unscored pretest items, or releases them.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING

from server.commands import positive_int
from server.settings import Settings

if TYPE_CHECKING:
    from storage import pg

MIN_ITEMS = 3  # fewer calibrated together cannot place anyone on a scale


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share within (0, 1), got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("calibrate", help="fit item parameters (IRT) from the stored responses")
    p.add_argument("--bank", help="bank slug (default: every question with responses)")
    p.add_argument("--model", choices=["2pl", "3pl"], default="2pl")
    p.add_argument("--min-responses", type=positive_int, default=200, help="answers a question needs to be fitted")
    p.add_argument("--include-flagged", action="store_true", help="also use attempts the anti-cheat policy flagged")
    p.add_argument("--anchor", action="store_true",
                   help="hold questions calibrated before (not pretest, not flagged) at their parameters")  # fmt: skip
    p.add_argument("--exposure", type=_share, metavar="R_MAX",
                   help="then set the bank's Sympson-Hetter parameters by simulation for this exposure")  # fmt: skip
    p.add_argument("--exposure-simulees", type=positive_int, default=2000, help="simulees per tuning round")
    p.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    p.set_defaults(run=calibrate)

    p = sub.add_parser("simulate", help="simulated adaptive tests, timing and calibration recovery (no storage)")
    simulate_arguments(p)
    p.set_defaults(run=simulate, storage=False)

    p = sub.add_parser("pretest", help="mark questions as unscored pretest items in adaptive tests, or release them")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("ids", type=positive_int, nargs="+", metavar="QUESTION_ID")
    p.set_defaults(run=pretest)


def simulate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `examhub simulate` and `python -m loadtest.simulate_cat` (kept here, free of numpy, so
    that registering the command costs nothing at start-up)."""
    sub = p.add_subparsers(dest="what", required=True)
    cat = sub.add_parser("cat", help="adaptive tests: length, precision, exposure, overlap, fixed-form length")
    cat.add_argument("--items", type=positive_int, default=1000)
    cat.add_argument("--simulees", type=positive_int, default=3000)
    cat.add_argument("--topics", type=positive_int, default=4, help="topics, each an equal share of the blueprint")
    cat.add_argument("--se", type=_share, default=0.30, help="the target standard error")
    cat.add_argument("--min-items", type=positive_int, default=5)
    cat.add_argument("--max-items", type=positive_int, default=60)
    cat.add_argument("--r-max", type=float, default=0.25, help="Sympson-Hetter maximum exposure (0: skip)")
    cat.add_argument("--tune-simulees", type=positive_int, default=3000, help="fresh simulees per tuning round")
    cat.add_argument("--seed", type=int, default=1)
    tim = sub.add_parser("timing", help="update + next_item time per answer on a large bank")
    tim.add_argument("--items", type=positive_int, default=20000)
    tim.add_argument("--topics", type=positive_int, default=4)
    tim.add_argument("--simulees", type=positive_int, default=1000)
    tim.add_argument("--se", type=_share, default=0.30)
    tim.add_argument("--min-items", type=positive_int, default=5)
    tim.add_argument("--max-items", type=positive_int, default=60)
    tim.add_argument("--seed", type=int, default=1)
    rec = sub.add_parser("recovery", help="EM parameter recovery on simulated responses")
    rec.add_argument("--persons", type=positive_int, default=3000)
    rec.add_argument("--items", type=positive_int, default=100)
    rec.add_argument("--model", choices=["2pl", "3pl"], action="append", help="repeat; default: both")
    rec.add_argument("--replications", type=positive_int, default=1, help="fits with seeds seed, seed + 1, ...")
    rec.add_argument("--seed", type=int, default=1)


async def simulate(settings: Settings, args: argparse.Namespace) -> int:
    from loadtest import simulate_cat

    return simulate_cat.run(args)


async def pretest(settings: Settings, args: argparse.Namespace) -> int:
    from storage import calibration, pg

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 1)
    try:
        n = await calibration.set_pretest(pool, args.ids, args.action == "add")
    finally:
        await pool.close()
    print(
        f"examhub: {n} of {len(set(args.ids))} question(s) {'marked pretest' if args.action == 'add' else 'released'}"
    )
    return 0 if n == len(set(args.ids)) else 1


def say(text: str) -> None:
    print(f"examhub calibrate: {text}", flush=True)


async def calibrate(settings: Settings, args: argparse.Namespace) -> int:
    from storage import pg

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 2)
    try:
        return await _calibrate(pool, args)
    finally:
        await pool.close()


async def _calibrate(pool: pg.Pool, args: argparse.Namespace) -> int:
    import numpy as np

    from sessions import calibrate as em
    from storage import calibration

    bank_id = None
    if args.bank:
        bank_id = await pool.fetchval("SELECT id FROM question_banks WHERE slug = $1", args.bank)
        if bank_id is None:
            say(f"no bank {args.bank!r}")
            return 2
    say(f"reading responses{f' to bank {args.bank}' if args.bank else ''} ...")
    data = await calibration.load_responses(pool, bank_id=bank_id, include_flagged=args.include_flagged,
                                            progress=lambda n: say(f"  {n:,} responses read"))  # fmt: skip
    answered = data.answered
    right = np.nansum(data.matrix, axis=0)
    enough = [j for j in range(len(data.question_ids)) if answered[j] >= args.min_responses]
    varied = [j for j in enough if 0 < right[j] < answered[j]]
    say(f"{len(data.session_ids):,} attempts answered {len(data.question_ids):,} question(s); "
        f"{len(enough):,} have at least {args.min_responses} answers")  # fmt: skip
    for j in sorted(set(enough) - set(varied)):
        say(f"  question {data.question_ids[j]} left out: every answer was {'right' if right[j] else 'wrong'}")
    if len(varied) < MIN_ITEMS:
        most = int(answered.max()) if len(answered) else 0
        say(f"too few responses to calibrate: {len(varied)} question(s) have at least {args.min_responses} answers "
            f"with both right and wrong ones (need {MIN_ITEMS}; the most answered question has {most}). Nothing was "
            "written. Let more students sit the tests, or lower --min-responses for a trial run.")  # fmt: skip
        return 0
    subset = data.columns(varied)
    fixed: dict[int, tuple[float, float, float]] = {}
    if args.anchor:
        known = {s.question_id: s for s in await calibration.fetch_parameters(pool, subset.question_ids)}
        rows = await pool.fetch("SELECT id FROM questions WHERE pretest AND id = ANY($1)", subset.question_ids)
        pre = {r["id"] for r in rows}
        for j, qid in enumerate(subset.question_ids):
            s = known.get(qid)
            if s is not None and s.model == args.model and not s.flagged and qid not in pre:
                fixed[j] = (s.a, s.b, s.c)
        say(f"anchoring {len(fixed)} question(s) at their stored parameters")
        if len(fixed) == len(subset.question_ids):
            say("every question is anchored: nothing to estimate")
            return 0
    say(f"fitting the {args.model.upper()} to {len(subset.session_ids):,} attempts x {len(varied)} questions "
        "(MML-EM) ...")  # fmt: skip

    def progress(cycle: int, loglik: float, change: float) -> None:
        if cycle == 1 or cycle % 25 == 0:
            say(f"  EM cycle {cycle:>4}: log-likelihood {loglik:,.2f}, largest change {change:.5f}")

    fit = em.fit(subset.matrix, args.model, fixed=fixed, progress=progress)
    say(f"{'converged' if fit.converged else 'NOT converged (results written anyway; check them)'} after "
        f"{fit.iterations} cycles; log-likelihood {fit.log_likelihood:,.2f}")  # fmt: skip
    pairs = list(zip(subset.question_ids, fit.items, strict=True))
    flagged = [(q, f) for q, f in pairs if f.flags]
    kinds = Counter(flag.split(" (")[0] for _, f in flagged for flag in f.flags)
    say(f"{len(flagged)} of {len(pairs)} flagged" + (f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})"
                                                       if kinds else ""))  # fmt: skip
    for q, f in flagged:
        say(f"  question {q}: a {f.a:.2f}, b {f.b:.2f}, c {f.c:.2f}, n {f.n} -- {'; '.join(f.flags)}")
    if args.dry_run:
        say("dry run: nothing written")
        return 0
    n = await calibration.write_parameters(pool, args.model, pairs)
    say(f"wrote parameters for {n} question(s) into item_parameters")
    if args.exposure is not None:
        return await _tune_exposure(pool, bank_id, args.exposure, args.exposure_simulees)
    return 0


async def _tune_exposure(pool: pg.Pool, bank_id: int | None, r_max: float, simulees: int) -> int:
    import numpy as np

    from loadtest.simulate_cat import tune_sympson_hetter
    from sessions import irt
    from storage import calibration

    if bank_id is None:
        say("--exposure needs --bank: exposure is tuned over one bank")
        return 2
    bank = await calibration.adaptive_bank(pool, bank_id)
    if bank is None:
        say("no usable calibrated question in the bank: exposure not tuned")
        return 0
    sizes = Counter(bank.topic_names[t] for t in bank.topic)
    config = irt.AdaptiveConfig(blueprint={t: n / len(bank) for t, n in sizes.items()} if len(sizes) > 1 else {})
    if config.max_items > r_max * len(bank):
        say(f"note: a test may need up to {config.max_items} items but {len(bank)} usable questions at an exposure "
            f"of {r_max} allow {r_max * len(bank):.0f}; long tests will end early when the items run out")  # fmt: skip
    say(f"tuning Sympson-Hetter parameters for r_max {r_max} over {len(bank)} questions (topic shares as in "
        f"the bank, SE 0.30, 5..60 items; {simulees} simulees a round) ...")  # fmt: skip
    tuned, run = tune_sympson_hetter(bank, config, r_max, simulees, np.random.default_rng(1),
                                     report=lambda line: say(line.strip()))  # fmt: skip
    changed = await calibration.write_exposure(pool, {int(i): float(k) for i, k in zip(bank.ids, tuned.exposure,
                                                                                         strict=True)})  # fmt: skip
    say(f"wrote exposure parameters for {changed} question(s); {int(np.sum(tuned.exposure < 1))} held back "
        f"(k < 1), last round's maximum exposure {run.exposure.max():.3f}")  # fmt: skip
    return 0
