"""The federated round loop: sampling, local training, aggregation, metrics, checkpoints.

Every random draw is seeded from (seed, round, client), so a run resumed from a
checkpoint ends with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fipa import buffers, devices, vectorized
from fipa.aggregators import AGGREGATORS, Aggregator, ClientUpdate, LossProbe
from fipa.checkpoint import (
    CHECKPOINT,
    Expected,
    RunState,
    fingerprint,
    load_checkpoint,
    load_warmup,
    read_checkpoint,
    save_checkpoint,
    stale_reason,
)
from fipa.client_config import ClientConfig
from fipa.clients import CLIENT_METHODS, ClientMethod, batch_size, steps_per_round
from fipa.config import RunConfig
from fipa.curvature import CurvatureRequest, client_curvature
from fipa.errors import ConfigError, UnreadableFileError
from fipa.io import RunDirLock, remove_stale_temps, write_csv, write_json
from fipa.losses import hessian_scale, mean_loss
from fipa.params import ParamLayout
from fipa.partition import SCHEMES, make_partition
from fipa.tasks import build_task
from fipa.tasks.base import Batch, Task, num_samples
from fipa.threads import ThreadChoice, choose_threads
from fipa.threads import apply as apply_threads
from fipa.vectorized import choose_path

BASE_COLUMNS = ["round", "train_loss", "test_loss"]
TAIL_COLUMNS = ["uplink_bytes", "uplink_bytes_total", "diverged", "wall_s"]


def supersede_stale_run(outdir: Path, cfg: RunConfig) -> Path | None:
    """Move a checkpointed run of another config (or one past this config's rounds) into
    ``outdir/superseded/<time>/``.

    Resuming such a run would mix two configs (or shorten a finished run, whose final.json
    would then record more rounds than its config), and deleting it would lose finished work;
    returns the new folder, or None when there is nothing stale (no or a matching checkpoint,
    or an unreadable one, which training then reports).
    """
    import shutil

    ckpt = outdir / CHECKPOINT
    if not ckpt.is_file():
        if not (outdir / "final.json").is_file():
            return None
        # a finished run whose checkpoint is gone: it cannot be resumed, and must not be overwritten
    else:
        try:
            raw = read_checkpoint(ckpt)
        except UnreadableFileError:
            return None
        if stale_reason(raw, fingerprint(cfg), cfg.rounds) is None:
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
    """Before training into ``outdir``: take its lock (held until the process ends or the run
    closes), remove temp files of killed writers, move a run of another config aside
    (``supersede``) and write the resolved config as ``run.yaml`` (``record_config``: it came
    inline, not as a file)."""
    check_writable(outdir)
    if outdir.is_dir():  # a new directory is created (and locked) only once training starts
        RunDirLock(outdir).acquire()
        remove_stale_temps(outdir)
    if supersede:
        moved = supersede_stale_run(outdir, cfg)
        if moved is not None:
            echo(f"{outdir}: the config changed; the earlier run is kept in {moved}")
    if record_config:
        from fipa.io import write_yaml

        write_yaml(outdir / "run.yaml", cfg.to_dict())


def check_writable(outdir: Path) -> None:
    """Fail before any training if ``outdir`` cannot hold a run: a file is in the way, or it (or
    the nearest existing folder above it) is not writable."""
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir}: is a file, not a run directory; choose another -o/--output")
    probe = outdir
    while not probe.exists():
        if probe.is_symlink():  # exists() is False for a link to nowhere and for a link loop
            raise ConfigError(f"{outdir}: {probe} is a symbolic link that leads nowhere (or to itself); "
                              "remove the link or choose another -o/--output")
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{outdir}: cannot write there ({probe} is not a writable directory); "
                          "choose another -o/--output or fix its permissions")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, round, client, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_clients(seed: int, rnd: int, num_clients: int, participation: float) -> list[int]:
    """The clients of round ``rnd``: ceil-free rounding, at least one, sorted."""
    k = max(1, round(participation * num_clients))
    rng = np.random.default_rng(derive_seed(seed, rnd, 0x5A))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def load_partition(path: str, cfg: RunConfig, n: int) -> list[np.ndarray]:
    """Client index lists from a ``fipa partition`` file, checked by PARTITION_RULES against this
    run (``n`` samples in its task's training pool)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UnreadableFileError(f"partition_file: {path} is unreadable ({e}); run `fipa partition` "
                                  "again") from None
    for rule in PARTITION_RULES:
        problem = rule(data, cfg, n)
        if problem is not None:
            raise ConfigError(f"partition_file: {path} {problem}; regenerate it with `fipa partition` "
                              "for this run's config")
    return [np.asarray(p, dtype=np.int64) for p in data["indices"]]


# ----------------------------------------------------------------------------- partition rules
# each: (the file's JSON content, the run's config, its sample count n) -> one problem, or None


def _part_form(data: Any, cfg: RunConfig, n: int) -> str | None:
    """A mapping whose ``indices`` are lists of integer sample indices, one list per client."""
    indices = data.get("indices") if isinstance(data, dict) else None
    if not isinstance(indices, list) or not all(
            isinstance(p, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
            for p in indices):
        return "is not a partition file (indices: one list of sample indices per client)"
    return None


def _part_size(data: dict, cfg: RunConfig, n: int) -> str | None:
    """As many clients as the run, over the run's sample count."""
    if len(data["indices"]) != cfg.clients or data.get("n") != n:
        return (f"holds {len(data['indices'])} clients over {data.get('n')} samples, but this run has "
                f"{cfg.clients} clients over {n}")
    return None


def _part_origin(data: dict, cfg: RunConfig, n: int) -> str | None:
    """Made for this run's seed, task and partition settings (a split of another seed or scheme
    would train on data the run's config does not describe)."""
    if data.get("seed") != cfg.seed:
        return f"was made for seed {data.get('seed')!r}, this run has seed {cfg.seed}"
    made = {"task": data.get("task"), "partition": data.get("partition")}
    wanted = {"task": cfg.task.to_dict("name"), "partition": {**cfg.partition.to_dict("scheme"),
                                                              "clients": cfg.clients}}
    if _canonical(made) != _canonical(wanted):
        return "was made for other task or partition settings"
    return None


def _part_indices(data: dict, cfg: RunConfig, n: int) -> str | None:
    """Indices in [0, n), each sample held by at most one client, no client empty, and every sample
    held where the scheme promises it (``covers_all``, the built-in schemes do)."""
    parts = data["indices"]
    flat = [i for p in parts for i in p]
    if any(i < 0 or i >= n for i in flat):
        return f"holds sample indices outside [0, {n})"
    if len(set(flat)) != len(flat):
        return "gives some samples to more than one client (or twice to one)"
    empty = [m for m, p in enumerate(parts) if not p]
    if empty:
        return f"gives client {empty[0]} no sample"
    if len(flat) != n and getattr(SCHEMES.get(cfg.partition.name), "covers_all", True):
        return f"leaves {n - len(flat)} of the {n} samples to no client"
    return None


PARTITION_RULES = (_part_form, _part_size, _part_origin, _part_indices)


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
        client_cfg = cfg.client
        if agg.pools_clients:
            client_cfg = centralized_client(cfg.client, [len(p) for p in parts])
            parts = [np.sort(np.concatenate(parts))]
        method = CLIENT_METHODS.get(cfg.client.method)(client_cfg, keep_optimizer=agg.pools_clients)
        method.check_task(task)
        data = [{k: v.to(device) for k, v in task.client_data(p).items()} for p in parts]
        check_model_fits(task, dtype, device)
        torch.manual_seed(derive_seed(cfg.seed, 0x1217))
        model = task.build_model().to(device)
        if buffers.has_buffers(model):
            model.eval()  # running statistics outside local training (fipa/buffers.py)
        layout = ParamLayout.of(model)
        per_round = max(1, round(cfg.participation * len(data))) if len(data) > 1 else 1
        vec, why = choose_path(cfg.vectorize, method, task, model, layout.numel,
                               [num_samples(d) for d in data], per_round)
        warm = None
        if cfg.warmup_checkpoint:  # read (and checked) here: a bad file fails before any run directory
            like = layout.flatten(dict(model.named_parameters())).detach()
            warm = load_warmup(cfg.warmup_checkpoint, like, buffers.read(model), layout.architecture)
        return cls(cfg, task, model, layout, data, agg, method, device, vec, why, warmup=warm)

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

    def initial_theta(self) -> torch.Tensor:
        theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        if self.warmup is not None:
            theta, warm_buffers = self.warmup
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

    def round_updates(self, theta: torch.Tensor, rnd: int, chosen: list[int],
                      client_states: dict[str, dict[str, torch.Tensor]]) -> list[ClientUpdate]:
        """The uploads of round ``rnd``'s clients, one at a time or all at once (vectorized)."""
        return train_rows(self.rows(theta, rnd, chosen, client_states), self.vectorized)

    def rows(self, theta: torch.Tensor, rnd: int, chosen: list[int],
             client_states: dict[str, dict[str, torch.Tensor]]) -> list[Row]:
        """Round ``rnd``'s local work of this run: one row per chosen client."""
        return [Row(self, theta, rnd, m, client_states.setdefault(str(m), self.method.init_state(theta)))
                for m in chosen]

    def stack_key(self) -> str | None:
        """Runs with equal keys can train their rows in one vectorized call (the runs axis); None:
        this run trains alone (its method or model cannot stack, or it is the centralized reference)."""
        if not self.method.stacks_runs or self.aggregator.pools_clients or self.cfg.vectorize is False:
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


TRAIN_SALT, CURVATURE_SALT = 0xC1, 0xCF  # purposes of a row's generators (derive_seed)


@dataclass
class Row:
    """One client's local work in one round of one run: the unit every training path stacks.

    A round of one run is its chosen clients' rows; a round of several runs in lockstep (a
    batch job's cells) is all their rows. ``theta`` [P] is the run's broadcast model theta^k.
    """

    sim: Simulation
    theta: torch.Tensor
    rnd: int
    client: int
    state: dict[str, torch.Tensor]

    @property
    def data(self) -> Batch:
        return self.sim.data[self.client]

    def generator(self, salt: int) -> torch.Generator:
        """A generator seeded by (seed, round, client, purpose): a row draws the same numbers
        whichever rows it trains with."""
        return torch.Generator().manual_seed(derive_seed(self.sim.cfg.seed, self.rnd, self.client, salt))


def train_rows(rows: list[Row], vectorize: bool) -> list[ClientUpdate]:
    """Local training and curvature of ``rows``: one row at a time, or all in one vectorized call.

    The single path of every round: a single client, a round's clients and the rows of
    several runs (``Simulation.stack_key``: same task settings, client config and model) are
    lists of rows of different lengths. Local training stacks the rows' parameters [rows, P],
    each from its own run's theta^k (``vectorize``, at least two rows), or trains them one by
    one; curvature is then taken per request (rank, method, ...) over the rows whose run asks
    for it, at the broadcast or the local model.
    """
    stacked = vectorize and len(rows) >= 2
    local = _train_stacked(rows) if stacked else [_train_one(r) for r in rows]  # [rows][P]
    updates = [ClientUpdate(theta - r.theta, num_samples(r.data), buffers=up)
               for r, (theta, up) in zip(rows, local, strict=True)]
    for request, idx in _by_request(rows):
        at = [rows[i].theta if request.at == "broadcast" else local[i][0] for i in idx]
        for i, curv in zip(idx, _curvature(request, [rows[i] for i in idx], at, stacked), strict=True):
            updates[i].factor = curv.get("factor")
            updates[i].diag = curv.get("diag")
    return updates


def _train_one(r: Row) -> tuple[torch.Tensor, dict | None]:
    """(theta_m [P], the BatchNorm statistics it uploads or None) of one row, sequentially."""
    sim = r.sim
    local = buffers.local_training(sim.model) if buffers.has_buffers(sim.model) else nullcontext({})
    with local as upload:  # BatchNorm statistics: train mode from the global ones, then back
        result = sim.method.train(sim.task, sim.model, sim.layout, r.theta, r.data, r.generator(TRAIN_SALT),
                                  r.state)
    return result.theta, upload.get("client")


def _train_stacked(rows: list[Row]) -> list[tuple[torch.Tensor, None]]:
    """Every row's theta_m [P] from one vectorized call (fipa/vectorized.py)."""
    lead = rows[0].sim
    one_run = all(r.theta is rows[0].theta for r in rows)
    theta0 = rows[0].theta if one_run else torch.stack([r.theta for r in rows])  # [P] or [rows, P]
    thetas = vectorized.local_train(lead.method, lead.task, lead.model, lead.layout, theta0,
                                    [r.data for r in rows], [r.generator(TRAIN_SALT) for r in rows],
                                    [r.state for r in rows])  # [rows, P]
    return [(thetas[i], None) for i in range(len(rows))]


def _curvature(request: CurvatureRequest, rows: list[Row], at: list[torch.Tensor], stacked: bool
               ) -> list[dict[str, torch.Tensor]]:
    """Curvature uploads of ``rows`` at their points ``at`` ([P] each): stacked over the rows in
    one call where their training was, else row by row."""
    gens = [r.generator(CURVATURE_SALT) for r in rows]
    if not stacked:
        return [client_curvature(request, r.sim.task, r.sim.model, r.sim.layout, a, r.data, g)
                for r, a, g in zip(rows, at, gens, strict=True)]
    lead = rows[0].sim
    shared = all(a is at[0] for a in at)
    points = at[0] if shared else torch.stack(at)  # [P] or [rows, P]
    return vectorized.round_curvature(request, lead.task, lead.model, lead.layout, points,
                                      [r.data for r in rows], gens)


def _by_request(rows: list[Row]) -> list[tuple[CurvatureRequest, list[int]]]:
    """The rows' curvature requests, each with the indices of the rows that ask for it."""
    groups: list[tuple[CurvatureRequest, list[int]]] = []
    for i, r in enumerate(rows):
        request = r.sim.aggregator.curvature_request()
        if request is None:
            continue
        for req, idx in groups:
            if req == request:
                idx.append(i)
                break
        else:
            groups.append((request, [i]))
    return groups


def centralized_client(cfg: ClientConfig, sizes: list[int]) -> ClientConfig:
    """The local work of the centralized reference's single client (pooled data).

    The reference is one model trained on the union of the clients' data for as many
    optimizer steps as one client takes over the run (rounds x its steps per round, the
    mean over clients where their sizes differ), with one persistent optimizer state
    (``ClientMethod.keep_optimizer``). ``local_epochs`` are a client's epochs, so they are
    converted to that client's step count; on the pooled data the same count covers 1/M of
    an epoch's worth of minibatches per client, not M times as many steps.
    """
    steps = round(sum(steps_per_round(n, cfg) for n in sizes) / len(sizes))
    return dataclasses.replace(cfg, local_steps=max(1, steps))


def train(
    cfg: RunConfig, outdir: str | Path, log: Callable[[str], None] = print, label: str = "",
    threads: int | None = None, on_round: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one job into ``outdir``; returns the final summary (final.json).

    ``threads`` (``fipa train --threads``) overrides the config's ``threads`` setting;
    ``on_round(round, rounds)`` is called after every round (a terminal's progress bar).
    """
    with devices.claim(cfg.device) as device:
        sim = prepared(Simulation.build(cfg, device), threads)
        loop = RunLoop(sim, Path(outdir), log, label)
        loop.on_round = on_round
        return train_lockstep([loop])[0]


def prepared(sim: Simulation, threads: int | None) -> Simulation:
    """Choose and apply the run's torch thread count (``threads`` overrides the config's)."""
    sim.threads = choose_threads(threads or sim.cfg.threads, sim.step_work())
    apply_threads(sim.threads)
    return sim


def train_lockstep(loops: list[RunLoop], on_done: Callable[[RunLoop, dict[str, Any]], None] | None = None,
                   ) -> list[dict[str, Any]]:
    """Advance runs round by round together; returns each run's final.json content.

    A run is closed (final.json written) as soon as it is done, then ``on_done(loop, final)``.

    Per step, the unfinished runs at the same round whose ``Simulation.stack_key`` agree train
    their rows (every chosen client of every run) in one call (``train_rows``); the others,
    and a run resumed at another round, advance in their own group. Each run keeps its own
    aggregation, evaluation, checkpoint and outputs, so a run gives the same numbers whether
    it trains alone or stacked (up to floating-point rounding of the vectorized products).
    """
    finals: dict[int, dict[str, Any]] = {}

    def close_finished() -> None:
        for i, lp in enumerate(loops):
            if lp.done and i not in finals:
                finals[i] = lp.close()
                if on_done is not None:
                    on_done(lp, finals[i])

    close_finished()
    while len(finals) < len(loops):
        for group in _lockstep_groups([lp for lp in loops if not lp.done]):
            work = [(lp, lp.begin_round()) for lp in group]
            rows = [row for lp, chosen in work for row in lp.rows(chosen)]
            vectorize = len(group) > 1 or group[0].sim.vectorized
            updates = iter(train_rows(rows, vectorize))
            for lp, chosen in work:
                lp.finish_round(chosen, [next(updates) for _ in chosen])
        close_finished()
    return [finals[i] for i in range(len(loops))]


def _lockstep_groups(loops: list[RunLoop]) -> list[list[RunLoop]]:
    """Runs that can share a round's training call: same round and stack key, split where
    rows x batch x parameters would pass ``STACK_WORK`` (a run whose key is None is alone)."""
    groups: dict[tuple, list[RunLoop]] = {}
    for i, lp in enumerate(loops):
        key = lp.sim.stack_key()
        groups.setdefault((lp.state.round, key if key is not None else f"alone-{i}"), []).append(lp)
    out = []
    for members in groups.values():
        chunk: list[RunLoop] = []
        for lp in members:
            if chunk and (len(chunk) + 1) * lp.rows_per_round() * lp.sim.step_work() > STACK_WORK:
                out.append(chunk)
                chunk = []
            chunk.append(lp)
        out.append(chunk)
    return out


# runs stacked in one training call while rows x minibatch x parameters stays below this
# (memory of the stacked activations and gradients; beyond, the stack is split)
STACK_WORK = 1 << 27


class RunLoop:
    """One run's round loop as steps (``begin_round``, ``finish_round``), so that several runs
    can advance in lockstep and share their local training (``train_lockstep``).

    Built from a prepared Simulation and its run directory: resumes from the checkpoint there,
    or starts at round 0 with an evaluation of the initial model.
    """

    def __init__(self, sim: Simulation, outdir: Path, log: Callable[[str], None], label: str) -> None:
        self.sim, self.outdir, self.log, self.label = sim, outdir, log, label
        self.on_round: Callable[[int, int], None] | None = None  # after every round (progress bars)
        cfg = sim.cfg
        self.fp = fingerprint(cfg)
        self.ckpt = outdir / CHECKPOINT
        self.lock = RunDirLock(outdir)
        self.lock.acquire()
        if not self.ckpt.exists() and (outdir / "final.json").exists():
            self.lock.release()
            raise ConfigError(f"{outdir}: holds a finished run (final.json) without its checkpoint; "
                              "rerun with --supersede to keep it in superseded/ and start again, or use "
                              "another output directory")
        if self.ckpt.exists():
            try:
                state = load_checkpoint(self.ckpt, sim.expected(self.fp), sim.device)
            except BaseException:
                self.lock.release()
                raise
            log(f"{label} resuming from round {state.round}")
        else:
            state = sim.fresh_state(sim.initial_theta())
        self.state = state
        buffers.load(sim.model, state.buffers)
        self.stats = stats = sim.aggregator.stats  # server-state scalars (adaptive damping), columns
        columns = sim.metrics_columns()
        self.columns = columns[: -len(TAIL_COLUMNS)] + list(stats(state.agg_state)) + TAIL_COLUMNS
        self.t0 = time.perf_counter() - state.wall_s
        if not state.rows:
            state.rows.append(_row(0, {**sim.evaluate(state.theta), **stats(state.agg_state)}, 0, 0, False,
                                   0.0))
            log(_progress(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))

    @property
    def done(self) -> bool:
        return self.state.round >= self.sim.cfg.rounds or self.state.diverged

    def rows_per_round(self) -> int:
        M = len(self.sim.data)
        return max(1, round(self.sim.cfg.participation * M)) if M > 1 else 1

    def begin_round(self) -> list[int]:
        """Sample the next round's clients and open the round on the client method."""
        cfg, state, sim = self.sim.cfg, self.state, self.sim
        rnd = state.round + 1
        M = len(sim.data)
        chosen = sample_clients(cfg.seed, rnd, M, cfg.participation) if M > 1 else [0]
        sim.method.begin_round(state.method_state, rnd)
        return chosen

    def rows(self, chosen: list[int]) -> list[Row]:
        return self.sim.rows(self.state.theta, self.state.round + 1, chosen, self.state.client_states)

    def finish_round(self, chosen: list[int], updates: list[ClientUpdate]) -> None:
        """Aggregate the round's uploads, then evaluate and checkpoint where due."""
        sim, cfg, state, label = self.sim, self.sim.cfg, self.state, self.label
        rnd, theta, M, stats = state.round + 1, state.theta, len(sim.data), self.stats
        for m, u in zip(chosen, updates, strict=True):
            u.client = m  # keys server memory across rounds (FIPA's memory: curvature)
        finite = finite_uploads(updates)  # NaN/inf uploads end the run diverged, before any eigensolve
        probe = {"probe": sim.loss_probe(chosen)} if sim.aggregator.needs_loss_probe else {}
        theta_new = sim.aggregator.step(theta, updates, state.agg_state, **probe) if finite else theta
        theta_new = sim.method.end_round(theta_new, state.method_state, M)  # SCAFFOLD c, FedDyn h
        if state.buffers:
            state.buffers = buffers.average([u.buffers for u in updates], [u.num_samples for u in updates])
            buffers.load(sim.model, state.buffers)
        extra = sim.method.uplink_vectors * theta.numel()  # SCAFFOLD's Delta c_i
        numbers = sum(u.uplink_numbers + extra for u in updates)
        bytes_ = numbers * theta.element_size()
        state.uplink_total += bytes_
        state.round, state.theta = rnd, theta_new
        state.diverged = not finite or not bool(torch.isfinite(theta_new).all())
        if state.diverged or rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            metrics = sim.evaluate(theta_new) if not state.diverged else {}
            state.diverged = state.diverged or not all(math.isfinite(v) for v in metrics.values()) \
                or self.blew_up(metrics)
            metrics.update(stats(state.agg_state))
            state.wall_s = time.perf_counter() - self.t0
            state.rows.append(_row(rnd, metrics, bytes_, state.uplink_total, state.diverged,
                                   state.wall_s))
            self.log(_progress(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))
        if state.diverged or rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds:
            state.wall_s = time.perf_counter() - self.t0
            save_checkpoint(self.ckpt, state, self.fp)
            write_csv(self.outdir / "metrics.csv", state.rows, self.columns)
        if self.on_round is not None:
            self.on_round(rnd, cfg.rounds)

    def blew_up(self, metrics: dict[str, float]) -> bool:
        """Whether the training loss passed ``divergence_factor`` x the initial one (finite blow-up)."""
        initial = self.state.rows[0].get("train_loss", math.inf)
        return metrics.get("train_loss", 0.0) > self.sim.cfg.divergence_factor * initial

    def close(self) -> dict[str, Any]:
        """Write the final metrics, checkpoint and final.json; returns final.json's content."""
        state, stats = self.state, self.stats
        state.wall_s = time.perf_counter() - self.t0
        write_csv(self.outdir / "metrics.csv", state.rows, self.columns)
        save_checkpoint(self.ckpt, state, self.fp)
        final = summarize(self.sim.cfg, self.sim, state)
        final["aggregator_stats"] = stats(state.agg_state)
        write_json(self.outdir / "final.json", final)
        self.lock.release()
        return final


def finite_uploads(updates: list[ClientUpdate]) -> bool:
    """Whether every delta and curvature upload is finite (a diverging client's is not)."""
    return all(bool(torch.isfinite(x).all()) for u in updates
               for x in (u.delta, u.factor, u.diag) if x is not None)


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
    # a diverged run has no final metrics: its last finite evaluation is not where it ended
    last = evaluated[-1] if evaluated and not state.diverged else {}
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
        "threads": sim.threads.to_dict() if sim.threads else None,
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
