"""Vectorized rounds: a round's clients train, and take their curvature, in one vmapped call.

Clients share the model's architecture, so their parameters stack into theta [M, P] and
one local step of all of them is one ``vmap`` over ``ClientMethod.objective`` (the task's
own loss, through ``functional_call``) plus one backward pass: client m's objective
depends on row m only, so the gradient of sum_m F_m(theta_m) w.r.t. theta [M, P] has
row m = grad F_m(theta_m). Clients with different sample counts stay exact by padding
and masking, never by truncation:

    minibatch b_{m,t} [B_m] (the same shuffles as the sequential path: the same seeded
    generator, drawn in the same order)  ->  padded to [B], mask w_{m,t} [B] in {0, 1};
    F_m = sum_i w_i l_i / sum_i w_i + extra_m;
    client m steps while t < T_m (its own step count); afterwards its row of theta and
    of the optimizer state is left untouched (clients sorted by T_m: a shrinking prefix).

The sequential path (``ClientMethod.train``) stays the reference; :func:`choose_path` is
the size rule that picks between the two.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from fipa import buffers
from fipa.clients import ClientMethod, ClientState, make_optimizer
from fipa.config import ClientConfig
from fipa.curvature import (
    CurvatureRequest,
    client_curvature,
    curvature_sample,
    ggn_diagonal,
    lowrank_factor,
)
from fipa.params import ParamLayout
from fipa.tasks.base import Batch, Task

# size rule: vectorize while one client's minibatch step is small (samples x parameters
# below this), where interpreter overhead, not arithmetic, dominates a sequential step
AUTO_VECTORIZE_WORK = 1 << 21
GATHER_NUMBERS = 1 << 22  # numbers of gathered minibatch data held at once (steps chunk)


def num_samples(data: Batch) -> int:
    return next(iter(data.values())).shape[0]


def batch_plan(n: int, cfg: ClientConfig, gen: torch.Generator) -> torch.Tensor:
    """A client's minibatch indices for one round: [T, bs] with -1 padding a short last batch.

    Draws from ``gen`` exactly what ``fipa.clients.minibatches`` draws (one permutation per
    started epoch, none for full batches), so both paths see the same batches.
    """
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    per_epoch = -(-n // bs)
    steps = cfg.local_steps if cfg.local_steps is not None else cfg.local_epochs * per_epoch
    epochs = -(-steps // per_epoch)
    if bs < n:
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(epochs)])  # [E, n]
    else:
        perms = torch.arange(n).expand(epochs, n)
    # epoch e's batches are perm_e[i : i + bs]; pad each epoch to per_epoch * bs with -1
    perms = F.pad(perms, (0, per_epoch * bs - n), value=-1)
    return perms.reshape(epochs * per_epoch, bs)[:steps]


def stack_padded(datas: list[Batch]) -> Batch:
    """Clients' data [N_m, ...] -> [M, max N_m, ...]; padding rows repeat the client's first sample
    (finite values: masked out, and 0 * a finite loss is exactly 0)."""
    n_max = max(num_samples(d) for d in datas)
    out = {}
    for k in datas[0]:
        rows = []
        for d in datas:
            v = d[k]
            pad = v[:1].expand(n_max - v.shape[0], *v.shape[1:])
            rows.append(torch.cat([v, pad]))
        out[k] = torch.stack(rows)
    return out


def unsupported(method: ClientMethod, task: Task) -> str | None:
    """Why this method/task pair cannot train vectorized, or None if it can."""
    if not method.vectorizable:
        return f"client method {method.cfg.method} couples a minibatch's samples"
    if callable(getattr(task, "train_batch", None)) and getattr(task.params, "augment", False):
        return "data augmentation draws per minibatch"
    return None


def choose_path(setting: Any, method: ClientMethod, task: Task, model: nn.Module, num_params: int,
                sizes: list[int], per_round: int) -> tuple[bool, str]:
    """(vectorize?, reason): the size rule behind ``vectorize: auto``, or the forced setting.

    auto vectorizes when at least two clients train per round, the method and task allow it,
    the model's parametrized layers are all fully connected (MLPs, PINNs: under vmap they
    become batched matrix products; convolutions batch poorly, and the digits CNN measured
    no faster), and one client's minibatch step is small: batch samples x parameters <=
    AUTO_VECTORIZE_WORK (beyond, arithmetic dominates and stacking M clients only multiplies
    memory). ``true`` vectorizes wherever allowed; ``false`` never.
    """
    if setting is False:
        return False, "vectorize: false"
    if buffers.has_buffers(model):
        return False, "the model keeps running statistics (BatchNorm buffers)"
    why = unsupported(method, task)
    if why is not None:
        return False, why
    if setting is True:
        return True, "vectorize: true"
    if per_round < 2:
        return False, "one client per round"
    layers = {type(m).__name__ for m in model.modules()
              if not isinstance(m, nn.Linear) and any(True for _ in m.parameters(recurse=False))}
    if layers:
        return False, f"layers other than Linear ({', '.join(sorted(layers))})"
    batch = max(min(method.cfg.batch_size or n, n) for n in sizes)
    work = batch * num_params
    if work > AUTO_VECTORIZE_WORK:
        return False, f"batch x parameters = {work} > {AUTO_VECTORIZE_WORK}"
    return True, f"batch x parameters = {work} <= {AUTO_VECTORIZE_WORK}"


def _stacked_grad_fn(objective, batch: Batch, weights: torch.Tensor, state: ClientState):
    """grad_fn for ``ClientMethod.direction``: theta [K, P] -> (gradients [K, P], losses [K])."""

    def grad_fn(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = at.detach().requires_grad_(True)
        obj, loss = objective(flat, batch, weights, state)  # [K] each
        # rows are independent: d (sum_m F_m) / d theta_m = grad F_m(theta_m)
        (grad,) = torch.autograd.grad(obj.sum(), flat)
        return grad, loss.detach()

    return grad_fn


def _rows(d: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The first k rows of every stacked tensor of ``d`` (views); 0-d tensors are shared."""
    return {key: v[:k] if v.dim() else v for key, v in d.items()}


