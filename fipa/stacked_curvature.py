"""A round's curvature uploads in one call: the per-sample Jacobians of every client stacked.

The vectorized path's counterpart of ``fipa.curvature.client_curvature``: clients whose size
rule picks the exact method (stacked Jacobians) get theirs from one vmapped forward pass
and C reverse passes over all their samples; the others keep their own route.
"""

from __future__ import annotations

import torch
from torch.func import vmap

from fipa.client_model import ClientModel
from fipa.curvature import contract_rows, curvature_sample, sample_curvature, upload_from_sqrt
from fipa.curvature_request import CurvatureRequest, CurvatureUpload
from fipa.tasks.base import Batch, num_samples


def stacked_jacobians(
    cm: ClientModel, thetas: torch.Tensor, owner: torch.Tensor | None, batch: Batch, chunk: int = 512,
) -> torch.Tensor:
    """d f(x_i; theta_{owner_i}) / d theta for the samples of many clients: [N, C, P].

    ``thetas`` is one [P] shared by all samples (owner None), or [K, P] with ``owner`` [N]
    naming each sample's row. Each sample gets its own copy theta_i of its parameters
    [n, P], the outputs f(x_i; theta_i) [n, C] come from one vmapped forward pass, and
    reverse mode through sum_i f_{ic} gives row i = d f_ic / d theta_i (output c's
    Jacobian for every sample at once: one backward pass per output). This is
    vmap(jacrev)'s algebra without torch.func's reverse-mode transforms, whose first use
    imports torch._dynamo (seconds of start-up per job). ``chunk`` samples at a time.
    """

    def f_one(flat: torch.Tensor, sample: Batch) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in sample.items()}
        return cm.outputs(flat, one)[0]  # [C]

    forward = vmap(f_one)
    n = num_samples(batch)
    parts = []
    for i in range(0, n, chunk):
        sub = {k: v[i : i + chunk] for k, v in batch.items()}
        rows = thetas.expand(num_samples(sub), -1) if owner is None else thetas[owner[i : i + chunk]]
        per_sample = rows.detach().clone().requires_grad_(True)  # theta_i [n, P]
        out = forward(per_sample, sub)  # [n, C]
        C = out.shape[1]
        # apply J^T to the indicator of output c: rows d f_ic / d theta_i, [n, P] each
        cols = [torch.autograd.grad(out[:, c].sum(), per_sample, retain_graph=c < C - 1)[0]
                for c in range(C)]
        parts.append(torch.stack(cols, dim=1))
    return torch.cat(parts)


def round_curvature(
    request: CurvatureRequest, cm: ClientModel, at: torch.Tensor, datas: list[Batch],
    gens: list[torch.Generator],
) -> list[CurvatureUpload]:
    """``client_curvature`` of every client of a round, the per-sample Jacobians in one call.

    ``at`` is theta^k [P] (curvature at the broadcast model) or the clients' results [M, P].
    Each client draws from its own ``gens[m]`` in client_curvature's order (subsample, then
    sampled labels); clients whose size rule picks another method (gram, matrix_free) keep
    the per-client path. Per client: S = stack_i M_i^T J_i / sqrt(n) [n C', P], then
    eigenpairs or the diagonal of S^T S, as in ``fipa.curvature``.
    """
    out: list[CurvatureUpload | None] = [None] * len(datas)
    exact: list[tuple[int, Batch, torch.Tensor]] = []  # (client, its batch, M_i [n, C, C'])
    for m, (data, gen) in enumerate(zip(datas, gens, strict=True)):
        theta = at if at.dim() == 1 else at[m]
        batch, M_sqrt = curvature_sample(request, cm, theta, data, gen)  # M [n, C, C']
        if request.resolved_method(M_sqrt.shape[0], M_sqrt.shape[-1], theta.numel()) == "exact":
            exact.append((m, batch, M_sqrt))
        else:  # gram or matrix_free: this client's own path, from the sample just drawn
            out[m] = sample_curvature(request, cm, theta, batch, M_sqrt, gen)
    if exact:
        batch = {k: torch.cat([b[k] for _, b, _ in exact]) for k in exact[0][1]}
        if at.dim() == 1:
            owner, thetas = None, at
        else:
            owner = torch.cat([torch.full((num_samples(b),), i, device=at.device)
                               for i, (_, b, _) in enumerate(exact)])
            thetas = at[[m for m, _, _ in exact]]
        J = stacked_jacobians(cm, thetas, owner, batch)  # [N, C, P]
        start = 0
        for m, b, M_sqrt in exact:
            n = num_samples(b)
            S = contract_rows(M_sqrt, J[start : start + n])  # stack_i M_i^T J_i / sqrt(n)
            out[m] = upload_from_sqrt(request, S)
            start += n
    return out  # type: ignore[return-value]
