"""How far FIPA runs drift under a change of floating-point evaluation order, by damping.

For each ``--rho`` one small FIPA regression run (``--clients`` clients of a domain split, rank
``--rank``, ``--rounds`` rounds, float64, evaluated every round) is trained three ways with
``fipa train``: sequential local training on one torch thread (the reference), vectorized on
one thread, and sequential on two threads. Prints, per rho, the largest relative difference
of any metrics.csv value (wall time aside) from the reference over all rounds. Neither change
alters the arithmetic, only its order; FIPA's damped solve then amplifies the round-off by
about 1/rho per round. notes/speed-results.md ("Equality") shows this table.

    python benchmarks/fipa_rounding.py                       # rho 1e-2, 1e-3, 1e-4: about 1 min
    python benchmarks/fipa_rounding.py --rho 1e-2 --rounds 2  # smoke: about 20 s

The sizes are this script's own (the note's first table was measured by hand on a tiny
regression whose exact sizes were not recorded).
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
from pathlib import Path

import yaml

from fipa import paths

ROOT = Path(__file__).resolve().parents[1]
WAYS = {"sequential, 1 thread": (False, 1), "vectorized, 1 thread": (True, 1),
        "sequential, 2 threads": (False, 2)}


def run_config(rho: float, args: argparse.Namespace, vectorize: bool) -> dict:
    return {"task": {"name": "regression", "target": "multiscale_sine", "n_train": args.samples,
                     "hidden": [32, 32]},
            "partition": {"scheme": "domain_split", "clients": args.clients, "pieces": 1},
            "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_epochs": 2,
                       "batch_size": 16},
            "aggregator": {"name": "fipa", "rho": rho, "rank": args.rank},
            "rounds": args.rounds, "eval_every": 1, "dtype": "float64", "seed": 0,
            "vectorize": vectorize}


def metrics(run: Path) -> list[list[float]]:
    """metrics.csv as numbers, timing column left out, [rounds, columns]."""
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [[float(v) for k, v in row.items() if k != "wall_s" and v not in ("", "False", "True")]
            for row in rows]


def max_rel_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest |a - b| / |a| over all entries (0 where both are 0)."""
    out = 0.0
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if x != y:
                out = max(out, abs(x - y) / abs(x) if x else math.inf)
    return out


def train(cfg: dict, out: Path, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "fipa.cli", "train", "-c", str(out / "run.yaml"), "-o", str(out),
                    "--threads", str(threads), "-q", "--supersede"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rho", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--samples", type=int, default=96, help="regression training points")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / paths.RESULTS / "fipa_rounding")
    args = ap.parse_args()
    names = list(WAYS)
    print(f"FIPA regression, {args.clients} clients, rank {args.rank}, {args.rounds} rounds; largest "
          f"relative metrics.csv difference from '{names[0]}'")
    print(f"{'rho':>8}  " + "  ".join(f"{n:>22}" for n in names[1:]))
    for rho in args.rho:
        got = {}
        for name, (vectorize, threads) in WAYS.items():
            out = args.out / f"rho{rho:g}" / name.replace(", ", "_").replace(" ", "")
            train(run_config(rho, args, vectorize), out, threads)
            got[name] = metrics(out)
        diffs = [max_rel_diff(got[names[0]], got[n]) for n in names[1:]]
        print(f"{rho:>8g}  " + "  ".join(f"{d:>22.2g}" for d in diffs))


if __name__ == "__main__":
    main()
