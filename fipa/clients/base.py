"""The client method's base: plain local training, the hooks every method overrides, the registry.

A client starts from the broadcast theta^k [P], runs its optimizer on its own data and
returns theta_m [P]. A method object holds its configuration only: what changes from round
to round is passed in and returned. Per-client state (SCAFFOLD's c_i, FedDyn's gradient) is
a dict of tensors that ``train`` takes and returns; the method's server-side state
(SCAFFOLD's c, FedDyn's h) arrives in the :class:`~fipa.round_context.RoundContext` and
``end_round`` returns its successor. The round loop keeps both, stacks them over the rows of
a vectorized call and checkpoints them (``RunState.client_states``, ``RunState.method_state``).

Every method only shapes the *local* objective or gradient and returns theta_m, so each
composes with every aggregator (FedAvg, FIPA, ...): the aggregator sees the deltas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from fipa.client_config import ClientConfig
from fipa.client_model import ClientModel
from fipa.clients.schedule import make_optimizer, minibatches
from fipa.losses import mean_loss, per_sample_loss
from fipa.optim import Optimizer
from fipa.registry import Registry
from fipa.round_context import ClientState, RoundContext
from fipa.tasks.base import Batch, Task, num_samples

if TYPE_CHECKING:
    from fipa.aggregators.base import ClientUpdate

# theta [..., P] -> (gradient of the local objective [..., P], task loss [...]): one client
# ([P]) on the sequential path, a round's clients stacked ([M, P]) on the vectorized one
GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

OPT_PREFIX = "opt."  # client-state keys of a persistent optimizer state (``keep_optimizer``)


@dataclass
class LocalResult:
    """One client's round of local work."""

    theta: torch.Tensor  # theta_m [P]
    train_loss: float  # mean minibatch loss over the local steps
    state: ClientState  # the client's state for its next round
    upload: ClientState = field(default_factory=dict)  # to the method's server side (SCAFFOLD's Delta c_i)


CLIENT_METHODS: Registry[type[ClientMethod]] = Registry("client method", discover="fipa.clients")


@dataclass
class LocalParams:
    """Plain local training has no extra options."""


