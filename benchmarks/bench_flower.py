"""Seconds per round: the same job through Flower's simulation engine and through `fipa train`.

The job is a run config (default: the example app's, examples/flower/fipa_flower_app/job.yaml:
regression, 4 domain-split clients, float64, 10 rounds, FIPA). Both sides evaluate the global model
after every round on the server, so a round is local training + curvature + aggregation +
evaluation on both; seconds per round = (time of the last evaluation - time of round 0's) / rounds
(fipa train: metrics.csv's wall_s; Flower: python -m fipa.flower.pipeline's seconds_per_round.txt).
The whole process wall time (imports, Ray's start-up) is printed beside it. Needs the extra:
pip install .[flower].

    .venv/bin/python benchmarks/bench_flower.py
    .venv/bin/python benchmarks/bench_flower.py --job run.yaml --aggregator fedavg --reps 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "flower" / "fipa_flower_app" / "job.yaml"
BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    """Wall seconds of ``cmd`` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def fipa_train(job: Path, out: Path) -> tuple[float, float]:
    """(seconds per round, process wall seconds) of `fipa train` on ``job``."""
    wall = timed([str(BIN / "fipa"), "train", "-c", str(job), "-o", str(out), "-q"])
    m = pd.read_csv(out / "metrics.csv")
    return (m["wall_s"].iloc[-1] - m["wall_s"].iloc[0]) / (m["round"].iloc[-1] - m["round"].iloc[0]), wall


def flower(job: Path, out: Path) -> tuple[float, float]:
    """(seconds per round, process wall seconds) of the job in Flower's simulation engine."""
    wall = timed([sys.executable, "-m", "fipa.flower.pipeline", str(job), str(out)])
    return float((out / "seconds_per_round.txt").read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=JOB, help="run config (default: the example app's job)")
    parser.add_argument("--aggregator", choices=["job", "fipa", "fedavg"], default="job",
                        help="replace the job's aggregator (fipa: rho 1e-3, rank 4)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions; the best of each side is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = yaml.safe_load(args.job.read_text())
        if args.aggregator != "job":
            job["aggregator"] = {"fipa": {"name": "fipa", "rho": 1e-3, "rank": 4},
                                 "fedavg": {"name": "fedavg"}}[args.aggregator]
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        ours, theirs = [], []
        for rep in range(args.reps):  # interleaved: the machine's load hits both alike
            ours.append(fipa_train(path, Path(tmp) / f"fipa{rep}"))
            theirs.append(flower(path, Path(tmp) / f"flower{rep}"))
    (f_round, f_wall), (w_round, w_wall) = min(theirs), min(ours)
    name, rounds = job["aggregator"]["name"], job["rounds"]
    print(f"job: {args.job.name}, aggregator {name}, {rounds} rounds, best of {args.reps}")
    print(f"{'':24}{'s/round':>10}{'process s':>12}")
    print(f"{'Flower simulation':24}{f_round:>10.3f}{f_wall:>12.1f}")
    print(f"{'fipa train':24}{w_round:>10.3f}{w_wall:>12.1f}")
    print(f"ratio Flower / fipa train: {f_round / w_round:.1f}x per round, {f_wall / w_wall:.1f}x per job")


if __name__ == "__main__":
    main()
