"""GGN / Fisher curvature of a client's loss: exact low-rank factors and diagonals.

For outputs f(x_i; theta) in R^C and loss Hessian L_i = M_i M_i^T in the outputs,
    H = (1/n) sum_i J_i^T L_i J_i = S^T S,   S = stack_i (M_i^T J_i) / sqrt(n)   [n C, P].
The thin SVD S = U diag(s) V^T gives the eigenpairs H = V diag(s^2) V^T; a client sends
the factor A = diag(s_top) V_top^T [r, P], so that H ~= A^T A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev, vmap

from fipa.losses import hessian_sqrt
from fipa.params import ParamLayout
from fipa.tasks.base import Batch, Task


@dataclass
class CurvatureRequest:
    """What the aggregator needs from each client: ``kind`` lowrank (rank r) or diag."""

    kind: str  # "lowrank" | "diag"
    rank: int = 0
    samples: int | None = None  # subsample of the client's data; None: all of it
    at: str = "broadcast"  # "broadcast" (theta^k) or "local" (the client's result)


def per_sample_jacobians(
    task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor, batch: Batch,
    chunk: int = 512,
) -> torch.Tensor:
    """Jacobians d f(x_i) / d theta for every sample: [n, C, P], via vmap(jacrev)."""

    def f_one(flat: torch.Tensor, sample: Batch) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in sample.items()}
        return task.outputs(model, layout.unflatten(flat), one)[0]  # [C]

    jac = vmap(jacrev(f_one), in_dims=(None, 0))
    n = next(iter(batch.values())).shape[0]
    parts = [
        jac(theta, {k: v[i : i + chunk] for k, v in batch.items()}) for i in range(0, n, chunk)
    ]
    return torch.cat(parts)


def ggn_sqrt(
    task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor, batch: Batch
) -> torch.Tensor:
    """S [n C, P] with S^T S = (1/n) sum_i J_i^T L_i J_i, the client's GGN."""
    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), batch)  # [n, C]
    J = per_sample_jacobians(task, model, layout, theta, batch)  # [n, C, P]
    M = hessian_sqrt(task.loss_kind, out)  # [n, C, C]
    # rows M_i^T J_i: (M^T J)[k, p] = sum_c M[c, k] J[c, p]
    rows = torch.einsum("nck,ncp->nkp", M, J)
    n = rows.shape[0]
    return rows.reshape(-1, rows.shape[-1]) / math.sqrt(n)


def lowrank_factor(S: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs of H = S^T S from the thin SVD of S.

    Returns (sigma [r], A [r, P]) with A = diag(sqrt sigma) V^T, so H ~= A^T A.
    """
    _, s, Vh = torch.linalg.svd(S, full_matrices=False)
    r = min(rank, s.numel())
    return s[:r] ** 2, s[:r, None] * Vh[:r]


def ggn_diagonal(S: torch.Tensor) -> torch.Tensor:
    """diag(H) = column sums of S * S: [P]."""
    return (S * S).sum(dim=0)


def client_curvature(
    request: CurvatureRequest, task: Task, model: nn.Module, layout: ParamLayout,
    theta: torch.Tensor, batch: Batch, gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The curvature summary a client uploads: {"eigvals","factor"} or {"diag"}."""
    n = next(iter(batch.values())).shape[0]
    if request.samples is not None and request.samples < n:
        idx = torch.randperm(n, generator=gen)[: request.samples].sort().values
        batch = {k: v[idx] for k, v in batch.items()}
    S = ggn_sqrt(task, model, layout, theta, batch)
    if request.kind == "diag":
        return {"diag": ggn_diagonal(S)}
    sigma, A = lowrank_factor(S, request.rank)
    return {"eigvals": sigma, "factor": A}
