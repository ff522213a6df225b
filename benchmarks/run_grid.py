"""A workflow config's grid cells without Snakemake, in the workflow's lockstep batches.

Expands the selected tasks of a workflow config with the workflow's own code (``fipa.grid.cells``
and ``fipa.grid.run_spec``: the run configs of ``make reproduce``, the partition drawn in the job
from the same seed) and runs the cells of each task x partition x client method as one ``fipa
train-batch`` process, as the workflow's ``train_batch`` rule does (``--threads 1`` unless told
otherwise). Which cells share a lockstep batch can move FIPA's numbers at round-off level, which
rho = 1e-4 amplifies, so the same batches give the workflow's numbers (checked bit for bit on
pde_poisson1d's 24 cells). Then it prints the final value of each run's primary metric per
aggregator and column (task/partition; mean ± sd over seeds, sd with ddof 1, and the geometric
mean over columns), every seed's value, the runs that end worse than at round 0, and each batch's
wall and CPU seconds. A cell already finished with the same config is skipped, so an interrupted
call resumes. Tasks with a shared warm-up (the vision refinements)
are refused: `make reproduce` or benchmarks/label_skew.py run those.

The PINN tables of notes/pde-results.md and the FIPA variants of notes/adaptive-damping.md and
notes/label-skew.md come from it; each note gives its table's command. Examples:

    python benchmarks/run_grid.py --smoke                 # 2 rounds x 5 steps of poisson1d: ~30 s
    python benchmarks/run_grid.py --family pde            # config/config.yaml's six PINN tasks
    python benchmarks/run_grid.py --tasks-from notes/pde-default-config.yaml    # issue 13's grid
    python benchmarks/run_grid.py --tasks pde_burgers_smooth --aggregators centralized \\
        --seeds 0 --set client.lr=2.0e-2 --set task.input_scale=4.0             # one setting
    python benchmarks/run_grid.py --tasks regression_1d --aggregators fedavg tr \\
        --variant 'tr={name: fipa, rho: 1.0e-4, damping: trust_region}' \\
        --set partitions='{iid4: {scheme: iid, clients: 4}}'                    # a variant, a split

Time: the six PINN tasks of config/config.yaml (144 cells) take about 9 CPU minutes, one task per
process on one thread (548 CPU s for issue 13's 162 cells on the 2-core box); ``--jobs 2`` runs
two batches at once. poisson1d's 24 cells: 43 CPU s. ``--smoke``: about 20 s, mostly start-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from fipa import grid, paths

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"tasks": ["pde_poisson1d"], "seeds": [0], "aggregators": ["fedavg", "fipa", "centralized"],
         "set": ["rounds=2", "eval_every=1", "client.local_steps=5"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                    help="workflow config giving the aggregators, client methods, seeds and tasks")
    ap.add_argument("--tasks-from", type=Path, default=None,
                    help="a YAML whose `tasks:` replace the config's (e.g. notes/pde-default-config.yaml)")
    ap.add_argument("--tasks", nargs="+", default=None, help="task entries (default: all, see --family)")
    ap.add_argument("--family", default=None, help="only the tasks whose `task.name` is this, e.g. pde")
    ap.add_argument("--aggregators", nargs="+", default=None,
                    help="run these aggregator entries in every task (default: each task's own list)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=YAML",
                    help="add or replace an aggregator entry, e.g. 'fipa_t1={name: fipa, damping: adaptive}'")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="set a key of every selected task entry, dotted: client.lr=3.0e-3, "
                         "task.input_scale=2.0, rounds=40, aggregator_overrides.fipa.rank=40")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the config's")
    ap.add_argument("--plugin", action="append", default=[], metavar="FILE",
                    help="a plugin every cell imports (a .py path relative to the repository root)")
    ap.add_argument("--metric", default=None, help="final.json metric to tabulate (default: primary)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per batch process")
    ap.add_argument("--jobs", type=int, default=1, help="batch processes at once")
    ap.add_argument("--out", type=Path, default=ROOT / paths.RESULTS / "grid_runs",
                    help="run directories go to OUT/<task>/<partition>/<method>/<aggregator>/seed<N>")
    ap.add_argument("--smoke", action="store_true",
                    help="poisson1d, seed 0, fedavg/fipa/centralized, 2 rounds x 5 steps, into OUT/smoke")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.seeds, args.aggregators = SMOKE["tasks"], SMOKE["seeds"], SMOKE["aggregators"]
        args.set = SMOKE["set"] + args.set
        args.out = args.out / "smoke"
    return args


def set_key(entry: dict[str, Any], dotted: str, value: Any) -> None:
    """entry[a][b][c] = value for ``dotted`` = "a.b.c", creating the mappings on the way."""
    *parents, last = dotted.split(".")
    for key in parents:
        entry = entry.setdefault(key, {})
    entry[last] = value


def selected_tasks(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The task entries to run: ``--tasks``, else every task (of ``--family``); none with a warm-up."""
    names = args.tasks or [t for t, e in config["tasks"].items()
                           if args.family is None or e["task"]["name"] == args.family]
    missing = [t for t in names if t not in config["tasks"]]
    if missing:
        have = ", ".join(config["tasks"])
        raise SystemExit(f"--tasks: {', '.join(missing)} not in the config; it has {have}")
    warm = [t for t in names if "warmup" in config["tasks"][t]]
    if warm:
        raise SystemExit(f"{', '.join(warm)}: a shared warm-up; run it with make reproduce or "
                         "benchmarks/label_skew.py")
    return names


