"""What an aggregator asks of its clients' curvature, and what a client uploads.

The curvature keys shared by every aggregator that asks for curvature are declared once
here (:class:`CurvatureSampling`, :class:`CurvatureParams`), with their meaning and bounds
(fipa/keys.py); the aggregators' Params inherit them and :class:`CurvatureRequest` carries
them to the clients unchanged (docs/method.md, "Curvature uploads").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from fipa.keys import key

AUTO_EXACT_NUMBERS = 1 << 26  # 64 Mi entries of S (256 MiB in float32): beyond, gram or matrix-free
METHODS = ("exact", "gram", "matrix_free", "auto")


@dataclass
class CurvatureSampling:
    """Where and on which data a client takes its curvature: the keys of every aggregator that
    asks for curvature (diag_fisher, fipa)."""

    curvature_samples: int | None = key(None, "client data subsample for the curvature upload (null: all)",
                                        ge=1, note="(all samples)")
    curvature_at: Literal["broadcast", "local"] = key(
        "broadcast", "curvature at the broadcast model theta^k or at the client's `local` result")


@dataclass
class CurvatureParams(CurvatureSampling):
    """How a client computes its curvature: the method, the Fisher and the range finder's probes
    (fipa's keys; an aggregator with only :class:`CurvatureSampling`'s keys gets these defaults)."""

    curvature_method: Literal["exact", "gram", "matrix_free", "auto"] = key(
        "auto", "`exact` (stacked per-sample Jacobians, eigensolve of the Gram), `gram` (the rows M_i^T J_i "
        "only, one reverse pass each, eigensolve of their Gram: the same eigenpairs, N = samples x "
        "rows-per-sample rows of P numbers in memory, about N backward passes of time), `matrix_free` "
        "(GGN-vector products in a randomized range finder, O(P r) memory whatever N, (rank + oversample)"
        "(power_iters + 2) products) or `auto` (exact while the Jacobian stack has at most 2^26 entries, "
        "else gram while N <= 2 (rank + oversample), else matrix_free)")
    curvature_fisher: Literal["ggn", "sampled"] = key(
        "ggn", "the exact output Hessian (C rows per sample), or `sampled` (a label drawn from the model: "
        "one row per sample, an unbiased estimate)")
    oversample: int = key(10, "range-finder probes beyond the rank (`matrix_free`)", ge=0,
                          note="extra probe vectors")
    power_iters: int = key(4, "subspace iterations of the range finder (`matrix_free`)", ge=0)


@dataclass(kw_only=True)
class CurvatureRequest(CurvatureParams):
    """What an aggregator needs from each client: ``kind`` "lowrank" (the top ``rank``
    eigenpairs) or "diag" (the diagonal), computed as the inherited curvature keys say.

    ``chunk``: matrix_free: GGN-vector products per vmap call; gram on an accelerator: samples
    per vmap call (memory ~ chunk activations + chunk C' P gradient numbers). Not a config key.
    """

    kind: Literal["lowrank", "diag"]
    rank: int = 0
    chunk: int = 8

    @classmethod
    def of(cls, kind: Literal["lowrank", "diag"], params: CurvatureSampling, rank: int = 0
           ) -> CurvatureRequest:
        """The request of an aggregator whose Params are ``params``: its curvature keys copied,
        the defaults of :class:`CurvatureParams` for those it does not have."""
        shared = {f.name for f in dataclasses.fields(CurvatureParams)}
        keys = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name in shared}
        return cls(kind=kind, rank=rank, **keys)

    def resolved_method(self, n: int, outputs: int, P: int) -> str:
        """The method after the size rule, for n samples of ``outputs`` rows each (C', the
        columns of the output-Hessian factor M) and P parameters:
        "exact" while S [n C', P] has at most AUTO_EXACT_NUMBERS entries (small models);
        else "gram" while its N = n C' rows take no more memory than the matrix-free range
        finder's two [rank + oversample, P] blocks (N <= 2 (rank + oversample));
        else "matrix_free" (memory O(P r) whatever N).
        """
        if self.curvature_method != "auto":
            return self.curvature_method
        if n * outputs * P <= AUTO_EXACT_NUMBERS:
            return "exact"
        return "gram" if n * outputs <= 2 * (self.rank + self.oversample) else "matrix_free"


@dataclass
class CurvatureUpload:
    """A client's curvature summary of its GGN H = S^T S [P, P], as uploaded to the server.

    Low-rank: ``eigvals`` sigma [r] (descending) and ``factor`` A = diag(sqrt sigma) V^T [r, P],
    so that H ~= A^T A with V [P, r] the top-r eigenvectors; diagonal: ``diag`` = diag(H) [P].
    The fields of the other kind are None.
    """

    eigvals: torch.Tensor | None = None
    factor: torch.Tensor | None = None
    diag: torch.Tensor | None = None
