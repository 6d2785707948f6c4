"""How hard the hypothesis checks here try. CI runs a modest budget; a longer run sets
EXAMHUB_SECURITY_EXAMPLES (the live, per-example-costly checks take that many examples; the pure decoder ten
times as many). docs/reliability.md records the counts of each run."""

from __future__ import annotations

import os

EXAMPLES = int(os.environ.get("EXAMHUB_SECURITY_EXAMPLES", "100"))
