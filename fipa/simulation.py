"""A prepared run: its task, model, clients' data, aggregator and client method, built once.

Everything that can fail on bad input (a config, a partition or warm-up file, a model too
large for the device) fails in ``Simulation.build``, before any run directory is written.
Every random draw is seeded from (seed, round, client, purpose) (``derive_seed``), so a run
resumed from a checkpoint ends with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from fipa import buffers, devices
from fipa.aggregators import AGGREGATORS, Aggregator, LossProbe
from fipa.checkpoint import Expected, RunState, load_warmup
from fipa.client_model import ClientModel
from fipa.clients import CLIENT_METHODS, ClientMethod, batch_size
from fipa.config import RunConfig
from fipa.errors import ConfigError
from fipa.losses import hessian_scale, mean_loss
from fipa.params import ParamLayout
from fipa.partition import make_partition
from fipa.partition_file import load_partition
from fipa.reference import Regime, run_regime
from fipa.tasks import build_task
from fipa.tasks.base import Batch, Task, num_samples
from fipa.threads import ThreadChoice
from fipa.vectorized import choose_path


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, round, client, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def clients_per_round(participation: float, num_clients: int) -> int:
    """The clients of each round: ``participation`` x ``num_clients`` rounded, at least one."""
    return max(1, round(participation * num_clients))


def sample_clients(seed: int, rnd: int, num_clients: int, participation: float) -> list[int]:
    """The clients of round ``rnd``: ``clients_per_round`` of them, drawn without replacement, sorted."""
    k = clients_per_round(participation, num_clients)
    rng = np.random.default_rng(derive_seed(seed, rnd, 0x5A))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())



# bytes per parameter a run holds at least: theta, its gradient and two optimizer moments
PARAM_COPIES = 4


def check_model_fits(task: Task, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model too large for ``device``'s free memory before building it: its parameter
    count, taken from a build on the meta device (no memory), x PARAM_COPIES x the dtype's size."""
    try:
        with torch.device("meta"):
            numel = sum(p.numel() for p in task.build_model().parameters())
    except Exception:  # a model that cannot be built on the meta device: the real build decides
        return
    need, free = numel * PARAM_COPIES * dtype.itemsize, devices.free_bytes(device)
    if free is not None and need > free:
        raise ConfigError(f"task: the model has {numel:,} parameters, {need / 2**30:.1f} GiB in {dtype} "
                          f"with gradients and optimizer state, more than the {free / 2**30:.1f} GiB free "
                          f"on {device}; use a smaller model (task.hidden, task.model)")


