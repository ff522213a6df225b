"""Forward-mode second-order jet of a DeepXDE FNN: u, grad_x u and Hess_x u in one batched pass.

For a fully connected net a_0 = s(x), a_l = sigma(W_l a_{l-1} + b_l), u = W_L a_{L-1} + b_L
the input derivatives propagate layer by layer (Taylor mode):
    z = W a + b,   dz_j = W da_j,   d2z_jk = W d2a_jk
    da'_j = sigma'(z) dz_j,   d2a'_jk = sigma''(z) dz_j dz_k + sigma'(z) d2z_jk
with the affine input map s giving da_0 = diag(s') and d2a_0 = 0. These are plain tensor
ops on the parameter dict, so the jet is functional in theta and vmap/jacrev-safe, and
it costs a few matmuls instead of the nested torch.func transforms of the generic path
(problems.point_derivatives), which the tests use as its oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fipa.registry import Registry

Tensor = torch.Tensor
# sigma -> (sigma(z), sigma'(z), sigma''(z)), elementwise
ActivationJet = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
ACTIVATION_JETS: Registry[ActivationJet] = Registry("activation")


@ACTIVATION_JETS.register("tanh")
def _tanh(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a = torch.tanh(z)
    d1 = 1 - a * a
    return a, d1, -2 * a * d1


@ACTIVATION_JETS.register("sin")
def _sin(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a = torch.sin(z)
    return a, torch.cos(z), -a


@ACTIVATION_JETS.register("sigmoid")
def _sigmoid(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a = torch.sigmoid(z)
    d1 = a * (1 - a)
    return a, d1, d1 * (1 - 2 * a)


def _silu(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # silu = z s(z): silu' = s (1 + z (1 - s)), silu'' = s (1 - s) (2 + z (1 - 2 s))
    s = torch.sigmoid(z)
    return z * s, s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


ACTIVATION_JETS.register("silu")(_silu)
ACTIVATION_JETS.register("swish")(_silu)  # DeepXDE's name for the same function


@ACTIVATION_JETS.register("gelu")
def _gelu(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # exact gelu = z Phi(z): gelu' = Phi + z phi, gelu'' = phi (2 - z^2)
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return z * Phi, Phi + z * phi, phi * (2 - z * z)


class UnitBox(nn.Module):
    """Affine map of the domain box onto [-c, c]^d: [n, d] -> [n, d] (a DeepXDE feature transform).

    s(x) = c (2 (x - lo) / (hi - lo) - 1); c = 1 by default. A larger c measures the inputs
    in units of a shorter length scale (c = k0 (hi - lo) / 2 gives the nondimensional k0 x
    of a wave problem), so that O(1) initial weights already span the solution's frequencies.
    Kept as a module (buffers lo, hi) so that ``.to(dtype/device)`` moves it with the network.
    """

    def __init__(self, bounds: list[tuple[float, float]], scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor([b[0] for b in bounds], dtype=torch.float64))
        self.register_buffer("hi", torch.tensor([b[1] for b in bounds], dtype=torch.float64))
        self.scale = float(scale)

    @property
    def slope(self) -> Tensor:
        """d s_j / d x_j: [d]."""
        return 2 * self.scale / (self.hi - self.lo)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * (2 * (x - self.lo) / (self.hi - self.lo) - 1)


class HardDirichlet(nn.Module):
    """Output transform u(x) = B(x) N(x) that vanishes on the spatial boundary (DeepXDE hard BC).

    B(x) = prod_{j spatial} b_j(x_j),  b_j = 4 (x_j - lo_j)(hi_j - x_j) / (hi_j - lo_j)^2,
    a bubble equal to 0 on the boundary and 1 at the centre (DeepXDE's Helmholtz hard-BC
    example uses x (1 - x) y (1 - y), the same up to the factor 16). A time axis, if any,
    is left alone. Used as ``net.apply_output_transform``: (inputs [n, d], N [n, 1]) -> [n, 1].
    """

    def __init__(self, space: list[tuple[float, float]]) -> None:
        super().__init__()
        self.space = [(float(lo), float(hi)) for lo, hi in space]

    def factor_jet(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B [n], grad B [n, d], Hess B [n, d, d]) at points x [n, d] (time axis: factor 1)."""
        d = x.shape[-1]
        one, zero = torch.ones_like(x[..., 0]), torch.zeros_like(x[..., 0])
        # per axis j: (b_j, b_j', b_j'') as functions of x_j
        f = []
        for j in range(d):
            if j < len(self.space):
                lo, hi = self.space[j]
                c = 4 / (hi - lo) ** 2
                xj = x[..., j]
                f.append((c * (xj - lo) * (hi - xj), c * (lo + hi - 2 * xj), torch.full_like(xj, -2 * c)))
            else:
                f.append((one, zero, zero))

        def prod(orders: list[int]) -> Tensor:
            # prod_l (d/dx_l)^{orders[l]} b_l: the derivative of a separable product
            out = one
            for l, k in enumerate(orders):
                out = out * f[l][k]
            return out

        B = prod([0] * d)
        dB = torch.stack([prod([int(l == j) for l in range(d)]) for j in range(d)], -1)
        d2B = torch.stack([torch.stack([prod([int(l == j) + int(l == k) for l in range(d)])
                                        for k in range(d)], -1) for j in range(d)], -2)
        return B, dB, d2B

    def forward(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        return self.factor_jet(inputs)[0][..., None] * outputs


Jet = tuple[Tensor, Tensor, Tensor]  # (f [n], grad f [n, d], Hess f [n, d, d]) at n points


class HardInitialBoundary(HardDirichlet):
    """Output transform u(x, t) = A(x) + tau(t) B(x) N(x, t): initial and boundary data exact.

    A(x) = u0(x) = u(x, t0) is the initial data, tau(t) = (t - t0) / (t1 - t0) and B the
    bubble of HardDirichlet. At t = t0, u = u0; on the spatial boundary, u = u0 there at
    every t, which is the Dirichlet data of a problem whose boundary values do not change
    in time (Problem.static_boundary). DeepXDE's Allen_Cahn example uses exactly
    u = x^2 cos(pi x) + t (1 - x^2) N, its diffusion_reaction example
    u = u0(x) + t (pi^2 - x^2) N (the same up to B's constant).
    """

    def __init__(self, space: list[tuple[float, float]], time: tuple[float, float],
                 initial: Callable[[Tensor], Tensor]) -> None:
        super().__init__(space)
        self.time = (float(time[0]), float(time[1]))
        self.initial = initial  # u0: points [..., d] -> [...], evaluated at t = t0

    def factor_jet(self, x: Tensor) -> Jet:
        """(C [n], grad C [n, d], Hess C [n, d, d]) of C = tau(t) B(x) at x [n, d] (time last)."""
        B, dB, d2B = super().factor_jet(x)  # the time axis enters B as the factor 1
        t0, t1 = self.time
        tau, dtau = (x[..., -1] - t0) / (t1 - t0), 1 / (t1 - t0)
        # product with tau(t): d/dt picks up dtau B, d2/dt dx_j picks up dtau dB_j (tau'' = 0)
        e = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        e[-1] = 1.0  # the time direction
        dC = tau[:, None] * dB + dtau * B[:, None] * e
        cross = dtau * dB[:, :, None] * e[None, None, :]
        d2C = tau[:, None, None] * d2B + cross + cross.transpose(1, 2)
        return tau * B, dC, d2C

    def offset(self, x: Tensor) -> Tensor:
        """A(x) = u0 at the point's position and t0: [n, d] -> [n]."""
        return self.initial(torch.cat([x[..., :-1], torch.full_like(x[..., -1:], self.time[0])], -1))

    def forward(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        return self.offset(inputs)[..., None] + super().forward(inputs, outputs)


def fnn_jet(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, activation: str, offset: Jet | None = None,
) -> Jet:
    """(u [n], du [n, d], d2u [n, d, d]) of a DeepXDE FNN with a UnitBox input transform.

    ``params`` holds "linears.{l}.weight" [out, in] and "linears.{l}.bias" [out].
    Derivative tensors keep the input-direction axes before the feature axis:
    da [n, d, w], d2a [n, d, d, w]. With a HardInitialBoundary output transform, ``offset``
    is the jet of its A at x, which does not depend on theta: the task computes it once
    per point (PINN.client_data); None computes it here with torch.func (slow, ~ms).
    """
    act = ACTIVATION_JETS.get(activation, key="task.activation")
    box: UnitBox = model._input_transform
    n, d = x.shape
    a = box(x)  # [n, d]
    # da_0[:, j] = d s(x) / d x_j = slope_j e_j, the same for every point: [d, d], broadcast over n
    da = torch.diag(box.slope.to(x))
    d2a = None  # zero until the first nonlinearity
    layers = len(model.linears)
    for l in range(layers):
        W, b = params[f"linears.{l}.weight"], params[f"linears.{l}.bias"]
        z = a @ W.T + b  # [n, w]
        dz = da @ W.T  # [(n,) d, w]: W da_j
        d2z = None if d2a is None else d2a @ W.T  # [n, d, d, w]: W d2a_jk
        if l == layers - 1:
            a, da, d2a = z, dz, d2z
            break
        a, s1, s2 = act(z)
        # second-order chain rule: sigma'' dz_j dz_k + sigma' d2z_jk
        d2a = s2[:, None, None] * (dz[..., :, None, :] * dz[..., None, :, :])
        if d2z is not None:
            d2a = d2a + s1[:, None, None] * d2z
        da = s1[:, None] * dz
    if d2a is None:  # a network without hidden layers is affine in x
        da = da.expand(n, d, -1)
        d2a = torch.zeros(n, d, d, a.shape[-1], dtype=a.dtype, device=a.device)
    u, du, d2u = a[:, 0], da[..., 0], d2a[..., 0]
    hard = model._output_transform
    if hard is None:
        return u, du, d2u
    if not isinstance(hard, HardDirichlet):
        raise TypeError(f"fnn_jet: no jet for the output transform {type(hard).__name__}")
    # product rule for B N: grad = B dN + N dB, Hess = B d2N + dN dB^T + dB dN^T + N d2B
    B, dB, d2B = hard.factor_jet(x)
    cross = du[:, :, None] * dB[:, None, :]
    jet = (B * u, B[:, None] * du + u[:, None] * dB,
           B[:, None, None] * d2u + cross + cross.transpose(1, 2) + u[:, None, None] * d2B)
    if not isinstance(hard, HardInitialBoundary):
        return jet
    if offset is None:
        from fipa.tasks.pde.problems import derivative_rows  # torch.func oracle: correct, slow

        offset = derivative_rows(hard.offset, x)
    # u = A + C N: add the jet of A
    return tuple(a + c for a, c in zip(offset, jet, strict=True))
