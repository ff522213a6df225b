"""Client-side local training methods: a registry from config name to class.

A client starts from the broadcast theta^k [P], runs its optimizer on its own data and
returns theta_m [P]. Methods that keep per-client state across rounds (SCAFFOLD, FedDyn)
store it in a dict of tensors that the simulator checkpoints; methods with server-side
state (SCAFFOLD's c, FedDyn's h) keep it in ``server_state``, also checkpointed
(``RunState.method_state``), and update it in :meth:`ClientMethod.end_round`.

Every method only shapes the *local* objective or gradient and returns theta_m, so each
composes with every aggregator (FedAvg, FIPA, ...): the aggregator sees the deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fipa.client_config import ClientConfig
from fipa.errors import ConfigError
from fipa.keys import key
from fipa.losses import mean_loss, per_sample_loss
from fipa.optim import OPTIMIZERS, Optimizer
from fipa.params import ParamLayout
from fipa.registry import Registry
from fipa.tasks.base import Batch, Task, num_samples

ClientState = dict[str, torch.Tensor]
# theta [..., P] -> (gradient of the local objective [..., P], task loss [...]): one client
# ([P]) on the sequential path, a round's clients stacked ([M, P]) on the vectorized one
GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def batch_size(n: int, cfg: ClientConfig) -> int:
    """Minibatch size on n samples: ``batch_size`` capped at n, or n (full batch)."""
    return n if cfg.batch_size is None else min(cfg.batch_size, n)


def steps_per_round(n: int, cfg: ClientConfig) -> int:
    """Optimizer steps of one round of local work on n samples: ``local_steps``, or
    ``local_epochs`` passes of ceil(n / batch) minibatches."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    return cfg.local_epochs * -(-n // batch_size(n, cfg))


