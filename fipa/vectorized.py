"""Vectorized rounds: a round's clients train in one vmapped call (curvature: fipa/stacked_curvature.py).

Clients share the model's architecture, so their parameters stack into theta [M, P] and
one local step of all of them is one ``vmap`` over ``ClientMethod.objective`` (the task's
own loss, through ``functional_call``) plus one backward pass: client m's objective
depends on row m only, so the gradient of sum_m F_m(theta_m) w.r.t. theta [M, P] has
row m = grad F_m(theta_m). Clients with different sample counts stay exact by padding
and masking, never by truncation:

    minibatch b_{m,t} [B_m] (the same shuffles as the sequential path: the same seeded
    generator, drawn in the same order)  ->  padded to [B], mask w_{m,t} [B] in {0, 1};
    F_m = sum_i w_i l_i / sum_i w_i + extra_m;
    client m steps while t < T_m (its own step count); afterwards its row of theta and
    of the optimizer state is left untouched (clients sorted by T_m: a shrinking prefix).

Where the model is a plain MLP (``nn.Sequential`` of ``nn.Linear`` and elementwise layers),
the method's objective is the task loss (``objective_kind``) and the task's ``outputs``
broadcasts over a leading client axis (``stacks_clients``, the regression task), the step
skips vmap (``DirectGrad``): the task's ``outputs`` runs once on the model's stacked twin
(``StackedMLP``: per linear layer one batched product W_k H_k + b_k for all K clients),
then the same masked loss per client and one backward pass. Each step's shape is trimmed
to the largest real minibatch among the clients still training (B_t <= B).

The sequential path (``ClientMethod.train``) stays the reference; :func:`choose_path` is
the size rule that picks between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import vmap

from fipa import buffers
from fipa.client_config import ClientConfig
from fipa.client_model import ClientModel
from fipa.clients import ClientMethod, ClientState, batch_plan, make_optimizer
from fipa.losses import per_sample_loss
from fipa.params import FunctionalModel
from fipa.round_context import RoundContext
from fipa.tasks.base import Batch, Task, num_samples

# size rule: vectorize while one client's minibatch step is small (samples x parameters
# below this), where interpreter overhead, not arithmetic, dominates a sequential step
AUTO_VECTORIZE_WORK = 1 << 21
GATHER_NUMBERS = 1 << 22  # numbers of gathered minibatch data held at once (steps chunk)


def stack_padded(datas: list[Batch]) -> Batch:
    """Clients' data [N_m, ...] -> [M, max N_m, ...]; padding rows repeat the client's first sample
    (finite values: masked out, and 0 * a finite loss is exactly 0)."""
    sizes = torch.tensor([num_samples(d) for d in datas])
    starts = sizes.cumsum(0) - sizes  # offset of client m's samples in the concatenation
    pos = torch.arange(int(sizes.max()))
    # row i of client m: its sample i, or its sample 0 beyond its N_m
    rows = starts[:, None] + torch.where(pos < sizes[:, None], pos, 0)  # [M, max N_m]
    device = next(iter(datas[0].values())).device
    rows = rows.to(device)
    return {k: torch.cat([d[k] for d in datas])[rows] for k in datas[0]}


def unsupported(method: ClientMethod, task: Task) -> str | None:
    """Why this method/task pair cannot train vectorized, or None if it can."""
    if method.objective_kind == "batch":
        return f"client method {method.cfg.method} couples a minibatch's samples"
    if task.augments:
        return "data augmentation draws per minibatch"
    return None


def direct_path(method: ClientMethod, task: Task) -> bool:
    """Whether the objective can skip vmap: it is the task loss plus ``extra_loss``
    (``objective_kind``) and the task's ``outputs`` broadcasts over a leading client axis
    (``stacks_clients``)."""
    return method.objective_kind == "task_loss" and task.stacks_clients


def choose_path(setting: Any, method: ClientMethod, cm: ClientModel, sizes: list[int], per_round: int
                ) -> tuple[bool, str]:
    """(vectorize?, reason): the size rule behind ``vectorize: auto``, or the forced setting.

    auto vectorizes when at least two clients train per round, the method and task allow it,
    the model's parametrized layers are all fully connected (MLPs, PINNs: under vmap they
    become batched matrix products; convolutions batch poorly, and the digits CNN measured
    no faster), and one client's minibatch step is small: batch samples x parameters <=
    AUTO_VECTORIZE_WORK (beyond, arithmetic dominates and stacking M clients only multiplies
    memory). ``true`` vectorizes wherever allowed; ``false`` never.
    """
    task, model = cm.task, cm.model
    if setting is False:
        return False, "vectorize: false"
    if buffers.has_buffers(model):
        return False, "the model keeps running statistics (BatchNorm buffers)"
    why = unsupported(method, task)
    if why is not None:
        return False, why
    if setting is True:
        return True, "vectorize: true"
    if per_round < 2:
        return False, "one client per round"
    layers = {type(m).__name__ for m in model.modules()
              if not isinstance(m, nn.Linear) and any(True for _ in m.parameters(recurse=False))}
    if layers:
        return False, f"layers other than Linear ({', '.join(sorted(layers))})"
    batch = max(min(method.cfg.batch_size or n, n) for n in sizes)
    work = batch * cm.numel
    if work > AUTO_VECTORIZE_WORK:
        return False, f"batch x parameters = {work} > {AUTO_VECTORIZE_WORK}"
    return True, f"batch x parameters = {work} <= {AUTO_VECTORIZE_WORK}"


# layers that act elementwise (any input shape), so a stacked MLP applies them unchanged
ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.LeakyReLU, nn.ELU,
               nn.Identity)


class StackedLinear(nn.Module):
    """Placeholders of K fully connected layers, for ``functional_call`` on a ``StackedMLP``:
    ``weight`` [K, out, in], ``bias`` [K, out] (or None)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0, 0, 0))
        self.bias = nn.Parameter(torch.empty(0, 0)) if bias else None


