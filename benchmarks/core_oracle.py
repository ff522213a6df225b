"""Reference metrics of the numerical core: every client method x aggregator on small tasks.

    nice -n 10 .venv/bin/python benchmarks/core_oracle.py /tmp/core-before
    (change the core)
    nice -n 10 .venv/bin/python benchmarks/core_oracle.py /tmp/core-after
    .venv/bin/python benchmarks/compare_metrics.py /tmp/core-before /tmp/core-after

A refactoring of the client methods, the curvature uploads or the aggregators must leave
every number of these runs as it was (all columns of metrics.csv but ``wall_s``). The runs
cover both local training paths (sequential and vectorized), every client method (FedRCL
where it applies: classification with features), the averaging, adaptive, diagonal and
FIPA aggregators (fixed, adaptive with curvature memory, trust-region damping), partial
participation (FIPA's memory of absent clients), and batches trained in lockstep (the runs
axis, ``fipa.batch.run_cells``). One thread: the sums do not depend on BLAS's split.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

METHODS = {"local": {}, "fedprox": {"mu": 0.01}, "scaffold": {}, "feddyn": {"alpha": 0.01},
           "fedsam": {"rho": 0.05}, "fedrcl": {}}
AGGREGATORS = {
    "fedavg": {"name": "fedavg"},
    "fedadam": {"name": "fedadam", "server_lr": 0.01},
    "diag_fisher": {"name": "diag_fisher", "curvature_samples": 16},
    "fipa_fixed": {"name": "fipa", "rho": 1e-3, "rank": 4},
    "fipa": {"name": "fipa", "rho": 1e-4, "rank": 4, "damping": "adaptive", "memory": "curvature",
             "truncation": 0.1, "step_bound": "auto", "curvature_samples": 16},
    "fipa_trust_region": {"name": "fipa", "rho": 1e-3, "rank": 4, "damping": "trust_region"},
}

REGRESSION: dict[str, Any] = {
    "task": {"name": "regression", "target": "multiscale_sine", "n_train": 64, "hidden": [8, 8],
             "test_points": 200},
    "partition": {"scheme": "quantity_skew", "clients": 5, "alpha": 0.5, "min_size": 4},
    "client": {"optimizer": "adam", "lr": 0.01, "local_epochs": 2, "batch_size": 8},
    "participation": 0.6, "rounds": 4, "eval_every": 1, "dtype": "float64",
}
DIGITS: dict[str, Any] = {
    "task": {"name": "vision", "dataset": "digits", "model": "digits_cnn", "train_subsample": 160,
             "test_subsample": 100},
    "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
    "client": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "local_steps": 3, "batch_size": 16},
    "participation": 0.75, "rounds": 3, "eval_every": 1, "dtype": "float32",
}
MNIST1D: dict[str, Any] = {
    "task": {"name": "vision", "dataset": "mnist1d", "model": "mnist1d_cnn", "train_subsample": 200,
             "test_subsample": 100},
    "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
    "client": {"optimizer": "sgd", "lr": 0.05, "local_epochs": 1, "batch_size": 16},
    "participation": 0.75, "rounds": 3, "eval_every": 1, "dtype": "float32", "vectorize": True,
}
# (name, base config, client methods, vectorize settings)
SETTINGS = [
    ("regression", REGRESSION, [m for m in METHODS if m != "fedrcl"], [True, False]),
    ("digits", DIGITS, list(METHODS), [False]),
    ("mnist1d", MNIST1D, [m for m in METHODS if m != "fedrcl"], [True]),
]


def cell(base: dict[str, Any], method: str, aggregator: str, vectorize: bool, seed: int = 0
         ) -> dict[str, Any]:
    """The run config of one (client method, aggregator) on ``base``."""
    cfg = copy.deepcopy(base)
    cfg["client"] = {**cfg["client"], "method": method, **METHODS[method]}
    cfg["aggregator"] = dict(AGGREGATORS[aggregator])
    cfg.update(seed=seed, vectorize=vectorize)
    return cfg


def run_alone(out: Path) -> None:
    """One ``fipa.simulate.train`` per (setting, path, method, aggregator), and the centralized reference
    (one pooled client: ``reference: centralized``)."""
    from fipa.config import parse_run_config
    from fipa.simulate import train

    for name, base, methods, paths in SETTINGS:
        for vec in paths:
            runs = [(m, a, cell(base, m, a, vec)) for m in methods for a in AGGREGATORS]
            # the centralized reference, a run-level regime (written `aggregator: {name: centralized}` before)
            central = {**cell(base, "local", "fedavg", vec), "reference": "centralized"}
            runs.append(("local", "centralized", central))
            for method, agg, cfg in runs:
                t0 = time.perf_counter()
                where = out / "alone" / f"{name}-vec{int(vec)}" / method / agg
                train(parse_run_config(cfg), where, log=lambda s: None, threads=1)
                print(f"{where.relative_to(out)}  {time.perf_counter() - t0:.1f} s", flush=True)


def run_lockstep(out: Path) -> None:
    """Per client method, a batch of every aggregator x two seeds on the regression task in lockstep."""
    from fipa.batch import CellJob, run_cells

    for method in METHODS:
        if method == "fedrcl":
            continue
        cells = [CellJob(output=str(out / "lockstep" / method / f"{agg}-s{seed}"),
                         spec=cell(REGRESSION, method, agg, True, seed))
                 for agg in AGGREGATORS for seed in (0, 1)]
        t0 = time.perf_counter()
        run_cells(cells, lambda c: (lambda s: None), echo=lambda s: None, threads=1)
        print(f"lockstep/{method}  {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder of the runs (created)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_alone(args.out)
    run_lockstep(args.out)


if __name__ == "__main__":
    main()
