"""Milliseconds per federated round, sequential against vectorized local training (CPU).

For each task (the default reproduction's regression task; a Poisson PINN as in the
spec's prototype: MLP 1-32-32-32-1, Adam, 100 full-batch local steps) and each client
count M, one Simulation is built and the same rounds (client sampling, minibatches,
local training, curvature if the aggregator asks for it, the aggregator's step) are run
on both paths, interleaved in one process so that the machine's load hits both alike;
the best of ``--reps`` repetitions is reported with the ratio sequential / vectorized.

    .venv/bin/python benchmarks/bench_round.py --threads 2
    .venv/bin/python benchmarks/bench_round.py --tasks regression --clients 16 --aggregator fipa
    .venv/bin/python benchmarks/bench_round.py --reproduction     # whole default grid, seq vs auto
    .venv/bin/python benchmarks/bench_round.py --runs 1 9 27      # the runs axis: N runs x M = 4

``--runs`` builds N runs of each task (seeds 0 .. N-1, M = 4 clients, the chosen aggregator)
and times one round of all of them two ways, interleaved: each run on its own vectorized
path (today's per-run path, run after run) against all runs' clients stacked in one call
(``work.train_work``, the lockstep of a batch job); it prints ms per round per run.

``--reproduction`` copies the repository's tracked files (no results/, no .venv) into a
temporary directory and times ``snakemake --cores 2`` on config/config.yaml twice:
every task with ``vectorize: false`` (before), then with the default ``auto`` (after).
Targets from the issue: >= 8x at M = 16 on regression, >= 3x on the PINN.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = {
    "regression": {
        "task": {"name": "regression", "target": "multiscale_sine", "n_train": 512, "hidden": [32, 32]},
        "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_epochs": 10, "batch_size": 32},
    },
    "pde": {
        "task": {"name": "pde", "problem": "poisson1d", "n_domain": 400, "hidden": [32, 32, 32]},
        "client": {"method": "local", "optimizer": "adam", "lr": 1.0e-3, "local_steps": 100},
    },
}
AGGREGATORS = {"fedavg": {"name": "fedavg"}, "fipa": {"name": "fipa", "rho": 1.0e-4, "rank": 10}}


# domain_split (the default reproduction's, unequal client sizes) or iid (equal sizes: every
# client takes the same number of local steps, so no step of the stacked path runs short-handed)
PARTITIONS = {"domain_split": {"scheme": "domain_split", "pieces": 1}, "iid": {"scheme": "iid"}}


def run_config(task: str, clients: int, aggregator: str, method: str,
               partition: str = "domain_split") -> dict:
    cfg = copy.deepcopy(TASKS[task])
    cfg["partition"] = {**PARTITIONS[partition], "clients": clients}
    cfg["client"]["method"] = method
    cfg.update(aggregator=dict(AGGREGATORS[aggregator]), rounds=1, seed=0, dtype="float64")
    return cfg


def time_round(sim, rnd: int, vectorized: bool) -> float:
    """Seconds of round ``rnd`` (sampling, local training, curvature, aggregation) on one path."""
    import torch

    from fipa.round_context import RoundContext
    from fipa.simulate import round_updates, sample_clients

    sim.vectorized = vectorized
    theta = sim.initial_theta()
    agg_state = sim.aggregator.init_state(theta)
    method_state = sim.method.init_server_state(theta)
    t0 = time.perf_counter()
    chosen = sample_clients(sim.cfg.seed, rnd, len(sim.data), sim.cfg.participation)
    updates = round_updates(sim, theta, rnd, chosen, {}, method_state)
    probe = sim.loss_probe(chosen) if sim.aggregator.needs_loss_probe else None
    ctx = RoundContext(rnd, method_state, probe)
    theta_new = sim.aggregator.step(theta, updates, agg_state, ctx)
    sim.method.end_round(theta_new, updates, ctx, len(sim.data))
    assert bool(torch.isfinite(theta_new).all())
    return time.perf_counter() - t0


def bench_rounds(args: argparse.Namespace) -> list[dict]:
    from fipa.config import parse_run_config
    from fipa.simulate import Simulation

    rows = []
    for task in args.tasks:
        for M in args.clients:
            cfg = run_config(task, M, args.aggregator, args.method, args.partition)
            sim = Simulation.build(parse_run_config(cfg))
            times: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(args.reps + 1):  # the first repetition warms up both paths
                for vec in (False, True):
                    t = time_round(sim, 1 + rep % 3, vec)
                    if rep:
                        times[vec].append(t)
            seq, vec = (min(times[k]) * 1e3 for k in (False, True))
            rows.append({"task": task, "M": M, "seq_ms": seq, "vec_ms": vec, "ratio": seq / vec,
                         "seq_median_ms": statistics.median(times[False]) * 1e3,
                         "vec_median_ms": statistics.median(times[True]) * 1e3})
            r = rows[-1]
            print(f"{task:10s} M={M:3d}  sequential {seq:9.1f} ms/round  vectorized {vec:8.1f} ms/round  "
                  f"ratio {r['ratio']:5.1f}x  (medians {r['seq_median_ms']:.1f} / {r['vec_median_ms']:.1f})",
                  flush=True)
    return rows


def time_runs_round(sims: list, rnd: int, stacked: bool) -> float:
    """Seconds of round ``rnd`` of every run in ``sims``: per run, or all client work in one call."""
    from fipa.round_context import RoundContext
    from fipa.simulate import round_updates, round_work, sample_clients, train_work

    thetas = [sim.initial_theta() for sim in sims]
    servers = [sim.method.init_server_state(th) for sim, th in zip(sims, thetas, strict=True)]
    t0 = time.perf_counter()
    chosen = [sample_clients(sim.cfg.seed, rnd, len(sim.data), sim.cfg.participation) for sim in sims]
    if stacked:
        work = [unit for sim, th, ch, server in zip(sims, thetas, chosen, servers, strict=True)
                for unit in round_work(sim, th, rnd, ch, {}, server)]
        results = iter(train_work(work, True))
        per_run = [[next(results).update for _ in ch] for ch in chosen]
    else:
        per_run = [round_updates(sim, th, rnd, ch, {}, server)
                   for sim, th, ch, server in zip(sims, thetas, chosen, servers, strict=True)]
    for sim, th, ups in zip(sims, thetas, per_run, strict=True):
        sim.aggregator.step(th, ups, sim.aggregator.init_state(th), RoundContext(rnd))
    return time.perf_counter() - t0


def bench_runs(args: argparse.Namespace) -> list[dict]:
    from fipa.config import parse_run_config
    from fipa.simulate import Simulation

    rows = []
    for task in args.tasks:
        for N in args.runs:
            sims = [Simulation.build(parse_run_config({**run_config(task, 4, args.aggregator, args.method,
                                                                    args.partition), "seed": s}))
                    for s in range(N)]
            times: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(args.reps + 1):
                for stacked in (False, True):
                    t = time_runs_round(sims, 1 + rep % 3, stacked)
                    if rep:
                        times[stacked].append(t)
            alone, stack = (statistics.median(times[k]) * 1e3 / N for k in (False, True))
            rows.append({"task": task, "runs": N, "per_run_ms": alone, "stacked_ms": stack,
                         "ratio": alone / stack})
            print(f"{task:10s} runs={N:3d} x M=4  per-run vectorized {alone:8.1f} ms/round/run  "
                  f"stacked {stack:8.1f} ms/round/run  ratio {alone / stack:5.2f}x (medians of {args.reps})",
                  flush=True)
    return rows


# ----------------------------------------------------------------------------- reproduction


def tracked_copy(dest: Path) -> None:
    """The repository's tracked and untracked-but-not-ignored files, copied under ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", ".venv/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