class StackedMLP(FunctionalModel):
    """The stacked twin of an MLP (``stacked_model``): x [K, n, in] -> f(x_k; theta_k) [K, n, out].

    Layer by layer on the transposed activations H_k = h_k^T [K, width, n] (features first,
    so every product and its gradients are contiguous):
        linear:       H_k <- W_k H_k + b_k 1^T      (one baddbmm for all K clients)
        elementwise:  H_k <- sigma(H_k)             (the original activation module)
    Parameter names are the original model's (weights [K, out, in], biases [K, out]), so
    ``functional_call`` works; as a :class:`~fipa.params.FunctionalModel`, its
    ``functional_forward(params, x)`` (``fipa.params.call``) reads them from the dict and skips
    the modules' reparametrization.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        # per layer: (weight key, bias key or None) of a linear layer, or the elementwise module
        self._plan = [(f"{name}.weight", f"{name}.bias" if layer.bias is not None else None)
                      if isinstance(layer, StackedLinear) else layer for name, layer in self.named_children()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.functional_forward(dict(self.named_parameters()), x)

    def columns(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same parameters with every bias as a column b [K, out, 1] (views), the shape
        ``functional_forward`` adds it in (so that no reshaping enters the graph)."""
        out = dict(params)
        for step in self._plan:
            if isinstance(step, tuple) and step[1] is not None:
                out[step[1]] = params[step[1]].unsqueeze(-1)
        return out

    def functional_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """x [K, n, in] -> [K, n, out] at ``params`` (biases [K, out] or columns [K, out, 1])."""
        h = x.transpose(-1, -2)  # H [K, in, n]
        for step in self._plan:
            if isinstance(step, tuple):
                w, b = step
                if b is None:
                    h = torch.bmm(params[w], h)
                    continue
                bias = params[b]
                # W H + b 1^T: baddbmm(b [K, out, 1], W [K, out, in], H [K, in, n])
                h = torch.baddbmm(bias if bias.dim() == 3 else bias.unsqueeze(-1), params[w], h)
            else:
                h = step(h)  # elementwise: the same on [K, width, n] as on [n, width]
        return h.transpose(-1, -2)  # [K, n, out]


