"""GGN / Fisher curvature of a client's loss: exact low-rank factors and diagonals.

For outputs f(x_i; theta) in R^C and loss Hessian L_i = M_i M_i^T in the outputs,
    H = (1/n) sum_i J_i^T L_i J_i = S^T S,   S = stack_i (M_i^T J_i) / sqrt(n)   [n C, P].
The thin SVD S = U diag(s) V^T gives the eigenpairs H = V diag(s^2) V^T; a client sends
the factor A = diag(s_top) V_top^T [r, P], so that H ~= A^T A.

Large models never form S: :func:`matrix_free_eigs` finds the top eigenpairs from
GGN-vector products v -> J^T (L (J v)) / n (``torch.func.jvp`` then ``vjp``) inside a
randomized range finder with power iterations, in O(P r) memory. The sampled-label
Fisher replaces L_i by u_i u_i^T with u_i = p_i - e_{y~p_i} (cross-entropy) or
u_i ~ N(0, I) (squared error), whose expectation is L_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap

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
    # "exact": stacked Jacobians S [n C, P] and an eigensolve; "matrix_free": GGN-vector
    # products only; "auto": exact while S has at most AUTO_EXACT_NUMBERS entries
    method: str = "exact"
    fisher: str = "ggn"  # "ggn": exact output Hessian L_i; "sampled": labels drawn from the model
    oversample: int = 10  # matrix_free: extra probe vectors beyond the rank
    power_iters: int = 4  # matrix_free: subspace iterations of the range finder
    chunk: int = 8  # matrix_free: GGN-vector products per vmap call (memory ~ chunk activations)

    def resolved_method(self, n: int, outputs: int, P: int) -> str:
        """The method after the size rule: "exact" or "matrix_free"."""
        if self.method == "auto":
            return "exact" if n * outputs * P <= AUTO_EXACT_NUMBERS else "matrix_free"
        return self.method


AUTO_EXACT_NUMBERS = 1 << 26  # 64 Mi entries of S (256 MiB in float32): beyond, go matrix-free


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
    task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor, batch: Batch,
    M: torch.Tensor | None = None,
) -> torch.Tensor:
    """S [n C', P] with S^T S = (1/n) sum_i J_i^T M_i M_i^T J_i, the client's GGN.

    M [n, C, C'] defaults to the square root of the loss Hessian (C' = C); pass
    :func:`output_sqrt`'s sampled factor (C' = 1) for the sampled-label Fisher.
    """
    if M is None:
        with torch.no_grad():
            out = task.outputs(model, layout.unflatten(theta), batch)  # [n, C]
        M = hessian_sqrt(task.loss_kind, out)  # [n, C, C]
    J = per_sample_jacobians(task, model, layout, theta, batch)  # [n, C, P]
    # rows M_i^T J_i: (M^T J)[k, p] = sum_c M[c, k] J[c, p]
    rows = torch.einsum("nck,ncp->nkp", M, J)
    n = rows.shape[0]
    return rows.reshape(-1, rows.shape[-1]) / math.sqrt(n)


def lowrank_factor(S: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs of H = S^T S [P, P] from S [N, P], via the smaller Gram side.

    Returns (sigma [r], A [r, P]) with A = diag(sqrt sigma) V^T, so H ~= A^T A.
    N <= P: eigh of S S^T = U diag(sigma) U^T [N, N]; then A = U_r^T S (rows u_i^T S have
    norm sqrt(sigma_i) and direction v_i), costing O(N^2 P) instead of an SVD's larger constant.
    N > P: eigh of S^T S = V diag(sigma) V^T directly.
    The Gram matrix and its eigenproblem are always float64 (a no-op for float64 S): in
    float32 the Gram squares S's condition number into round-off, and LAPACK's float32
    eigh fails to converge on the many near-zero eigenvalues of a well-trained classifier.
    """
    N, P = S.shape
    r = min(rank, N, P)
    if not bool(torch.isfinite(S).all()):  # a diverged model: NaN out (the loop ends the run), no eigh
        return S.new_full((r,), float("nan")), S.new_full((r, P), float("nan"))
    S64 = S.double()
    if N <= P:
        sigma, U = torch.linalg.eigh(S64 @ S64.T)  # ascending
        U_r = U[:, -r:].flip(-1)
        return sigma[-r:].flip(-1).clamp_min(0).to(S.dtype), (U_r.T @ S64).to(S.dtype)
    sigma, V = torch.linalg.eigh(S64.T @ S64)
    sigma_r = sigma[-r:].flip(-1).clamp_min(0)
    return sigma_r.to(S.dtype), (sigma_r.sqrt()[:, None] * V[:, -r:].flip(-1).T).to(S.dtype)


