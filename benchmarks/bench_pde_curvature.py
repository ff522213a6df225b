"""Cost of a PINN client's residual-GGN eigenpairs against its local training, per round.

For each PDE problem: the domain is split among 4 clients (domain_split, pieces 1), and
client 0 times (a) one round of local training (Adam, ``--local-steps`` full-batch steps)
and (b) ``client_curvature`` with a rank-r low-rank request (per-point Jacobians of the
residual by vmap(jacrev), thin SVD). Prints the median of ``--repeats`` runs and the ratio
curvature / training, which is FIPA's extra client compute per round.

    .venv/bin/python benchmarks/bench_pde_curvature.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("DDE_BACKEND", "pytorch")

import torch  # noqa: E402

from fipa.client_model import ClientModel  # noqa: E402
from fipa.clients import CLIENT_METHODS  # noqa: E402
from fipa.config import ClientConfig, parse_params  # noqa: E402
from fipa.curvature import CurvatureRequest, client_curvature  # noqa: E402
from fipa.params import ParamLayout  # noqa: E402
from fipa.partition import DomainSplitParams, make_partition  # noqa: E402
from fipa.round_context import RoundContext  # noqa: E402
from fipa.tasks.pde import PINN, PROBLEMS, PDEParams  # noqa: E402

# the default-reproduction settings of notes/pde-default-config.yaml (time-dependent problems
# split along x, Helmholtz into 2 x 2 blocks); helmholtz2d_n1 keeps its soft-BC acceptance setting
SETTINGS = {
    "poisson1d": {"n_domain": 100, "n_boundary": 2},
    "helmholtz2d": {"n_domain": 144, "activation": "sin", "hard_bc": True,
                    "residual_scale": (4 * math.pi) ** 2, "input_scale": 2 * math.pi},
    "helmholtz2d_n1": {"n_domain": 400, "n_boundary": 64, "bc_weight": 100.0},
    "heat1d": {"n_domain": 120, "n_boundary": 16, "n_initial": 32},
    "diffusion_reaction": {"n_domain": 200, "n_boundary": 16, "n_initial": 32, "input_scale": math.pi},
    "allen_cahn": {"n_domain": 120, "n_boundary": 16, "n_initial": 32, "ic_weight": 10.0, "bc_weight": 10.0},
    "burgers": {"n_domain": 120, "n_boundary": 16, "n_initial": 32},
}


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(problem: str, args: argparse.Namespace) -> dict[str, float]:
    values = {"problem": problem, "hidden": args.hidden, "test_points": 20, **SETTINGS.get(problem, {})}
    task = PINN(parse_params(PDEParams, values, "task"), seed=0, dtype=torch.float64)
    axis = 0 if task.problem.time else None
    parts = make_partition(task.partition_input(), "domain_split", 4, DomainSplitParams(1, axis), seed=0)
    data = task.client_data(parts[0])
    torch.manual_seed(0)
    model = task.build_model()
    layout = ParamLayout.of(model)
    theta = layout.flatten(dict(model.named_parameters())).detach()
    cfg = ClientConfig(optimizer="adam", lr=1e-3, local_steps=args.local_steps)
    method = CLIENT_METHODS.get("local")(cfg)
    gen = torch.Generator().manual_seed(0)
    request = CurvatureRequest(kind="lowrank", rank=args.rank, curvature_method="exact")
    cm = ClientModel(task, model, layout)
    t_train = median_time(lambda: method.train(cm, theta, data, gen, {}, RoundContext(1)), args.repeats)
    t_curv = median_time(lambda: client_curvature(request, cm, theta, data, gen), args.repeats)
    return {"P": layout.numel, "n": len(parts[0]), "train": t_train, "curv": t_curv}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="*", default=PROBLEMS.names())
    p.add_argument("--hidden", type=int, nargs="*", default=[32, 32])
    p.add_argument("--local-steps", type=int, default=40)
    p.add_argument("--rank", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"client 0 of 4, Adam {args.local_steps} local steps, rank {args.rank}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'problem':20s} {'P':>6s} {'n_m':>5s} {'train/round':>12s} {'GGN eig':>9s} {'ratio':>7s}")
    for name in args.problems:
        r = bench(name, args)
        print(f"{name:20s} {r['P']:6d} {r['n']:5d} {r['train']:11.3f}s {r['curv']:8.3f}s "
              f"{r['curv'] / r['train']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
