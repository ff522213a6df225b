"""The aggregator ``flower``: any Flower strategy's aggregation as this pipeline's server step.

``aggregator: {name: flower, strategy: FedMedian, options: {...}}`` builds the strategy
``flwr.serverapp.strategy.FedMedian(**options)`` and, each round, hands it the round's uploads
as a Flower server would receive them: one reply message per client carrying the client's
model theta_m = theta^k + delta_m (one flat float64 array) and its ``num-examples`` N_m. The
strategy's own ``configure_train`` and ``aggregate_train`` run, in that order, so its state
(server momentum, moments, the last global arrays) evolves as in a Flower deployment; that state
lives in the run's aggregator state (fipa/flower/state.py), so checkpoints and resumption keep it.

flwr is imported only when such an aggregator is built: the package works without the extra.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fipa.aggregators import AGGREGATORS, Aggregator, ClientUpdate, State
from fipa.errors import ConfigError
from fipa.flower import INSTALL_HINT
from fipa.keys import key
from fipa.round_context import RoundContext

# server rounds aggregated so far: a strategy's server_round (FedAdam's bias correction reads it)
ROUND = "flower_round"
# client sampling is the run's (`participation`): the strategy must take every reply it is handed
SAMPLING = {"fraction_train": 1.0, "min_train_nodes": 1, "min_available_nodes": 1}


@dataclass
class FlowerParams:
    """Which Flower strategy aggregates, and its constructor's keyword arguments."""

    strategy: str = key("FedAvg", "a class of `flwr.serverapp.strategy` (FedAvg, FedMedian, FedTrimmedAvg, "
                        "Krum, MultiKrum, Bulyan, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx) or a "
                        "dotted path `package.module.Class` of a Strategy subclass")
    options: dict[str, Any] = key({}, "keyword arguments of the strategy's constructor (e.g. `{beta: 0.2}` "
                                  "for FedTrimmedAvg); not its sampling keys, which `participation` sets")

    def check(self) -> list[tuple[str, str]]:
        try:
            build_strategy(self)
        except StrategyProblem as e:
            return [(e.key, str(e))]
        return []


