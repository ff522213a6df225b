"""The Gram route (``curvature_method: gram``) against the exact stacked-Jacobian GGN.

What the method promises (fipa/curvature.py, ``per_sample_rows`` and ``gram_eigs``): the
eigenpairs of the Gram of exactly the rows it forms. With ``fisher: ggn`` (C rows per sample)
that is the exact GGN of the subsample, so eigenvalues and A^T A match the exact path to
round-off (float64: 1e-10). With ``fisher: sampled`` (one row per sample, a label drawn from
the model) it is exact for the sampled Fisher of those labels, itself an unbiased Monte-Carlo
estimate of the GGN: E[S^T S] = H, so the mean of D independent draws' A^T A (rank n, all
eigenpairs) is within a few standard errors of H, checked against the per-entry spread.
Model: the digits CNN (P = 13,706, 10 classes) in float64 on 24 samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fipa.client_model import ClientModel
from fipa.config import parse_run_config
from fipa.curvature import (
    CurvatureRequest,
    client_curvature,
    ggn_sqrt,
    gram_eigs,
    lowrank_factor,
    output_sqrt,
    per_sample_rows,
)
from fipa.simulate import train
from fipa.stacked_curvature import round_curvature
from tests.helpers import digits_cnn_client

DT = torch.float64
R = 9

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    return digits_cnn_client(24, DT)


def same_h(A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
    """A^T A = B^T B (eigenvectors up to sign), on 4 random directions: never P x P."""
    Z = torch.randn(A.shape[1], 4, generator=torch.Generator().manual_seed(0), dtype=A.dtype)
    torch.testing.assert_close(A.T @ (A @ Z), B.T @ (B @ Z), rtol=1e-9, atol=1e-12 * scale)


def factor_M(task, model, layout, theta, batch, fisher, seed=0):
    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), batch)
    return output_sqrt("ce", fisher, out, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fisher", ["ggn", "sampled"])
@pytest.mark.parametrize("chunk", [1, 5], ids=["loop", "vmap"])
def test_rows_are_the_stacked_jacobian_rows(setup, fisher, chunk):
    """Row (i, k) = M_i[:, k]^T J_i / sqrt(n), in layout order, by either the loop or vmap."""
    task, model, layout, theta, batch = setup
    cm = ClientModel(task, model, layout)
    M = factor_M(task, model, layout, theta, batch, fisher)
    S = ggn_sqrt(cm, theta, batch, M)  # [n C', P]
    blocks = per_sample_rows(cm, theta, batch, M, chunk)
    assert [b.shape for b in blocks] == [(S.shape[0], s) for s in layout.sizes]
    torch.testing.assert_close(torch.cat(blocks, dim=1), S, rtol=1e-12, atol=1e-14)
    # a subset of the tensors: the same columns
    names = list(layout.names[1::2])
    some = per_sample_rows(cm, theta, batch, M, chunk, names)
    cols = torch.split(S, layout.sizes, dim=1)
    for b, name in zip(some, names, strict=True):
        torch.testing.assert_close(b, cols[layout.names.index(name)], rtol=1e-12, atol=1e-14)


def test_gram_eigs_equal_the_thin_eigensolve_and_free_their_input(setup):
    task, model, layout, theta, batch = setup
    cm = ClientModel(task, model, layout)
    M = factor_M(task, model, layout, theta, batch, "ggn")
    sigma, A = lowrank_factor(ggn_sqrt(cm, theta, batch, M), R)
    blocks = per_sample_rows(cm, theta, batch, M)
    s_g, A_g = gram_eigs(blocks, R)
    assert blocks == []  # consumed: each block is freed once mapped back
    assert A_g.shape == (R, theta.numel()) and A_g.dtype == theta.dtype
    torch.testing.assert_close(s_g, sigma, rtol=1e-10, atol=0)
    same_h(A_g, A, float(sigma[0]))


def test_gram_path_is_the_exact_ggn_of_the_subsample(setup):
    """client_curvature(method gram) = method exact: same subsample from the same generator."""
    task, model, layout, theta, batch = setup
    cm = ClientModel(task, model, layout)
    data = task.client_data(np.arange(60))
    got = {}
    for method in ("exact", "gram"):
        req = CurvatureRequest(kind="lowrank", rank=R, curvature_samples=24, curvature_method=method)
        gen = torch.Generator().manual_seed(4)
        got[method] = client_curvature(req, cm, theta, data, gen)
    torch.testing.assert_close(got["gram"].eigvals, got["exact"].eigvals, rtol=1e-10, atol=0)
    same_h(got["gram"].factor, got["exact"].factor, float(got["exact"].eigvals[0]))


def test_sampled_rows_are_an_unbiased_estimate_of_the_ggn(setup):
    """E[A^T A] = H for the sampled Fisher with all n eigenpairs: the mean of D draws lies within
    5 standard errors of the exact GGN, entry by entry, in a random 2-D projection."""
    task, model, layout, theta, batch = setup
    cm = ClientModel(task, model, layout)
    small = {k: v[:6] for k, v in batch.items()}
    S = ggn_sqrt(cm, theta, small)  # exact GGN rows [60, P]
    Z = torch.randn(theta.numel(), 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    H = (S @ Z).T @ (S @ Z)  # Z^T H Z [2, 2]
    draws = []
    for seed in range(300):
        M = factor_M(task, model, layout, theta, small, "sampled", seed)
        _, A = gram_eigs(per_sample_rows(cm, theta, small, M), 6)
        draws.append((A @ Z).T @ (A @ Z))
    D = torch.stack(draws)  # [draws, 2, 2]
    err = (D.mean(0) - H).abs()
    assert bool((err < 5 * D.std(0) / len(draws) ** 0.5).all()), (err, D.std(0))


def test_auto_picks_gram_for_large_models_while_its_rows_fit(monkeypatch):
    req = CurvatureRequest(kind="lowrank", rank=20, curvature_method="auto")  # oversample 10: at most 60 rows
    assert req.resolved_method(32, 10, 13_706) == "exact"  # small: unchanged
    P = 11_173_962  # ResNet-18
    assert req.resolved_method(32, 1, P) == "gram"  # sampled Fisher, 32 rows
    assert req.resolved_method(6, 10, P) == "gram"  # exact GGN of 6 samples, 60 rows
    assert req.resolved_method(128, 1, P) == "matrix_free"  # beyond the range finder's memory
    monkeypatch.setattr("fipa.curvature_request.AUTO_EXACT_NUMBERS", 0)
    assert req.resolved_method(32, 10, 13_706) == "matrix_free"
    gram = CurvatureRequest(kind="lowrank", rank=9, curvature_method="gram")
    assert gram.resolved_method(1000, 10, 10) == "gram"


def test_non_finite_rows_give_nan_factors_without_an_eigensolve():
    blocks = [torch.ones(4, 3), torch.full((4, 2), float("nan"))]
    sigma, A = gram_eigs(blocks, 3)
    assert sigma.shape == (3,) and A.shape == (3, 5) and bool(A.isnan().all()) and blocks == []


def test_round_curvature_routes_gram_clients_through_their_own_path(setup):
    task, model, layout, theta, batch = setup
    cm = ClientModel(task, model, layout)
    datas = [task.client_data(np.arange(i * 20, i * 20 + 20)) for i in range(2)]
    req = CurvatureRequest(kind="lowrank", rank=4, curvature_samples=10, curvature_method="gram",
                           curvature_fisher="sampled")
    got = round_curvature(req, cm, theta, datas,
                          [torch.Generator().manual_seed(m) for m in range(2)])
    for m in range(2):
        ref = client_curvature(req, cm, theta, datas[m], torch.Generator().manual_seed(m))
        assert torch.equal(got[m].eigvals, ref.eigvals) and torch.equal(got[m].factor, ref.factor)


def digits_fipa(**aggregator) -> dict:
    return {
        "task": {"name": "vision", "dataset": "digits", "model": "digits_cnn", "train_subsample": 300,
                 "test_subsample": 100},
        "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
        "client": {"method": "local", "optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 16},
        "aggregator": {"name": "fipa", "rho": 1e-3, "rank": 4, "curvature_samples": 12,
                       "curvature_method": "gram", "curvature_fisher": "sampled", **aggregator},
        "rounds": 3,
        "dtype": "float32",
    }


def test_gram_run_is_deterministic_resumes_and_matches_exact_with_ggn_rows(tmp_path):
    """A float32 FIPA run on gram factors: same seed, same numbers; resumed = uninterrupted; and
    with exact GGN rows it follows the exact path's run (same curvature up to rounding)."""
    log = lambda s: None  # noqa: E731
    a = train(parse_run_config(digits_fipa()), tmp_path / "a", log=log)
    b = train(parse_run_config(digits_fipa()), tmp_path / "b", log=log)
    assert a["final"] == b["final"] and not a["diverged"]
    train(parse_run_config({**digits_fipa(), "rounds": 1}), tmp_path / "c", log=log)
    c = train(parse_run_config(digits_fipa()), tmp_path / "c", log=log)
    assert c["final"] == a["final"]
    strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "a" / "metrics.csv") == strip(tmp_path / "c" / "metrics.csv")
    gram = train(parse_run_config(digits_fipa(curvature_fisher="ggn")), tmp_path / "g", log=log)
    exact = train(parse_run_config(digits_fipa(curvature_fisher="ggn", curvature_method="exact")),
                  tmp_path / "e", log=log)
    assert gram["final"]["test_acc"] == pytest.approx(exact["final"]["test_acc"], abs=0.011)
    assert gram["final"]["test_loss"] == pytest.approx(exact["final"]["test_loss"], rel=1e-3)


@pytest.mark.slow
def test_digits_refinement_with_the_sampled_gram_path_is_within_0005_of_exact(tmp_path):
    """Issue 18's end-to-end check: config.yaml's digits refinement (FedAvg warm-up, then FIPA),
    3 seeds, mean final accuracy of curvature_method gram + sampled Fisher within 0.005 of the
    exact GGN path (benchmarks/bench_digits_curvature.py prints the table, cnn2 included)."""
    import importlib.util
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    path = root / "benchmarks" / "bench_digits_curvature.py"
    spec = importlib.util.spec_from_file_location("bench_digits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    accs = {"exact": [], "gram_sampled": []}
    for seed in (0, 1, 2):
        where = tmp_path / f"seed{seed}"
        part, state = bench.warm_start(config, seed, where)
        for name in accs:
            res = bench.refine(config, seed, part, state, bench.variants(4)[name], where / name)
            accs[name].append(res["final"]["test_acc"])
    gap = np.mean(accs["gram_sampled"]) - np.mean(accs["exact"])
    print(f"exact {accs['exact']}, gram_sampled {accs['gram_sampled']}, difference {gap:+.4f}")
    assert abs(gap) <= 0.005
