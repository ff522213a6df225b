"""Which few-row estimate of a classifier's GGN finds its top eigenvectors: the digits CNN.

The digits CNN (P = 13,706, C = 10 classes) is trained on all 1,438 training images for
``--epochs`` epochs (Adam lr 1e-3 by default, batch 32, float64, seed 0). Its GGN on ``--reference`` points
(exact: every sample's C rows M_i^T J_i) is the reference; its softmax has C - 1 = 9 outlier
eigenvalues, so the comparison uses the top 9 eigenvectors of rank-``--rank`` factors. Each of
``--draws`` draws takes 32 of the reference points; every estimate (a row budget of 32 to 320
rows) uses those points or the first 4 or 16 of them. Printed: the largest principal angle
between the estimate's top-9 eigenvector space and (a) that of the exact GGN of the draw's 32
points ("same points"), (b) that of the reference; min to max over the draws:

  exact GGN, 32 points (320 rows)          exact GGN, 4 points (40 rows)
  top-2 eigenvectors of L_i, 16 points     top-1 eigenvector of L_i, 32 points (biased)
  importance-sampled column of M_i, 32     sampled label, 32 points (u = p - e_y, y ~ p)

Only pure tensor functions of fipa.curvature and fipa.losses are used (``hessian_sqrt``,
``contract_rows``, ``lowrank_factor``); the per-sample Jacobians come from ``torch.func``.
notes/vision-curvature.md ("Quality: against the exact GGN of the same points") discusses it: this
script was written from that note's text and does not reproduce its table.

    python benchmarks/curvature_estimates.py              # about 2 min on one core, 1.5 GB
    python benchmarks/curvature_estimates.py --smoke      # 1 epoch, 64 reference points: ~15 s
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from fipa.curvature import contract_rows, lowrank_factor
from fipa.losses import hessian_sqrt
from fipa.tasks.vision import Vision, VisionParams

OUTLIERS = 9  # C - 1 for 10 classes


def trained_model(epochs: int, optimizer: str, lr: float) -> tuple[Vision, torch.nn.Module, dict]:
    """The digits task in float64 and its CNN after ``epochs`` epochs (batch 32) on all training images."""
    torch.manual_seed(0)
    task = Vision(VisionParams(dataset="digits", model="digits_cnn"), seed=0, dtype=torch.float64)
    model = task.build_model().double()
    data = task.client_data(np.arange(task.partition_input().n))
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    n = task.partition_input().n
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(32):
            batch = {k: v[idx] for k, v in data.items()}
            out = task.outputs(model, dict(model.named_parameters()), batch)
            opt.zero_grad()
            F.cross_entropy(out, task.targets(batch)).backward()
            opt.step()
    return task, model, data


def jacobians(task: Vision, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample Jacobians J_i = d f(x_i) / d theta, [n, C, P] (theta flattened in parameter order)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f_one(p: dict[str, torch.Tensor], sample: dict[str, torch.Tensor]) -> torch.Tensor:
        return task.outputs(model, p, {k: v.unsqueeze(0) for k, v in sample.items()})[0]

    jac = vmap(jacrev(f_one), in_dims=(None, 0))(params, batch)  # {name: [n, C, *shape]}
    n, C = next(iter(jac.values())).shape[:2]
    return torch.cat([jac[k].reshape(n, C, -1) for k in params], dim=-1)


def top_rows(L_sqrt: torch.Tensor, k: int) -> torch.Tensor:
    """M [n, C, k]: sqrt(eigenvalue) x eigenvector of L_i = M_i M_i^T for its top k eigenpairs."""
    e, V = torch.linalg.eigh(L_sqrt @ L_sqrt.transpose(1, 2))  # ascending
    return V[..., -k:] * e[:, None, -k:].clamp_min(0).sqrt()


def importance_column(L_sqrt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """M [n, C, 1]: one column c of M_i drawn with probability q_c ~ ||M_i[:, c]||^2, scaled by
    1 / sqrt(q_c), so that E[m m^T] = M_i M_i^T."""
    q = (L_sqrt**2).sum(dim=1)  # [n, C]
    q = q / q.sum(dim=1, keepdim=True)
    c = torch.multinomial(q, 1, generator=gen)[:, 0]
    col = L_sqrt[torch.arange(len(c)), :, c] / q[torch.arange(len(c)), c].sqrt()[:, None]
    return col[..., None]


def sampled_label(out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """M [n, C, 1]: u_i = p_i - e_y with y drawn from p_i (E[u u^T] = L_i)."""
    p = torch.softmax(out, dim=-1)
    y = torch.multinomial(p, 1, generator=gen)[:, 0]
    return (p - F.one_hot(y, p.shape[-1]).to(p.dtype))[..., None]


# estimate name -> (points, M from (output-Hessian factors [n, C, C], outputs [n, C], generator))
ESTIMATES: dict[str, tuple[int, Callable]] = {
    "exact GGN, 32 points (320 rows)": (32, lambda M, out, g: M),
    "exact GGN, 4 points (40 rows)": (4, lambda M, out, g: M),
    "top-2 eigenvectors of L_i, 16 points (32 rows)": (16, lambda M, out, g: top_rows(M, 2)),
    "top-1 eigenvector of L_i, 32 points (32 rows, biased)": (32, lambda M, out, g: top_rows(M, 1)),
    "importance-sampled column of M_i, 32 points (32 rows)": (32, lambda M, out, g: importance_column(M, g)),
    "sampled label, 32 points (32 rows)": (32, lambda M, out, g: sampled_label(out, g)),
}


def principal_angle(A1: torch.Tensor, A2: torch.Tensor) -> float:
    """Largest principal angle (radians) between the row spaces of A1 [k, P] and A2 [k', P]."""
    Q1, Q2 = torch.linalg.qr(A1.T)[0], torch.linalg.qr(A2.T)[0]
    return float(torch.arccos(torch.linalg.svdvals(Q1.T @ Q2).clamp(max=1.0).min()))


def factor(M: torch.Tensor, J: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` factor A [r, P] of (1/n) sum_i J_i^T M_i M_i^T J_i."""
    return lowrank_factor(contract_rows(M, J), rank)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--reference", type=int, default=512, help="points of the reference GGN")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--draws", type=int, default=5, help="random point subsets per estimate")
    ap.add_argument("--smoke", action="store_true", help="1 epoch, 64 reference points, 2 draws")
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.reference, args.draws = 1, 64, 2
    torch.set_num_threads(1)
    task, model, data = trained_model(args.epochs, args.optimizer, args.lr)
    n = next(iter(data.values())).shape[0]
    gen = torch.Generator().manual_seed(1)
    ref_idx = torch.randperm(n, generator=gen)[: args.reference]
    batch = {k: v[ref_idx] for k, v in data.items()}
    with torch.no_grad():
        out = task.outputs(model, dict(model.named_parameters()), batch)  # [N, C]
    M = hessian_sqrt(task.loss_kind, out)  # [N, C, C]
    J = jacobians(task, model, batch)  # [N, C, P]
    sigma, A_ref = lowrank_factor(contract_rows(M, J), args.rank)
    print(f"digits CNN after {args.epochs} epochs, P = {J.shape[-1]}; reference: exact GGN of "
          f"{args.reference} points; lambda_9 / lambda_10 = {float(sigma[8] / sigma[9]):.2f}")
    draws = [torch.randperm(args.reference, generator=gen)[:32] for _ in range(args.draws)]
    A_same = [factor(M[idx], J[idx], args.rank) for idx in draws]  # the exact GGN of each draw's points
    print(f"{'estimate (rows)':<56}{'top-9 angle vs same points':>28}{'vs reference':>16}")
    for name, (points, rows) in ESTIMATES.items():
        same, ref = [], []
        for draw in range(args.draws):
            idx = draws[draw][:points]
            A = factor(rows(M[idx], out[idx], gen), J[idx], args.rank)
            same.append(principal_angle(A[:OUTLIERS], A_same[draw][:OUTLIERS]))
            ref.append(principal_angle(A[:OUTLIERS], A_ref[:OUTLIERS]))
        print(f"{name:<56}{span(same):>28}{span(ref):>16}")


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if math.isclose(lo, hi, abs_tol=5e-3) else f"{lo:.2f} to {hi:.2f}"


if __name__ == "__main__":
    main()
