"""The federated round loop: sampling, local training, aggregation, metrics, checkpoints.

Every random draw is seeded from (seed, round, client), so a run resumed from a
checkpoint ends with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fipa import buffers, devices, vectorized
from fipa.aggregators import AGGREGATORS, Aggregator, ClientUpdate
from fipa.clients import CLIENT_METHODS, ClientMethod
from fipa.config import ConfigError, RunConfig
from fipa.curvature import client_curvature
from fipa.io import write_csv, write_json
from fipa.losses import mean_loss
from fipa.params import ParamLayout
from fipa.partition import make_partition
from fipa.tasks import build_task
from fipa.tasks.base import Batch, Task
from fipa.vectorized import choose_path

CHECKPOINT = "checkpoint.pt"
BASE_COLUMNS = ["round", "train_loss", "test_loss"]
TAIL_COLUMNS = ["uplink_bytes", "uplink_bytes_total", "diverged", "wall_s"]
# keys that may change between a run and its resumption without changing its numbers
# (vectorize: the two local-training paths agree up to floating-point rounding)
_RESUMABLE_KEYS = ("rounds", "device", "eval_every", "checkpoint_every", "labels", "partition_file",
                   "vectorize")


def fingerprint(cfg: RunConfig) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def supersede_stale_run(outdir: Path, cfg: RunConfig) -> Path | None:
    """Move a checkpointed run of another config into ``outdir/superseded/<time>/``.

    Resuming such a run would mix two configs, and deleting it would lose finished work;
    returns the new folder, or None when there is nothing stale (no or a matching checkpoint,
    or an unreadable one, which training then reports).
    """
    import shutil

    ckpt = outdir / CHECKPOINT
    if not ckpt.is_file():
        return None
    try:
        stored = torch.load(ckpt, weights_only=True, map_location="cpu").get("fingerprint")
    except Exception:
        return None
    if stored == fingerprint(cfg):
        return None
    dest = outdir / "superseded" / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True)
    for item in outdir.iterdir():
        if item.name != "superseded":
            shutil.move(str(item), dest / item.name)
    return dest


def finished_run(outdir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The final.json of a run in ``outdir`` that already finished with exactly ``cfg``, else None.

    Lets a batch skip its finished cells without building their task; any difference in the
    resolved config (more rounds included) means the run is not finished.
    """
    try:
        final = json.loads((outdir / "final.json").read_text())
    except (OSError, ValueError):
        return None
    if not (outdir / CHECKPOINT).is_file():
        return None
    return final if _canonical(final.get("config")) == _canonical(cfg.to_dict()) else None


def _canonical(d: Any) -> str:
    """A config as final.json stores it (JSON: tuples become lists), as a comparable string."""
    return json.dumps(json.loads(json.dumps(d, default=str)), sort_keys=True)


def prepare_run_dir(outdir: Path, cfg: RunConfig, supersede: bool, record_config: bool,
                    echo: Callable[[str], None]) -> None:
    """Before training into ``outdir``: move a run of another config aside (``supersede``) and
    write the resolved config as ``run.yaml`` (``record_config``: it came inline, not as a file)."""
    if supersede:
        moved = supersede_stale_run(outdir, cfg)
        if moved is not None:
            echo(f"{outdir}: the config changed; the earlier run is kept in {moved}")
    if record_config:
        from fipa.io import write_yaml

        write_yaml(outdir / "run.yaml", cfg.to_dict())


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, round, client, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_clients(seed: int, rnd: int, num_clients: int, participation: float) -> list[int]:
    """The clients of round ``rnd``: ceil-free rounding, at least one, sorted."""
    k = max(1, round(participation * num_clients))
    rng = np.random.default_rng(derive_seed(seed, rnd, 0x5A))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