class StrategyProblem(ConfigError):
    """A strategy that cannot be built or checkpointed; ``key`` names the config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def strategy_class(name: str) -> type:
    """The Strategy subclass named ``name`` (Flower's built-in, or a dotted path)."""
    try:
        import flwr.serverapp.strategy as builtin
    except ImportError:
        raise StrategyProblem("strategy", f"aggregator `flower` needs Flower, which is not installed: "
                              f"{INSTALL_HINT}") from None
    if "." in name:
        import importlib

        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise StrategyProblem("strategy", f"cannot import {name!r}: {e}") from None
    else:
        cls = getattr(builtin, name, None)
    if not (isinstance(cls, type) and issubclass(cls, builtin.Strategy)):
        choices = ", ".join(n for n in builtin.__all__ if n not in ("Strategy", "Result"))
        raise StrategyProblem("strategy", f"{name!r} is not a Flower strategy; choose one of {choices}, or "
                              "give a dotted path to a subclass of flwr.serverapp.strategy.Strategy")
    return cls


def build_strategy(params: FlowerParams) -> Any:
    """A fresh strategy of ``params``, refused (StrategyProblem) where its state cannot be saved."""
    from fipa.flower.state import unsupported

    cls = strategy_class(params.strategy)
    clash = sorted(set(params.options) & set(SAMPLING))
    if clash:
        raise StrategyProblem(f"options.{clash[0]}", "client sampling is the run's: set `participation` "
                              "instead (the strategy aggregates every client the round loop sampled)")
    accepted = inspect.signature(cls).parameters
    forced = {k: v for k, v in SAMPLING.items() if k in accepted}
    try:
        with quiet_flower():
            strategy = cls(**forced, **params.options)
    except Exception as e:  # a constructor's own check: TypeError, ValueError, ...
        problem = f"{cls.__name__}(**options) failed: {type(e).__name__}: {e}"
        raise StrategyProblem("options", problem) from None
    bad = unsupported(strategy)
    if bad:
        what = ", ".join(f"{name} ({typ})" for name, typ in bad)
        raise StrategyProblem("strategy", f"{cls.__name__} keeps state in {what}, which this pipeline cannot "
                              "save in a checkpoint (so a resumed run would differ); choose another strategy")
    return strategy


@contextmanager
def quiet_flower() -> Iterator[None]:
    """Flower's INFO log lines (one per hook and round) off while a strategy runs inside a round."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def offline_round(rnd: int) -> Iterator[None]:
    """What a strategy expects around it outside a Flower runtime, undone afterwards.

    Flower's messages take their run and node ids from the process's task identity, which only
    a Flower runtime sets: set placeholders where none is set. ``random`` (node sampling) and
    numpy's global generator (the DP wrappers' noise) are seeded by the round, so a resumed run
    draws what an uninterrupted one drew, and restored, so nothing else's draws move.
    """
    from flwr.supercore.task_identity import TaskIdentity

    ids = ("_run_id", "_node_id", "_task_id")
    saved_ids = {name: getattr(TaskIdentity, name) for name in ids}
    # Flower's DP wrappers draw from numpy's legacy global generator: it is the one to pin
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    for name in ids:
        if saved_ids[name] is None:
            setattr(TaskIdentity, name, 0)
    random.seed(rnd)
    np.random.seed(rnd)  # noqa: NPY002
    try:
        with quiet_flower():
            yield
    finally:
        for name, value in saved_ids.items():
            setattr(TaskIdentity, name, value)
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002


class _RoundGrid:
    """The part of Flower's Grid that a strategy's ``configure_train`` reads: the node ids.

    Node m + 1 is the round's m-th client (ids start at 1; 0 is no node in Flower)."""

    def __init__(self, clients: int) -> None:
        self.nodes = list(range(1, clients + 1))

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def flower_round(strategy: Any, rnd: int, theta: torch.Tensor, updates: list[ClientUpdate]) -> torch.Tensor:
    """One server round of ``strategy``: configure_train, then aggregate_train of the clients'
    replies (model theta^k + delta_m [P] and num-examples N_m each, in the round's client order);
    returns theta^{k+1} [P] (theta^k where the strategy aggregated nothing)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fipa.flower.records import THETA, flatten_record, to_array

    arrays_key = getattr(strategy, "arrayrecord_key", "arrays")
    weight_key = getattr(strategy, "weighted_by_key", "num-examples")
    with offline_round(rnd):
        grid = _RoundGrid(len(updates))
        arrays = ArrayRecord({THETA: to_array(theta)})
        sent = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        to_node = {msg.metadata.dst_node_id: msg for msg in sent}
        if sorted(to_node) != grid.nodes:
            raise ConfigError(f"flower strategy {type(strategy).__name__} addressed nodes {sorted(to_node)} "
                              f"of {grid.nodes}: its own client sampling is not supported here")
        replies = [Message(RecordDict({arrays_key: ArrayRecord({THETA: to_array(theta + u.delta)}),
                                       "metrics": MetricRecord({weight_key: u.num_samples})}),
                           reply_to=to_node[node])
                   for node, u in zip(grid.nodes, updates, strict=True)]
        arrays, _ = strategy.aggregate_train(rnd, replies)
    return theta.clone() if arrays is None else flatten_record(arrays).to(theta)


@AGGREGATORS.register("flower")
class FlowerStrategy(Aggregator):
    """theta^{k+1} = the aggregate of the named Flower strategy (``strategy``, ``options``).

    With ``strategy: FedAvg``: sum_m w_m theta_m = theta^k + dbar, the built-in ``fedavg`` up to
    rounding; ``FedMedian``: the coordinate-wise median of the client models. The server state
    holds the strategy's attributes (fipa/flower/state.py) and the round count.
    """

    Params = FlowerParams

    def __init__(self, params: FlowerParams) -> None:
        super().__init__(params)
        self.strategy = build_strategy(params)

    def init_state(self, theta: torch.Tensor) -> State:
        # the round only: the strategy's attributes enter the state after its first round (their keys
        # name their kinds, which change, e.g. m_t from None to a dict), and a checkpoint must hold
        # every key of a fresh state (fipa/checkpoint.py); before round 1 the constructed strategy is
        # exactly what decoding its encoding would give
        return {ROUND: torch.tensor(0)}

    def step(self, theta: torch.Tensor, updates: list[ClientUpdate], state: State, ctx: RoundContext
             ) -> torch.Tensor:
        from fipa.flower.state import PREFIX, decode, encode

        decode(self.strategy, state)  # the checkpointed strategy, whether resumed or not
        rnd = int(state[ROUND]) + 1
        theta_new = flower_round(self.strategy, rnd, theta, updates)
        for k in [k for k in state if k.startswith(PREFIX)]:
            del state[k]
        state.update(encode(self.strategy))
        state[ROUND] = torch.tensor(rnd)
        return theta_new
