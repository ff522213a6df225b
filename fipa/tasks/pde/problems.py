"""PDE problems for PINNs: domain, pointwise residual, Dirichlet/initial data, reference solution.

Every residual is a function of the point and the value and input derivatives of any
scalar function u there, so that the same code serves the network (its forward-mode jet)
and any callable such as the exact solution (through torch.func, in tests). Conventions:
a point is x [..., d] with time last for evolution problems; u [...], du = grad u [..., d],
d2u = Hessian of u [..., d, d]; leading axes are rows.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("DDE_BACKEND", "pytorch")
# DeepXDE scripts some of its layers with torch.jit.script, which torch 2.14 deprecates with a
# FutureWarning on every first use: noise in every PINN log and a fault in the strict report build
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
import deepxde as dde  # noqa: E402  (the backend must be chosen before the import)

import fipa.tasks.pde.reference as ref  # noqa: E402
from fipa.registry import Registry  # noqa: E402

Tensor = torch.Tensor
# (x [..., d], u [...], du [..., d], d2u [..., d, d]) -> [...]: one point or a batch of rows
Residual = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
Field = Callable[[Tensor], Tensor]  # points [..., d] -> values [...]


@dataclass(frozen=True)
class Problem:
    """A PDE  N[u](x) = 0  on a box (times [t0, t1]) with Dirichlet (and initial) data.

    PINN loss on points with kind 0 (PDE), 1 (boundary), 2 (initial):
        mean_i r_i^2,  r_i = N[u](x_i)  |  sqrt(w_bc) (u(x_i) - g(x_i))  |  sqrt(w_ic) (u(x_i) - u_0(x_i))
    ``exact`` gives u in closed form; otherwise ``reference(axes, cache_dir)`` computes it
    numerically on the tensor grid spanned by ``axes`` (one 1-D array per input axis).
    """

    doc: str
    space: tuple[tuple[float, float], ...]  # spatial box, one (lo, hi) per axis
    residual: Residual
    boundary: Field  # Dirichlet value g on the spatial boundary
    time: tuple[float, float] | None = None
    initial: Field | None = None  # u(x, t0)
    exact: Field | None = None
    reference: Callable[[list[np.ndarray], Path], np.ndarray] | None = None
    constants: dict[str, float] = field(default_factory=dict)
    zero_boundary: bool = False  # g = 0 on the spatial boundary: a hard constraint may replace BC rows
    # g(x, t) = u0(x) on the spatial boundary at every t: u = u0 + tau B N (hard_ic) replaces BC and IC rows
    static_boundary: bool = False

    @property
    def axes(self) -> tuple[str, ...]:
        names = ("x", "y", "z")[: len(self.space)]
        return (*names, "t") if self.time else names

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """(lo, hi) per input axis, time last: [d]."""
        return [*self.space, *([self.time] if self.time else [])]

    def geometry(self) -> dde.geometry.Geometry:
        """The DeepXDE domain: Interval, Rectangle, or either crossed with a TimeDomain."""
        lo, hi = zip(*self.space, strict=True)
        geom = dde.geometry.Interval(lo[0], hi[0]) if len(lo) == 1 else dde.geometry.Rectangle(lo, hi)
        if self.time is None:
            return geom
        return dde.geometry.GeometryXTime(geom, dde.geometry.TimeDomain(*self.time))

    def solution(self, axes: list[np.ndarray], cache_dir: Path) -> np.ndarray:
        """u on the tensor grid of ``axes`` ("ij" order): [len(axes[0]), ..., len(axes[-1])]."""
        if self.exact is not None:
            mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
            return self.exact(torch.from_numpy(mesh)).numpy()
        return self.reference(axes, cache_dir)


PROBLEMS: Registry[Problem] = Registry("PDE")


def point_derivatives(u: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u(x) [], grad u(x) [d], Hessian u(x) [d, d]) of a scalar function of one point.

    Built from torch.func (reverse mode inside forward mode) rather than autograd.grad,
    so it composes with vmap over points and with jacrev over the network parameters.
    The value and gradient ride along as auxiliary outputs: one nested pass for all three.
    """

    def value(y: Tensor) -> tuple[Tensor, Tensor]:
        v = u(y)
        return v, v

    def first(y: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        g, v = torch.func.jacrev(value, has_aux=True)(y)
        return g, (g, v)

    d2u, (du, val) = torch.func.jacfwd(first, has_aux=True)(x)
    return val, du, d2u


def derivative_rows(u: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """point_derivatives at every row of x [n, d]: (u [n], du [n, d], d2u [n, d, d])."""
    return torch.vmap(lambda xi: point_derivatives(u, xi))(x)


def residual_rows(
    problem: Problem, x: Tensor, kind: Tensor, g: Tensor, jet: tuple[Tensor, Tensor, Tensor],
    sqrt_w: tuple[float, float], residual_scale: float = 1.0,
) -> Tensor:
    """Residuals [n] of the PINN loss at points x [n, d] of kinds [n] with data values g [n].

    ``jet`` = (u [n], du [n, d], d2u [n, d, d]) of the candidate solution at x, from
    ``derivative_rows`` (any callable) or the network's own forward-mode pass. PDE rows are
    divided by ``residual_scale`` (nondimensionalisation, e.g. k0^2 for Helmholtz). Every
    row evaluates both residuals and keeps one with torch.where (no data-dependent branch,
    so the function stays vmap-safe for per-sample Jacobians).
    """
    val, du, d2u = jet
    sw_bc, sw_ic = sqrt_w
    pde = problem.residual(x, val, du, d2u) / residual_scale
    # sqrt weight of a data row, in the dtype of u (a python-scalar where would be float32)
    scale = sw_ic + (sw_bc - sw_ic) * (kind == 1).to(val.dtype)
    return torch.where(kind == 0, pde, (val - g) * scale)


# ----------------------------------------------------------------------------- Poisson 1-D


def _poisson_exact(x: Tensor) -> Tensor:
    # u = x + sum_{i=1..4} sin(i x) / i + sin(8 x) / 8  on [0, pi]
    x = x[..., 0]
    return x + sum(torch.sin(i * x) / i for i in range(1, 5)) + torch.sin(8 * x) / 8


def _poisson_residual(x, u, du, d2u):
    # -u'' = f,  f = sum_{i=1..4} i sin(i x) + 8 sin(8 x)
    x = x[..., 0]
    f = sum(i * torch.sin(i * x) for i in range(1, 5)) + 8 * torch.sin(8 * x)
    return -d2u[..., 0, 0] - f


PROBLEMS.register("poisson1d")(Problem(
    doc="-u'' = sum_i i sin(ix) + 8 sin(8x) on [0, pi], u = x + sum_{i<=4} sin(ix)/i + sin(8x)/8",
    space=((0.0, math.pi),), residual=_poisson_residual, boundary=_poisson_exact,
    exact=_poisson_exact,
))


# ----------------------------------------------------------------------------- Helmholtz 2-D

def helmholtz(n: int) -> Problem:
    """-u_xx - u_yy - k0^2 u = f on [0, 1]^2, k0 = 2 pi n, u = sin(k0 x) sin(k0 y), u = 0 on the boundary.

    DeepXDE's helmholtz_2d_dirichlet example, whose default is n = 2 (k0 = 4 pi); the
    source is f = k0^2 sin(k0 x) sin(k0 y), since -Laplace u = 2 k0^2 u.
    """
    k0 = 2 * math.pi * n

    def exact(x: Tensor) -> Tensor:
        return torch.sin(k0 * x[..., 0]) * torch.sin(k0 * x[..., 1])

    def residual(x, u, du, d2u):
        return -d2u[..., 0, 0] - d2u[..., 1, 1] - k0**2 * u - k0**2 * exact(x)

    return Problem(
        doc=f"-u_xx - u_yy - k0^2 u = k0^2 sin(k0 x) sin(k0 y) on [0,1]^2, k0 = {2 * n} pi, u = 0 on "
            "the boundary; u = sin(k0 x) sin(k0 y) (DeepXDE helmholtz_2d_dirichlet)",
        space=((0.0, 1.0), (0.0, 1.0)), residual=residual, boundary=exact, exact=exact,
        constants={"k0": k0}, zero_boundary=True,
    )


PROBLEMS.register("helmholtz2d")(helmholtz(2))  # the literature setting, k0 = 4 pi
PROBLEMS.register("helmholtz2d_n1")(helmholtz(1))  # one wave per unit (k0 = 2 pi): a cheaper variant


# ----------------------------------------------------------------------------- heat 1-D

# DeepXDE's heat example: diffusivity a = 0.4, L = 1, n = 1
_HEAT_A = 0.4


def _heat_exact(x: Tensor) -> Tensor:
    return torch.exp(-(math.pi**2) * _HEAT_A * x[..., 1]) * torch.sin(math.pi * x[..., 0])


def _heat_residual(x, u, du, d2u):
    # u_t = a u_xx
    return du[..., 1] - _HEAT_A * d2u[..., 0, 0]


PROBLEMS.register("heat1d")(Problem(
    doc="u_t = 0.4 u_xx on [0,1] x [0,1], u(0,t) = u(1,t) = 0, u(x,0) = sin(pi x); "
        "u = exp(-0.4 pi^2 t) sin(pi x) (DeepXDE heat example)",
    space=((0.0, 1.0),), time=(0.0, 1.0), residual=_heat_residual, boundary=_heat_exact,
    initial=_heat_exact, exact=_heat_exact, constants={"a": _HEAT_A}, zero_boundary=True,
    static_boundary=True,
))


# ----------------------------------------------------------------------------- diffusion-reaction


def _dr_exact(x: Tensor) -> Tensor:
    # u = e^{-t} (sin x + sin 2x / 2 + sin 3x / 3 + sin 4x / 4 + sin 8x / 8)
    s, t = x[..., 0], x[..., 1]
    return torch.exp(-t) * sum(torch.sin(k * s) / k for k in (1, 2, 3, 4, 8))


def _dr_residual(x, u, du, d2u):
    # u_t = u_xx + e^{-t} (3/2 sin 2x + 8/3 sin 3x + 15/4 sin 4x + 63/8 sin 8x)
    s, t = x[..., 0], x[..., 1]
    f = torch.exp(-t) * sum((k * k - 1) / k * torch.sin(k * s) for k in (2, 3, 4, 8))
    return du[..., 1] - d2u[..., 0, 0] - f


PROBLEMS.register("diffusion_reaction")(Problem(
    doc="u_t = u_xx + R(x,t) on [-pi,pi] x [0,1], u = e^-t sum_{k in 1,2,3,4,8} sin(kx)/k "
        "(DeepXDE diffusion_reaction example)",
    space=((-math.pi, math.pi),), time=(0.0, 1.0), residual=_dr_residual, boundary=_dr_exact,
    initial=_dr_exact, exact=_dr_exact, static_boundary=True,  # u(+-pi, t) = 0
))


# ----------------------------------------------------------------------------- Allen-Cahn

# DeepXDE's Allen_Cahn example (d = 0.001; Raissi's periodic variant uses 0.0001)
_AC_D = 1e-3


def _ac_residual(x, u, du, d2u):
    # u_t = d u_xx + 5 (u - u^3)
    return du[..., 1] - _AC_D * d2u[..., 0, 0] - 5 * (u - u**3)


def _ac_initial(x: Tensor) -> Tensor:
    return x[..., 0] ** 2 * torch.cos(math.pi * x[..., 0])


def _ac_boundary(x: Tensor) -> Tensor:
    return torch.full_like(x[..., 0], -1.0)


def _ac_reference(axes: list[np.ndarray], cache_dir: Path) -> np.ndarray:
    cells = 2048
    key = {"d": _AC_D, "cells": cells, "x": axes[0].tolist(), "t": axes[1].tolist()}
    return ref.cached(cache_dir, "allen_cahn", key,
                      lambda: ref.allen_cahn_reference(axes[0], axes[1], _AC_D, cells))


PROBLEMS.register("allen_cahn")(Problem(
    doc="u_t = 0.001 u_xx + 5 (u - u^3) on [-1,1] x [0,1], u(x,0) = x^2 cos(pi x), u(+-1,t) = -1 "
        "(DeepXDE Allen_Cahn example); reference: method of lines, 2048 cells, Richardson",
    space=((-1.0, 1.0),), time=(0.0, 1.0), residual=_ac_residual, boundary=_ac_boundary,
    initial=_ac_initial, reference=_ac_reference, constants={"d": _AC_D}, static_boundary=True,
))


# ----------------------------------------------------------------------------- Burgers


def _zero(x: Tensor) -> Tensor:
    return torch.zeros_like(x[..., 0])


def _burgers_initial(x: Tensor) -> Tensor:
    return -torch.sin(math.pi * x[..., 0])


def burgers(nu: float, label: str) -> Problem:
    """u_t + u u_x = nu u_xx on [-1,1] x [0,1], u(x,0) = -sin(pi x), u(+-1,t) = 0 (Cole-Hopf reference).

    ``label`` is nu as the doc shows it ("0.01/pi"). The front at x = 0 steepens to a width
    of order nu: the literature's nu = 0.01/pi needs far more steps than a larger nu.
    """

    def residual(x, u, du, d2u):
        # u_t + u u_x = nu u_xx
        return du[..., 1] + u * du[..., 0] - nu * d2u[..., 0, 0]

    def reference(axes: list[np.ndarray], cache_dir: Path) -> np.ndarray:
        order = 120  # Gauss-Hermite nodes; converged to ~1e-15 at nu = 0.01/pi (tests/test_pde.py)
        key = {"nu": nu, "order": order, "x": axes[0].tolist(), "t": axes[1].tolist()}
        X, T = np.meshgrid(axes[0], axes[1], indexing="ij")
        return ref.cached(cache_dir, "burgers", key, lambda: ref.burgers_cole_hopf(X, T, nu, order))

    return Problem(
        doc=f"u_t + u u_x = ({label}) u_xx on [-1,1] x [0,1], u(x,0) = -sin(pi x), u(+-1,t) = 0; "
            "reference: Cole-Hopf with 120-node Gauss-Hermite quadrature",
        space=((-1.0, 1.0),), time=(0.0, 1.0), residual=residual, boundary=_zero,
        initial=_burgers_initial, reference=reference, constants={"nu": nu}, zero_boundary=True,
        static_boundary=True,
    )


_NU = 0.01 / math.pi
PROBLEMS.register("burgers")(burgers(_NU, "0.01/pi"))  # the literature setting (Raissi et al.)
# nu = 0.1/pi (front width ~0.03 instead of ~0.003): the Burgers problem that the default 2000-step
# budget learns (centralized ~0.014 rel. L2; nu = 0.01/pi stays at ~0.2, notes/pde-results.md)
PROBLEMS.register("burgers_smooth")(burgers(0.1 / math.pi, "0.1/pi"))
