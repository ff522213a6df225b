"""The ``pde`` task: a physics-informed network (DeepXDE FNN) fit to one of the PROBLEMS."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fipa.keys import key
from fipa.partition import PartitionInput
from fipa.tasks.base import TASKS, Batch, Task
from fipa.tasks.pde.network import ACTIVATION_JETS, HardDirichlet, HardInitialBoundary, UnitBox, fnn_jet
from fipa.tasks.pde.problems import PROBLEMS, Problem, dde, derivative_rows, residual_rows

SAMPLINGS = ("uniform", "pseudo", "LHS", "Halton", "Hammersley", "Sobol")
KIND_PDE, KIND_BOUNDARY, KIND_INITIAL = 0, 1, 2


@dataclass
class PDEParams:
    """A PINN on ``problem``: collocation, boundary and initial points, network, test grid.

    Loss = mean over all points of r^2 (see Problem): the PDE residual divided by
    ``residual_scale``, the boundary and initial residuals times ``bc_weight``/``ic_weight``.
    Each key's meaning is on its field below (also the tables of config/README.md).
    """

    problem: str = key("poisson1d", "the PDE (PROBLEMS): `poisson1d`, `helmholtz2d`, `helmholtz2d_n1`, "
                       "`heat1d`, `diffusion_reaction`, `allen_cahn`, `burgers`, `burgers_smooth` "
                       "(nu = 0.1/pi)")
    n_domain: int = key(200, "collocation points in the domain", ge=1)
    n_boundary: int = key(2, "boundary points (unused with `hard_bc` or `hard_ic`)", ge=1)
    n_initial: int = key(64, "initial-condition points of evolution problems (unused with `hard_ic`)", ge=0)
    bc_weight: float = key(1.0, "weight on the squared boundary residuals", gt=0)
    ic_weight: float = key(1.0, "weight on the squared initial residuals", gt=0)
    residual_scale: float = key(1.0, "divides the PDE residual (k0^2 = 157.9 makes helmholtz2d's rows O(1))",
                                gt=0)
    input_scale: float = key(1.0, "c: the domain box is mapped onto [-c, c]^d before the first layer "
                             "(UnitBox)", gt=0)
    hard_bc: bool = key(False, "u = B(x) N(x) with a bubble B vanishing on the spatial boundary "
                        "(network.HardDirichlet), for zero Dirichlet data; boundary rows dropped")
    hard_ic: bool = key(False, "evolution problems with time-independent boundary data (e.g. `allen_cahn`): "
                        "u = u0(x) + (t - t0)/(t1 - t0) B(x) N(x, t) (network.HardInitialBoundary, DeepXDE's "
                        "Allen_Cahn transform); initial and boundary data hold exactly, both kinds of data "
                        "rows are dropped, `hard_bc` is implied")
    t_end: float | None = key(None, "evolution problems: end the time interval early, t0 < t_end <= t1; "
                              "training points, test grid and reference cover [t0, t_end] (null: the "
                              "problem's t1)")
    causal_weight: float = key(0.0, "c (evolution problems): the squared PDE residual at time t is weighted "
                               "by exp(-c tau), tau = (t - t0) / (t_end - t0), a fixed form of the causal "
                               "weighting of Wang, Sankaran & Perdikaris (2022): early times count most, so "
                               "the network follows the evolution from the initial data instead of settling "
                               "on a wrong late-time state", ge=0, note="(0 for a steady problem)")
    hidden: list[int] = key([32, 32, 32], "hidden layer widths of the DeepXDE FNN")
    activation: str = key("tanh", "twice differentiable: `tanh`, `sin`, `sigmoid`, `silu`, `gelu`")
    initializer: str = key("Glorot normal", "DeepXDE initializer name")
    sampling: str = key("Hammersley", "DeepXDE sampler (`pseudo`, `LHS`, `Halton`, `Hammersley`, `Sobol`) of "
                        "the training points, or `uniform` (a grid)")
    test_points: int = key(200, "test grid points per axis (a 2-D problem is tested on test_points^2)", ge=2)
    reference_dir: str = key("results/reference", "cache of numerical reference solutions (Burgers, "
                             "Allen-Cahn)")

    def check(self) -> list[tuple[str, str]]:
        out = PROBLEMS.name_problems(self.problem, "problem")
        if (self.problem in PROBLEMS and PROBLEMS.get(self.problem).time is not None
                and self.n_initial < 1 and not self.hard_ic):
            out.append(("n_initial", f"{self.problem} is an evolution problem: needs >= 1 initial point"))
        if self.hard_bc and self.problem in PROBLEMS and not PROBLEMS.get(self.problem).zero_boundary:
            out.append(("hard_bc", f"{self.problem} has nonzero Dirichlet data; the hard constraint "
                        "u = B(x) N(x) needs g = 0 (helmholtz2d, heat1d, burgers): set hard_bc: false"))
        if self.hard_ic and self.problem in PROBLEMS and not PROBLEMS.get(self.problem).static_boundary:
            static = ", ".join(n for n in PROBLEMS.names() if PROBLEMS.get(n).static_boundary)
            out.append(("hard_ic", f"{self.problem} is not an evolution problem with time-independent "
                        f"boundary data equal to its initial data there; u = u0 + t B N needs one "
                        f"({static}): set hard_ic: false"))
        if self.causal_weight and self.problem in PROBLEMS and PROBLEMS.get(self.problem).time is None:
            out.append(("causal_weight", f"must be >= 0 (0 for a steady problem), got {self.causal_weight}"))
        if self.t_end is not None and self.problem in PROBLEMS:
            time = PROBLEMS.get(self.problem).time
            if time is None or not time[0] < self.t_end <= time[1]:
                out.append(("t_end", f"{self.problem}: needs an evolution problem and t0 < t_end <= t1 "
                            f"(time interval {time}), got {self.t_end}; or leave it unset"))
        if not self.hidden or any(h < 1 for h in self.hidden):
            out.append(("hidden", f"needs at least one layer, widths >= 1; got {self.hidden}"))
        if self.activation not in ACTIVATION_JETS:
            # the residual needs second derivatives: relu/elu would make them 0 or jump
            out.append(("activation", f"{self.activation!r}: choose a twice differentiable one of "
                        f"{', '.join(ACTIVATION_JETS.names())}"))
        try:
            dde.nn.initializers.get(self.initializer)
        except (KeyError, ValueError):
            out.append(("initializer", f"unknown DeepXDE initializer {self.initializer!r} "
                        "(e.g. 'Glorot normal', 'Glorot uniform', 'He normal')"))
        if self.sampling not in SAMPLINGS:
            out.append(("sampling", f"{self.sampling!r}: choose one of {', '.join(SAMPLINGS)}"))
        return out


# ----------------------------------------------------------------------------- sampling


@contextlib.contextmanager
def dde_sampling(seed: int) -> Iterator[None]:
    """DeepXDE sampling in float64 from a seeded numpy stream, restoring both afterwards.

    DeepXDE draws from the global ``np.random`` and casts to its global float type; both are
    process state that other code may rely on, so they are swapped in and out here.
    """
    # legacy global-state calls on purpose: DeepXDE's samplers read np.random directly
    state, precision = np.random.get_state(), dde.config.real.precision  # noqa: NPY002
    np.random.seed(seed % 2**32)  # noqa: NPY002
    dde.config.real.set_float64()
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002
        {16: dde.config.real.set_float16, 32: dde.config.real.set_float32,
         64: dde.config.real.set_float64}[precision]()


def sample_interior(geom: dde.geometry.Geometry, n: int, how: str) -> np.ndarray:
    """n collocation points strictly inside the (space-time) domain: [n, d]."""
    return geom.uniform_points(n, boundary=False) if how == "uniform" else geom.random_points(n, how)


def sample_boundary(geom: dde.geometry.Geometry, n: int, how: str) -> np.ndarray:
    """n points on the spatial boundary (times a random time for evolution problems): [n, d]."""
    if isinstance(geom, dde.geometry.Interval) or how == "uniform":
        # the boundary of an interval is two points: deal n between them evenly
        return geom.uniform_boundary_points(n)
    return geom.random_boundary_points(n, how)


def sample_initial(geom: dde.geometry.GeometryXTime, n: int, how: str) -> np.ndarray:
    """n points on the initial slice t = t0: [n, d]."""
    return geom.uniform_initial_points(n) if how == "uniform" else geom.random_initial_points(n, how)


def _numpy_field(fn):
    """A torch field [n, d] -> [n] as the numpy [n, d] -> [n, 1] function DeepXDE's icbc expects."""
    return lambda X: fn(torch.from_numpy(np.asarray(X, dtype=np.float64))).numpy()[:, None]