VECTORIZE_SCHEMA = ("        vectorize: {enum: [auto, true, false], default: auto, "
                    "description: local training "
                    "path (fipa/vectorized.py)}\n")


def allow_vectorize_key(workdir: Path) -> None:
    """Let the copy's schema accept tasks.<name>.vectorize, where it does not yet."""
    schema = workdir / "workflow" / "schemas" / "config.schema.yaml"
    text = schema.read_text()
    if "vectorize" not in text:
        anchor = "        dtype: {enum: [float32, float64]"
        text = text.replace(anchor, VECTORIZE_SCHEMA + anchor, 1)
        schema.write_text(text)


def time_reproduction(workdir: Path, vectorize, cores: int, tasks: list[str] | None,
                      seeds: list[int] | None) -> float:
    """Wall seconds of the default reproduction (or its ``tasks``) with every task's ``vectorize`` set."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if tasks:
        config["tasks"] = {k: v for k, v in config["tasks"].items() if k in tasks}
    if seeds:
        config["seeds"] = seeds
    for t in config["tasks"].values():
        t["vectorize"] = vectorize
    # written over the copy's own config/config.yaml, the file the Snakefile reads by default
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(workdir / "results", ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(cores), "--quiet",
                          "all"], cwd=workdir, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"snakemake failed (vectorize={vectorize}):\n{res.stderr[-3000:]}")
    return wall


def bench_reproduction(cores: int, tasks: list[str] | None, seeds: list[int] | None) -> None:
    with tempfile.TemporaryDirectory(prefix="fipa-repro-") as tmp:
        work = Path(tmp)
        tracked_copy(work)
        allow_vectorize_key(work)
        print(f"tasks: {', '.join(tasks) if tasks else 'all of config/config.yaml'}; "
              f"seeds: {seeds or 'all'}", flush=True)
        before = time_reproduction(work, False, cores, tasks, seeds)
        print(f"default reproduction, vectorize false (before): {before:7.1f} s wall", flush=True)
        after = time_reproduction(work, "auto", cores, tasks, seeds)
        print(f"default reproduction, vectorize auto  (after):  {after:7.1f} s wall", flush=True)
        print(f"ratio before / after: {before / after:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--clients", nargs="+", type=int, default=[4, 16, 64])
    p.add_argument("--aggregator", default="fedavg", choices=list(AGGREGATORS))
    p.add_argument("--method", default="local", help="client method (local, fedprox, scaffold, ...)")
    p.add_argument("--partition", default="domain_split", choices=list(PARTITIONS),
                   help="how the task's samples are split among the M clients")
    p.add_argument("--runs", nargs="+", type=int, default=None,
                   help="the runs axis instead: time N runs x 4 clients per-run against stacked")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per path (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--reproduction", action="store_true",
                   help="time the whole default reproduction (snakemake) before/after instead")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores for --reproduction")
    p.add_argument("--repro-tasks", nargs="*", default=None,
                   help="--reproduction: only these tasks of config/config.yaml (default: all)")
    p.add_argument("--repro-seeds", nargs="*", type=int, default=None,
                   help="--reproduction: only these seeds (default: the config's)")
    args = p.parse_args()
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    if args.reproduction:
        bench_reproduction(args.cores, args.repro_tasks, args.repro_seeds)
        return
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), aggregator {args.aggregator}, "
          f"method {args.method}, partition {args.partition}, best of {args.reps}")
    if args.runs:
        bench_runs(args)
    else:
        bench_rounds(args)


if __name__ == "__main__":
    main()
