"""Benchmark the FIPA server step ``fipa_direction`` against FedAvg's ``mean_delta`` (CPU).

For each parameter count P, a fresh subprocess builds M clients' random float32 factors
A_m [r, P] (R = M r rows in all) and deltas [P], then times the server step and measures
its peak extra resident memory: the process's RSS high-water mark (VmHWM) is reset just
before the call through /proc/self/clear_refs, so that ``VmHWM - VmRSS(before)`` counts
only what the call allocates, not the inputs. (tracemalloc does not see torch's CPU
allocations.) Targets from the project brief: time(1.1e7) / time(1e6) < 15 (about linear
in P) and extra memory / factor bytes < 1.5.

    .venv/bin/python benchmarks/bench_aggregate.py                 # P = 1e5, 1e6, 1.1e7
    .venv/bin/python benchmarks/bench_aggregate.py --sizes 1e5 3e5 --threads 2

Timings on a shared CPU are noisy; compare runs made on the same idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procmem import proc_status_kib, reset_peak_rss  # benchmarks/ is on sys.path when run as a script

DEFAULT_SIZES = (1e5, 1e6, 1.1e7)
TIME_RATIO_TARGET = 15.0
MEMORY_RATIO_TARGET = 1.5
LARGE_P = 2_000_000  # above this, use --large-repeats


# ----------------------------------------------------------------------------- worker


def make_inputs(P: int, clients: int, rank: int, seed: int):
    """Random float32 factors [rank, P] and deltas [P] filled in place (no temporaries)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    factors = [torch.empty(rank, P, dtype=torch.float32).normal_(generator=g) for _ in range(clients)]
    deltas = [torch.empty(P, dtype=torch.float32).normal_(generator=g) for _ in range(clients)]
    counts = [int(c) for c in torch.randint(50, 500, (clients,), generator=g)]
    return factors, deltas, counts


def timed_with_memory(fn, repeats: int) -> tuple[list[float], int, bool]:
    """Wall times [s] of ``repeats`` calls and the largest peak extra RSS [bytes] of one call."""
    times, extra, exact = [], 0, True
    for _ in range(repeats):
        exact = reset_peak_rss() and exact
        before = proc_status_kib("VmRSS") if exact else proc_status_kib("VmHWM")
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        extra = max(extra, (proc_status_kib("VmHWM") - before) * 1024)
        del out
    return times, extra, exact


def worker(P: int, clients: int, rank: int, threads: int, repeats: int, rho: float) -> dict:
    """Measure one size in this (fresh) process; returns a JSON-able record."""
    import torch

    from fipa.aggregators import ClientUpdate, client_weights, fipa_direction, mean_delta

    torch.set_num_threads(threads)
    warm_f, warm_d, warm_n = make_inputs(4096, clients, rank, seed=1)  # first-call linalg setup
    warm_w = client_weights([ClientUpdate(d, n) for d, n in zip(warm_d, warm_n, strict=True)])
    fipa_direction(warm_d, warm_f, warm_w, rho)
    del warm_f, warm_d

    factors, deltas, counts = make_inputs(P, clients, rank, seed=0)
    updates = [ClientUpdate(d, n, factor=A) for d, n, A in zip(deltas, counts, factors, strict=True)]
    weights = client_weights(updates)
    fipa_times, fipa_extra, exact = timed_with_memory(
        lambda: fipa_direction(deltas, factors, weights, rho, "fedavg"), repeats)
    avg_times, _, _ = timed_with_memory(lambda: mean_delta(updates), max(repeats, 3))
    return {
        "P": P, "R": clients * rank, "threads": threads, "repeats": repeats,
        "fipa_s": statistics.median(fipa_times), "fedavg_s": statistics.median(avg_times),
        "extra_bytes": fipa_extra, "factor_bytes": sum(A.numel() * A.element_size() for A in factors),
        "delta_bytes": sum(d.numel() * d.element_size() for d in deltas), "exact_peak": exact,
    }


# ----------------------------------------------------------------------------- driver


def run_size(P: int, args: argparse.Namespace) -> dict:
    """Run the worker for one P in a fresh interpreter (a clean RSS high-water mark)."""
    repeats = args.repeats if P <= LARGE_P else args.large_repeats
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(P), "--threads", str(args.threads),
           "--clients", str(args.clients), "--rank", str(args.rank), "--repeats", str(repeats),
           "--rho", str(args.rho)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def print_table(rows: list[dict]) -> None:
    """One line per P, then the scaling and memory verdicts."""
    print(f"{'P':>10} {'R':>4} {'rep':>3} {'fipa [s]':>9} {'fedavg [s]':>10} {'fipa/avg':>8} "
          f"{'factors MiB':>11} {'extra MiB':>9} {'extra/fac':>9}")
    for r in rows:
        print(f"{r['P']:>10} {r['R']:>4} {r['repeats']:>3} {r['fipa_s']:9.3f} {r['fedavg_s']:10.4f} "
              f"{r['fipa_s'] / r['fedavg_s']:8.0f} {mib(r['factor_bytes']):>11} {mib(r['extra_bytes']):>9} "
              f"{r['extra_bytes'] / r['factor_bytes']:9.3f}" + ("" if r["exact_peak"] else "  (approx peak)"))
    by_p = {r["P"]: r for r in rows}
    big = max(by_p)
    smaller = sorted(p for p in by_p if p < big)
    ref = 1_000_000 if 1_000_000 in smaller else (smaller[-1] if smaller else None)
    if ref is not None:
        ratio = by_p[big]["fipa_s"] / by_p[ref]["fipa_s"]
        verdict = "ok" if ratio < TIME_RATIO_TARGET or (big, ref) != (11_000_000, 1_000_000) else "MISSED"
        print(f"time({big:.3g}) / time({ref:.3g}) = {ratio:.2f}  (P ratio {big / ref:.2f}; "
              f"target < {TIME_RATIO_TARGET:g} for 1.1e7 vs 1e6: {verdict})")
    mem = by_p[big]["extra_bytes"] / by_p[big]["factor_bytes"]
    print(f"extra memory / factor bytes at P={big:.3g}: {mem:.3f}  "
          f"(target < {MEMORY_RATIO_TARGET:g}: {'ok' if mem < MEMORY_RATIO_TARGET else 'MISSED'}; the "
          f"extra is O(P + R * chunk), so small P shows the fixed R x chunk block buffers)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES), help="values of P")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rank", type=int, default=20, help="factor rows per client")
    p.add_argument("--repeats", type=int, default=5, help=f"timed calls for P <= {LARGE_P:.0e}")
    p.add_argument("--large-repeats", type=int, default=2, help="timed calls for larger P")
    p.add_argument("--rho", type=float, default=1e-3)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        rec = worker(args.worker, args.clients, args.rank, args.threads, args.repeats, args.rho)
        print(json.dumps(rec))
        return
    print(f"fipa_direction vs mean_delta: {args.clients} clients x rank {args.rank}, float32, "
          f"threads={args.threads}, rho={args.rho:g}, one fresh process per P", flush=True)
    rows = []
    for P in sorted({int(s) for s in args.sizes}):
        rows.append(run_size(P, args))
        print(f"  done P={P}", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
