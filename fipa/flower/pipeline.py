"""A run config's job inside a Flower app: the same data, clients and evaluation as `fipa train`.

The ServerApp and ClientApp of examples/flower/ are thin wrappers of :func:`serve` and
:func:`client_reply`. Every node builds the job's Simulation from the same run config (task,
partition, seeds), so client m of round k trains with the generator of (seed, k, m) exactly as in
`fipa train`, and the server evaluates as its round loop does. Only what Flower supports
without extra messages is accepted: every client in every round (``participation: 1``), client
methods without state across rounds, models without BatchNorm statistics.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fipa import buffers
from fipa.config import RunConfig, load_run_config
from fipa.errors import ConfigError
from fipa.flower.client import fipa_reply, model_reply
from fipa.flower.records import flat_record, flatten_record
from fipa.flower.strategy import RANK, FIPAStrategy
from fipa.io import write_csv
from fipa.simulate import ClientWork, Simulation, prepared, train_work

AGGREGATORS_IN_FLOWER = ("fipa", "fedavg", "flower")


def check_job(cfg: RunConfig, sim: Simulation) -> None:
    """Refuse what this app cannot run as `fipa train` runs it (ConfigError naming the key)."""
    if cfg.aggregator.name not in AGGREGATORS_IN_FLOWER:
        raise ConfigError(f"aggregator.name: {cfg.aggregator.name!r} has no Flower strategy here; use one of "
                          f"{', '.join(AGGREGATORS_IN_FLOWER)}")
    if cfg.aggregator.name == "fedavg" and cfg.aggregator.params.server_lr != 1.0:
        raise ConfigError("aggregator.server_lr: Flower's FedAvg has no server step size; use 1.0")
    if cfg.participation != 1.0:
        raise ConfigError("participation: Flower samples its own nodes; the app takes every client (1.0)")
    method = sim.method
    if method.client_state_keys or method.server_state_keys:
        raise ConfigError(f"client.method: {cfg.client.method} keeps state across rounds; the app runs "
                          "stateless client methods (local, fedprox, fedsam)")
    if buffers.has_buffers(sim.model):
        raise ConfigError("task: the model has BatchNorm statistics, which the app does not average")


@dataclass
class FlowerJob:
    """A run config prepared on one Flower node (server or client), and the server's metrics."""

    sim: Simulation
    rows: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # perf_counter at each evaluation (round 0 first)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The model's parameter layout: the global ArrayRecord's keys and shapes."""
        layout = self.sim.layout
        return {n: tuple(s) for n, s in zip(layout.names, layout.shapes, strict=True)}

    def strategy(self) -> Any:
        """The Flower strategy of the run config's aggregator, taking all M clients every round."""
        cfg, M = self.sim.cfg, len(self.sim.data)
        sampling = {"fraction_train": 1.0, "min_train_nodes": M, "min_available_nodes": M,
                    "fraction_evaluate": 0.0}  # evaluation is the server's (evaluate_fn)
        if cfg.aggregator.name == "fipa":
            return FIPAStrategy(fipa=asdict(cfg.aggregator.params), **sampling)
        if cfg.aggregator.name == "fedavg":
            from flwr.serverapp.strategy import FedAvg

            return FedAvg(**sampling)
        from fipa.flower.aggregator import strategy_class

        params = cfg.aggregator.params
        return strategy_class(params.strategy)(**sampling, **params.options)

    def initial_arrays(self) -> ArrayRecord:
        """theta^0 as the global ArrayRecord (one array per parameter tensor, float64 kept)."""
        return flat_record(self.sim.initial_theta(), self.shapes)

    def evaluate(self, rnd: int, arrays: ArrayRecord) -> MetricRecord:
        """The server's evaluation of the global model after round ``rnd`` (fipa's metrics.csv row)."""
        row = self.sim.evaluate(flatten_record(arrays))
        self.rows.append({"round": rnd, **row})
        self.times.append(time.perf_counter())
        return MetricRecord(row)

    def reply(self, msg: Message, client: int) -> Message:
        """Client ``client``'s local work on the instruction ``msg``: FIPA's upload or its model."""
        theta = flatten_record(msg.content["arrays"])
        config = msg.content["config"]
        rnd = int(config["server-round"])
        method = self.sim.method
        # check_job admits stateless methods only: a fresh client and server state every round
        work = ClientWork(self.sim, theta, rnd, client, method.init_state(theta),
                          method.init_server_state(theta))
        (result,) = train_work([work], vectorize=False)
        update = result.update
        if RANK in config:
            return fipa_reply(msg, update.delta, update.num_samples, update.factor, client_id=client)
        return model_reply(msg, theta + update.delta, update.num_samples)

    def save(self, out: Path, theta: torch.Tensor) -> None:
        """metrics.csv (round, train_loss, test_loss, the task's metrics) and theta.pt [P] in ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        columns = ["round", "train_loss", "test_loss", *self.sim.task.metrics]
        write_csv(out / "metrics.csv", self.rows, columns)
        seconds = (self.times[-1] - self.times[0]) / max(1, len(self.times) - 1)
        (out / "seconds_per_round.txt").write_text(f"{seconds:.6f}\n")
        torch.save(theta, out / "theta.pt")


@functools.cache
def load_job(path: str) -> FlowerJob:
    """The job of the run config at ``path``, built once per process (a Flower node's actor
    trains many rounds: the task's data and model are built on its first round only)."""
    cfg = load_run_config(path)
    sim = prepared(Simulation.build(cfg), None)
    check_job(cfg, sim)
    return FlowerJob(sim)


def job_path(context: Context, base: Path) -> str:
    """The run config named by the app's ``job`` key, relative to ``base`` (the app's folder)."""
    path = Path(str(context.run_config["job"]))
    return str(path if path.is_absolute() else base / path)


def serve(grid: Grid, job: str, out: str = "") -> None:
    """A ServerApp's main: the run config ``job``'s rounds with its strategy; with ``out`` set, the
    server's metrics, final theta and seconds per round are written there."""
    flower_job = load_job(job)
    flower_job.rows.clear()
    flower_job.times.clear()
    rounds = flower_job.sim.cfg.rounds
    result = flower_job.strategy().start(grid, flower_job.initial_arrays(), num_rounds=rounds,
                                         evaluate_fn=flower_job.evaluate)
    if not result.arrays:
        raise RuntimeError(f"{job}: no round was aggregated (every client failed; their errors are logged "
                           "above)")
    if out:
        flower_job.save(Path(out), flatten_record(result.arrays))


def client_reply(msg: Message, job: str, client: int) -> Message:
    """A ClientApp's train handler: this node is the run config's client ``client``."""
    return load_job(job).reply(msg, client)


def simulation_apps(job: str, out: str = "") -> tuple[ServerApp, ClientApp]:
    """(ServerApp, ClientApp) of the run config ``job`` for ``flwr.simulation.run_simulation``,
    whose nodes get no app config: the job and output folder are bound here instead."""
    server, client = ServerApp(), ClientApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, job, out)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return client_reply(msg, job, int(context.node_config["partition-id"]))

    return server, client


