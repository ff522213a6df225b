"""Federated PINNs: residuals against exact solutions, reference solvers, split, GGN oracle, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call

from fipa.client_model import ClientModel
from fipa.config import ConfigError, parse_params, parse_run_config
from fipa.curvature import ggn_sqrt
from fipa.params import ParamLayout
from fipa.partition import DomainSplitParams, make_partition
from fipa.simulate import Simulation, train

pde = pytest.importorskip("fipa.tasks.pde")
from fipa.tasks.pde import reference as ref  # noqa: E402
from fipa.tasks.pde.network import ACTIVATION_JETS, fnn_jet  # noqa: E402
from fipa.tasks.pde.problems import PROBLEMS, derivative_rows, residual_rows  # noqa: E402

EXACT = ["poisson1d", "helmholtz2d", "helmholtz2d_n1", "heat1d", "diffusion_reaction"]
NU = 0.01 / math.pi


def make_task(problem: str, tmp_path, seed: int = 0, **over):
    """A small PINN task; references are cached under tmp_path."""
    values = {"problem": problem, "n_domain": 40, "n_boundary": 8, "n_initial": 12,
              "hidden": [6, 6], "test_points": 24, "reference_dir": str(tmp_path / "ref"), **over}
    return pde.PINN(parse_params(pde.PDEParams, values, "task"), seed, torch.float64)


def full_batch(task):
    return task.client_data(np.arange(len(task.x_train)))


# ----------------------------------------------------------------------------- residuals


@pytest.mark.parametrize("problem", EXACT)
def test_exact_solution_has_zero_residual_at_pde_boundary_and_initial_points(problem, tmp_path):
    task = make_task(problem, tmp_path, bc_weight=3.0, ic_weight=5.0)
    b = full_batch(task)
    exact = task.problem.exact
    assert set(b["kind"].tolist()) == ({0, 1, 2} if task.problem.time else {0, 1})
    r = residual_rows(task.problem, b["x"], b["kind"], b["g"], derivative_rows(exact, b["x"]), task.sqrt_w)
    scale = 1 + b["x"].new_tensor(task.problem.constants.get("k0", 1.0)) ** 2
    assert r.abs().max() < 1e-11 * scale
    # the check can fail: a perturbed solution leaves residuals at PDE and data rows
    r = residual_rows(task.problem, b["x"], b["kind"], b["g"],
                      derivative_rows(lambda y: exact(y) + 0.01 * y[..., 0] ** 3, b["x"]), task.sqrt_w)
    assert (r[b["kind"] == 0].abs() > 1e-4).any()
    assert (r[b["kind"] > 0].abs() > 1e-6).any()


def test_data_rows_are_sqrt_weighted(tmp_path):
    task = make_task("burgers", tmp_path, bc_weight=4.0, ic_weight=9.0)
    b = full_batch(task)
    # u = 1 everywhere: boundary rows 2 (1 - 0), initial rows 3 (1 + sin(pi x))
    ones = (torch.ones(len(b["x"]), dtype=torch.float64), torch.zeros_like(b["x"]),
            torch.zeros(len(b["x"]), 2, 2, dtype=torch.float64))
    r = residual_rows(task.problem, b["x"], b["kind"], b["g"], ones, task.sqrt_w)
    bc, ic = b["kind"] == 1, b["kind"] == 2
    torch.testing.assert_close(r[bc], torch.full_like(r[bc], 2.0), rtol=0, atol=1e-14)
    torch.testing.assert_close(r[ic], 3 * (1 + torch.sin(math.pi * b["x"][ic, 0])), rtol=0, atol=1e-14)
    # and on PDE rows u = 1 gives u_t + u u_x - nu u_xx = 0
    assert r[b["kind"] == 0].abs().max() == 0


def test_residual_scale_divides_pde_rows_and_keeps_the_exact_solution_a_zero(tmp_path):
    k0 = 4 * math.pi
    plain = make_task("helmholtz2d", tmp_path)
    scaled = make_task("helmholtz2d", tmp_path, residual_scale=k0**2, bc_weight=4.0)
    b = full_batch(scaled)
    exact = scaled.problem.exact
    r = residual_rows(scaled.problem, b["x"], b["kind"], b["g"], derivative_rows(exact, b["x"]),
                      scaled.sqrt_w, scaled.params.residual_scale)
    assert r.abs().max() < 1e-13  # O(1) rows now: the k0^2 factor of the tolerance above is gone
    # a perturbed u: PDE rows shrink by exactly k0^2, data rows are untouched
    jet = derivative_rows(lambda y: exact(y) + 0.01 * y[..., 0] ** 3, b["x"])
    r0 = residual_rows(plain.problem, b["x"], b["kind"], b["g"], jet, (2.0, 1.0))
    r1 = residual_rows(scaled.problem, b["x"], b["kind"], b["g"], jet, (2.0, 1.0), k0**2)
    pde_rows = b["kind"] == 0
    torch.testing.assert_close(r1[pde_rows], r0[pde_rows] / k0**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(r1[~pde_rows], r0[~pde_rows], rtol=0, atol=0)
    assert r0[pde_rows].abs().max() > 1e-3


@pytest.mark.parametrize("problem", ["helmholtz2d", "burgers", "heat1d"])
def test_hard_bc_vanishes_exactly_on_the_boundary_and_drops_bc_rows(problem, tmp_path):
    task = make_task(problem, tmp_path, hard_bc=True, input_scale=3.0)
    assert 1 not in set(task.kind_train.tolist())  # no boundary rows left
    assert (2 in set(task.kind_train.tolist())) == (task.problem.time is not None)  # IC rows stay
    torch.manual_seed(0)
    model = task.build_model()
    params = dict(model.named_parameters())
    # points on every face of the spatial box, at random positions along the other axes
    gen = torch.Generator().manual_seed(0)
    bounds = torch.tensor(task.problem.bounds, dtype=torch.float64)
    faces = []
    for j in range(len(task.problem.space)):
        for side in (0, 1):
            x = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(50, len(bounds), generator=gen,
                                                                         dtype=torch.float64)
            x[:, j] = bounds[j, side]
            faces.append(x)
    x = torch.cat(faces)
    assert torch.equal(task.predict(model, params, x), torch.zeros(len(x), dtype=torch.float64))
    u, du, _ = fnn_jet(model, params, x, task.params.activation)
    assert torch.equal(u, torch.zeros_like(u))
    # the network itself is not zero there: the bubble factor does the work
    inside = task.predict(model, params, task.x_train)
    assert inside.abs().max() > 1e-3
    # and the tangential derivative vanishes on a face (u = 0 all along it)
    assert du[:50, 1:].abs().max() < 1e-15


def test_hard_bc_needs_zero_dirichlet_data(tmp_path):
    with pytest.raises(ConfigError, match="task.hard_bc: poisson1d has nonzero Dirichlet data"):
        make_task("poisson1d", tmp_path, hard_bc=True)


@pytest.mark.parametrize("activation", ACTIVATION_JETS.names())
@pytest.mark.parametrize("hard_bc", [False, True])
def test_network_jet_matches_torch_func_derivatives(activation, hard_bc, tmp_path):
    task = make_task("helmholtz2d", tmp_path, activation=activation, hidden=[7, 5], hard_bc=hard_bc,
                     input_scale=2.5 if hard_bc else 1.0)
    torch.manual_seed(1)
    model = task.build_model()
    params = dict(model.named_parameters())
    x = full_batch(task)["x"]
    jet = fnn_jet(model, params, x, activation)
    oracle = derivative_rows(lambda y: functional_call(model, params, (y[None],))[0, 0], x)
    for got, want in zip(jet, oracle, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("problem", ["allen_cahn", "diffusion_reaction", "heat1d", "burgers"])
@pytest.mark.parametrize("precomputed", [False, True])
def test_hard_ic_jet_matches_torch_func_derivatives(problem, precomputed, tmp_path):
    # u = u0(x) + tau(t) B(x) N(x, t): value, gradient and Hessian by the product rule
    task = make_task(problem, tmp_path, hard_ic=True, hidden=[7, 5], input_scale=1.7, activation="sin")
    torch.manual_seed(2)
    model = task.build_model()
    params = dict(model.named_parameters())
    b = full_batch(task)
    offset = (b["a"], b["da"], b["d2a"]) if precomputed else None
    jet = fnn_jet(model, params, b["x"], "sin", offset)
    oracle = derivative_rows(lambda y: functional_call(model, params, (y[None],))[0, 0], b["x"])
    for got, want in zip(jet, oracle, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("problem", ["allen_cahn", "diffusion_reaction", "heat1d", "burgers"])
def test_hard_ic_holds_initial_and_boundary_data_exactly_and_drops_their_rows(problem, tmp_path):
    task = make_task(problem, tmp_path, hard_ic=True, input_scale=2.0)
    assert set(task.kind_train.tolist()) == {0}  # PDE rows only
    torch.manual_seed(0)
    model = task.build_model()
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    (lo, hi), (t0, t1) = task.problem.space[0], task.problem.time
    s = lo + (hi - lo) * torch.rand(50, generator=gen, dtype=torch.float64)
    t = t0 + (t1 - t0) * torch.rand(50, generator=gen, dtype=torch.float64)
    initial = torch.stack([s, torch.full_like(s, t0)], -1)
    torch.testing.assert_close(task.predict(model, params, initial), task.problem.initial(initial),
                               rtol=0, atol=1e-15)
    for side in (lo, hi):
        face = torch.stack([torch.full_like(t, side), t], -1)
        torch.testing.assert_close(task.predict(model, params, face), task.problem.boundary(face),
                                   rtol=0, atol=1e-15)
    # the network itself is not the data inside: the factor tau B does the work
    u = task.predict(model, params, task.x_train)
    assert (u - task.problem.initial(task.x_train)).abs().max() > 1e-3


def test_hard_ic_needs_time_independent_boundary_data(tmp_path):
    with pytest.raises(ConfigError, match="task.hard_ic: helmholtz2d is not an evolution problem"):
        make_task("helmholtz2d", tmp_path, hard_ic=True)


def test_causal_weight_scales_pde_rows_by_exp_of_minus_c_tau(tmp_path):
    plain = make_task("burgers", tmp_path, bc_weight=4.0)
    causal = make_task("burgers", tmp_path, bc_weight=4.0, causal_weight=3.0)
    torch.manual_seed(0)
    model = plain.build_model()
    params = dict(model.named_parameters())
    b = full_batch(plain)
    r0, r1 = plain.outputs(model, params, b)[:, 0], causal.outputs(model, params, b)[:, 0]
    pde_rows = b["kind"] == 0
    # squared PDE residual weighted by exp(-3 t) on [0, 1]; data rows untouched
    torch.testing.assert_close(r1[pde_rows] ** 2, r0[pde_rows] ** 2 * torch.exp(-3.0 * b["x"][pde_rows, 1]),
                               rtol=1e-13, atol=0)
    assert torch.equal(r1[~pde_rows], r0[~pde_rows])


def test_t_end_shortens_the_time_interval_everywhere(tmp_path):
    task = make_task("allen_cahn", tmp_path, t_end=0.5, hard_ic=True)
    assert task.problem.time == (0.0, 0.5) and task.problem.bounds[-1] == (0.0, 0.5)
    assert float(task.x_train[:, 1].max()) <= 0.5 and float(task.x_test[:, 1].max()) == 0.5
    full = make_task("allen_cahn", tmp_path, hard_ic=True)
    # the reference on the shorter grid is the full reference's solution at those times
    half = full.problem.solution([task.grid_axes[0], task.grid_axes[1]], tmp_path / "ref")
    np.testing.assert_allclose(task.u_test.numpy(), half.reshape(-1), rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="task.t_end"):
        make_task("allen_cahn", tmp_path, t_end=1.5)
    with pytest.raises(ConfigError, match="task.causal_weight"):
        make_task("poisson1d", tmp_path, causal_weight=1.0)


def test_options_off_keep_the_soft_rows_and_the_plain_network(tmp_path):
    task = make_task("allen_cahn", tmp_path)
    assert set(task.kind_train.tolist()) == {0, 1, 2} and task.offset_train is None
    assert set(full_batch(task)) == {"x", "kind", "g"}
    assert task.build_model()._output_transform is None


# ----------------------------------------------------------------------------- references


def test_burgers_reference_converges_and_matches_known_values():
    xs = np.linspace(-1, 1, 401)
    ts = np.array([0.25, 0.5, 1.0])
    X, T = np.meshgrid(xs, ts, indexing="ij")
    finest = ref.burgers_cole_hopf(X, T, NU, 240)
    errs = [np.abs(ref.burgers_cole_hopf(X, T, NU, k) - finest).max() for k in (20, 40, 80)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-11
    # symmetry: odd in x, so u(0, t) = 0, and u(+-1, t) = 0
    assert np.abs(finest[200]).max() < 1e-12
    np.testing.assert_allclose(finest[::-1], -finest, atol=1e-12)
    assert np.abs(finest[[0, -1]]).max() < 1e-12

    def slope(t, h=1e-7):
        return (ref.burgers_cole_hopf(h, t, NU) - ref.burgers_cole_hopf(-h, t, NU)) / (2 * h)

    # Basdevant et al. (1986): steepest slope -152.00516 at t = 1.6037/pi
    assert slope(1.6037 / math.pi) == pytest.approx(-152.00516, rel=1e-6)
    # at t = 1 the front has decayed to about -84: negative, order 1e2
    assert -100 < slope(1.0) < -70
    # u(x, t -> 0) is the initial condition
    np.testing.assert_allclose(ref.burgers_cole_hopf(xs, 1e-9, NU), -np.sin(np.pi * xs), atol=1e-6)


@pytest.mark.parametrize("problem", ["burgers", "burgers_smooth"])
def test_burgers_reference_solves_the_pde(problem):
    # central differences of the Cole-Hopf solution (away from the front), fed to the problem's
    # own residual: N[u] = u_t + u u_x - nu u_xx = 0 with the nu the registry entry carries
    nu = PROBLEMS.get(problem).constants["nu"]
    assert nu == pytest.approx({"burgers": 0.01, "burgers_smooth": 0.1}[problem] / math.pi, rel=1e-15)
    h = 1e-4
    x, t = np.array([-0.6, -0.3, 0.45, 0.8]), np.array([0.2, 0.4, 0.7, 0.9])
    pts = torch.from_numpy(np.stack([x, t], -1))

    def residual(sol_nu):
        def u(dx=0.0, dt=0.0):
            return ref.burgers_cole_hopf(x + dx, t + dt, sol_nu)

        du = np.stack([(u(dx=h) - u(dx=-h)) / (2 * h), (u(dt=h) - u(dt=-h)) / (2 * h)], axis=-1)
        d2u = np.zeros((len(x), 2, 2))
        d2u[:, 0, 0] = (u(dx=h) - 2 * u() + u(dx=-h)) / h**2
        return PROBLEMS.get(problem).residual(pts, *(torch.from_numpy(a) for a in (u(), du, d2u)))

    assert residual(nu).abs().max() < 1e-4
    # the other viscosity's solution is not one: the check can fail
    assert residual(2 * nu).abs().max() > 1e-3


def test_burgers_smooth_reference_converges_and_is_cached_apart(tmp_path):
    nu = 0.1 / math.pi
    X, T = np.meshgrid(np.linspace(-1, 1, 101), np.array([0.3, 1.0]), indexing="ij")
    finest = ref.burgers_cole_hopf(X, T, nu, 240)
    errs = [np.abs(ref.burgers_cole_hopf(X, T, nu, k) - finest).max() for k in (40, 80, 120)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-13  # the 120 nodes the problem uses suffice
    smooth, sharp = make_task("burgers_smooth", tmp_path), make_task("burgers", tmp_path)
    Xg, _, U = smooth.solution_grid(smooth.build_model(), dict(smooth.build_model().named_parameters()))
    np.testing.assert_allclose(U, ref.burgers_cole_hopf(Xg[..., 0], Xg[..., 1], nu), atol=1e-13)
    assert len(list((tmp_path / "ref").glob("burgers-*.npz"))) == 2  # one cache file per viscosity
    # the larger viscosity flattens the front at x = 0: a smaller slope magnitude at t = 1
    mid = len(smooth.grid_axes[0]) // 2
    assert abs(U[mid + 1, -1] - U[mid - 1, -1]) < abs(sharp.u_test.reshape(U.shape)[mid + 1, -1]
                                                    - sharp.u_test.reshape(U.shape)[mid - 1, -1])


def test_allen_cahn_reference_converges_on_refinement():
    ts = np.array([0.0, 0.5, 1.0])
    xs = np.linspace(-1, 1, 81)
    best = ref.allen_cahn_reference(xs, ts, cells=1024)
    errs = []
    for cells in (160, 320, 640):  # multiples of 80: xs are grid nodes, no interpolation error
        x, U = ref.allen_cahn_mol(ts, cells=cells)
        errs.append(np.abs(U[:: cells // 80] - best).max())
    # second order in h: each halving gains about 4x
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3
    np.testing.assert_allclose(best[:, 0], xs**2 * np.cos(np.pi * xs), atol=1e-12)
    np.testing.assert_allclose(best[[0, -1]], -1.0, atol=1e-12)


def test_reference_cache_is_computed_once_and_keyed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3.0)

    a = ref.cached(tmp_path, "thing", {"n": 3}, compute)
    b = ref.cached(tmp_path, "thing", {"n": 3}, compute)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1 and len(list(tmp_path.glob("thing-*.npz"))) == 1
    ref.cached(tmp_path, "thing", {"n": 4}, compute)
    assert len(calls) == 2
    # a truncated file is recomputed, not trusted
    path = sorted(tmp_path.glob("thing-*.npz"), key=lambda p: p.stat().st_mtime)[0]
    path.write_bytes(path.read_bytes()[:10])
    np.testing.assert_array_equal(ref.cached(tmp_path, "thing", {"n": 3}, compute), a)
    assert len(calls) == 3
    assert not list(tmp_path.glob(".thing-*"))  # no temp files left behind


def test_task_reference_matches_the_solver_and_is_cached(tmp_path):
    task = make_task("burgers", tmp_path)
    X, _, U = task.solution_grid(task.build_model(), dict(task.build_model().named_parameters()))
    np.testing.assert_allclose(U, ref.burgers_cole_hopf(X[..., 0], X[..., 1], NU), atol=1e-13)
    assert list((tmp_path / "ref").glob("burgers-*.npz"))


# ----------------------------------------------------------------------------- split


@pytest.mark.parametrize(("problem", "axis"), [("poisson1d", None), ("burgers", 0), ("helmholtz2d", None)])
def test_client_subdomains_partition_the_points(problem, axis, tmp_path):
    task = make_task(problem, tmp_path, n_domain=97)
    pin = task.partition_input()
    parts = make_partition(pin, "domain_split", 4, DomainSplitParams(pieces=1, axis=axis), seed=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == pin.n and len(np.unique(allidx)) == pin.n  # disjoint, and covers all
    # each client's points lie in its own box; boxes do not overlap
    boxes = [(pin.coords[p].min(0), pin.coords[p].max(0)) for p in parts]
    for i in range(4):
        for j in range(i + 1, 4):
            lo = np.maximum(boxes[i][0], boxes[j][0])
            hi = np.minimum(boxes[i][1], boxes[j][1])
            assert (hi < lo).any(), f"clients {i} and {j} overlap"
    if problem == "poisson1d":
        kinds = [set(task.kind_train[p].tolist()) for p in parts]
        assert [1 in k for k in kinds] == [True, False, False, True]  # only the ends see a BC


# ----------------------------------------------------------------------------- curvature


def dense_gauss_newton(task, model, batch) -> torch.Tensor:
    """J^T J / n from an autograd loop over points (no torch.func): [P, P]."""
    params = list(model.parameters())
    sw = {1: math.sqrt(task.params.bc_weight), 2: math.sqrt(task.params.ic_weight)}
    rows = []
    for xi, ki, gi in zip(batch["x"], batch["kind"].tolist(), batch["g"], strict=True):
        x = xi.clone().requires_grad_(True)
        u = model(x[None])[0, 0]
        if ki == 0:
            (du,) = torch.autograd.grad(u, x, create_graph=True)
            hess = torch.stack([torch.autograd.grad(du[j], x, create_graph=True)[0] for j in range(len(x))])
            r = task.problem.residual(x, u, du, hess) / task.params.residual_scale
        else:
            r = sw[ki] * (u - gi)
        grads = torch.autograd.grad(r, params, allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    return J.T @ J / len(rows)


@pytest.mark.parametrize(("problem", "over"), [
    ("poisson1d", {}), ("burgers", {}), ("helmholtz2d", {}),
    ("helmholtz2d", {"hard_bc": True, "residual_scale": 50.0, "input_scale": 2.0, "activation": "sin"}),
    ("burgers", {"hard_bc": True, "input_scale": 1.5}),
    ("allen_cahn", {"hard_ic": True, "input_scale": 2.0}),
])
def test_residual_ggn_equals_dense_gauss_newton(problem, over, tmp_path):
    task = make_task(problem, tmp_path, n_domain=9, n_boundary=4, n_initial=5, hidden=[5, 4],
                     bc_weight=4.0, ic_weight=2.5, **over)
    torch.manual_seed(3)
    model = task.build_model()
    layout = ParamLayout.of(model)
    theta = layout.flatten(dict(model.named_parameters())).detach()
    batch = full_batch(task)
    S = ggn_sqrt(ClientModel(task, model, layout), theta, batch)
    want = dense_gauss_newton(task, model, batch)
    torch.testing.assert_close(S.T @ S, want, rtol=1e-8, atol=1e-10 * float(want.abs().max()))


# ----------------------------------------------------------------------------- config errors

RUN = {
    "task": {"name": "pde", "problem": "poisson1d", "n_domain": 24, "hidden": [8, 8], "test_points": 50},
    "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1},
    "client": {"method": "local", "optimizer": "adam", "lr": 0.003, "local_steps": 10},
    "aggregator": {"name": "fipa", "rho": 1e-4, "rank": 6},
    "rounds": 3,
    "eval_every": 1,
    "seed": 0,
}


def run_cfg(**over) -> dict:
    cfg = copy.deepcopy(RUN)
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return cfg


@pytest.mark.parametrize(("over", "key"), [
    ({"task": {"problem": "navier_stokes"}}, "task.problem: unknown PDE 'navier_stokes'; choose one of"),
    ({"task": {"activation": "relu"}}, "task.activation"),
    ({"task": {"problem": "burgers", "n_initial": 0}}, "task.n_initial"),
    ({"task": {"n_domain": 5, "n_boundary": 2}, "partition": {"clients": 9}}, "partition.clients"),
    ({"task": {"initializer": "Glorot sideways"}}, "task.initializer"),
    ({"partition": {"axis": 1}}, "partition.axis"),
])
def test_bad_input_names_the_key(over, key, tmp_path):
    over = {**over, "task": {"reference_dir": str(tmp_path), **over.get("task", {})}}
    with pytest.raises(ConfigError, match=key):
        Simulation.build(parse_run_config(run_cfg(**over)))


# ----------------------------------------------------------------------------- end to end


def test_federated_pinn_end_to_end(tmp_path):
    cfg = run_cfg(task={"reference_dir": str(tmp_path / "ref")})
    final = train(parse_run_config(cfg), tmp_path / "run", log=lambda s: None)
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert "rel_l2" in m.columns and m["round"].tolist() == [0, 1, 2, 3]
    assert np.isfinite(m["rel_l2"]).all() and not final["diverged"]
    assert final["primary_metric"] == "rel_l2" and final["num_params"] == 8 + 8 + 72 + 9
    # the loss really is the PINN loss: train_loss falls from round 0
    assert m["train_loss"].iloc[-1] < m["train_loss"].iloc[0]
    # same config, same seed: bitwise identical numbers (pseudo-random points included)
    cfg["task"]["sampling"] = "pseudo"
    for name in ("a", "b"):
        train(parse_run_config(cfg), tmp_path / name, log=lambda s: None)
    a, b = (pd.read_csv(tmp_path / n / "metrics.csv").drop(columns=["wall_s"]) for n in "ab")
    pd.testing.assert_frame_equal(a, b)


def test_sampling_is_seeded_and_leaves_global_state_alone(tmp_path):
    # DeepXDE samples from the legacy global stream; the task must seed it and put it back
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    precision = pde.problems.dde.config.real.precision
    a = make_task("burgers", tmp_path, sampling="pseudo", seed=0).x_train
    b = make_task("burgers", tmp_path, sampling="pseudo", seed=0).x_train
    c = make_task("burgers", tmp_path, sampling="pseudo", seed=1).x_train
    assert torch.equal(a, b) and not torch.equal(a, c)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    assert pde.problems.dde.config.real.precision == precision
    assert sorted(PROBLEMS.names()) == ["allen_cahn", "burgers", "burgers_smooth", "diffusion_reaction",
                                        "heat1d", "helmholtz2d", "helmholtz2d_n1", "poisson1d"]