@dataclass
class RunState:
    """Everything a checkpoint holds."""

    round: int
    theta: torch.Tensor
    agg_state: dict[str, torch.Tensor]
    client_states: dict[str, dict[str, torch.Tensor]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    uplink_total: int = 0
    wall_s: float = 0.0
    method_state: dict[str, torch.Tensor] = field(default_factory=dict)  # client method's server side
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # global BatchNorm statistics

    def to_dict(self, fp: str) -> dict[str, Any]:
        return {**self.__dict__, "fingerprint": fp}


def load_partition(path: str, cfg: RunConfig, n: int) -> list[np.ndarray]:
    """Client index lists from a ``fipa partition`` file, checked against this run."""
    try:
        data = json.loads(Path(path).read_text())
        parts = [np.asarray(p, dtype=np.int64) for p in data["indices"]]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"partition_file: {path} is unreadable ({e}); run `fipa partition` again") from None
    if len(parts) != cfg.clients or data.get("n") != n:
        raise ConfigError(
            f"partition_file: {path} holds {len(parts)} clients over {data.get('n')} samples, "
            f"but this run has {cfg.clients} clients over {n}; regenerate it with `fipa partition`"
        )
    return parts


def load_checkpoint(path: Path, fp: str, device: torch.device | str = "cpu") -> RunState:
    try:
        raw = torch.load(path, weights_only=True, map_location=device)
        if raw.pop("fingerprint") != fp:
            raise ConfigError(
                f"{path}: checkpoint belongs to a different config; move it away or use another "
                "output directory"
            )
        return RunState(**raw)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{path}: checkpoint is corrupt or truncated ({type(e).__name__}); delete it to "
            "restart this run from round 0"
        ) from None


def save_checkpoint(path: Path, state: RunState, fp: str) -> None:
    from fipa.io import atomic_write

    atomic_write(path, lambda fh: torch.save(state.to_dict(fp), fh), mode="wb")


def pooled(batches: list[Batch]) -> Batch:
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

    @classmethod
    def build(cls, cfg: RunConfig, device: torch.device | None = None) -> Simulation:
        """Everything that can fail on bad input happens here, before any training."""
        dtype = getattr(torch, cfg.dtype)
        device = device or torch.device("cpu")
        task = build_task(cfg.task.name, cfg.task.params, cfg.seed, dtype)
        agg = AGGREGATORS.get(cfg.aggregator.name)(cfg.aggregator.params)
        method = CLIENT_METHODS.get(cfg.client.method)(cfg.client)
        method.check_task(task)
        pin = task.partition_input()
        if cfg.partition_file:
            parts = load_partition(cfg.partition_file, cfg, pin.n)
        else:
            parts = make_partition(pin, cfg.partition.name, cfg.clients, cfg.partition.params, cfg.seed)
        if agg.pools_clients:
            parts = [np.sort(np.concatenate(parts))]
        data = [{k: v.to(device) for k, v in task.client_data(p).items()} for p in parts]
        torch.manual_seed(derive_seed(cfg.seed, 0x1217))
        model = task.build_model().to(device)
        if buffers.has_buffers(model):
            model.eval()  # running statistics outside local training (fipa/buffers.py)
        layout = ParamLayout.of(model)
        per_round = max(1, round(cfg.participation * len(data))) if len(data) > 1 else 1
        vec, why = choose_path(cfg.vectorize, method, task, model, layout.numel,
                               [next(iter(d.values())).shape[0] for d in data], per_round)
        return cls(cfg, task, model, layout, data, agg, method, device, vec, why)

    def initial_theta(self) -> torch.Tensor:
        theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        if self.cfg.warmup_checkpoint:
            theta, warm_buffers = load_warmup(self.cfg.warmup_checkpoint, theta, buffers.read(self.model))
            buffers.load(self.model, warm_buffers)
        return theta

    def metrics_columns(self) -> list[str]:
        return BASE_COLUMNS + list(self.task.metrics) + TAIL_COLUMNS

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        params = self.layout.unflatten(theta)
        with torch.no_grad():
            train = pooled(self.data)
            out = self.task.outputs(self.model, params, train)
            row = {"train_loss": float(mean_loss(self.task.loss_kind, out, self.task.targets(train)))}
        row.update(self.task.evaluate(self.model, params))
        return row

    def client_round(self, theta: torch.Tensor, rnd: int, m: int, state: dict) -> ClientUpdate:
        """One client's local work and upload for round ``rnd``."""
        seed = self.cfg.seed
        gen = torch.Generator().manual_seed(derive_seed(seed, rnd, m, 0xC1))
        local = buffers.local_training(self.model) if buffers.has_buffers(self.model) else nullcontext({})
        with local as upload:  # BatchNorm statistics: train mode from the global ones, then back
            result = self.method.train(self.task, self.model, self.layout, theta, self.data[m], gen, state)
        update = ClientUpdate(result.theta - theta, next(iter(self.data[m].values())).shape[0],
                              buffers=upload.get("client"))
        request = self.aggregator.curvature_request()
        if request is not None:
            at = theta if request.at == "broadcast" else result.theta
            cgen = torch.Generator().manual_seed(derive_seed(seed, rnd, m, 0xCF))
            curv = client_curvature(request, self.task, self.model, self.layout, at, self.data[m], cgen)
            update.factor, update.eigvals = curv.get("factor"), curv.get("eigvals")
            update.diag = curv.get("diag")
        return update

    def round_updates(self, theta: torch.Tensor, rnd: int, chosen: list[int],
                      client_states: dict[str, dict[str, torch.Tensor]]) -> list[ClientUpdate]:
        """The uploads of round ``rnd``'s clients, one at a time or all at once (vectorized)."""
        states = [client_states.setdefault(str(m), self.method.init_state(theta)) for m in chosen]
        if not self.vectorized or len(chosen) < 2:
            return [self.client_round(theta, rnd, m, st) for m, st in zip(chosen, states, strict=True)]
        seed = self.cfg.seed
        datas = [self.data[m] for m in chosen]
        gens = [torch.Generator().manual_seed(derive_seed(seed, rnd, m, 0xC1)) for m in chosen]
        thetas = vectorized.local_train(self.method, self.task, self.model, self.layout, theta, datas,
                                        gens, states)  # [M, P]
        updates = [ClientUpdate(thetas[i] - theta, next(iter(d.values())).shape[0])
                   for i, d in enumerate(datas)]
        request = self.aggregator.curvature_request()
        if request is not None:
            cgens = [torch.Generator().manual_seed(derive_seed(seed, rnd, m, 0xCF)) for m in chosen]
            at = theta if request.at == "broadcast" else thetas
            curvs = vectorized.round_curvature(request, self.task, self.model, self.layout, at, datas,
                                               cgens)
            for update, curv in zip(updates, curvs, strict=True):
                update.factor, update.eigvals = curv.get("factor"), curv.get("eigvals")
                update.diag = curv.get("diag")
        return updates