def ggn_diagonal(S: torch.Tensor) -> torch.Tensor:
    """diag(H) = column sums of S * S: [P]."""
    return (S * S).sum(dim=0)


def output_sqrt(kind: str, fisher: str, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """M [n, C, C'] with M_i M_i^T = L_i (fisher "ggn", C' = C) or = u_i u_i^T ("sampled", C' = 1).

    Sampled: u_i = p_i - e_{y_i}, y_i ~ Cat(p_i) for cross-entropy (the gradient of the loss in
    the logits at a label drawn from the model); u_i ~ N(0, I) for squared error. E[u u^T] = L.
    """
    if fisher == "ggn":
        return hessian_sqrt(kind, out)
    if fisher != "sampled":
        raise ValueError(f"unknown fisher {fisher!r}; use ggn or sampled")
    if kind == "ce":
        p = torch.softmax(out.detach(), dim=-1)
        y = torch.multinomial(p.cpu().double(), 1, generator=gen)[:, 0].to(out.device)
        u = p - torch.nn.functional.one_hot(y, out.shape[-1]).to(p.dtype)
    elif kind == "mse":
        u = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    else:
        raise ValueError(f"unknown loss kind {kind!r}")
    return u.unsqueeze(-1)


def ggn_matvec(
    task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor, batch: Batch,
    M: torch.Tensor, chunk: int = 8,
):
    """The map V [k, P] -> (H V^T)^T [k, P], H = (1/n) sum_i J_i^T M_i M_i^T J_i, matrix-free.

    One product costs a forward-mode pass (J v) and a reverse pass (J^T w); ``chunk``
    vectors go through ``vmap`` together. Nothing of size P x P or n C x P is formed.
    """
    n = M.shape[0]

    def f(flat: torch.Tensor) -> torch.Tensor:
        return task.outputs(model, layout.unflatten(flat), batch)  # [n, C]

    _, pullback = vjp(f, theta)  # the forward graph at theta, reused by every product

    def one(v: torch.Tensor) -> torch.Tensor:
        Jv = jvp(f, (theta,), (v,))[1]  # apply J: v -> J v, [n, C]
        w = torch.einsum("nck,nc->nk", M, Jv)  # M^T J v, [n, C']
        LJv = torch.einsum("nck,nk->nc", M, w) / n  # M M^T J v / n = L J v / n
        return pullback(LJv)[0]  # apply J^T: [P]

    batched = vmap(one)

    def matvec(V: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(V)  # filled chunk by chunk: no list of pieces, no concatenation
        for i in range(0, V.shape[0], chunk):
            out[i : i + chunk] = batched(V[i : i + chunk])
        return out

    return matvec


COLUMN_CHUNK = 1 << 20  # columns per block in the streamed [k, P] algebra below


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X X^T [k, k] in float64 from X [k, P], accumulated over column blocks."""
    G = torch.zeros(X.shape[0], X.shape[0], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[1], COLUMN_CHUNK):
        block = X[:, i : i + COLUMN_CHUNK].double()
        G += block @ block.T
    return G


def _left_multiply_(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """X[:k'] <- T X in place, T [k', k] with k' <= k, X [k, P]; returns the view X[:k']."""
    T = T.to(X.dtype)
    for i in range(0, X.shape[1], COLUMN_CHUNK):
        cols = slice(i, i + COLUMN_CHUNK)
        X[: T.shape[0], cols] = T @ X[:, cols]
    return X[: T.shape[0]]


def _orthonormalize_rows_(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the row space of Y [k, P], written over Y (SVQB).

    With Y Y^T = U diag(e) U^T (float64), the rows of diag(e^-1/2) U^T Y are orthonormal
    (Stathopoulos & Wu 2002); directions with e at round-off level are dropped, so the
    result has k' <= k rows. Two passes: the second repairs the float32 round-off of the
    first. Extra memory O(k^2 + k * COLUMN_CHUNK), where a QR of Y^T would copy Y twice.
    """
    tol = Y.shape[0] * torch.finfo(Y.dtype).eps ** 2
    for _ in range(2):
        e, U = torch.linalg.eigh(_gram(Y))
        keep = e > e.max() * tol
        Y = _left_multiply_((U[:, keep] / e[keep].sqrt()).T, Y)
    return Y


def matrix_free_eigs(
    matvec, P: int, rank: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device | str,
    oversample: int = 10, power_iters: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs of a PSD operator from products only (Halko et al. 2011, Alg. 4.4 + 5.3).

    Range finder: Q = orth(H Omega), Omega [k, P] Gaussian, k = rank + oversample; then
    ``power_iters`` subspace iterations Q <- orth(H Q) sharpen it by (lambda_{k+1}/lambda_r)^2
    each; Rayleigh-Ritz: T = Q H Q^T [k, k] = W diag(lambda) W^T, eigenvectors W^T Q.
    Cost k (power_iters + 2) products. Memory: two [k, P] blocks (the operand and the
    product) plus the autodiff work of ``matvec``; the k x k problems are solved in float64.
    Returns (sigma [r], A [r, P]) with A = diag(sqrt sigma) V^T, as :func:`lowrank_factor`
    (r < rank only when H has fewer than rank nonzero directions).
    """
    k = min(rank + oversample, P)
    Q = torch.randn(k, P, generator=gen, dtype=dtype).to(device)  # Omega
    for _ in range(power_iters + 1):
        Y = matvec(Q)  # H Q^T, as rows
        del Q  # at most two [k, P] blocks alive: the operand and its product
        Q = _orthonormalize_rows_(Y)
    Z = matvec(Q)  # (H Q^T)^T
    T = torch.zeros(Q.shape[0], Q.shape[0], dtype=torch.float64, device=Q.device)
    for i in range(0, P, COLUMN_CHUNK):  # T = Q Z^T in float64
        T += Q[:, i : i + COLUMN_CHUNK].double() @ Z[:, i : i + COLUMN_CHUNK].double().T
    del Z
    lam, W = torch.linalg.eigh(0.5 * (T + T.T))  # ascending
    r = min(rank, Q.shape[0])
    lam_r, W_r = lam[-r:].flip(-1).clamp_min(0), W[:, -r:].flip(-1)
    # eigenvectors as rows, scaled: A = diag(sqrt lambda) W_r^T Q  [r, P]
    A = _left_multiply_(lam_r.sqrt()[:, None] * W_r.T, Q).clone()  # own storage, not Q's k rows
    return lam_r.to(dtype), A


def ggn_diagonal_streamed(
    task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor, batch: Batch,
    M: torch.Tensor, chunk: int = 32,
) -> torch.Tensor:
    """diag(H) [P] accumulated over sample chunks: never more than chunk C' rows of S at once."""
    n = M.shape[0]
    diag = torch.zeros_like(theta)
    for i in range(0, n, chunk):
        sub = {k: v[i : i + chunk] for k, v in batch.items()}
        S = ggn_sqrt(task, model, layout, theta, sub, M[i : i + chunk])  # scaled by 1/sqrt(chunk)
        diag += ggn_diagonal(S) * (S.shape[0] / M.shape[-1] / n)
    return diag


def curvature_sample(
    request: CurvatureRequest, task: Task, model: nn.Module, layout: ParamLayout,
    theta: torch.Tensor, batch: Batch, gen: torch.Generator,
) -> tuple[Batch, torch.Tensor]:
    """The client's curvature subsample and its output-Hessian factors M [n, C, C'].

    Draws from ``gen`` the subsample (if ``request.samples`` < n), then sampled labels.
    """
    n = next(iter(batch.values())).shape[0]
    if request.samples is not None and request.samples < n:
        idx = torch.randperm(n, generator=gen)[: request.samples].sort().values
        batch = {k: v[idx] for k, v in batch.items()}
    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), batch)  # [n, C]
    return batch, output_sqrt(task.loss_kind, request.fisher, out, gen)


