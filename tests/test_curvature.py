"""Oracle tests of ``fipa.curvature``: the GGN square root, low-rank factors, diagonals.

Dense oracles come from ``torch.autograd.functional`` (Jacobians of the outputs in the
flat parameter vector, Hessians of the loss in the outputs) and, independently of fipa's
parameter layout, from curvlinops' ``GGNLinearOperator`` on the ``nn.Module`` itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fipa.client_model import ClientModel
from fipa.curvature import (
    CurvatureRequest,
    CurvatureUpload,
    client_curvature,
    ggn_diagonal,
    ggn_sqrt,
    lowrank_factor,
)
from fipa.params import ParamLayout, model_params
from fipa.partition import PartitionInput
from fipa.tasks.base import Batch, Task
from fipa.tasks.regression import Regression, RegressionParams

with warnings.catch_warnings():  # curvlinops' dependencies call the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from curvlinops import GGNLinearOperator

DT = torch.float64
NO_JIT_WARNING = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyClassifier(Task):
    """Three-class softmax classifier 4 -> 5 (tanh) -> 3 on Gaussian inputs; test-only."""

    loss_kind = "ce"

    def __init__(self, n: int = 16) -> None:
        super().__init__(params=None, seed=0, dtype=DT)
        g = torch.Generator().manual_seed(11)
        self.x = torch.randn(n, 4, generator=g, dtype=DT)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def partition_input(self) -> PartitionInput:
        raise NotImplementedError

    def client_data(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx]}

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)

    def outputs(self, model, params, batch):
        return functional_call(model, params, (batch["x"],))

    def evaluate(self, model, params):
        raise NotImplementedError


def regression_setup(n: int = 20):
    """Regression task with a 1-8-8-1 tanh MLP, its flat parameters and all its data."""
    task = Regression(RegressionParams(n_train=n, hidden=[8, 8], test_points=10), seed=0, dtype=DT)
    torch.manual_seed(0)
    model = task.build_model()
    layout = ParamLayout.of(model)
    theta = layout.flatten(model_params(model))
    return task, model, layout, theta, task.client_data(np.arange(n))


def classifier_setup(n: int = 16):
    """TinyClassifier, its model, flat parameters and all its data."""
    task = TinyClassifier(n)
    torch.manual_seed(1)
    model = task.build_model()
    layout = ParamLayout.of(model)
    theta = layout.flatten(model_params(model))
    return task, model, layout, theta, task.client_data(np.arange(n))


def dense_jacobian(task: Task, model, layout, theta, batch) -> torch.Tensor:
    """d outputs / d theta for the whole batch at once: [n, C, P] (autograd oracle)."""

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        return task.outputs(model, layout.unflatten(flat), batch)

    return torch.autograd.functional.jacobian(outputs, theta)


def assert_matrix_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Entrywise close with an absolute floor at rtol times the largest entry."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


# ----------------------------------------------------------------------------- ggn_sqrt


def test_ggn_sqrt_regression_matches_dense_jtj():
    """MSE: S^T S == J^T J / n (fipa's L = I), J from autograd.functional.jacobian."""
    task, model, layout, theta, batch = regression_setup()
    cm = ClientModel(task, model, layout)
    S = ggn_sqrt(cm, theta, batch)
    J = dense_jacobian(task, model, layout, theta, batch)  # [n, 1, P]
    n, C, P = J.shape
    assert S.shape == (n * C, P) and P == 97
    Jf = J.reshape(n * C, P)
    assert_matrix_close(S.T @ S, Jf.T @ Jf / n, rtol=1e-10)


def test_ggn_sqrt_cross_entropy_matches_dense_oracle():
    """CE: S^T S == (1/n) sum_i J_i^T L_i J_i with L_i the autograd Hessian of CE in the logits.

    L_i is also checked against diag(p) - p p^T, the closed form the task docs state.
    """
    task, model, layout, theta, batch = classifier_setup()
    cm = ClientModel(task, model, layout)
    S = ggn_sqrt(cm, theta, batch)
    J = dense_jacobian(task, model, layout, theta, batch)  # [n, 3, P]
    with torch.no_grad():
        logits = task.outputs(model, layout.unflatten(theta), batch)
    n = J.shape[0]
    H = torch.zeros(J.shape[-1], J.shape[-1], dtype=DT)
    for i in range(n):
        yi = batch["y"][i : i + 1]
        L = torch.autograd.functional.hessian(lambda z, yi=yi: F.cross_entropy(z[None], yi), logits[i])
        p = torch.softmax(logits[i], dim=0)
        assert_matrix_close(L, torch.diag(p) - torch.outer(p, p), rtol=1e-12)
        H += J[i].T @ L @ J[i]
    assert_matrix_close(S.T @ S, H / n, rtol=1e-10)


def flat_vector(seed: int, P: int) -> torch.Tensor:
    """A reproducible random direction [P]."""
    return torch.randn(P, generator=torch.Generator().manual_seed(seed), dtype=DT)


@NO_JIT_WARNING
def test_ggn_sqrt_regression_matches_curvlinops():
    """curvlinops GGN of MSELoss(mean) on the nn.Module == 2 H (fipa), on random vectors.

    MSELoss(reduction="mean") is (1/(n C)) sum (f - y)^2, whose output Hessian is
    2/(n C) I, so curvlinops' GGN is (2/(n C)) J^T J. fipa's H uses L = I averaged over
    samples, (1/n) J^T J; with C = 1 output: curvlinops = 2 * fipa.
    """
    task, model, layout, theta, batch = regression_setup()
    cm = ClientModel(task, model, layout)
    S = ggn_sqrt(cm, theta, batch)
    data = [(task.scale(batch["x"]), batch["y"])]
    op = GGNLinearOperator(model, nn.MSELoss(reduction="mean"), list(model.parameters()), data)
    C = batch["y"].shape[1]
    for seed in range(3):
        v = flat_vector(seed, theta.numel())
        hv = S.T @ (S @ v)
        torch.testing.assert_close(op @ v, (2.0 / C) * hv, rtol=1e-10, atol=1e-10 * float(hv.abs().max()))


@NO_JIT_WARNING
def test_ggn_sqrt_cross_entropy_matches_curvlinops():
    """curvlinops GGN of CrossEntropyLoss(mean) == fipa's H exactly (no extra factor)."""
    task, model, layout, theta, batch = classifier_setup()
    cm = ClientModel(task, model, layout)
    S = ggn_sqrt(cm, theta, batch)
    data = [(batch["x"], batch["y"])]
    op = GGNLinearOperator(model, nn.CrossEntropyLoss(reduction="mean"), list(model.parameters()), data)
    for seed in range(3):
        v = flat_vector(seed, theta.numel())
        hv = S.T @ (S @ v)
        torch.testing.assert_close(op @ v, hv, rtol=1e-10, atol=1e-10 * float(hv.abs().max()))


# ----------------------------------------------------------------------------- factors


def random_sqrt(n: int = 12, P: int = 30) -> torch.Tensor:
    """A random S [n, P] with distinct singular values."""
    g = torch.Generator().manual_seed(5)
    return torch.logspace(0, -1, n, dtype=DT)[:, None] * torch.randn(n, P, generator=g, dtype=DT)


def test_lowrank_factor_full_rank_reproduces_h():
    """rank >= rank(S): A^T A == S^T S; sigma == eigvalsh(H) descending; rank clamps to n."""
    S = random_sqrt()
    H = S.T @ S
    sigma, A = lowrank_factor(S, rank=50)
    assert A.shape == (12, 30) and sigma.shape == (12,)
    assert_matrix_close(A.T @ A, H, rtol=1e-12)
    top = torch.linalg.eigvalsh(H).flip(0)[:12]
    torch.testing.assert_close(sigma, top, rtol=1e-12, atol=1e-12 * float(top[0]))
    torch.testing.assert_close(A @ A.T, torch.diag(sigma), rtol=1e-12, atol=1e-12 * float(top[0]))


def test_lowrank_factor_truncated_is_top_eigenpairs():
    """rank r < rank(S): sigma = top-r eigenvalues, A^T A = V_r diag(sigma) V_r^T."""
    S = random_sqrt()
    e, V = torch.linalg.eigh(S.T @ S)
    e, V = e.flip(0)[:5], V.flip(1)[:, :5]
    sigma, A = lowrank_factor(S, rank=5)
    torch.testing.assert_close(sigma, e, rtol=1e-12, atol=1e-12 * float(e[0]))
    assert_matrix_close(A.T @ A, V @ torch.diag(e) @ V.T, rtol=1e-10)


def test_ggn_diagonal_is_diag_of_h():
    """ggn_diagonal(S) == diag(S^T S)."""
    S = random_sqrt()
    torch.testing.assert_close(ggn_diagonal(S), torch.diagonal(S.T @ S), rtol=1e-13, atol=0.0)


# ----------------------------------------------------------------------------- client_curvature


def test_client_curvature_full_data_matches_factor():
    """samples=None: the factor of the GGN of all the client's data."""
    task, model, layout, theta, batch = regression_setup()
    cm = ClientModel(task, model, layout)
    req = CurvatureRequest(kind="lowrank", rank=6)
    out = client_curvature(req, cm, theta, batch, torch.Generator().manual_seed(0))
    sigma, A = lowrank_factor(ggn_sqrt(cm, theta, batch), 6)
    torch.testing.assert_close(out.eigvals, sigma, rtol=1e-12, atol=0.0)
    assert_matrix_close(out.factor.T @ out.factor, A.T @ A, rtol=1e-10)


def test_client_curvature_subsample_is_deterministic_given_generator():
    """samples=8 of 20: same seed -> same subset and result; the subset is randperm's first 8.

    Also checks that a different seed gives a different subsample (the GGN changes), and
    that the diagonal request subsamples the same way.
    """
    task, model, layout, theta, batch = regression_setup()
    cm = ClientModel(task, model, layout)
    req = CurvatureRequest(kind="lowrank", rank=4, curvature_samples=8)

    def run(seed: int, request: CurvatureRequest = req) -> CurvatureUpload:
        gen = torch.Generator().manual_seed(seed)
        return client_curvature(request, cm, theta, batch, gen)

    a, b, c = run(123), run(123), run(7)
    assert torch.equal(a.factor, b.factor) and torch.equal(a.eigvals, b.eigvals)
    assert not torch.allclose(a.eigvals, c.eigvals)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(123))[:8]
    S_sub = ggn_sqrt(cm, theta, {k: v[idx] for k, v in batch.items()})
    sigma, A = lowrank_factor(S_sub, 4)
    torch.testing.assert_close(a.eigvals, sigma, rtol=1e-12, atol=0.0)
    assert_matrix_close(a.factor.T @ a.factor, A.T @ A, rtol=1e-10)
    diag = run(123, CurvatureRequest(kind="diag", curvature_samples=8)).diag
    torch.testing.assert_close(diag, torch.diagonal(S_sub.T @ S_sub), rtol=1e-12, atol=1e-14)