@CLIENT_METHODS.register("local", params=LocalParams)
class ClientMethod:
    """Plain local training (SGD or Adam) on the task loss; the base of every method.

    One round of client m: ``train`` = minibatch steps theta <- opt(theta, direction(theta)),
    then ``after_local``, which returns the client's next state and its upload to the
    method's server side; once the round is aggregated, ``end_round`` on the server turns
    the round's uploads into the next server state. Subclasses override the hooks, never the
    loop. The hooks are written for one client and run unchanged on the vectorized path
    (fipa/vectorized.py): ``objective`` and ``extra_loss`` under ``vmap`` over the round's
    clients, ``direction`` on stacked [M, P] tensors (``ctx.server`` too), ``after_local``
    once per client.
    """

    Params: ClassVar[type]
    # what the local objective is made of, which decides the training paths that evaluate it:
    # "task_loss": the task's mean loss plus ``extra_loss`` (every path; the stacked MLP's direct
    # one evaluates exactly that); "per_sample": another masked mean of per-sample terms (the
    # vmapped path); "batch": terms that couple a minibatch's samples, which the padded batches
    # of the vectorized path would change (FedRCL's contrastive loss): sequential only
    objective_kind: ClassVar[Literal["task_loss", "per_sample", "batch"]] = "task_loss"
    # P-vectors each client keeps across rounds (SCAFFOLD's c_i), and the method keeps on the
    # server (SCAFFOLD's c, FedDyn's h), all zero at the start
    client_state_keys: ClassVar[tuple[str, ...]] = ()
    server_state_keys: ClassVar[tuple[str, ...]] = ()
    # why the runs of this method train alone instead of stacked with other runs' clients in one
    # call (the runs axis, fipa/loop.py); None: they stack. Not a capability (every method stacks,
    # its state being passed in): a choice about reproducing numbers made before
    alone_reason: ClassVar[str | None] = None

    def __init__(self, cfg: ClientConfig, keep_optimizer: bool = False) -> None:
        self.cfg = cfg
        self.params = cfg.params
        # True: the optimizer state (Adam moments, step count, momentum) persists across rounds
        # in the client state instead of restarting each round; the centralized reference's
        # single client is one uninterrupted training
        self.keep_optimizer = keep_optimizer

    def check_task(self, task: Task) -> None:
        """Raise ConfigError before any training if this method cannot run on ``task``."""

    def init_state(self, theta: torch.Tensor) -> ClientState:
        """Per-client state, created the first time client m is sampled: a zero P-vector per
        name in ``client_state_keys``."""
        return {k: torch.zeros_like(theta) for k in self.client_state_keys}

    def init_server_state(self, theta: torch.Tensor) -> ClientState:
        """Server-side state of the method (checkpointed with the run): a zero P-vector per
        name in ``server_state_keys``."""
        return {k: torch.zeros_like(theta) for k in self.server_state_keys}

    def extra_loss(self, flat: torch.Tensor, theta0: torch.Tensor, state: ClientState) -> torch.Tensor | None:
        """A term added to the minibatch loss at ``flat`` [P] (FedProx's proximal term and the
        like); None: no term, which the vectorized path then skips."""
        return None

    def objective(
        self, cm: ClientModel, flat: torch.Tensor, theta0: torch.Tensor, batch: Batch, state: ClientState,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(local objective, task loss) on one minibatch at ``flat`` [P] (scalars).

        ``mask`` [n] (vectorized path): only the samples where it is 1 count, the rest are
        padding; the loss is their mean, sum_i mask_i l_i / sum_i mask_i.
        """
        task = cm.task
        out = cm.outputs(flat, batch)
        if mask is None:
            loss = mean_loss(task.loss_kind, out, task.targets(batch))
        else:
            per = per_sample_loss(task.loss_kind, out, task.targets(batch))  # [n]
            loss = (per * mask).sum() / mask.sum()
        extra = self.extra_loss(flat, theta0, state)
        return (loss if extra is None else loss + extra), loss

    def direction(self, grad_fn: GradFn, theta: torch.Tensor, state: ClientState, ctx: RoundContext
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(search direction handed to the optimizer, task loss) at ``theta`` [..., P].

        ``grad_fn`` differentiates the local objective on the current minibatch; shapes are
        [P] for one client or [M, P] (``state`` and ``ctx.server`` likewise) for a round's
        clients stacked.
        """
        return grad_fn(theta)

    def gradient(
        self, cm: ClientModel, theta: torch.Tensor, theta0: torch.Tensor, batch: Batch, state: ClientState,
        ctx: RoundContext,
    ) -> tuple[torch.Tensor, float]:
        """(search direction [P] handed to the optimizer, task loss) at ``theta`` [P]."""

        def grad_fn(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = at.detach().requires_grad_(True)
            with cm.task.autocast(flat.device):  # mixed precision of the forward pass, where the task has it
                obj, loss = self.objective(cm, flat, theta0, batch, state)
            (grad,) = torch.autograd.grad(obj, flat)
            return grad, loss.detach()

        direction, loss = self.direction(grad_fn, theta, state, ctx)
        return direction, float(loss)

    def after_local(self, theta0: torch.Tensor, theta: torch.Tensor, steps: int, state: ClientState,
                    ctx: RoundContext) -> tuple[ClientState, ClientState]:
        """(the client's state for its next round, its upload to the method's server side) once
        its ``steps`` local steps took theta^k [P] to theta_m [P]; ``state`` itself is not changed."""
        return state, {}

    def end_round(self, theta: torch.Tensor, updates: list[ClientUpdate], ctx: RoundContext,
                  num_clients: int) -> tuple[torch.Tensor, ClientState]:
        """(the model to broadcast next, the next server state) once the round's ``updates`` are
        aggregated into theta^{k+1} [P]; ``num_clients`` counts all clients (N), not the round's.
        Unchanged by default; ``ctx.server`` itself is not changed."""
        return theta, ctx.server

    def train(
        self, cm: ClientModel, theta0: torch.Tensor, data: Batch, gen: torch.Generator, state: ClientState,
        ctx: RoundContext,
    ) -> LocalResult:
        """One client's round from theta^k [P] on its ``data``, sequentially (the reference path)."""
        theta = theta0.clone()
        opt = make_optimizer(self.cfg, ctx.round)
        opt_state = self._optimizer_state(opt, theta, state)
        total, steps = 0.0, 0
        for idx in minibatches(num_samples(data), self.cfg, gen):
            # data augmentation, where the task has it on (vision); it draws from ``gen`` only then
            batch = cm.task.train_batch({k: v[idx] for k, v in data.items()}, gen)
            grad, loss = self.gradient(cm, theta, theta0, batch, state, ctx)
            total += loss
            opt.step(theta, grad, opt_state)
            steps += 1
        state, upload = self.after_local(theta0, theta, steps, state, ctx)
        if self.keep_optimizer:
            state = {**state, **{OPT_PREFIX + k: v for k, v in opt_state.items()}}
        return LocalResult(theta, total / max(steps, 1), state, upload)

    def _optimizer_state(self, opt: Optimizer, theta: torch.Tensor, state: ClientState) -> dict:
        """A fresh optimizer state, or (``keep_optimizer``) the one this client ended its last round with."""
        kept = {k[len(OPT_PREFIX):]: v for k, v in state.items() if k.startswith(OPT_PREFIX)}
        return kept if self.keep_optimizer and kept else opt.init(theta)


def summed(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sum_m x_m [P] in list order (the first cloned, the others added in place)."""
    total = tensors[0].clone()
    for x in tensors[1:]:
        total.add_(x)
    return total