def client_curvature(
    request: CurvatureRequest, task: Task, model: nn.Module, layout: ParamLayout,
    theta: torch.Tensor, batch: Batch, gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The curvature summary a client uploads: {"eigvals","factor"} or {"diag"}.

    ``gen`` draws, in this order: the data subsample, sampled labels, probe vectors.
    """
    batch, M = curvature_sample(request, task, model, layout, theta, batch, gen)
    method = request.resolved_method(M.shape[0], M.shape[-1], theta.numel())
    if method == "matrix_free":
        if request.kind == "diag":
            return {"diag": ggn_diagonal_streamed(task, model, layout, theta, batch, M)}
        mv = ggn_matvec(task, model, layout, theta, batch, M, request.chunk)
        sigma, A = matrix_free_eigs(mv, theta.numel(), request.rank, gen, theta.dtype, theta.device,
                                    request.oversample, request.power_iters)
        return {"eigvals": sigma, "factor": A}
    if method != "exact":
        raise ValueError(f"unknown curvature method {request.method!r}; use exact, matrix_free or auto")
    S = ggn_sqrt(task, model, layout, theta, batch, M)
    if request.kind == "diag":
        return {"diag": ggn_diagonal(S)}
    sigma, A = lowrank_factor(S, request.rank)
    return {"eigvals": sigma, "factor": A}
