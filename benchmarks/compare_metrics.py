"""Compare the metrics.csv files of two results trees byte for byte, timing columns aside.

    .venv/bin/python benchmarks/compare_metrics.py BEFORE/results/runs AFTER/results/runs

For a refactoring that must not change a number: every run directory under BEFORE must
have a metrics.csv under AFTER whose every column but ``wall_s`` (seconds, which vary by
machine load) is the same text. Prints one line per run that differs and a total; exits 1
if any differs or is missing.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

TIMING = {"wall_s"}


def columns_but_timing(path: Path) -> list[list[str]]:
    """The rows of a metrics.csv as text, the timing columns left out."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING]
    return [[row[i] for i in keep] for row in rows]


def main(before: Path, after: Path) -> int:
    runs = sorted(p.parent.relative_to(before) for p in before.rglob("metrics.csv")
                  if "superseded" not in p.parts)
    bad = 0
    for run in runs:
        other = after / run / "metrics.csv"
        if not other.is_file():
            print(f"missing: {run}")
            bad += 1
        elif columns_but_timing(before / run / "metrics.csv") != columns_but_timing(other):
            print(f"differs: {run}")
            bad += 1
    print(f"{len(runs) - bad} of {len(runs)} runs identical (all columns but {', '.join(sorted(TIMING))})")
    return 1 if bad or not runs else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
