"""Start-up of a training job per task family, and what running cells in one process saves.

For each family (regression, pde, vision on the offline digits) a small one-round job is
started as a fresh ``fipa train`` process; the time from spawning it to its first
progress line ("round 0/..", printed after the data, model and round-0 evaluation are
ready) is its start-up. A bare ``python -c "import torch"`` is timed in the same loop as
the floor no job can beat. The heavy modules each job ended up importing are listed
(DeepXDE and torchvision must appear only in their own families). Finally N regression
cells run as N processes against one ``fipa train-batch`` process.

    .venv/bin/python benchmarks/bench_startup.py            # 3 repetitions, 4 batched cells
    .venv/bin/python benchmarks/bench_startup.py --reps 5 --cells 8

Timings on a shared CPU are noisy; compare lines of one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("deepxde", "torchvision", "pandas", "matplotlib", "seaborn", "scipy", "sympy", "torch._dynamo")
BASE = {"partition": {"scheme": "domain_split", "clients": 4, "pieces": 1}, "rounds": 1, "eval_every": 1}
FAMILIES = {
    "regression": {**BASE, "task": {"name": "regression", "n_train": 512, "hidden": [32, 32]},
                   "client": {"optimizer": "adam", "lr": 0.01, "local_epochs": 1, "batch_size": 32},
                   "aggregator": {"name": "fipa", "rho": 1.0e-4, "rank": 10}},
    "pde": {**BASE, "task": {"name": "pde", "problem": "poisson1d", "n_domain": 100, "hidden": [32, 32]},
            "client": {"optimizer": "adam", "lr": 1.0e-3, "local_steps": 5},
            "aggregator": {"name": "fipa", "rho": 1.0e-4, "rank": 10}},
    "vision": {**BASE, "task": {"name": "vision", "dataset": "digits", "model": "digits_cnn"},
               "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
               "client": {"optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 32},
               "aggregator": {"name": "fedavg"}, "dtype": "float32"},
}
JOB = ("import sys, time; t0 = float(sys.argv[1]); from fipa.cli import main; rc = main(sys.argv[2:]); "
       "print('HEAVY', sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(rc)")


def env() -> dict[str, str]:
    return {**os.environ, "DDE_BACKEND": "pytorch", "PYTHONPATH": str(ROOT)}


def time_job(config: Path, outdir: Path) -> tuple[float, float, list[str]]:
    """(seconds to the first progress line, seconds in all, heavy modules imported) of one job."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", JOB.format(heavy=HEAVY), str(t0), "train", "-c",
                             str(config), "-o", str(outdir), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    first, heavy = None, []
    for line in proc.stdout:
        if first is None and "round 0/" in line:
            first = time.perf_counter() - t0
        if line.startswith("HEAVY"):
            heavy = eval(line.split(" ", 1)[1])  # noqa: S307 - our own printed list literal
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {proc.stderr.read()[-2000:]}")
    return first or float("nan"), time.perf_counter() - t0, heavy


def time_import_torch() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env())
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cells", type=int, default=4, help="regression cells for the batch comparison")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fipa-startup-") as tmp:
        tmp = Path(tmp)
        for name, cfg in FAMILIES.items():
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        results: dict[str, list] = {"import torch": []}
        heavy: dict[str, list[str]] = {}
        for rep in range(args.reps):
            results["import torch"].append((time_import_torch(), None))
            for name in args.families:
                first, total, heavy[name] = time_job(tmp / f"{name}.yaml", tmp / f"{name}-{rep}")
                results.setdefault(name, []).append((first, total))
        floor = min(t for t, _ in results["import torch"])
        print(f"python -c 'import torch': {floor:.2f} s (best of {args.reps})")
        for name in args.families:
            first = min(f for f, _ in results[name])
            total = min(t for _, t in results[name])
            print(f"{name:10s} start-up to round 0: {first:5.2f} s ({first - floor:+.2f} s over import "
                  f"torch; whole 1-round job {total:5.2f} s); heavy imports: "
                  f"{', '.join(heavy[name]) or 'none'}")
        # N cells: N processes against one train-batch process
        cfg = FAMILIES["regression"]
        cells = []
        for i in range(args.cells):
            path = tmp / f"cell{i}.yaml"
            path.write_text(yaml.safe_dump({**cfg, "seed": i}))
            cells.append(path)
        t0 = time.perf_counter()
        for i, c in enumerate(cells):
            subprocess.run([sys.executable, "-m", "fipa.cli", "train", "-c", str(c), "-o",
                            str(tmp / f"sep{i}"), "-q", "--threads", "1"],
                           check=True, env=env(), capture_output=True)
        separate = time.perf_counter() - t0
        t0 = time.perf_counter()
        argv = [a for i, c in enumerate(cells) for a in ("--cell", str(c), str(tmp / f"bat{i}"))]
        subprocess.run([sys.executable, "-m", "fipa.cli", "train-batch", *argv, "-q", "--threads", "1"],
                       check=True, env=env(), capture_output=True)
        batched = time.perf_counter() - t0
        print(f"{args.cells} regression cells: {separate:.1f} s as separate processes, {batched:.1f} s in "
              f"one train-batch process ({separate / batched:.2f}x)")


if __name__ == "__main__":
    main()