def simulate(job: str, out: str, cpus: int = 2) -> float:
    """Run the job in Flower's simulation engine (Ray, one CPU per client actor, ``cpus`` in all);
    returns the wall seconds of the whole simulation, Ray's start-up included."""
    from flwr.simulation import run_simulation

    load_job(job)  # a bad run config stops here, before Ray starts
    server, client = simulation_apps(job, out)
    backend = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": cpus}}
    start = time.perf_counter()
    run_simulation(server, client, num_supernodes=len(load_job(job).sim.data), backend_config=backend)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """``python -m fipa.flower.pipeline RUN.yaml OUT``: the run config in Flower's simulation, its
    server metrics, final theta and seconds per round written to OUT."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("job", help="a run config (fipa train -c's file)")
    parser.add_argument("out", help="folder for metrics.csv, theta.pt, seconds_per_round.txt")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use (one per client actor)")
    args = parser.parse_args(argv)
    wall = simulate(str(Path(args.job).resolve()), str(Path(args.out).resolve()), args.cpus)
    print(f"flower simulation of {args.job}: {wall:.1f} s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    # run the imported module's main: Ray pickles the apps' handlers by module name, and no worker
    # can import this file's functions as `__main__`
    from fipa.flower.pipeline import main as module_main

    raise SystemExit(module_main())