def epoch_plans(n: int, cfg: ClientConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """A client's minibatch indices for one round, epoch by epoch: [batches, bs] each, -1
    padding a short last batch, cut at ``steps_per_round`` in all.

    The one planner of both training paths. One permutation of ``gen`` per started epoch
    (none for full batches), drawn only when its epoch begins: the sequential path's draws
    interleave with the task's data augmentation exactly as training proceeds.
    """
    bs, steps = batch_size(n, cfg), steps_per_round(n, cfg)
    per_epoch = -(-n // bs)
    for start in range(0, steps, per_epoch):
        perm = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        yield F.pad(perm, (0, per_epoch * bs - n), value=-1).reshape(per_epoch, bs)[: steps - start]


def minibatches(n: int, cfg: ClientConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches [<= bs] for one round of local work: shuffled epochs, or ``local_steps`` steps."""
    for epoch in epoch_plans(n, cfg, gen):
        for row in epoch:
            yield row[row >= 0]


def batch_plan(n: int, cfg: ClientConfig, gen: torch.Generator) -> torch.Tensor:
    """The whole round's plan [T, bs] at once (the vectorized path), -1 padded."""
    return torch.cat(list(epoch_plans(n, cfg, gen)))


def make_optimizer(cfg: ClientConfig, rnd: int = 1) -> Optimizer:
    """The functional optimizer named by ``client.optimizer`` (fipa/optim.py) for round ``rnd``
    (from 1): its learning rate is lr * lr_decay^(rnd - 1)."""
    return OPTIMIZERS.get(cfg.optimizer, key="client.optimizer")(
        lr=cfg.lr * cfg.lr_decay ** (rnd - 1), momentum=cfg.momentum, weight_decay=cfg.weight_decay)


OPT_PREFIX = "opt."  # client-state keys of a persistent optimizer state (``keep_optimizer``)


@dataclass
class LocalResult:
    theta: torch.Tensor  # theta_m [P]
    train_loss: float  # mean minibatch loss over the local steps
    state: ClientState


CLIENT_METHODS: Registry[type[ClientMethod]] = Registry("client method")


@dataclass
class LocalParams:
    """Plain local training has no extra options."""


@CLIENT_METHODS.register("local", params=LocalParams)
class ClientMethod:
    """Plain local training (SGD or Adam) on the task loss; the base of every method.

    One round of client m: ``begin_round(server_state)`` once for the round, then per
    client ``train`` = minibatch steps theta <- opt(theta, gradient(theta)) followed by
    ``after_local`` (client-state update), then ``end_round`` once on the server.
    Subclasses override the hooks, never the loop. The hooks are written for one client
    and run unchanged on the vectorized path (fipa/vectorized.py): ``objective`` and
    ``extra_loss`` under ``vmap`` over the round's clients, ``direction`` on stacked
    [M, P] tensors, ``after_local`` once per client.
    """

    Params: ClassVar[type]
    # extra P-vectors a client uploads besides its delta (SCAFFOLD: Delta c_i)
    uplink_vectors: ClassVar[int] = 0
    # False: the objective couples a minibatch's samples beyond a (masked) mean, so the
    # padded batches of the vectorized path would change it; such a method trains sequentially
    vectorizable: ClassVar[bool] = True
    # False: local training reads or accumulates the run's server-side state (SCAFFOLD's c,
    # FedDyn's round sums), so rows of several runs cannot share one method object and
    # train in one call (the runs axis, simulate.train_rows); each run then trains alone
    stacks_runs: ClassVar[bool] = True
    # P-vectors each client keeps across rounds (SCAFFOLD's c_i), and the method keeps on the
    # server (SCAFFOLD's c, FedDyn's h), all zero at the start
    client_state_keys: ClassVar[tuple[str, ...]] = ()
    server_state_keys: ClassVar[tuple[str, ...]] = ()
    # True: ``extra_loss`` adds a term (FedProx, FedDyn); the stacked direct path then runs it
    # under vmap over the clients, and skips it otherwise
    has_extra_loss: ClassVar[bool] = False
    # True: the method replaces ``objective`` beyond ``extra_loss`` (FedRCL's contrastive
    # term); the stacked direct path, which evaluates the base objective, cannot run it
    custom_objective: ClassVar[bool] = False

    def __init__(self, cfg: ClientConfig, keep_optimizer: bool = False) -> None:
        self.cfg = cfg
        self.params = cfg.params
        # True: the optimizer state (Adam moments, step count, momentum) persists across rounds
        # in the client state instead of restarting each round; the centralized reference's
        # single client is one uninterrupted training (aggregators.Centralized)
        self.keep_optimizer = keep_optimizer
        self.round = 1  # the current round (from 1): sets the learning rate schedule
        self.server_state: ClientState = {}
        self._round: ClientState = {}  # per-round scratch sums, consumed by end_round

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

    def begin_round(self, server_state: ClientState, rnd: int = 1) -> None:
        """Called once before round ``rnd``'s clients train; they read ``self.server_state``."""
        self.server_state = server_state
        self.round = rnd
        self._round = {}

    def end_round(self, theta: torch.Tensor, server_state: ClientState, num_clients: int) -> torch.Tensor:
        """Called once after aggregation with theta^{k+1} [P]; updates ``server_state`` in
        place and returns the model to broadcast next (unchanged by default)."""
        return theta

    def extra_loss(self, flat: torch.Tensor, theta0: torch.Tensor, state: ClientState) -> torch.Tensor | None:
        """A term added to the minibatch loss (FedProx proximal term and the like)."""
        return None

    def objective(
        self, task: Task, model: nn.Module, layout: ParamLayout, flat: torch.Tensor,
        theta0: torch.Tensor, batch: Batch, state: ClientState, mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(local objective, task loss) on one minibatch at ``flat`` [P] (scalars).

        ``mask`` [n] (vectorized path): only the samples where it is 1 count, the rest are
        padding; the loss is their mean, sum_i mask_i l_i / sum_i mask_i.
        """
        out = task.outputs(model, layout.unflatten(flat), batch)
        if mask is None:
            loss = mean_loss(task.loss_kind, out, task.targets(batch))
        else:
            per = per_sample_loss(task.loss_kind, out, task.targets(batch))  # [n]
            loss = (per * mask).sum() / mask.sum()
        extra = self.extra_loss(flat, theta0, state)
        return (loss if extra is None else loss + extra), loss

    def direction(self, grad_fn: GradFn, theta: torch.Tensor, state: ClientState
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(search direction handed to the optimizer, task loss) at ``theta`` [..., P].

        ``grad_fn`` differentiates the local objective on the current minibatch; shapes are
        [P] for one client or [M, P] (``state`` likewise) for a round's clients stacked.
        """
        return grad_fn(theta)

    def gradient(
        self, task: Task, model: nn.Module, layout: ParamLayout, theta: torch.Tensor,
        theta0: torch.Tensor, batch: Batch, state: ClientState,
    ) -> tuple[torch.Tensor, float]:
        """(search direction [P] handed to the optimizer, task loss) at ``theta``."""

        def grad_fn(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = at.detach().requires_grad_(True)
            with task.autocast(flat.device):  # mixed precision of the forward pass, where the task has it
                obj, loss = self.objective(task, model, layout, flat, theta0, batch, state)
            (grad,) = torch.autograd.grad(obj, flat)
            return grad, loss.detach()

        direction, loss = self.direction(grad_fn, theta, state)
        return direction, float(loss)

    def after_local(self, theta0: torch.Tensor, theta: torch.Tensor, steps: int, state: ClientState) -> None:
        """Update the client's state (in place) once its local steps are done."""

    def train(
        self, task: Task, model: nn.Module, layout: ParamLayout, theta0: torch.Tensor,
        data: Batch, gen: torch.Generator, state: ClientState,
    ) -> LocalResult:
        theta = theta0.clone()
        opt = make_optimizer(self.cfg, self.round)
        opt_state = self._optimizer_state(opt, theta, state)
        n = num_samples(data)
        total, steps = 0.0, 0
        for idx in minibatches(n, self.cfg, gen):
            # data augmentation, where the task has it on (vision); it draws from ``gen`` only then
            batch = task.train_batch({k: v[idx] for k, v in data.items()}, gen)
            grad, loss = self.gradient(task, model, layout, theta, theta0, batch, state)
            total += loss
            opt.step(theta, grad, opt_state)
            steps += 1
        self.after_local(theta0, theta, steps, state)
        if self.keep_optimizer:
            state.update({OPT_PREFIX + k: v for k, v in opt_state.items()})
        return LocalResult(theta, total / max(steps, 1), state)

    def _optimizer_state(self, opt: Optimizer, theta: torch.Tensor, state: ClientState) -> dict:
        """A fresh optimizer state, or (``keep_optimizer``) the one this client ended its last round with."""
        kept = {k[len(OPT_PREFIX):]: v for k, v in state.items() if k.startswith(OPT_PREFIX)}
        return kept if self.keep_optimizer and kept else opt.init(theta)

    def _accumulate(self, key: str, value: torch.Tensor) -> None:
        """Round scratch: self._round[key] += value."""
        if key in self._round:
            self._round[key].add_(value)
        else:
            self._round[key] = value.clone()




@dataclass
class FedProxParams:
    mu: float = key(0.01, "weight of the proximal term (mu/2) ||theta - theta^k||^2 (Li et al. 2020)", ge=0)


@CLIENT_METHODS.register("fedprox")
class FedProx(ClientMethod):
    """Local loss + (mu/2) ||theta - theta^k||^2 (Li et al. 2020)."""

    Params = FedProxParams
    has_extra_loss = True

    def extra_loss(self, flat, theta0, state):
        if self.params.mu == 0:
            return None
        return 0.5 * self.params.mu * (flat - theta0).pow(2).sum()


# ----------------------------------------------------------------------------- SCAFFOLD


@dataclass
class ScaffoldParams:
    """SCAFFOLD has no options of its own (option II control variates; the global step
    size is the aggregator's ``server_lr``)."""


@CLIENT_METHODS.register("scaffold")
class Scaffold(ClientMethod):
    """Control variates (Karimireddy et al. 2020, Algorithm 1 with option II).

    Local step:  y <- y - eta_l (g_i(y) - c_i + c)         (here: the optimizer gets g - c_i + c)
    After K steps from x:  c_i+ = c_i - c + (x - y) / (K eta_l),   Delta c_i = c_i+ - c_i
    Server:      c <- c + (1/N) sum_{i in S} Delta c_i     (N = all clients)
    Option II assumes plain SGD; with momentum or Adam the corrected gradient goes through
    that optimizer instead (the usual practice, no longer the paper's analysis).
    """

    uplink_vectors = 1

    Params = ScaffoldParams
    client_state_keys = ("c",)
    server_state_keys = ("c",)
    stacks_runs = False

    def direction(self, grad_fn, theta, state):
        grad, loss = grad_fn(theta)
        # drift correction g - c_i + c; exactly g when c = c_i (e.g. both zero at the start)
        return grad + (self.server_state["c"] - state["c"]), loss

    def after_local(self, theta0, theta, steps, state):
        c_new = state["c"] - self.server_state["c"] + (theta0 - theta) / (max(steps, 1) * self.cfg.lr)
        self._accumulate("dc", c_new - state["c"])
        state["c"] = c_new

    def end_round(self, theta, server_state, num_clients):
        if "dc" in self._round:
            server_state["c"] = server_state["c"] + self._round["dc"] / num_clients
        return theta


# ----------------------------------------------------------------------------- FedDyn


@dataclass
class FedDynParams:
    """FedDyn's options (Acar et al. 2021)."""

    alpha: float = key(0.01, "weight of the dynamic regularizer", gt=0)
    server_correction: bool = key(
        True, "apply the server's h-term (theta <- theta - h / alpha) after any aggregator")


@CLIENT_METHODS.register("feddyn")
class FedDyn(ClientMethod):
    """Dynamic regularization (Acar et al. 2021, Algorithm 1).

    Client k at round t minimizes
        L_k(theta) - <g_k, theta> + (alpha/2) ||theta - theta^{t-1}||^2,
    g_k = grad L_k(theta_k^{t-1}) (zero at first), then updates (first-order condition)
        g_k <- g_k - alpha (theta_k^t - theta^{t-1}).
    Server: h <- h - (alpha/N) sum_{k in P_t} (theta_k^t - theta^{t-1});
            theta^t = aggregate(theta_k^t) - h / alpha   (the paper aggregates by a plain mean;
    here the configured aggregator does, FedAvg weighting by sample counts).
    """

    Params = FedDynParams
    client_state_keys = ("grad",)
    server_state_keys = ("h",)
    has_extra_loss = True
    stacks_runs = False

    def extra_loss(self, flat, theta0, state):
        return -(state["grad"] * flat).sum() + 0.5 * self.params.alpha * (flat - theta0).pow(2).sum()

    def after_local(self, theta0, theta, steps, state):
        delta = theta - theta0
        state["grad"] = state["grad"] - self.params.alpha * delta
        self._accumulate("delta", delta)

    def end_round(self, theta, server_state, num_clients):
        if "delta" in self._round:
            server_state["h"] = server_state["h"] - self.params.alpha / num_clients * self._round["delta"]
        if not self.params.server_correction:
            return theta
        return theta - server_state["h"] / self.params.alpha


# ----------------------------------------------------------------------------- FedSAM


@dataclass
class FedSAMParams:
    """FedSAM's option."""

    rho: float = key(0.05, "radius of the sharpness-aware perturbation (0: plain local training)", ge=0)


@CLIENT_METHODS.register("fedsam")
class FedSAM(ClientMethod):
    """Local SAM (Foret et al. 2021) as in FedSAM (Qu et al. 2022; Caldarola et al. 2022).

    eps = rho g(w) / ||g(w)||;  the optimizer steps from w with g(w + eps).
    rho = 0 gives eps = 0 exactly, so the step is plain local training bit for bit.
    """

    Params = FedSAMParams

    def direction(self, grad_fn, theta, state):
        grad, loss = grad_fn(theta)
        # ascent to the worst point of the rho-ball (first-order): w + rho g / ||g||, per client
        norm = grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        sharp, _ = grad_fn(theta.detach() + self.params.rho * grad / norm)
        return sharp, loss


# ----------------------------------------------------------------------------- FedRCL


def relaxed_contrastive_loss(
    z: torch.Tensor, y: torch.Tensor, temperature: float = 0.05, threshold: float = 0.7,
    penalty: float = 1.0, topk_neg: int = 2,
) -> torch.Tensor:
    """FedRCL's relaxed contrastive loss on features z [n, d] with labels y [n] (a scalar).

    With s_ij the cosine similarity and tau the temperature, per anchor i:
      supervised term   -log( e^{s_ip/tau} / (e^{s_ip/tau} + sum_{k in N_i} e^{s_ik/tau}) ),
                        p = its least similar same-class sample (itself if alone),
                        N_i = its ``topk_neg`` most similar other-class samples;
      divergence penalty  log( 1 + sum_{j in P_i, j != i, s_ij >= lambda} e^{(s_ij - 1)/tau} ):
                        the anchor against same-class samples more similar than the threshold
                        lambda, pushing them apart (the "relaxation": no collapse within a class).
    Returns mean_i (supervised_i + penalty * divergence_i).
    """
    n = z.shape[0]
    zn = F.normalize(z, dim=1)
    S = zn @ zn.T  # [n, n] cosine similarities
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    inf = torch.tensor(float("inf"), dtype=S.dtype, device=S.device)
    # hardest positive and hardest negatives; -inf marks "no such sample" (weight e^-inf = 0)
    s_pos = torch.where(same, S, inf).amin(dim=1)  # [n]
    s_neg = torch.where(same, -inf, S).topk(min(topk_neg, n), dim=1).values  # [n, k]
    logits = torch.cat([s_pos[:, None], s_neg], dim=1) / temperature
    supervised = torch.logsumexp(logits, dim=1) - logits[:, 0]
    # same-class pairs above the threshold; the mask is a selection, not differentiated
    close = same & ~eye & (S.detach() >= threshold)
    self_sim = S.diagonal()[:, None]  # 1 up to rounding
    div_logits = torch.cat([self_sim, torch.where(close, S, -inf)], dim=1) / temperature
    divergence = torch.logsumexp(div_logits, dim=1) - div_logits[:, 0]
    return (supervised + penalty * divergence).mean()


@dataclass
class FedRCLParams:
    """FedRCL's options; the defaults are those of FedRCL's released config."""

    weight: float = key(
        1.0, "weight of the relaxed contrastive loss (penultimate features) added to cross-entropy", ge=0)
    penalty: float = key(1.0, "weight of the divergence penalty that pushes apart same-class samples more "
                         "similar than `threshold`", ge=0)
    temperature: float = key(0.05, "softmax temperature of the contrastive logits", gt=0)
    threshold: float = key(0.7, "cosine similarity lambda from which same-class pairs enter the divergence "
                           "penalty", ge=-1, le=1, note="(a cosine similarity)")
    topk_neg: int = key(2, "hardest negatives per anchor: its most similar other-class samples", ge=1)


@CLIENT_METHODS.register("fedrcl")
class FedRCL(ClientMethod):
    """Relaxed contrastive learning (Seo et al., CVPR 2024): CE + weight * RCL(features).

    Simplifications against the released code, stated plainly: the loss is applied to the
    penultimate features only (the paper sums it over the outputs of every ResNet stage),
    features are taken after the last ReLU, anchors are averaged uniformly (the code skips
    anchors whose loss is exactly zero), and no gradient clipping is applied.
    """

    Params = FedRCLParams
    vectorizable = False  # the contrastive term couples a minibatch's samples: no padding
    custom_objective = True

    def check_task(self, task):
        if not task.has_features or task.loss_kind != "ce":
            raise ConfigError(f"client.method: fedrcl needs a classification task with penultimate "
                              f"features (vision); {task.describe()} has none")

    def objective(self, task, model, layout, flat, theta0, batch, state, mask=None):
        if mask is not None:
            raise ValueError("fedrcl trains sequentially only (vectorizable = False)")
        if self.params.weight == 0:
            return super().objective(task, model, layout, flat, theta0, batch, state)
        p = self.params
        feats, out = task.features(model, layout.unflatten(flat), batch)
        loss = mean_loss(task.loss_kind, out, task.targets(batch))
        obj = loss + p.weight * relaxed_contrastive_loss(feats, task.targets(batch), p.temperature,
                                                         p.threshold, p.penalty, p.topk_neg)
        extra = self.extra_loss(flat, theta0, state)
        return (obj if extra is None else obj + extra), loss
