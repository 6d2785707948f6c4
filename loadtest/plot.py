"""Acknowledgement latency against offered load, from a `compare` run's JSON, as a PNG for docs/.

    python -m loadtest.plot                     # loadtest/results/compare.json -> docs/ack_latency_vs_load.png
    python -m loadtest.plot RESULT.json [RESULT-w2.json] --out FILE.png

One line per target (examhub, the ceiling baseline, the HTTP->PostgreSQL baseline): p99 solid, p50 dashed,
on a log scale, with the 50 ms target drawn across. Several files (e.g. one and two hub processes) are drawn
together; the examhub lines of a later file are labelled with its number of hub processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtest.config import TARGET_P99_MS
from loadtest.run import RESULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"
COLOURS = {"examhub": "tab:blue", "ceiling": "tab:green", "http_pg": "tab:red"}
LABELS = {"examhub": "examhub", "ceiling": "ceiling (bare WS + Redis)", "http_pg": "HTTP POST -> PostgreSQL"}


def series(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per target, its points by offered rate: each rate's medians over its trials (older runs: their one row)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in doc["result"].get("steps") or doc["result"]["rows"]:
        if row["p99_ms"] is not None:
            out.setdefault(row["target"], []).append(row)
    return {k: sorted(v, key=lambda r: r["offered_rate"]) for k, v in out.items()}


def plot(docs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for n, doc in enumerate(docs):
        workers = doc["result"].get("workers", 1)
        for target, rows in series(doc).items():
            if n and target != "examhub":
                continue  # the baselines do not depend on the hub's processes: draw them once
            label = LABELS[target] + (f" ({workers} hub processes)" if target == "examhub" and workers > 1 else "")
            style = {"color": COLOURS[target], "alpha": 1.0 if n == 0 else 0.6, "marker": "o" if n == 0 else "s"}
            xs = [r["offered_rate"] for r in rows]
            ax.plot(xs, [r["p99_ms"] for r in rows], linestyle="-", label=f"{label}, p99", **style)
            ax.plot(xs, [r["p50_ms"] for r in rows], linestyle="--", label=f"{label}, p50", **style)
    ax.axhline(TARGET_P99_MS, color="grey", linestyle=":", label=f"target p99 {TARGET_P99_MS:g} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("offered answers per second")
    ax.set_ylabel("acknowledgement latency, ms (log)")
    first = docs[0]
    ax.set_title(f"Ack latency vs offered load, {first['result']['students']:,} connections, "
                 f"{first['machine']['cpus']} cores ({first['date']})", fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", type=Path, default=[RESULTS / "compare.json"])
    p.add_argument("--out", type=Path, default=DOCS / "ack_latency_vs_load.png")
    args = p.parse_args(argv)
    docs = []
    for path in args.results:
        if not path.exists():
            p.error(f"{path}: no such file (run `python -m loadtest.run compare` first)")
        doc = json.loads(path.read_text())
        if doc.get("scenario") != "compare":
            p.error(f"{path}: not a compare result (scenario {doc.get('scenario')!r})")
        docs.append(doc)
    plot(docs, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
