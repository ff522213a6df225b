"""GGN / Fisher curvature of a client's loss: exact low-rank factors and diagonals.

For outputs f(x_i; theta) in R^C and loss Hessian L_i = M_i M_i^T in the outputs,
    H = (1/n) sum_i J_i^T L_i J_i = S^T S,   S = stack_i (M_i^T J_i) / sqrt(n)   [n C, P].
The thin SVD S = U diag(s) V^T gives the eigenpairs H = V diag(s^2) V^T; a client sends
the factor A = diag(s_top) V_top^T [r, P], so that H ~= A^T A.

Large models never form the Jacobians J_i [C, P]. :func:`gram_eigs` (method "gram") forms
only the N = n C' rows of S, one reverse pass per row (:func:`per_sample_rows`), and
eigendecomposes their Gram S S^T [N, N] in float64: exact for the rows it forms, memory
N P, cost about N backward passes; with the sampled-label Fisher (C' = 1) that is one row
per sample, the fast path for ResNet-sized models. :func:`matrix_free_eigs` finds the top
eigenpairs from GGN-vector products v -> J^T (L (J v)) / n (``torch.func.jvp`` then ``vjp``)
inside a randomized range finder with power iterations, in O(P r) memory whatever N, at
(r + oversample)(power_iters + 2) products. The sampled-label Fisher replaces L_i by
u_i u_i^T with u_i = p_i - e_{y~p_i} (cross-entropy) or u_i ~ N(0, I) (squared error),
whose expectation is L_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.func import jacrev, jvp, vjp, vmap

from fipa import curvature_request
from fipa.client_model import ClientModel
from fipa.curvature_request import METHODS, CurvatureRequest, CurvatureUpload
from fipa.losses import hessian_sqrt
from fipa.tasks.base import Batch


def per_sample_jacobians(cm: ClientModel, theta: torch.Tensor, batch: Batch, chunk: int = 512
                         ) -> torch.Tensor:
    """Jacobians d f(x_i) / d theta at theta [P], every sample of ``batch``: [n, C, P], via vmap(jacrev)."""

    def f_one(flat: torch.Tensor, sample: Batch) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in sample.items()}
        return cm.outputs(flat, one)[0]  # [C]

    jac = vmap(jacrev(f_one), in_dims=(None, 0))
    n = next(iter(batch.values())).shape[0]
    parts = [
        jac(theta, {k: v[i : i + chunk] for k, v in batch.items()}) for i in range(0, n, chunk)
    ]
    return torch.cat(parts)


def ggn_sqrt(cm: ClientModel, theta: torch.Tensor, batch: Batch, M: torch.Tensor | None = None
             ) -> torch.Tensor:
    """S [n C', P] with S^T S = (1/n) sum_i J_i^T M_i M_i^T J_i, the client's GGN at theta [P].

    M [n, C, C'] defaults to the square root of the loss Hessian (C' = C); pass
    :func:`output_sqrt`'s sampled factor (C' = 1) for the sampled-label Fisher.
    """
    if M is None:
        with torch.no_grad():
            out = cm.outputs(theta, batch)  # [n, C]
        M = hessian_sqrt(cm.task.loss_kind, out)  # [n, C, C]
    return contract_rows(M, per_sample_jacobians(cm, theta, batch))


def contract_rows(M: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """The GGN contraction: S = stack_i M_i^T J_i / sqrt(n)  [n C', P], from M [n, C, C'] and the
    per-sample Jacobians J [n, C, P]; S^T S = (1/n) sum_i J_i^T M_i M_i^T J_i."""
    # rows M_i^T J_i: (M^T J)[k, p] = sum_c M[c, k] J[c, p]
    rows = torch.einsum("nck,ncp->nkp", M, J)
    return rows.reshape(-1, rows.shape[-1]) / math.sqrt(rows.shape[0])


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


def ggn_matvec(cm: ClientModel, theta: torch.Tensor, batch: Batch, M: torch.Tensor, chunk: int = 8):
    """The map V [k, P] -> (H V^T)^T [k, P], H = (1/n) sum_i J_i^T M_i M_i^T J_i at theta [P], matrix-free.

    One product costs a forward-mode pass (J v) and a reverse pass (J^T w); ``chunk``
    vectors go through ``vmap`` together. Nothing of size P x P or n C x P is formed.
    """
    n = M.shape[0]

    def f(flat: torch.Tensor) -> torch.Tensor:
        return cm.outputs(flat, batch)  # [n, C]

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


def _gram(X: torch.Tensor, cols: int = COLUMN_CHUNK) -> torch.Tensor:
    """X X^T [k, k] in float64 from X [k, P], accumulated over blocks of ``cols`` columns."""
    G = torch.zeros(X.shape[0], X.shape[0], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[1], cols):
        block = X[:, i : i + cols].double()
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


# columns per block of the Gram route's products: in float32 a block's sums err by ~3e-8
# |s_i| |s_j| (measured on ResNet-18-sized rows), at the rows' own rounding, and are 12 times
# faster than converting the block to float64 (0.08 s against 1 s per 2.4 M columns, 32 rows)
GRAM_COLUMNS = 1 << 14


def per_sample_rows(
    cm: ClientModel, theta: torch.Tensor, batch: Batch, M: torch.Tensor, chunk: int = 1,
    names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """The rows of S = stack_i M_i^T J_i / sqrt(n) [n C', P] at theta [P] as one block [n C', P_l]
    per parameter tensor of the model's layout (row i C' + k: sample i, column k of M_i), no J_i formed;
    only the tensors ``names`` (in layout order; default all), whose blocks are S's columns there.

    Row (i, k) is one reverse pass: J_i^T u with u = M_i[:, k] / sqrt(n), the gradient of the
    scalar u^T f(x_i; theta). ``chunk`` <= 1: a plain loop, one sample's forward pass and its C'
    backward passes at a time (on a CPU faster than vmap: 1.6 s against 2 to 3 s for 32
    ResNet-18 rows); ``chunk`` > 1: that many samples per ``vmap`` call of ``vjp``, the C'
    cotangents vmapped too (for accelerators, where one-sample kernels are launch-bound).
    Blocks rather than one [N, P] tensor, so that :func:`gram_eigs` frees them one by one.
    """
    n, _, k_out = M.shape
    U = M / math.sqrt(n)  # cotangents [n, C, C']
    layout = cm.layout
    wanted = [name for name in layout.names if names is None or name in names]
    size = dict(zip(layout.names, layout.sizes, strict=True))
    blocks = [theta.new_empty(n * k_out, size[name]) for name in wanted]
    with torch.enable_grad():
        if chunk <= 1:
            _rows_loop(cm, theta, batch, U, blocks, wanted)
        else:
            _rows_vmap(cm, theta, batch, U, blocks, wanted, chunk)
    return blocks


def _rows_loop(cm: ClientModel, theta: torch.Tensor, batch: Batch, U: torch.Tensor,
               blocks: list[torch.Tensor], wanted: list[str]) -> None:
    """Fill ``blocks`` [n C', P_l] sample by sample: forward f(x_i) [C], then C' reverse passes
    (cotangents U [n, C, C'])."""
    params = {k: v.detach().requires_grad_(k in wanted) for k, v in cm.layout.unflatten(theta).items()}
    leaves = [params[k] for k in wanted]
    n, _, k_out = U.shape
    for i in range(n):
        out = cm.task.outputs(cm.model, params, {key: v[i : i + 1] for key, v in batch.items()})[0]  # [C]
        for k in range(k_out):
            # apply J_i^T to u = U[i, :, k]: the gradient of the scalar u^T f(x_i)
            grads = torch.autograd.grad(out @ U[i, :, k], leaves, retain_graph=k < k_out - 1,
                                        allow_unused=True)
            for block, g in zip(blocks, grads, strict=True):
                block[i * k_out + k] = 0.0 if g is None else g.reshape(-1)


def _rows_vmap(cm: ClientModel, theta: torch.Tensor, batch: Batch, U: torch.Tensor,
               blocks: list[torch.Tensor], wanted: list[str], chunk: int) -> None:
    """Fill ``blocks`` [n C', P_l], ``chunk`` samples per vmap call of (vjp, vmap over C')."""
    params = cm.layout.unflatten(theta)
    n, _, k_out = U.shape

    def rows_one(sample: Batch, u: torch.Tensor) -> dict[str, torch.Tensor]:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return cm.task.outputs(cm.model, p, {key: v.unsqueeze(0) for key, v in sample.items()})[0]  # [C]

        _, pullback = vjp(f, params)
        return vmap(pullback)(u.T)[0]  # apply J_i^T to each column of u [C, C']: [C', *shape]

    batched = vmap(rows_one)
    for i in range(0, n, chunk):
        got = batched({key: v[i : i + chunk] for key, v in batch.items()}, U[i : i + chunk])
        rows = slice(i * k_out, min(i + chunk, n) * k_out)
        for block, name in zip(blocks, wanted, strict=True):
            block[rows] = got[name].reshape(-1, block.shape[1])


def gram_eigs(blocks: list[torch.Tensor], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs of H = S^T S from the rows of S [N, P] in column blocks [N, P_l].

    The Gram route of :func:`lowrank_factor`, block by block: G = S S^T = sum_l S_l S_l^T
    [N, N] = U diag(sigma) U^T, each block of GRAM_COLUMNS columns multiplied in the rows'
    dtype and the blocks summed and eigendecomposed in float64; A = U_r^T S [r, P], whose rows have norm
    sqrt(sigma_i) and direction v_i, so H ~= A^T A with the exact top-r eigenpairs of S^T S.
    ``blocks`` is consumed: each S_l is freed once mapped back to U_r^T S_l [r, P_l], so the
    peak is max(N P + r max_l P_l, 2 r P) numbers (the images concatenated at the end).
    Returns (sigma [r], A [r, P]) in the blocks' dtype, r = min(rank, N, P).
    """
    N, dtype = blocks[0].shape[0], blocks[0].dtype
    P = sum(b.shape[1] for b in blocks)
    r = min(rank, N, P)
    G = torch.zeros(N, N, dtype=torch.float64, device=blocks[0].device)
    for b in blocks:
        for i in range(0, b.shape[1], GRAM_COLUMNS):  # G = sum over column blocks of S_b S_b^T
            part = b[:, i : i + GRAM_COLUMNS]
            G += (part @ part.T).double()
    # a non-finite entry of S makes its row's diagonal entry of G non-finite (a diverged model):
    # NaN out without an eigensolve, and without a pass over S's N P entries to find it
    if not bool(torch.isfinite(G).all()):
        blocks.clear()
        return torch.full((r,), math.nan, dtype=dtype), torch.full((r, P), math.nan, dtype=dtype)
    sigma, U = torch.linalg.eigh(G)  # ascending
    sigma_r, U_r = sigma[-r:].flip(-1).clamp_min(0), U[:, -r:].flip(-1)
    T = U_r.T.to(dtype)
    images = []
    while blocks:
        images.append(T @ blocks.pop(0))  # map back A_l = U_r^T S_l [r, P_l]; S_l is freed
    return sigma_r.to(dtype), torch.cat(images, dim=1)


def ggn_diagonal_streamed(
    cm: ClientModel, theta: torch.Tensor, batch: Batch, M: torch.Tensor, chunk: int | None = None,
) -> torch.Tensor:
    """diag(H) [P] at theta [P] accumulated over sample chunks: never more than chunk C' rows of S
    at once (default: as many samples as keep a chunk's C P Jacobian entries within
    AUTO_EXACT_NUMBERS)."""
    n = M.shape[0]
    if chunk is None:
        chunk = max(1, curvature_request.AUTO_EXACT_NUMBERS // (M.shape[1] * theta.numel()))
    diag = torch.zeros_like(theta)
    for i in range(0, n, chunk):
        sub = {k: v[i : i + chunk] for k, v in batch.items()}
        S = ggn_sqrt(cm, theta, sub, M[i : i + chunk])  # scaled by 1/sqrt(chunk)
        diag += ggn_diagonal(S) * (S.shape[0] / M.shape[-1] / n)
    return diag


def curvature_sample(
    request: CurvatureRequest, cm: ClientModel, theta: torch.Tensor, batch: Batch, gen: torch.Generator,
) -> tuple[Batch, torch.Tensor]:
    """The client's curvature subsample and its output-Hessian factors M [n, C, C'] at theta [P].

    Draws from ``gen`` the subsample (if ``request.curvature_samples`` < n), then sampled labels.
    """
    n = next(iter(batch.values())).shape[0]
    samples = request.curvature_samples
    if samples is not None and samples < n:
        idx = torch.randperm(n, generator=gen)[:samples].sort().values
        batch = {k: v[idx] for k, v in batch.items()}
    with torch.no_grad():
        out = cm.outputs(theta, batch)  # [n, C]
    return batch, output_sqrt(cm.task.loss_kind, request.curvature_fisher, out, gen)


def client_curvature(
    request: CurvatureRequest, cm: ClientModel, theta: torch.Tensor, batch: Batch, gen: torch.Generator,
) -> CurvatureUpload:
    """The curvature upload of a client holding ``batch``, at theta [P]: eigenpairs or a diagonal.

    ``gen`` draws, in this order: the data subsample, sampled labels, probe vectors
    (matrix_free only; exact and gram draw nothing more).
    """
    batch, M = curvature_sample(request, cm, theta, batch, gen)
    return sample_curvature(request, cm, theta, batch, M, gen)


def sample_curvature(
    request: CurvatureRequest, cm: ClientModel, theta: torch.Tensor, batch: Batch, M: torch.Tensor,
    gen: torch.Generator,
) -> CurvatureUpload:
    """:func:`client_curvature` once :func:`curvature_sample` has drawn the subsample ``batch``
    and its output-Hessian factors M [n, C, C'] (``gen`` draws the probes of matrix_free)."""
    method = request.resolved_method(M.shape[0], M.shape[-1], theta.numel())
    if method in ("gram", "matrix_free") and request.kind == "diag":
        return CurvatureUpload(diag=ggn_diagonal_streamed(cm, theta, batch, M))
    if method == "gram":
        chunk = 1 if theta.device.type == "cpu" else request.chunk  # see per_sample_rows
        sigma, A = gram_eigs(per_sample_rows(cm, theta, batch, M, chunk), request.rank)
        return CurvatureUpload(eigvals=sigma, factor=A)
    if method == "matrix_free":
        mv = ggn_matvec(cm, theta, batch, M, request.chunk)
        sigma, A = matrix_free_eigs(mv, theta.numel(), request.rank, gen, theta.dtype, theta.device,
                                    request.oversample, request.power_iters)
        return CurvatureUpload(eigvals=sigma, factor=A)
    if method != "exact":
        raise ValueError(f"unknown curvature method {request.curvature_method!r}; use one of "
                         f"{', '.join(METHODS)}")
    return upload_from_sqrt(request, ggn_sqrt(cm, theta, batch, M))


def upload_from_sqrt(request: CurvatureRequest, S: torch.Tensor) -> CurvatureUpload:
    """The upload from S [N, P] (H = S^T S): diag(H) [P], or eigenpairs sigma [r] and A [r, P]."""
    if request.kind == "diag":
        return CurvatureUpload(diag=ggn_diagonal(S))
    sigma, A = lowrank_factor(S, request.rank)
    return CurvatureUpload(eigvals=sigma, factor=A)
