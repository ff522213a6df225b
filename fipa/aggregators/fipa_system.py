"""FIPA's server problem in range(H): one round's system, built once and solved for any damping.

The algebra is docs/method.md's ("Update rule", "Damping", "Complement"): H = B^T B from the
clients' low-rank factors, the update (H + lambda I)^-1 g restricted to range(H) plus the
FedAvg step outside it, never forming a P x P matrix.
"""

from __future__ import annotations

import math

import torch


def _column_chunks(P: int, chunk: int):
    for i in range(0, P, chunk):
        yield slice(i, min(i + chunk, P))


class FIPASystem:
    """One round's server problem, reduced to range(H): built once, solved for any lambda.

    Streams over column blocks of the factors (no stacked copy of B): O(P R^2) time,
    O(P + R chunk) extra memory. The R x R problem is solved in float64. B = diag(t) A with
    A = [A_1; ...; A_M] unscaled and t = sqrt(w_m) on client m's rows, so the column blocks
    are A's (one float64 buffer, each client's rows copied in: one pass over the factors)
    and the row scales t enter only the R x R and R-vector algebra.

    G = B B^T = U diag(e) U^T [R, R] (eigenvalues at round-off dropped), s = sqrt(e); the
    columns of Q = B^T U / s are an orthonormal basis of range(H), H = Q diag(e) Q^T. Only
    the coordinates a = Q^T update = Q^T g / (e + lambda) depend on lambda, so a retry with
    another damping costs O(R^2) and one back-projection, never a new eigendecomposition.
    ``anchors`` (A_j, w_j): extra rows of B with delta_j = 0 (FIPA's curvature memory); then
    dbar averages the deltas with weights / sum(weights). Non-finite deltas or factors give a
    NaN direction (the round loop ends the run diverged), never an eigensolver error.
    """

    def __init__(self, deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
                 anchors: list[tuple[torch.Tensor, torch.Tensor]] = (), chunk: int = 1 << 16) -> None:
        P = deltas[0].numel()
        self.P, self.chunk = P, chunk
        dbar = torch.zeros_like(deltas[0])
        dbar_w = weights / weights.sum() if anchors else weights
        for wm, d in zip(dbar_w, deltas, strict=True):
            dbar.add_(d, alpha=float(wm))
        self.dbar = dbar  # sum_m w_m delta_m [P]

        self.factors = [*factors, *(A for A, _ in anchors)]
        if anchors:
            weights = torch.cat([weights.to(torch.float64), torch.stack([w for _, w in anchors])])
        ranks = torch.tensor([A.shape[0] for A in self.factors])
        R, offsets = int(ranks.sum()), [0, *ranks.cumsum(0).tolist()]
        self.rows_of = [slice(offsets[m], offsets[m + 1]) for m in range(len(self.factors))]
        device = deltas[0].device
        t = weights.to(torch.float64).sqrt().repeat_interleave(ranks).to(device)  # [R]
        self.t = t
        self.buffer = torch.empty(R, min(chunk, P), dtype=torch.float64, device=device)

        gram = torch.zeros(R, R, dtype=torch.float64, device=device)  # A A^T
        c = torch.zeros(R, dtype=torch.float64, device=device)  # A_m delta_m (0 on anchor rows)
        b_dbar = torch.zeros(R, dtype=torch.float64, device=device)  # A dbar
        for cols in _column_chunks(P, chunk):
            Ac = self.block(cols)
            gram.addmm_(Ac, Ac.T)
            b_dbar.addmv_(Ac, dbar[cols].to(torch.float64))
            for rows, d in zip(self.rows_of, deltas, strict=False):
                c[rows].addmv_(Ac[rows], d[cols].to(torch.float64))
        # scale the rows: G = B B^T = diag(t) A A^T diag(t), c_m = sqrt(w_m) A_m delta_m, B dbar
        gram.mul_(t[:, None] * t[None, :])
        c.mul_(t)
        b_dbar.mul_(t)
        self.row_curvature = gram.diagonal().clone()  # w_m ||A_m,i||^2 = w_m sigma_m,i  [R]
        self.finite = bool(torch.isfinite(gram).all() and torch.isfinite(c).all()
                           and torch.isfinite(b_dbar).all() and torch.isfinite(dbar).all())
        if not self.finite:  # eigh of a non-finite matrix may fail or hang: skip it
            return

        # eigen-decompose the Gram matrix: G = U diag(s^2) U^T, so H = Q diag(s^2) Q^T, Q = B^T U / s
        e, U = torch.linalg.eigh(gram)
        keep = e > e.max().clamp_min(0) * R * torch.finfo(torch.float64).eps * 10
        self.e, self.U = e[keep], U[:, keep]
        self.s = self.e.sqrt()
        self.uc = self.U.T @ c  # U^T c
        self.ub = self.U.T @ b_dbar  # U^T B dbar

    def block(self, cols: slice) -> torch.Tensor:
        """Rows of A restricted to these columns, in float64: [R, c] (a view of the buffer)."""
        out = self.buffer[:, : cols.stop - cols.start]
        for rows, A in zip(self.rows_of, self.factors, strict=True):
            out[rows].copy_(A[:, cols])
        return out

    def truncation_level(self, rank: int) -> float:
        """tau = sum_m w_m sigma_{m,r}: the largest curvature per direction that rank-r
        truncation hides (a factor with fewer than ``rank`` rows is complete: hides none)."""
        return sum(float(self.row_curvature[rows].min()) for rows in self.rows_of
                   if rows.stop - rows.start >= rank)

    def relative_damping(self, rho: float, floor: float = 0.0) -> float:
        """lambda / lambda_max(H) of :meth:`coefficients` (rho where the floor does not bind)."""
        lam_max = float(self.e.max()) if self.finite and self.e.numel() else 0.0
        return max(float(rho), floor / lam_max) if lam_max > 0 else float(rho)

    def coefficients(self, rho: float, floor: float = 0.0) -> torch.Tensor:
        """a = Q^T (H + lambda I)^-1 g [R'], lambda = max(rho lambda_max(H), floor) (0: pinv)."""
        if not self.finite:
            return torch.full((1,), math.nan, dtype=torch.float64)
        e, s = self.e, self.s
        lam = rho * float(e.max()) if e.numel() else 0.0
        if floor > lam:
            lam = floor
        # Q^T g = U^T (G c + lambda B dbar) / s = s U^T c + lambda U^T B dbar / s   (G U = U diag(s^2))
        qt_g = s * self.uc + lam * self.ub / s
        return qt_g / (e + lam)  # coordinates of the update in range(H), basis Q

    def direction(self, coef: torch.Tensor, complement: str = "fedavg") -> torch.Tensor:
        """The update [P] = Q a + (I - Pi) dbar (complement fedavg) or Q a (none)."""
        if not self.finite:
            return torch.full_like(self.dbar, math.nan)
        use_complement = complement == "fedavg"
        if use_complement:
            # (I - Pi) dbar = dbar - Q Q^T dbar: subtract Q^T dbar from the range coordinates
            coef = coef - self.ub / self.s
        z = self.t * (self.U @ (coef / self.s))  # Q coef = B^T U (coef / s) = A^T z
        out = self.dbar.clone() if use_complement else torch.zeros_like(self.dbar)
        for cols in _column_chunks(self.P, self.chunk):
            # apply A^T to the row coefficients: z -> A^T z, one column block at a time
            out[cols] += (self.block(cols).T @ z).to(out.dtype)
        return out

    def model_decrease(self, coef: torch.Tensor, eta: float = 1.0) -> float:
        """s^T B^T c - 1/2 ||B s||^2 for the step s = eta update, update's range coordinates a.

        B Q = U diag(s) and B (I - Pi) = 0, so B s = eta U (s a): O(R) work.
        """
        if not self.finite:
            return math.nan
        Bs = eta * (self.s * coef)  # U^T B s
        return float(Bs @ self.uc - 0.5 * (Bs @ Bs))


def fipa_direction(
    deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
    rho: float, complement: str = "fedavg", chunk: int = 1 << 16,
) -> torch.Tensor:
    """The FIPA update [P] from deltas [P] and factors A_m [r_m, P]; never forms P x P.

    One :class:`FIPASystem` solved at relative damping ``rho``: O(P R^2) time, O(P + R chunk)
    extra memory, the R x R problem in float64.
    """
    system = FIPASystem(deltas, factors, weights, chunk=chunk)
    return system.direction(system.coefficients(rho), complement)
