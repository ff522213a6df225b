"""The thread rule: ``fipa train`` with no ``--threads`` against ``--threads 1`` (fipa/threads.py).

The job is the one a new user runs by hand (issue "Fast grid"): a 4-client regression job of
20 rounds, 200 points per client, MLP 1-32-32-1, Adam, 5 local epochs. Each variant runs
``--reps`` times, interleaved, as a fresh process; the script prints the medians of the
training time (final.json ``wall_s``), the process's wall and user time, and the ratio
default / --threads 1, first on a quiet machine, then beside one CPU-bound process per core
but one (a concurrent job). Target: ratio <= 1.3 in both.

    .venv/bin/python benchmarks/bench_threads.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

JOB = {
    "task": {"name": "regression", "target": "multiscale_sine", "n_train": 800, "hidden": [32, 32]},
    "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1},
    "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_epochs": 5, "batch_size": 32},
    "aggregator": {"name": "fedavg"},
    "rounds": 20, "eval_every": 5, "seed": 0, "dtype": "float64",
}


def run_once(config: Path, workdir: Path, threads: int | None) -> dict[str, float]:
    """One ``fipa train`` process: training seconds, wall seconds, user CPU seconds."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, "-m", "fipa.cli", "train", "-c", str(config), "-o", str(out), "-q"]
    if threads:
        cmd += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    final = json.loads((out / "final.json").read_text())
    return {"train_s": final["wall_s"], "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "threads": final["threads"]["intra"]}


def busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def measure(config: Path, workdir: Path, reps: int, label: str) -> float:
    runs: dict[str, list[dict[str, float]]] = {"default": [], "threads 1": []}
    for _ in range(reps):
        runs["default"].append(run_once(config, workdir, None))
        runs["threads 1"].append(run_once(config, workdir, 1))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("train_s", "wall_s", "user_s")}
           for k, v in runs.items()}
    for k, v in med.items():
        print(f"{label:28s} {k:10s} (threads {runs[k][0]['threads']}): training {v['train_s']:6.2f} s  "
              f"process wall {v['wall_s']:6.2f} s  user {v['user_s']:6.2f} s", flush=True)
    ratio = med["default"]["train_s"] / med["threads 1"]["train_s"]
    print(f"{label:28s} ratio default / --threads 1 (training, medians of {reps}): {ratio:.2f}", flush=True)
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        config = workdir / "job.yaml"
        config.write_text(yaml.safe_dump(JOB))
        print(f"{os.cpu_count()} cores; job: {json.dumps(JOB)}")
        quiet = measure(config, workdir, args.reps, "quiet machine")
        stop = mp.Event()
        hogs = [mp.Process(target=busy, args=(stop,)) for _ in range(max(1, (os.cpu_count() or 2) - 1))]
        for h in hogs:
            h.start()
        try:
            loaded = measure(config, workdir, args.reps, "beside a CPU-bound process")
        finally:
            stop.set()
            for h in hogs:
                h.join()
        print(f"target <= 1.3: quiet {quiet:.2f}, loaded {loaded:.2f}")


if __name__ == "__main__":
    main()