def stacked_model(model: nn.Module) -> StackedMLP | None:
    """The stacked twin of an MLP: same parameter names, client axis first; else None.

    Only for an ``nn.Sequential`` of ``nn.Linear`` and elementwise layers (``ELEMENTWISE``)
    without buffers: client k's slice of the twin computes exactly ``model`` at theta_k.
    """
    if type(model) is not nn.Sequential or any(True for _ in model.buffers()):
        return None
    layers: list[nn.Module] = []
    for layer in model:
        if type(layer) is nn.Linear:
            layers.append(StackedLinear(layer.bias is not None))
        elif isinstance(layer, ELEMENTWISE) and not any(True for _ in layer.parameters()):
            layers.append(layer)
        else:
            return None
    return StackedMLP(layers)


class DirectGrad:
    """grad_fn factory of the stacked path without vmap over the objective.

    ``ClientMethod.objective`` of K clients at once: the task's own ``outputs`` runs once on
    the stacked twin (outputs [K, B, C]); the loss of client k is the masked mean
    F_k = sum_i w_ki l_ki / n_k, as in ``objective``; the method's ``extra_loss``
    (FedProx, FedDyn) runs under vmap over the clients where it adds a term (``extra``).
    The graph starts at the layer tensors of theta [K, P] (leaves [K, *shape], views of
    theta's rows), and the gradient rows are their gradients concatenated. While the first
    K rows train (a bucket), the leaves are made once (``bucket``) and follow the optimizer's
    in-place steps.
    """

    def __init__(self, method: ClientMethod, cm: ClientModel, twin: StackedMLP, extra: bool) -> None:
        self.cm, self.twin = cm, twin
        self.extra = None
        if extra:

            def extra_one(flat: torch.Tensor, state: ClientState, start: torch.Tensor) -> torch.Tensor:
                term = method.extra_loss(flat, start, state)
                return flat.new_zeros(()) if term is None else term

            self.extra = vmap(extra_one)
        self._at: torch.Tensor | None = None
        self._leaves: dict[str, torch.Tensor] = {}

    def _new_leaves(self, at: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta [K, P] -> its layers [K, *shape] (biases as columns [K, out, 1]), as leaves
        of a new graph; views of ``at``, so they see its in-place optimizer steps."""
        views = self.twin.columns(self.cm.layout.unflatten_batched(at))
        return {n: v.detach().requires_grad_(True) for n, v in views.items()}

    def bucket(self, theta: torch.Tensor) -> None:
        """``theta`` [K, P] (the rows now training) is the point of the coming gradients."""
        self._leaves, self._at = self._new_leaves(theta), theta

    def __call__(self, batch: Batch, w: torch.Tensor, count: torch.Tensor, state: ClientState,
                 starts: torch.Tensor):
        """(minibatch [K, B, ...], mask [K, B], n_k = sum_i w_ki [K], state [K, ...], the rows'
        round-start models theta^k [K, P]) -> grad_fn."""
        task = self.cm.task
        target = task.targets(batch).flatten(0, 1)  # [K B, ...]

        def grad_fn(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # the bucket's rows themselves, or another point (FedSAM's perturbed theta)
            params = self._leaves if at is self._at else self._new_leaves(at)
            leaves = list(params.values())
            out = task.outputs(self.twin, params, batch)  # [K, B, C]
            per = per_sample_loss(task.loss_kind, out.flatten(0, 1), target).view(w.shape)  # l_ki
            loss = (per * w).sum(-1) / count  # [K]
            obj = loss
            if self.extra is not None:
                obj = loss + self.extra(torch.cat([v.flatten(1) for v in leaves], dim=1), state, starts)
            # rows are independent: d (sum_k F_k) / d theta_k = grad F_k(theta_k)
            # (a scalar: explicit grad_outputs would make autograd import sympy for its shape check)
            grads = torch.autograd.grad(obj.sum(), leaves)
            return torch.cat([g.flatten(1) for g in grads], dim=1), loss.detach()

        return grad_fn


def _stacked_grad_fn(objective, batch: Batch, weights: torch.Tensor, state: ClientState,
                     starts: torch.Tensor):
    """grad_fn for ``ClientMethod.direction``: theta [K, P] -> (gradients [K, P], losses [K]);
    ``starts`` [K, P] are the rows' round-start models theta^k."""

    def grad_fn(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = at.detach().requires_grad_(True)
        obj, loss = objective(flat, batch, weights, state, starts)  # [K] each
        # rows are independent: d (sum_m F_m) / d theta_m = grad F_m(theta_m)
        (grad,) = torch.autograd.grad(obj.sum(), flat)
        return grad, loss.detach()

    return grad_fn


def _rows(d: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The first k rows of every stacked tensor of ``d`` (views); 0-d tensors are shared."""
    return {key: v[:k] if v.dim() else v for key, v in d.items()}


def _row(d: dict[str, torch.Tensor], m: int) -> dict[str, torch.Tensor]:
    """Row m of every stacked tensor of ``d``; 0-d tensors are shared."""
    return {key: v[m] if v.dim() else v for key, v in d.items()}


def _server_rows(server: ClientState, k: int) -> ClientState:
    """The method's server state for the first k rows: shared P-vectors [P] as they are, stacked
    ones (rows of several runs) [M, P] cut to [k, P]."""
    return {key: v if v.dim() == 1 else v[:k] for key, v in server.items()}


@dataclass
class RoundPlan:
    """The round's minibatches of M clients, stacked in decreasing order of their step counts.

    Row i is client ``order[i]``; it takes ``steps[i]`` = T_i steps (non-increasing in i), so
    the clients still training at step t are the first K_t = ``training[t]`` rows. ``idx``
    [M, T, B] holds their minibatches' sample indices (0 where padded), ``weights`` [M, T, B]
    is 1 on real samples and 0 on padding, ``counts`` [M, T] the real samples per minibatch,
    and ``widths[t]`` = B_t the largest real minibatch among the rows training at step t
    (the padding beyond it is not computed).
    """

    order: list[int]
    steps: list[int]
    idx: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    training: list[int]
    widths: list[int]

    @classmethod
    def of(cls, cfg: ClientConfig, datas: list[Batch], gens: list[torch.Generator], device: torch.device,
           dtype: torch.dtype) -> RoundPlan:
        """The plan of clients with data ``datas``, each drawing its shuffles from its ``gens[m]``."""
        M = len(datas)
        plans = [batch_plan(num_samples(d), cfg, g) for d, g in zip(datas, gens, strict=True)]
        order = sorted(range(M), key=lambda m: -plans[m].shape[0])  # stable: ties keep list order
        plans = [plans[m] for m in order]
        steps = [p.shape[0] for p in plans]  # non-increasing
        T, B = steps[0], max(p.shape[1] for p in plans)
        idx = torch.full((M, T, B), -1, dtype=torch.long)
        for i, p in enumerate(plans):
            idx[i, : p.shape[0], : p.shape[1]] = p
        valid = idx >= 0
        counts = valid.sum(-1)  # [M, T] samples in each minibatch
        training = [sum(s > t for s in steps) for t in range(T)]  # K_t, clients still training
        widths = [int(counts[:k, t].max()) for t, k in enumerate(training)]
        return cls(order, steps, idx.clamp_min(0).to(device), valid.to(device=device, dtype=dtype),
                   counts.to(device=device, dtype=dtype), training, widths)


class StackedResult(NamedTuple):
    """The round's local training of M clients, in the order they were given."""

    theta: torch.Tensor  # theta_m stacked [M, P]
    states: list[ClientState]  # each client's state for its next round
    uploads: list[ClientState]  # each client's upload to the method's server side


def local_train(
    method: ClientMethod, cm: ClientModel, theta0: torch.Tensor, datas: list[Batch],
    gens: list[torch.Generator], states: list[ClientState], ctx: RoundContext,
) -> StackedResult:
    """The round's local training of M clients at once: theta^k [P] -> theta_m stacked [M, P].

    ``theta0`` is one broadcast model [P] for every row, or one per row [M, P] (rows of
    several runs stacked, each starting from its own run's model: the runs axis); the
    tensors of ``ctx.server`` likewise. Equals M calls of ``method.train`` up to
    floating-point rounding: the same batches, objective, direction and optimizer;
    ``after_local`` then gives each client's next state and upload, in the order of the list,
    as the sequential loop does. Clients are stacked in decreasing order of their step
    counts T_m (:class:`RoundPlan`), so the clients still training at step t are the first
    K_t rows: the step works on views of those rows (buckets shrinking with t, no arithmetic
    for finished clients), and the rest keep their values bit for bit.
    """
    M, P = len(datas), theta0.shape[-1]
    theta0s = theta0.expand(M, P) if theta0.dim() == 1 else theta0  # [M, P], row m's theta^k
    plan = RoundPlan.of(method.cfg, datas, gens, theta0.device, theta0.dtype)
    order = plan.order
    stacked = {k: torch.stack([states[m][k] for m in order]) for k in states[0]}  # [M, P] each
    server = {k: v if v.dim() == 1 else v[order] for k, v in ctx.server.items()}
    theta = _local_steps(method, cm, plan, stack_padded([datas[m] for m in order]), theta0s[order], stacked,
                         RoundContext(ctx.round, server))
    out = torch.empty_like(theta)
    out[order] = theta
    done = []
    for m in range(M):  # each client's own run's server state: [P] shared, or its row of [M, P]
        row_ctx = RoundContext(ctx.round, {k: v if v.dim() == 1 else v[m] for k, v in ctx.server.items()})
        done.append(method.after_local(theta0s[m], out[m], plan.steps[order.index(m)], states[m], row_ctx))
    return StackedResult(out, [s for s, _ in done], [u for _, u in done])


def _local_steps(method: ClientMethod, cm: ClientModel, plan: RoundPlan, data: Batch, starts: torch.Tensor,
                 states: ClientState, ctx: RoundContext) -> torch.Tensor:
    """Every row's local steps from its round-start model ``starts`` [M, P] (rows in ``plan``'s
    order, as ``data`` [M, N, ...], ``states`` [M, ...] and ``ctx.server``); returns theta [M, P].

    Per step t, the first K_t rows move: one stacked objective (vmapped, or the stacked MLP's
    direct one), the method's direction and one in-place optimizer step on those rows' views.
    """
    M, T, B = plan.idx.shape
    twin = stacked_model(cm.model) if direct_path(method, cm.task) else None
    # the direct path adds extra_loss under vmap only where it is a term (None: the task loss alone)
    extra = twin is not None and method.extra_loss(starts[0], starts[0], _row(states, 0)) is not None
    direct = None if twin is None else DirectGrad(method, cm, twin, extra)

    def client_objective(flat, batch, w, state, start):
        return method.objective(cm, flat, start, batch, state, mask=w)

    objective = vmap(client_objective)
    theta = starts.clone()
    opt = make_optimizer(method.cfg, ctx.round)
    opt_state = opt.init(theta)
    rows = torch.arange(M, device=theta.device)[:, None, None]
    per_sample = sum(v[0, 0].numel() for v in data.values())
    chunk = max(1, GATHER_NUMBERS // (M * B * per_sample))
    K = 0
    for t0 in range(0, T, chunk):
        # minibatches of steps t0 .. t0 + chunk for every client: [M, chunk, B, ...]
        gathered = {k: v[rows, plan.idx[:, t0 : t0 + chunk]] for k, v in data.items()}
        for t in range(t0, min(T, t0 + chunk)):
            if plan.training[t] != K:  # a new bucket: views of the first K rows
                K = plan.training[t]
                theta_k, state, opt_k, start_k = theta[:K], _rows(states, K), _rows(opt_state, K), starts[:K]
                ctx_k = RoundContext(ctx.round, _server_rows(ctx.server, K))
                if direct is not None:
                    direct.bucket(theta_k)
            b = plan.widths[t]
            batch = {k: v[:K, t - t0, :b] for k, v in gathered.items()}
            w, n = plan.weights[:K, t, :b], plan.counts[:K, t]
            grad_fn = (direct(batch, w, n, state, start_k) if direct is not None
                       else _stacked_grad_fn(objective, batch, w, state, start_k))
            direction, _ = method.direction(grad_fn, theta_k, state, ctx_k)
            opt.step(theta_k, direction, opt_k)  # in place on the first K rows
    return theta
