"""Matrix-free curvature (fipa/curvature.py) against the exact stacked-Jacobian GGN.

Model: the digits CNN (P = 13,706, 10 classes) in float64 on 48 samples. Oracles: the dense
S^T S v from :func:`ggn_sqrt` and curvlinops' GGN operator for products; the thin
eigensolve :func:`lowrank_factor` of S for eigenpairs. Rank r = 9 = C - 1: the softmax GGN
of a 10-class net has C - 1 outlier eigenvalues, and lambda_10 / lambda_9 ~ 0.16 there, a
gap that the range finder (oversampling 10, 4 power iterations) resolves to ~1e-6 rad.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fipa.client_model import ClientModel
from fipa.curvature import (
    CurvatureRequest,
    client_curvature,
    ggn_diagonal,
    ggn_diagonal_streamed,
    ggn_matvec,
    ggn_sqrt,
    lowrank_factor,
    matrix_free_eigs,
    output_sqrt,
)
from tests.helpers import digits_cnn_client

DT = torch.float64
R = 9


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    task, model, layout, theta, batch = digits_cnn_client(48, DT)
    cm = ClientModel(task, model, layout)
    S = ggn_sqrt(cm, theta, batch)  # [480, P]
    return task, model, layout, theta, batch, S


def ggn_M(task, model, layout, theta, batch):
    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), batch)
    return output_sqrt("ce", "ggn", out, torch.Generator())


def subspace_angle(A1: torch.Tensor, A2: torch.Tensor) -> float:
    """Largest principal angle between the row spaces of two factors [r, P] (radians)."""
    Q1, Q2 = torch.linalg.qr(A1.T)[0], torch.linalg.qr(A2.T)[0]
    cos = torch.linalg.svdvals(Q1.T @ Q2).clamp(max=1.0)
    return float(torch.arccos(cos.min()))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_ggn_vector_products_match_dense_and_curvlinops(setup):
    task, model, layout, theta, batch, S = setup
    cm = ClientModel(task, model, layout)
    mv = ggn_matvec(cm, theta, batch, ggn_M(task, model, layout, theta, batch), chunk=2)
    V = torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)
    got = mv(V)
    dense = (S.T @ (S @ V.T)).T
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12 * float(dense.abs().max()))
    with warnings.catch_warnings():  # curvlinops' dependencies call the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from curvlinops import GGNLinearOperator

    class Net(nn.Module):  # the task's normalization inside, so curvlinops sees raw images
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(task.normalize(x))

    op = GGNLinearOperator(Net(), nn.CrossEntropyLoss(reduction="mean"), list(model.parameters()),
                           [(batch["x"], batch["y"])])
    torch.testing.assert_close(op @ V[0], got[0], rtol=1e-10, atol=1e-12 * float(got[0].abs().max()))


def test_top_eigenpairs_match_the_exact_ones(setup):
    task, model, layout, theta, batch, S = setup
    cm = ClientModel(task, model, layout)
    sigma, A = lowrank_factor(S, R + 1)
    assert sigma[R] / sigma[R - 1] < 0.3  # the spectral gap the accuracy below relies on
    mv = ggn_matvec(cm, theta, batch, ggn_M(task, model, layout, theta, batch))
    s_mf, A_mf = matrix_free_eigs(mv, theta.numel(), R, torch.Generator().manual_seed(1), DT, "cpu",
                                  oversample=10, power_iters=4)
    torch.testing.assert_close(s_mf, sigma[:R], rtol=1e-3, atol=0)
    assert subspace_angle(A_mf, A[:R]) < 1e-2
    # the factor reproduces H on its range: A^T A v = H v for v in span(V_r)
    torch.testing.assert_close(A_mf.T @ (A_mf @ A[0]), S.T @ (S @ A[0]), rtol=1e-4, atol=1e-8)


def test_client_curvature_auto_switches_by_size(setup, monkeypatch):
    task, model, layout, theta, batch, S = setup
    cm = ClientModel(task, model, layout)
    req = CurvatureRequest(kind="lowrank", rank=R, curvature_method="auto")
    assert req.resolved_method(48, 10, theta.numel()) == "exact"  # 48 * 10 * 13,706 < 2^26
    exact = client_curvature(req, cm, theta, batch, torch.Generator().manual_seed(0))
    monkeypatch.setattr("fipa.curvature_request.AUTO_EXACT_NUMBERS", 0)
    assert req.resolved_method(48, 10, theta.numel()) == "matrix_free"
    mf = client_curvature(req, cm, theta, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mf.eigvals, exact.eigvals, rtol=1e-3, atol=0)
    assert subspace_angle(mf.factor, exact.factor) < 1e-2
    assert mf.factor.shape == (R, theta.numel())


def test_sampled_fisher_factor_is_unbiased_for_the_output_hessian():
    """E[u u^T] = diag(p) - p p^T for u = p - e_y, y ~ Cat(p); E = I for Gaussian u (mse)."""
    out = torch.tensor([[1.0, -0.5, 0.2, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=DT)
    draws = 40000
    g = torch.Generator().manual_seed(0)
    M = output_sqrt("ce", "sampled", out.repeat(draws, 1), g)  # [2 draws, 4, 1]
    uu = (M @ M.transpose(1, 2)).view(draws, 2, 4, 4).mean(0)
    p = torch.softmax(out, -1)
    L = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(uu, L, rtol=0, atol=0.01)
    Mg = output_sqrt("mse", "sampled", torch.zeros(draws, 3, dtype=DT), g)
    torch.testing.assert_close((Mg @ Mg.transpose(1, 2)).mean(0), torch.eye(3, dtype=DT), rtol=0, atol=0.03)


def test_sampled_fisher_matrix_free_equals_its_exact_form(setup):
    """Same sampled labels: the n-sample rank-n Fisher, recovered in full (k = r + p > n)."""
    task, model, layout, theta, batch, _ = setup
    cm = ClientModel(task, model, layout)
    small = {k: v[:12] for k, v in batch.items()}
    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), small)
    M = output_sqrt("ce", "sampled", out, torch.Generator().manual_seed(3))  # [12, 10, 1]
    sigma, A = lowrank_factor(ggn_sqrt(cm, theta, small, M), 12)
    mv = ggn_matvec(cm, theta, small, M)
    s_mf, A_mf = matrix_free_eigs(mv, theta.numel(), 12, torch.Generator().manual_seed(1), DT, "cpu",
                                  oversample=4, power_iters=1)
    torch.testing.assert_close(s_mf, sigma, rtol=1e-8, atol=1e-12 * float(sigma[0]))


def test_streamed_diagonal_equals_the_exact_diagonal(setup):
    task, model, layout, theta, batch, S = setup
    cm = ClientModel(task, model, layout)
    M = ggn_M(task, model, layout, theta, batch)
    d = ggn_diagonal_streamed(cm, theta, batch, M, chunk=20)  # 20 + 20 + 8 samples
    torch.testing.assert_close(d, ggn_diagonal(S), rtol=1e-10, atol=1e-14)
    req = CurvatureRequest(kind="diag", curvature_method="matrix_free")
    got = client_curvature(req, cm, theta, batch, torch.Generator())
    torch.testing.assert_close(got.diag, ggn_diagonal(S), rtol=1e-10, atol=1e-14)


def test_diag_fisher_streams_one_sample_at_a_time_beyond_the_exact_size(setup, monkeypatch):
    """diag_fisher's request is auto: past AUTO_EXACT_NUMBERS (here made smaller than one
    sample's C P Jacobian) it accumulates the diagonal sample by sample, same numbers."""
    from fipa import curvature_request
    from fipa.aggregators import AGGREGATORS

    task, model, layout, theta, batch, S = setup
    cm = ClientModel(task, model, layout)
    monkeypatch.setattr(curvature_request, "AUTO_EXACT_NUMBERS", theta.numel())  # < C P: chunk of 1 sample
    req = AGGREGATORS.get("diag_fisher")(AGGREGATORS.get("diag_fisher").Params()).curvature_request()
    assert req.curvature_method == "auto" and req.resolved_method(48, 10, theta.numel()) != "exact"
    got = client_curvature(req, cm, theta, batch, torch.Generator())
    torch.testing.assert_close(got.diag, ggn_diagonal(S), rtol=1e-10, atol=1e-14)