def training_points(problem: Problem, p: PDEParams, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled training set: points x [n, d], kinds [n] (0 PDE, 1 BC, 2 IC), data g [n].

    Boundary and initial points go through DeepXDE's DirichletBC / IC, which keep the
    candidates that lie on the boundary (initial slice) and evaluate the data there.
    """
    geom = problem.geometry()
    with dde_sampling(seed):
        interior = sample_interior(geom, p.n_domain, p.sampling)
        candidates = []
        if not (p.hard_bc or p.hard_ic):  # a hard constraint satisfies the boundary data exactly: no rows
            candidates.append((KIND_BOUNDARY, sample_boundary(geom, p.n_boundary, p.sampling),
                               dde.icbc.DirichletBC(geom, _numpy_field(problem.boundary), lambda _, on: on)))
        if problem.time is not None and not p.hard_ic:
            candidates.append((KIND_INITIAL, sample_initial(geom, p.n_initial, p.sampling),
                               dde.icbc.IC(geom, _numpy_field(problem.initial), lambda _, on: on)))
        xs, kinds, gs = [interior], [np.full(len(interior), KIND_PDE)], [np.zeros(len(interior))]
        for kind, pts, cond in candidates:
            on = cond.collocation_points(pts)
            xs.append(on)
            kinds.append(np.full(len(on), kind))
            # cond.func returns a tensor in DeepXDE's float type: float64 inside this block
            gs.append(np.asarray(cond.func(on, 0, len(on), None), dtype=np.float64).reshape(-1))
    return (np.concatenate(xs).astype(np.float64), np.concatenate(kinds).astype(np.int64),
            np.concatenate(gs))


# ----------------------------------------------------------------------------- task


@TASKS.register("pde")
class PINN(Task):
    """Physics-informed network u_theta(x) for a registered PDE problem.

    Per-point outputs are the residuals r_i (PDE at collocation points, sqrt-weighted
    Dirichlet/initial mismatch elsewhere) with target 0, so the mse loss is the PINN loss
        L(theta) = mean_i r_i(theta)^2
    and the curvature code's GGN is (1/n) sum_i grad r_i grad r_i^T.
    """

    Params = PDEParams
    loss_kind = "mse"
    sample_step_seconds = 4.5e-6  # one jet direction of a point through 2 x 32 tanh (2 cores)
    resources = {"mem_mb": 4000, "runtime": 180}  # per job; see Task.resources
    metrics = {"rel_l2": "min"}
    primary_metric = "rel_l2"

    @classmethod
    def catalog(cls):
        return {"PDE problems (task.problem)": PROBLEMS, "PDE activations (task.activation)": ACTIVATION_JETS}

    @classmethod
    def work_samples(cls, params: PDEParams) -> int:
        """Training points as :func:`training_points` keeps them."""
        problem = PROBLEMS.get(params.problem, key="task.problem")
        points = params.n_domain + (0 if params.hard_bc or params.hard_ic else params.n_boundary)
        return points + (params.n_initial if problem.time is not None and not params.hard_ic else 0)

    @classmethod
    def sample_seconds(cls, params: PDEParams) -> float:
        """A point's forward-mode jet carries one direction per input besides its value."""
        return cls.sample_step_seconds * (1 + len(PROBLEMS.get(params.problem, key="task.problem").axes))

    def __init__(self, params: PDEParams, seed: int, dtype: torch.dtype) -> None:
        super().__init__(params, seed, dtype)
        self.problem = PROBLEMS.get(params.problem, key="task.problem")
        if params.t_end is not None:  # a shorter time interval: the same PDE on [t0, t_end]
            self.problem = dataclasses.replace(self.problem, time=(self.problem.time[0], params.t_end))
        x, kind, g = training_points(self.problem, params, seed * 7919 + 104729)
        self.x_train = torch.as_tensor(x, dtype=dtype)
        self.kind_train = torch.as_tensor(kind)
        self.g_train = torch.as_tensor(g, dtype=dtype)
        self.sqrt_w = (params.bc_weight**0.5, params.ic_weight**0.5)
        # hard_ic: the jet of the transform's A = u0 at every training point (theta-free, made once)
        self.offset_train = None
        if params.hard_ic:
            self.offset_train = derivative_rows(self._hard_transform().offset, self.x_train)
        self.grid_axes = [np.linspace(lo, hi, params.test_points) for lo, hi in self.problem.bounds]
        u_ref = self.problem.solution(self.grid_axes, Path(params.reference_dir))  # [*shape]
        mesh = np.stack(np.meshgrid(*self.grid_axes, indexing="ij"), axis=-1)  # [*shape, d]
        self.x_test = torch.as_tensor(mesh.reshape(-1, mesh.shape[-1]), dtype=dtype)
        self.u_test = torch.as_tensor(u_ref.reshape(-1), dtype=dtype)

    def partition_input(self) -> PartitionInput:
        return PartitionInput(n=len(self.x_train), coords=self.x_train.double().numpy(),
                              bounds=list(self.problem.bounds))

    def client_data(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.x_train[idx], "kind": self.kind_train[idx], "g": self.g_train[idx]}
        if self.offset_train is not None:  # per-point data of the hard_ic transform: A, grad A, Hess A
            batch.update(zip(("a", "da", "d2a"), (t[idx] for t in self.offset_train), strict=True))
        return batch

    def _hard_transform(self) -> nn.Module | None:
        """The output transform of the hard constraints, or None (soft data rows only)."""
        if self.params.hard_ic:
            return HardInitialBoundary(list(self.problem.space), self.problem.time, self.problem.initial)
        if self.params.hard_bc:
            return HardDirichlet(list(self.problem.space))
        return None

    def build_model(self) -> nn.Module:
        p = self.params
        d = len(self.problem.bounds)
        with dde_sampling(0):  # float64 layers from the start; torch's RNG draws the weights
            net = dde.nn.FNN([d, *p.hidden, 1], p.activation, p.initializer)
        net.apply_feature_transform(UnitBox(self.problem.bounds, p.input_scale))
        hard = self._hard_transform()
        if hard is not None:
            net.apply_output_transform(hard)
        return net.to(self.dtype)

    def outputs(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Residuals [n, 1]; functional in ``params`` and vmap-safe (plain tensor ops)."""
        offset = (batch["a"], batch["da"], batch["d2a"]) if "a" in batch else None
        jet = fnn_jet(model, params, batch["x"], self.params.activation, offset)
        r = residual_rows(self.problem, batch["x"], batch["kind"], batch["g"], jet, self.sqrt_w,
                          self.params.residual_scale)
        if self.params.causal_weight:
            r = r * self.causal_factor(batch["x"], batch["kind"])
        return r[:, None]

    def causal_factor(self, x: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """sqrt of the causal weight: exp(-c tau / 2) on PDE rows, 1 on data rows: [n]."""
        t0, t1 = self.problem.time
        tau = (x[:, -1] - t0) / (t1 - t0)
        return torch.where(kind == 0, torch.exp(-0.5 * self.params.causal_weight * tau), torch.ones_like(tau))

    def targets(self, batch: Batch) -> torch.Tensor:
        return torch.zeros(batch["x"].shape[0], 1, dtype=batch["x"].dtype, device=batch["x"].device)

    def predict(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """u_theta at points x [n, d] -> [n] (no input derivatives)."""
        device = next(iter(params.values())).device
        with torch.no_grad():
            return functional_call(model, params, (x.to(device),))[:, 0].cpu()

    def evaluate(self, model, params) -> dict[str, float]:
        """test_loss = mean (u_theta - u)^2 and rel_l2 = ||u_theta - u|| / ||u|| on the test grid."""
        err = self.predict(model, params, self.x_test) - self.u_test
        return {"test_loss": float(err.pow(2).mean()),
                "rel_l2": float(err.norm() / self.u_test.norm())}

    def solution_grid(self, model: nn.Module, params: dict[str, torch.Tensor]):
        """(X [*shape, d], U_pred [*shape], U_ref [*shape]) on the test grid, as numpy arrays.

        shape = (test_points,) * d in "ij" order (x first, time last), for heat maps.
        """
        shape = tuple(len(a) for a in self.grid_axes)
        X = self.x_test.double().numpy().reshape(*shape, -1)
        pred = self.predict(model, params, self.x_test).double().numpy().reshape(shape)
        return X, pred, self.u_test.double().numpy().reshape(shape)

    def describe(self) -> str:
        return f"pde[{self.params.problem}]"
