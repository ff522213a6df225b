"""FIPA against averaging under label skew: warm-ups, refinements and a paired table, by hand.

For each data set x Dirichlet alpha x seed, one FedAvg warm-up (``fipa train``, exported with
``fipa export-warmup``), then one refinement per aggregator variant from that state, run as one
``fipa train-batch`` per (data set, alpha) so the variants and seeds share a process. Prints
final test accuracy per variant (mean, sd, per seed) and the paired difference of each variant
against the first one (mean and a 95% t interval over seeds). The numbers of
notes/label-skew.md come from this script; every setting is a flag.

    python benchmarks/label_skew.py --data mnist1d --alphas 0.05 0.1 0.5 iid --seeds 0 1 2 3 4 \
        --variants fedavg fipa fipa_eps
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def setting(dataset: str, model: str, warmup_batch: int, warmup_rounds: int, rounds: int) -> dict:
    """config/config.yaml's refinement of one data set: 20 clients at 25% participation, SGD lr
    0.05 for one epoch per round after a FedAvg warm-up of SGD lr 0.1 for two."""
    sgd = {"method": "local", "optimizer": "sgd"}
    return {"task": {"name": "vision", "dataset": dataset, "model": model},
            "client": {**sgd, "lr": 0.05, "local_epochs": 1, "batch_size": 32},
            "warmup_client": {**sgd, "lr": 0.1, "local_epochs": 2, "batch_size": warmup_batch},
            "warmup_rounds": warmup_rounds, "rounds": rounds, "clients": 20, "participation": 0.25}


DATA = {"digits": setting("digits", "digits_cnn", 32, 100, 10),
        "mnist1d": setting("mnist1d", "mnist1d_cnn", 64, 300, 15)}

# aggregator variants by name; extend with --variant NAME=YAML
VARIANTS = {
    "fedavg": {"name": "fedavg"},
    "fedavg_lr0.5": {"name": "fedavg", "server_lr": 0.5},
    "fedavg_lr0.25": {"name": "fedavg", "server_lr": 0.25},
    "fipa": {"name": "fipa", "rho": 1e-4, "rank": 10, "complement": "fedavg", "damping": "adaptive",
             "memory": "curvature", "truncation": 0.1, "curvature_samples": 32},
}


def partition(alpha: str, clients: int) -> dict:
    if alpha == "iid":
        return {"scheme": "iid", "clients": clients}
    return {"scheme": "dirichlet", "clients": clients, "alpha": float(alpha)}


def run_config(d: dict, alpha: str, seed: int, client: dict, agg: dict, rounds: int, **extra) -> dict:
    return {"task": dict(d["task"]), "partition": partition(alpha, d["clients"]), "client": client,
            "aggregator": agg, "rounds": rounds, "participation": d["participation"], "eval_every": rounds,
            "dtype": "float32", "seed": seed, **extra}


def fipa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fipa.cli", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def warmup(out: Path, d: dict, alpha: str, seed: int) -> Path:
    """The exported warm-up state of (alpha, seed), trained if absent."""
    state = out / f"warm_a{alpha}_s{seed}.pt"
    if not state.is_file():
        cfg = out / f"warm_a{alpha}_s{seed}.yaml"
        cfg.write_text(yaml.safe_dump(run_config(d, alpha, seed, d["warmup_client"], {"name": "fedavg"},
                                                 d["warmup_rounds"])))
        fipa("train", "-c", str(cfg), "-o", str(out / f"warm_a{alpha}_s{seed}"), "--threads", "1", "-q")
        fipa("export-warmup", str(out / f"warm_a{alpha}_s{seed}"), "-o", str(state))
    return state


def final_acc(run: Path) -> float:
    return float(json.loads((run / "final.json").read_text())["final"]["test_acc"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=DATA, default="mnist1d")
    ap.add_argument("--alphas", nargs="+", default=["0.1"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["fedavg", "fipa"])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=YAML",
                    help="an extra variant, e.g. 'fipa_eps={name: fipa, curvature_smoothing: 0.1}'")
    ap.add_argument("--rounds", type=int, help="refinement rounds (default: the data set's)")
    ap.add_argument("--warmup-rounds", type=int)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "label_skew")
    args = ap.parse_args()
    variants = dict(VARIANTS)
    for v in args.variant:
        name, text = v.split("=", 1)
        variants[name] = yaml.safe_load(text)
    d = dict(DATA[args.data])
    d["rounds"] = args.rounds or d["rounds"]
    d["warmup_rounds"] = args.warmup_rounds or d["warmup_rounds"]
    out = args.out / args.data
    out.mkdir(parents=True, exist_ok=True)
    for alpha in args.alphas:
        cells = []
        for seed in args.seeds:
            state = warmup(out, d, alpha, seed)
            for name in args.variants:
                cfg = run_config(d, alpha, seed, d["client"], variants[name], d["rounds"],
                                 warmup_checkpoint=str(state))
                path = out / f"ref_a{alpha}_s{seed}_{name}.yaml"
                path.write_text(yaml.safe_dump(cfg))
                cells += ["--cell", str(path), str(out / f"ref_a{alpha}_s{seed}_{name}")]
        fipa("train-batch", *cells, "--threads", "1", "-q", "--supersede")
        report(out, alpha, args.seeds, args.variants)


def report(out: Path, alpha: str, seeds: list[int], names: list[str]) -> None:
    warm = [final_acc(out / f"warm_a{alpha}_s{s}") for s in seeds]
    acc = {n: np.array([final_acc(out / f"ref_a{alpha}_s{s}_{n}") for s in seeds]) for n in names}
    warm_text = " ".join(f"{w:.3f}" for w in warm)
    print(f"\n{out.name} alpha {alpha}, seeds {seeds}: warm-up {np.mean(warm):.4f} ({warm_text})")
    base = acc[names[0]]
    for n in names:
        a = acc[n]
        diff = a - base
        half = stats.t.ppf(0.975, len(a) - 1) * diff.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.nan
        print(f"  {n:>16}: {a.mean():.4f} +- {a.std(ddof=1):.4f}  [{' '.join(f'{x:.3f}' for x in a)}]"
              f"  - {names[0]}: {diff.mean():+.4f} [{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}]")


if __name__ == "__main__":
    main()