def local_train(
    method: ClientMethod, task: Task, model: nn.Module, layout: ParamLayout, theta0: torch.Tensor,
    datas: list[Batch], gens: list[torch.Generator], states: list[ClientState],
) -> torch.Tensor:
    """The round's local training of M clients at once: theta^k [P] -> theta_m stacked [M, P].

    Equals M calls of ``method.train`` up to floating-point rounding: the same batches,
    objective, direction and optimizer; ``after_local`` updates each client's ``states[m]``
    in the order of the list, as the sequential loop does. Clients are stacked in
    decreasing order of their step counts T_m, so the clients still training at step t
    are the first K_t rows: the step works on views of those rows (buckets shrinking with
    t, no arithmetic for finished clients), and the rest keep their values bit for bit.
    """
    cfg = method.cfg
    M, P, device = len(datas), theta0.numel(), theta0.device
    plans = [batch_plan(num_samples(d), cfg, g) for d, g in zip(datas, gens, strict=True)]
    order = sorted(range(M), key=lambda m: -plans[m].shape[0])  # stable: ties keep list order
    plans = [plans[m] for m in order]
    steps = [p.shape[0] for p in plans]  # non-increasing
    T, B = steps[0], max(p.shape[1] for p in plans)
    idx = torch.full((M, T, B), -1, dtype=torch.long)
    for i, p in enumerate(plans):
        idx[i, : p.shape[0], : p.shape[1]] = p
    weights = (idx >= 0).to(device=device, dtype=theta0.dtype)  # [M, T, B]: 1 real, 0 padding
    idx = idx.clamp_min(0).to(device)
    training = [sum(s > t for s in steps) for t in range(T)]  # K_t, clients still training
    data = stack_padded([datas[m] for m in order])  # [M, N, ...]
    rows = torch.arange(M, device=device)[:, None, None]
    stacked = {k: torch.stack([states[m][k] for m in order]) for k in states[0]}  # [M, P] each

    def client_objective(flat, batch, w, state):
        return method.objective(task, model, layout, flat, theta0, batch, state, mask=w)

    objective = vmap(client_objective)
    theta = theta0.expand(M, P).clone()
    opt = make_optimizer(cfg)
    opt_state = opt.init(theta)
    per_sample = sum(v[0, 0].numel() for v in data.values())
    chunk = max(1, GATHER_NUMBERS // (M * B * per_sample))
    for t0 in range(0, T, chunk):
        # minibatches of steps t0 .. t0 + chunk for every client: [M, chunk, B, ...]
        gathered = {k: v[rows, idx[:, t0 : t0 + chunk]] for k, v in data.items()}
        for t in range(t0, min(T, t0 + chunk)):
            K = training[t]
            batch = {k: v[:K, t - t0] for k, v in gathered.items()}
            state = _rows(stacked, K)
            grad_fn = _stacked_grad_fn(objective, batch, weights[:K, t], state)
            direction, _ = method.direction(grad_fn, theta[:K], state)
            opt.step(theta[:K], direction, _rows(opt_state, K))  # in place on the first K rows
    out = torch.empty_like(theta)
    out[order] = theta
    for m in range(M):
        method.after_local(theta0, out[m], steps[order.index(m)], states[m])
    return out


# ----------------------------------------------------------------------------- curvature


def stacked_jacobians(
    task: Task, model: nn.Module, layout: ParamLayout, thetas: torch.Tensor, owner: torch.Tensor | None,
    batch: Batch, chunk: int = 512,
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
        return task.outputs(model, layout.unflatten(flat), one)[0]  # [C]

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
    request: CurvatureRequest, task: Task, model: nn.Module, layout: ParamLayout, at: torch.Tensor,
    datas: list[Batch], gens: list[torch.Generator],
) -> list[dict[str, torch.Tensor]]:
    """``client_curvature`` of every client of a round, the per-sample Jacobians in one call.

    ``at`` is theta^k [P] (curvature at the broadcast model) or the clients' results [M, P].
    Each client draws from its own ``gens[m]`` in client_curvature's order (subsample, then
    sampled labels); clients whose size rule picks the matrix-free method keep the
    per-client path. Per client: S = stack_i M_i^T J_i / sqrt(n) [n C', P], then
    eigenpairs or the diagonal of S^T S, as in ``fipa.curvature``.
    """
    out: list[dict[str, torch.Tensor] | None] = [None] * len(datas)
    exact: list[tuple[int, Batch, torch.Tensor]] = []  # (client, its batch, M_i [n, C, C'])
    for m, (data, gen) in enumerate(zip(datas, gens, strict=True)):
        theta = at if at.dim() == 1 else at[m]
        rng = gen.get_state()
        batch, M_sqrt = curvature_sample(request, task, model, layout, theta, data, gen)  # M [n, C, C']
        if request.resolved_method(M_sqrt.shape[0], M_sqrt.shape[-1], theta.numel()) == "exact":
            exact.append((m, batch, M_sqrt))
        else:  # start this client's draws again on its own path
            gen.set_state(rng)
            out[m] = client_curvature(request, task, model, layout, theta, data, gen)
    if exact:
        batch = {k: torch.cat([b[k] for _, b, _ in exact]) for k in exact[0][1]}
        if at.dim() == 1:
            owner, thetas = None, at
        else:
            owner = torch.cat([torch.full((num_samples(b),), i, device=at.device)
                               for i, (_, b, _) in enumerate(exact)])
            thetas = at[[m for m, _, _ in exact]]
        J = stacked_jacobians(task, model, layout, thetas, owner, batch)  # [N, C, P]
        start = 0
        for m, b, M_sqrt in exact:
            n = num_samples(b)
            # rows M_i^T J_i: (M^T J)[k, p] = sum_c M[c, k] J[c, p]
            rows = torch.einsum("nck,ncp->nkp", M_sqrt, J[start : start + n])
            start += n
            S = rows.reshape(-1, rows.shape[-1]) / math.sqrt(n)
            if request.kind == "diag":
                out[m] = {"diag": ggn_diagonal(S)}
            else:
                sigma, A = lowrank_factor(S, request.rank)
                out[m] = {"eigvals": sigma, "factor": A}
    return out  # type: ignore[return-value]