def pooled(batches: list[Batch]) -> Batch:
    """The clients' batches as one: each tensor [N_m, ...] concatenated to [sum_m N_m, ...]."""
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@dataclass
class Simulation:
    """A prepared run: task, model, clients' data, aggregator and client method."""

    cfg: RunConfig
    task: Task
    model: torch.nn.Module
    layout: ParamLayout
    data: list[Batch]
    aggregator: Aggregator
    method: ClientMethod
    device: torch.device
    vectorized: bool = False  # local training path of every round (fipa/vectorized.py)
    path_reason: str = "sequential"
    threads: ThreadChoice | None = None  # torch CPU threads of the run (fipa/threads.py)
    warmup: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None  # (theta [P], buffers) to start from
    regime: Regime = field(default_factory=Regime)  # federated, or a reference (fipa/reference.py)
    # task, model and layout as every client computes with them: built once, here or in __post_init__
    client_model: ClientModel = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.client_model is None:
            self.client_model = ClientModel(self.task, self.model, self.layout)

    @classmethod
    def build(cls, cfg: RunConfig, device: torch.device | None = None) -> Simulation:
        """Everything that can fail on bad input happens here, before any training."""
        dtype = getattr(torch, cfg.dtype)
        device = device or torch.device("cpu")
        task = build_task(cfg.task.name, cfg.task.params, cfg.seed, dtype)
        agg = AGGREGATORS.get(cfg.aggregator.name).for_task(cfg.aggregator.params, task.loss_kind)
        pin = task.partition_input()
        if cfg.partition_file:
            parts = load_partition(cfg.partition_file, cfg, pin.n)
        else:
            parts = make_partition(pin, cfg.partition.name, cfg.clients, cfg.partition.params, cfg.seed)
        regime = run_regime(cfg)
        client_cfg, parts = regime.clients(cfg.client, parts)
        method = CLIENT_METHODS.get(cfg.client.method)(client_cfg, keep_optimizer=regime.keep_optimizer)
        method.check_task(task)
        data = [{k: v.to(device) for k, v in task.client_data(p).items()} for p in parts]
        check_model_fits(task, dtype, device)
        torch.manual_seed(derive_seed(cfg.seed, 0x1217))
        model = task.build_model().to(device)
        if buffers.has_buffers(model):
            model.eval()  # running statistics outside local training (fipa/buffers.py)
        cm = ClientModel.of(task, model)
        layout = cm.layout
        sizes = [num_samples(d) for d in data]
        vec, why = choose_path(cfg.vectorize, method, cm, sizes,
                               clients_per_round(cfg.participation, len(data)))
        warm = None
        if cfg.warmup_checkpoint:  # read (and checked) here: a bad file fails before any run directory
            like = layout.flatten(dict(model.named_parameters())).detach()
            warm = load_warmup(cfg.warmup_checkpoint, like, buffers.read(model), layout.architecture)
        return cls(cfg, task, model, layout, data, agg, method, device, vec, why, warmup=warm, regime=regime,
                   client_model=cm)

    def fresh_state(self, theta: torch.Tensor) -> RunState:
        """The state of round 0 from ``theta`` [P]: what a checkpoint of this run must match."""
        return RunState(0, theta, self.aggregator.init_state(theta), {},
                        method_state=self.method.init_server_state(theta), buffers=buffers.read(self.model),
                        model=self.layout.architecture)

    def expected(self, fp: str) -> Expected:
        """What this run's checkpoint must hold (fipa/checkpoint.py's rules)."""
        theta = self.layout.flatten(dict(self.model.named_parameters())).detach()
        return Expected(self.fresh_state(theta), self.cfg.rounds, fp, len(self.data),
                        self.method.init_state(theta))

    def step_work(self) -> int:
        """Numbers one local step multiplies: the largest client minibatch x parameters."""
        widest = max(batch_size(num_samples(d), self.method.cfg) for d in self.data)
        return widest * self.layout.numel

    @property
    def clients_per_round(self) -> int:
        """How many clients train in each round of this run."""
        return clients_per_round(self.cfg.participation, len(self.data))

    def initial_theta(self) -> torch.Tensor:
        theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        if self.warmup is not None:
            theta, warm_buffers = self.warmup
            buffers.load(self.model, warm_buffers)
        return theta

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        params = self.layout.unflatten(theta)
        with torch.no_grad():
            train = pooled(self.data)
            out = self.task.outputs(self.model, params, train)
            row = {"train_loss": float(mean_loss(self.task.loss_kind, out, self.task.targets(train)))}
        row.update(self.task.evaluate(self.model, params))
        return row

    def stack_key(self) -> str | None:
        """Runs with equal keys can train their rows in one vectorized call (the runs axis); None:
        this run trains alone (its model cannot stack, its method declares an ``alone_reason``, or
        its regime trains alone)."""
        if self.method.alone_reason is not None:
            return None
        if self.regime.trains_alone or self.cfg.vectorize is False:
            return None
        if not self.vectorized and self.path_reason != "one client per round":
            return None  # the size rule or the model's layers keep this run off the vectorized path
        cfg = self.cfg.to_dict()
        return json.dumps({k: cfg[k] for k in ("task", "client", "dtype", "device")}, sort_keys=True,
                          default=str)

    def loss_probe(self, chosen: list[int]) -> LossProbe:
        """The round's clients' weighted task loss at a candidate model (FIPA's adaptive damping).

        theta [P] -> sum_m w_m L_m(theta), w_m = N_m / sum_j N_j over ``chosen`` (the aggregators'
        weights), L_m client m's mean task loss on all its local data: one forward pass per client
        and call, whose result each client would upload as one scalar.
        """
        datas = [self.data[m] for m in chosen]
        sizes = torch.tensor([num_samples(d) for d in datas], dtype=torch.float64)
        weights = (sizes / sizes.sum()).tolist()

        def loss(theta: torch.Tensor) -> float:
            params = self.layout.unflatten(theta)
            with torch.no_grad():
                return sum(w * float(mean_loss(self.task.loss_kind, self.task.outputs(self.model, params, d),
                                               self.task.targets(d)))
                           for w, d in zip(weights, datas, strict=True))

        return LossProbe(loss, len(chosen), hessian_scale(self.task.loss_kind))
