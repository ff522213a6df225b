"""Losses on per-sample outputs and the square root of their output-space Hessian."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss per sample [n]: squared error summed over outputs, or cross-entropy."""
    if kind == "mse":
        return ((out - target) ** 2).sum(dim=-1)
    if kind == "ce":
        return F.cross_entropy(out, target, reduction="none")
    raise ValueError(f"unknown loss kind {kind!r}")


def mean_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return per_sample_loss(kind, out, target).mean()


def hessian_sqrt(kind: str, out: torch.Tensor) -> torch.Tensor:
    """M_i with M_i M_i^T = L_i, the loss Hessian in the outputs; [n, C, C].

    mse: L = I (the GGN of half the squared error; a constant factor does not change
    FIPA since damping is relative). ce: L = diag(p) - p p^T = M M^T with
    M = diag(sqrt p) - p sqrt(p)^T, because sum(p) = 1.
    """
    n, c = out.shape
    if kind == "mse":
        return torch.eye(c, dtype=out.dtype, device=out.device).expand(n, c, c)
    if kind == "ce":
        p = torch.softmax(out.detach(), dim=-1)
        sq = p.sqrt()
        return torch.diag_embed(sq) - p.unsqueeze(-1) * sq.unsqueeze(-2)
    raise ValueError(f"unknown loss kind {kind!r}")


def hessian_scale(kind: str) -> float:
    """kappa with d^2 loss / d out^2 = kappa M_i M_i^T (:func:`hessian_sqrt`): the true GGN of the
    mean loss is kappa times the curvature factors' (2 for squared error, 1 for cross-entropy)."""
    if kind == "mse":
        return 2.0
    if kind == "ce":
        return 1.0
    raise ValueError(f"unknown loss kind {kind!r}")