def grid_config(args: argparse.Namespace) -> dict[str, Any]:
    """The workflow config restricted to the selected tasks, with the command line's changes."""
    config = yaml.safe_load(args.config.read_text())
    if args.tasks_from is not None:
        config["tasks"] = yaml.safe_load(args.tasks_from.read_text())["tasks"]
    for text in args.variant:
        name, entry = text.split("=", 1)
        config["aggregators"][name] = yaml.safe_load(entry)
    config["tasks"] = {t: config["tasks"][t] for t in selected_tasks(config, args)}
    for entry in config["tasks"].values():
        for text in args.set:
            key, value = text.split("=", 1)
            set_key(entry, key, yaml.safe_load(value))
        if args.aggregators is not None:
            entry["aggregators"] = list(args.aggregators)
            entry.pop("method_aggregators", None)
        if args.seeds is not None:
            entry["seeds"] = list(args.seeds)
    return config


def manifests(config: dict[str, Any], out: Path, plugins: list[str]) -> dict[str, Path]:
    """One ``fipa train-batch`` manifest per task x partition x client method (the workflow's
    batches): every cell's run config inline and its run directory."""
    batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in grid.cells(config):
        spec = grid.run_spec(config, cell, partition_file=None)
        spec.pop("partition_file")  # drawn in the job, from the cell's seed, as `fipa partition` does
        if plugins:
            spec["plugins"] = list(plugins)
        batch = f"{cell.task}/{cell.partition}/{cell.method}"
        batches[batch].append({"output": str(out / cell.run_id), "spec": spec, "label": cell.run_id})
    files = {}
    for batch, cells in batches.items():
        files[batch] = out / "manifests" / f"{batch}.yaml"
        files[batch].parent.mkdir(parents=True, exist_ok=True)
        files[batch].write_text(yaml.safe_dump(cells, sort_keys=False))
    return files


def run_batch(manifest: Path, threads: int) -> tuple[float, float]:
    """Run one manifest in its own process; (wall s, CPU s of the finished child processes)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    cmd = [sys.executable, "-m", "fipa.cli", "train-batch", str(manifest), "--threads", str(threads), "-q",
           "--supersede"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # with --jobs > 1 the delta may include a concurrent batch that ended meanwhile
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return time.perf_counter() - start, cpu


def outcome(run_dir: Path, metric: str | None) -> tuple[float, float, bool, bool]:
    """(final metric, round-0 metric, whether the final is worse, diverged) of one run directory;
    ``metric`` None: the run's primary metric."""
    final = json.loads((run_dir / "final.json").read_text())
    metric = metric or final["primary_metric"]
    with open(run_dir / "metrics.csv", newline="") as fh:
        first = float(next(csv.DictReader(fh)).get(metric) or math.nan)
    value = float(final["final"].get(metric, math.nan))
    sign = -1.0 if final.get("metric_directions", {}).get(metric) == "max" else 1.0
    return value, first, sign * (value - first) > 0, final["diverged"]


def mean_sd(values: list[float]) -> str:
    """'mean ± sd' of the finite values, with the count of diverged (NaN) ones."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged"
    sd = f" ± {statistics.stdev(finite):.3g}" if len(finite) > 1 else ""
    lost = f" ({len(values) - len(finite)} div.)" if len(finite) < len(values) else ""
    return f"{statistics.mean(finite):.3g}{sd}{lost}"


def column(cell: grid.GridCell, config: dict[str, Any]) -> str:
    """A table column: task/partition, and the client method where the task has several."""
    methods = config["tasks"][cell.task].get("client_methods") or list(config["client_methods"])
    return f"{cell.task}/{cell.partition}" + (f"/{cell.method}" if len(methods) > 1 else "")


def report(config: dict[str, Any], out: Path, metric: str | None) -> None:
    """Print the tables: means per aggregator x column, per-seed values, runs that end above round 0."""
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    worse = []
    for cell in grid.cells(config):
        final, first, got_worse, diverged = outcome(out / cell.run_id, metric)
        results[(cell.aggregator, column(cell, config))].append(math.nan if diverged else final)
        if got_worse and not diverged:
            worse.append(f"{cell.run_id} ({first:.3g} -> {final:.3g})")
    columns = list(dict.fromkeys(c for _, c in results))
    aggregators = list(dict.fromkeys(a for a, _ in results))
    print(f"\nfinal {metric or 'primary metric'}, mean ± sd over seeds\n")
    print("| aggregator | " + " | ".join(columns) + " | geo. mean |")
    print("|---|" + "---|" * (len(columns) + 1))
    for agg in aggregators:
        means = [statistics.mean(results[(agg, c)]) for c in columns]
        geo = math.exp(statistics.mean(math.log(m) for m in means)) if all(m > 0 for m in means) else math.nan
        print(f"| {agg} | " + " | ".join(mean_sd(results[(agg, c)]) for c in columns) + f" | {geo:.3g} |")
    print("\nper seed:")
    for (agg, col), values in results.items():
        print(f"  {col} {agg}: " + " ".join(f"{v:.4g}" for v in values))
    print(f"\nruns that end worse than at round 0: {len(worse)}")
    for line in worse:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = grid_config(args)
    files = manifests(config, args.out, args.plugin)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        costs = dict(zip(files, pool.map(lambda f: run_batch(f, args.threads), files.values()), strict=True))
    report(config, args.out, args.metric)
    print("\nbatch cost (wall s, CPU s): " + ", ".join(f"{t} {w:.0f}/{c:.0f}" for t, (w, c) in costs.items()))


if __name__ == "__main__":
    main()
