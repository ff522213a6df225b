"""Reference solutions without a closed form: Burgers (Cole-Hopf) and Allen-Cahn (method of lines).

Both are pure numpy/scipy (no DeepXDE import) and cached as ``.npz`` files keyed by every
number that determines them, written atomically so that parallel jobs never read half a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite import hermgauss
from scipy import sparse
from scipy.integrate import solve_ivp

from fipa.io import cached_arrays

# ----------------------------------------------------------------------------- Burgers


def burgers_cole_hopf(x: np.ndarray, t: np.ndarray, nu: float, order: int = 120) -> np.ndarray:
    """u(x, t) of u_t + u u_x = nu u_xx, u(x, 0) = -sin(pi x), on the real line.

    Cole-Hopf: u = -2 nu phi_x / phi with phi the heat-kernel smoothing of
    phi_0(y) = exp(-cos(pi y) / (2 pi nu)). Substituting eta = sqrt(4 nu t) z gives
        u = - sum_k w_k sin(pi y_k) f(y_k) / sum_k w_k f(y_k),   y_k = x - sqrt(4 nu t) z_k,
    with Gauss-Hermite nodes/weights (z_k, w_k) and f = phi_0. The solution is odd and
    2-periodic, so u(+-1, t) = 0 holds exactly. x, t broadcast: [...] -> [...].
    """
    z, w = hermgauss(order)
    x = np.asarray(x, dtype=np.float64)[..., None]
    t = np.asarray(t, dtype=np.float64)[..., None]
    y = x - np.sqrt(4 * nu * t) * z  # [..., K]
    # log-sum-exp normalisation: phi_0 spans exp(+-1/(2 pi nu)) = exp(+-50) at nu = 0.01/pi
    with np.errstate(divide="ignore"):
        logf = -np.cos(math.pi * y) / (2 * math.pi * nu) + np.log(w)
    f = np.exp(logf - logf.max(axis=-1, keepdims=True))
    return -(np.sin(math.pi * y) * f).sum(-1) / f.sum(-1)


# ----------------------------------------------------------------------------- Allen-Cahn


def allen_cahn_mol(
    t_eval: np.ndarray, d: float = 1e-3, cells: int = 1024, rtol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """u_t = d u_xx + 5 (u - u^3) on [-1, 1], u(x, 0) = x^2 cos(pi x), u(+-1, t) = -1.

    Method of lines: second-order central differences on ``cells`` uniform cells, then an
    implicit BDF solve (the diffusion term is stiff) with the exact sparse Jacobian
        J = d L + diag(5 (1 - 3 u^2)),  L = tridiag(1, -2, 1) / h^2.
    Returns (x [cells + 1], U [cells + 1, len(t_eval)]).
    """
    x = np.linspace(-1.0, 1.0, cells + 1)
    h = x[1] - x[0]
    xi = x[1:-1]
    n = cells - 1
    lap = sparse.diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1], format="csr") / h**2
    bc = np.zeros(n)
    bc[[0, -1]] = -1.0 / h**2  # the Dirichlet values u = -1 enter the first and last stencils

    def rhs(_t, u):
        return d * (lap @ u + bc) + 5 * (u - u**3)

    def jac(_t, u):
        return d * lap + sparse.diags(5 * (1 - 3 * u**2))

    u0 = xi**2 * np.cos(math.pi * xi)
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), u0, method="BDF", t_eval=t_eval, jac=jac,
                    rtol=rtol, atol=rtol)
    if not sol.success:  # pragma: no cover - scipy failure is not expected at these settings
        raise RuntimeError(f"Allen-Cahn reference solve failed: {sol.message}")
    U = np.full((cells + 1, len(t_eval)), -1.0)
    U[1:-1] = sol.y
    return x, U


def allen_cahn_reference(
    xs: np.ndarray, ts: np.ndarray, d: float = 1e-3, cells: int = 1024
) -> np.ndarray:
    """U [len(xs), len(ts)] on a tensor grid; Richardson extrapolation of two MOL solves.

    The spatial error is O(h^2), so (4 U_h - U_2h) / 3 removes its leading term on the
    coarse nodes. When xs is a uniform grid of [-1, 1] (the test grid), the cell count is
    raised to a multiple of its spacing so that every x in xs is a node and nothing is
    interpolated; otherwise a cubic spline (scipy) carries the result onto xs.
    """
    from scipy.interpolate import CubicSpline

    m = len(xs) - 1
    uniform = m >= 1 and np.allclose(xs, np.linspace(-1.0, 1.0, m + 1), rtol=0, atol=1e-14)
    if uniform:
        cells = 2 * m * -(-cells // (2 * m))
    x, fine = allen_cahn_mol(ts, d, cells)
    xc, coarse = allen_cahn_mol(ts, d, cells // 2)
    extrap = (4 * fine[::2] - coarse) / 3  # [cells / 2 + 1, len(ts)]
    if uniform:
        return extrap[:: cells // 2 // m]
    return CubicSpline(xc, extrap, axis=0)(xs)


# ----------------------------------------------------------------------------- cache


def cached(directory: str | Path, name: str, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` once per distinct ``key``; later calls read ``directory/name-<hash>.npz``
    (:func:`fipa.io.cached_arrays`, one array stored as ``value``)."""
    return cached_arrays(directory, name, key, lambda: {"value": compute()})["value"]
