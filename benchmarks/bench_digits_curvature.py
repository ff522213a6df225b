"""End-to-end FIPA accuracy with each curvature path on config/config.yaml's digits refinement.

For each model (``--models``: the task's digits_cnn, P = 13,706, and McMahan's cnn2 on the
same 8x8 digits, P = 188,810) and seed: the task's partition, its FedAvg warm-up (100
rounds), then the FIPA refinement (10 rounds, the task's ``fipa`` entry: adaptive damping,
curvature memory, rank 10, 32 curvature samples) once per curvature variant:
  exact         stacked per-sample Jacobians, exact GGN of 32 samples (what ``auto`` picks here);
  gram_ggn      the Gram route on the exact GGN rows (C = 10 per sample) of ``--ggn-samples``;
  gram_sampled  the Gram route on sampled-label Fisher rows (1 per sample) of 32 samples.
Prints final test accuracy per seed, the mean, and the mean difference from ``exact``.
Warm-ups and runs are kept under ``--out`` and reused (a finished run is not trained again).

    .venv/bin/python benchmarks/bench_digits_curvature.py                  # ~10 min on 1 core
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import yaml

from fipa import cli
from fipa.config import parse_run_config
from fipa.grid import GridCell, partition_spec, run_spec, warmup_spec
from fipa.simulate import train

ROOT = Path(__file__).resolve().parents[1]


def variants(ggn_samples: int) -> dict[str, dict]:
    return {
        "exact": {"curvature_method": "exact"},
        "gram_ggn": {"curvature_method": "gram", "curvature_samples": ggn_samples},
        "gram_sampled": {"curvature_method": "gram", "curvature_fisher": "sampled"},
    }


def with_model(config: dict, model: str) -> dict:
    """config.yaml with the digits task's model replaced."""
    out = copy.deepcopy(config)
    out["tasks"]["digits"]["task"]["model"] = model
    return out


def warm_start(config: dict, seed: int, where: Path) -> tuple[str, str]:
    """(partition file, warm-up state file) of the digits task for ``seed``, made if missing."""
    part, state = where / "partition.json", where / "state.pt"
    if not part.exists():
        spec = partition_spec(config, "digits", "dirichlet01", seed)
        cli.main(["partition", "--spec", yaml.safe_dump(spec), "-o", str(part)])
    if not state.exists():
        spec = warmup_spec(config, "digits", "dirichlet01", seed, str(part))
        train(parse_run_config(spec), where / "warmup", log=lambda s: None, threads=1)
        cli.main(["export-warmup", str(where / "warmup"), "-o", str(state)])
    return str(part), str(state)


def refine(config: dict, seed: int, part: str, state: str, over: dict, outdir: Path) -> dict:
    """The FIPA refinement cell (client method local) with the aggregator keys ``over``."""
    spec = run_spec(config, GridCell("digits", "dirichlet01", "local", "fipa", seed), part, state)
    spec["aggregator"].update(over)
    return train(parse_run_config(spec), outdir, log=lambda s: None, threads=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits_cnn", "cnn2"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["exact", "gram_ggn", "gram_sampled"])
    p.add_argument("--ggn-samples", type=int, default=4, help="gram_ggn: samples (x 10 rows each)")
    p.add_argument("--out", default="/tmp/bench_digits_curvature")
    args = p.parse_args()
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    table = {}
    for model in args.models:
        config = with_model(base, model)
        for seed in args.seeds:
            where = Path(args.out) / model / f"seed{seed}"
            part, state = warm_start(config, seed, where)
            for name in args.variants:
                res = refine(config, seed, part, state, variants(args.ggn_samples)[name], where / name)
                table[model, name, seed] = (res["final"]["test_acc"], res["wall_s"])
                print(f"{model} {name} seed {seed}: test_acc {res['final']['test_acc']:.4f} "
                      f"({res['wall_s']:.0f} s)", flush=True)
    print(f"\n{'model':<12}{'curvature':<14}{'test_acc per seed':<28}{'mean':>8}{'- exact':>9}{'s/run':>7}")
    for model in args.models:
        ref = statistics.mean(table[model, "exact", s][0] for s in args.seeds) \
            if "exact" in args.variants else float("nan")
        for name in args.variants:
            accs = [table[model, name, s][0] for s in args.seeds]
            secs = statistics.mean(table[model, name, s][1] for s in args.seeds)
            mean = statistics.mean(accs)
            print(f"{model:<12}{name:<14}{' '.join(f'{a:.4f}' for a in accs):<28}{mean:>8.4f}"
                  f"{mean - ref:>+9.4f}{secs:>7.0f}")


if __name__ == "__main__":
    main()
