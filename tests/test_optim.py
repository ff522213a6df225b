"""Functional optimizers follow torch.optim's SGD and Adam step for step."""

from __future__ import annotations

import pytest
import torch

from fipa.optim import OPTIMIZERS


def quadratic_grad(theta: torch.Tensor) -> torch.Tensor:
    """Gradient of sum_i (i+1) theta_i^2 + sin(theta_i): non-trivial and deterministic."""
    scale = torch.arange(1, theta.numel() + 1, dtype=theta.dtype)
    return 2 * scale * theta + torch.cos(theta)


@pytest.mark.parametrize(
    ("name", "kwargs", "torch_cls", "torch_kwargs"),
    [
        ("sgd", {"lr": 0.01}, torch.optim.SGD, {"lr": 0.01}),
        ("sgd", {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}, torch.optim.SGD,
         {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}),
        ("adam", {"lr": 0.05}, torch.optim.Adam, {"lr": 0.05}),
        ("adam", {"lr": 0.05, "weight_decay": 1e-2}, torch.optim.Adam, {"lr": 0.05, "weight_decay": 1e-2}),
    ],
)
def test_matches_torch_optim(name, kwargs, torch_cls, torch_kwargs):
    theta0 = torch.linspace(-2, 3, 17, dtype=torch.float64)
    ours = theta0.clone()
    opt = OPTIMIZERS.get(name)(**kwargs)
    state = opt.init(ours)
    ref = theta0.clone().requires_grad_(True)
    topt = torch_cls([ref], **torch_kwargs)
    for _ in range(25):
        opt.step(ours, quadratic_grad(ours), state)
        topt.zero_grad()
        ref.grad = quadratic_grad(ref.detach())
        topt.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(ours, theta0)


def test_stacked_clients_step_independently():
    """A [M, P] stack steps each row exactly as a lone [P] vector would."""
    opt = OPTIMIZERS.get("adam")(lr=0.1)
    stack = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = [r.clone() for r in stack]
    st, sts = opt.init(stack), [opt.init(r) for r in rows]
    for _ in range(4):
        opt.step(stack, torch.sin(stack), st)
        for r, s in zip(rows, sts, strict=True):
            opt.step(r, torch.sin(r), s)
    assert torch.equal(stack, torch.stack(rows))