def load_warmup(path: str, like: torch.Tensor, like_buffers: dict[str, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(theta [P], buffers) of a warm-up state file (``fipa export-warmup``), checked against
    the model's parameter count and buffer names."""
    try:
        raw = torch.load(path, weights_only=True)
        theta, warm_buffers = raw["theta"], raw.get("buffers", {})
    except Exception as e:
        raise ConfigError(f"warmup_checkpoint: {path} is unreadable ({type(e).__name__}); "
                          "rerun the warm-up") from None
    if theta.shape != like.shape:
        raise ConfigError(f"warmup_checkpoint: {path} has {theta.numel()} parameters, the model "
                          f"{like.numel()}; the warm-up was made for another model")
    if like_buffers is not None and set(warm_buffers) != set(like_buffers):
        raise ConfigError(f"warmup_checkpoint: {path} holds running statistics for "
                          f"{len(warm_buffers)} buffers, the model has {len(like_buffers)}; the warm-up "
                          "was made for another model (norm: batch against group?)")
    return theta.to(like), warm_buffers


def train(
    cfg: RunConfig, outdir: str | Path, log: Callable[[str], None] = print, label: str = "",
) -> dict[str, Any]:
    """Run (or resume) one job into ``outdir``; returns the final summary (final.json)."""
    with devices.claim(cfg.device) as device:
        return _train(Simulation.build(cfg, device), Path(outdir), log, label)


def _train(sim: Simulation, outdir: Path, log: Callable[[str], None], label: str) -> dict[str, Any]:
    cfg = sim.cfg
    fp = fingerprint(cfg)
    ckpt = outdir / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt, fp, sim.device)
        log(f"{label} resuming from round {state.round}")
    else:
        theta = sim.initial_theta()
        state = RunState(0, theta, sim.aggregator.init_state(theta), {},
                         method_state=sim.method.init_server_state(theta), buffers=buffers.read(sim.model))
    buffers.load(sim.model, state.buffers)
    columns = sim.metrics_columns()
    M = len(sim.data)
    t0 = time.perf_counter() - state.wall_s
    if not state.rows:
        state.rows.append(_row(0, sim.evaluate(state.theta), 0, 0, False, 0.0))
        log(_progress(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))
    while state.round < cfg.rounds and not state.diverged:
        rnd = state.round + 1
        chosen = sample_clients(cfg.seed, rnd, M, cfg.participation) if M > 1 else [0]
        theta = state.theta
        sim.method.begin_round(state.method_state)
        updates = sim.round_updates(theta, rnd, chosen, state.client_states)
        theta_new = sim.aggregator.step(theta, updates, state.agg_state)
        theta_new = sim.method.end_round(theta_new, state.method_state, M)  # SCAFFOLD c, FedDyn h
        if state.buffers:
            state.buffers = buffers.average([u.buffers for u in updates], [u.num_samples for u in updates])
            buffers.load(sim.model, state.buffers)
        extra = sim.method.uplink_vectors * theta.numel()  # SCAFFOLD's Delta c_i
        numbers = sum(u.uplink_numbers + extra for u in updates)
        bytes_ = numbers * theta.element_size()
        state.uplink_total += bytes_
        state.round, state.theta = rnd, theta_new
        state.diverged = not bool(torch.isfinite(theta_new).all())
        if state.diverged or rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            metrics = sim.evaluate(theta_new) if not state.diverged else {}
            state.diverged = state.diverged or not all(math.isfinite(v) for v in metrics.values())
            state.wall_s = time.perf_counter() - t0
            state.rows.append(_row(rnd, metrics, bytes_, state.uplink_total, state.diverged,
                                   state.wall_s))
            log(_progress(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))
        if state.diverged or rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds:
            state.wall_s = time.perf_counter() - t0
            save_checkpoint(ckpt, state, fp)
            write_csv(outdir / "metrics.csv", state.rows, columns)
    state.wall_s = time.perf_counter() - t0
    write_csv(outdir / "metrics.csv", state.rows, columns)
    save_checkpoint(ckpt, state, fp)
    final = summarize(cfg, sim, state)
    write_json(outdir / "final.json", final)
    return final


def _row(rnd, metrics, bytes_, total, diverged, wall) -> dict[str, Any]:
    return {"round": rnd, **metrics, "uplink_bytes": bytes_, "uplink_bytes_total": total,
            "diverged": int(diverged), "wall_s": round(wall, 3)}


def _progress(label: str, row: dict[str, Any], rounds: int, metric: str) -> str:
    if row["diverged"]:
        return f"{label} round {row['round']}/{rounds}  DIVERGED (non-finite parameters or loss)"
    return (f"{label} round {row['round']}/{rounds}  train_loss {row['train_loss']:.4g}  "
            f"{metric} {row.get(metric, float('nan')):.4g}  [{row['wall_s']:.1f} s]")


def summarize(cfg: RunConfig, sim: Simulation, state: RunState) -> dict[str, Any]:
    """The content of final.json: identity, outcome, final and best metrics, provenance."""
    evaluated = [r for r in state.rows if "test_loss" in r]
    last = evaluated[-1] if evaluated else {}
    keys = ["train_loss", "test_loss", *sim.task.metrics]
    directions = {"train_loss": "min", "test_loss": "min", **sim.task.metrics}
    best = {}
    for k in keys:
        vals = [r[k] for r in evaluated if k in r and math.isfinite(r[k])]
        if vals:
            best[k] = min(vals) if directions[k] == "min" else max(vals)
    labels = cfg.labels
    return {
        "task": labels.get("task", cfg.task.name),
        "partition": labels.get("partition", cfg.partition.name),
        "client_method": labels.get("client_method", cfg.client.method),
        "aggregator": labels.get("aggregator", cfg.aggregator.name),
        "seed": cfg.seed,
        "task_family": cfg.task.name,
        "rounds_completed": state.round,
        "diverged": state.diverged,
        "final": {k: last[k] for k in keys if k in last},
        "best": best,
        "metric_directions": directions,
        "primary_metric": sim.task.primary_metric,
        "num_params": sim.layout.numel,
        "local_training": {"vectorized": sim.vectorized, "rule": sim.path_reason},
        "uplink_bytes_total": state.uplink_total,
        "wall_s": round(state.wall_s, 3),
        "config": cfg.to_dict(),
        "versions": versions(),
        "device": str(sim.device),
    }


def versions() -> dict[str, str]:
    import fipa

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "fipa": getattr(fipa, "__version__", "0.1.0"), "platform": platform.platform()}
