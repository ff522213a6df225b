"""Run regimes: a federated run, or a reference drawn beside the federated runs (``reference:``).

A regime decides, before the clients are built, who trains on what: a federated run keeps the
partition's clients; a reference regime (``REFERENCES``, one entry each) reshapes them, for
example into one client on the pooled data. final.json records the regime as the run's
``role`` ("federated" or "reference"), which the report reads instead of aggregator names.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fipa.client_config import ClientConfig
from fipa.clients import steps_per_round
from fipa.errors import ConfigError
from fipa.registry import Registry

if TYPE_CHECKING:  # config.py calls this module while it validates: no import back
    from fipa.config import RunConfig, Section


class Regime:
    """A federated run: the partition's clients, each restarting its optimizer every round.

    ``role``: final.json's ``role``; ``name``: the regime's config name (None: federated), the
    default aggregator label of its runs; ``keep_optimizer``: the clients keep one optimizer
    state across rounds (``ClientMethod.keep_optimizer``); ``trains_alone``: the run never
    shares a stacked training call with other runs (``Simulation.stack_key``).
    """

    role: ClassVar[str] = "federated"
    name: ClassVar[str | None] = None
    keep_optimizer: ClassVar[bool] = False
    trains_alone: ClassVar[bool] = False

    def clients(self, client: ClientConfig, parts: list[np.ndarray]) -> tuple[ClientConfig, list[np.ndarray]]:
        """The local work and the clients' sample indices of the run, from the config's ``client``
        section and the partition's ``parts`` (one index array per client)."""
        return client, parts

    def check(self, aggregator: Section) -> None:
        """Refuse an aggregator section this regime cannot step with (a federated run takes any)."""


class Reference(Regime):
    """A reference regime: not a federated method, a yardstick beside them (role "reference").

    Its server step is plain FedAvg at server step 1 (the new model is the mean of the clients'
    local models), so the aggregator section must be FedAvg's defaults (``check``).
    """

    role = "reference"
    trains_alone = True
    AGGREGATOR: ClassVar[str] = "fedavg"

    def check(self, aggregator: Section) -> None:
        """Refuse any aggregator section but ``{name: fedavg}`` with its default options."""
        from fipa.aggregators import AGGREGATORS

        plain = {"name": self.AGGREGATOR, **dataclasses.asdict(AGGREGATORS.get(self.AGGREGATOR).Params())}
        given = aggregator.to_dict("name")
        if json.dumps(given, sort_keys=True, default=str) == json.dumps(plain, sort_keys=True, default=str):
            return
        changed = {k: v for k, v in given.items() if plain.get(k) != v}
        got = f"name {given['name']!r}" if "name" in changed else \
            ", ".join(f"{k} {v!r}" for k, v in changed.items())
        raise ConfigError(f"aggregator: a `reference: {self.name}` run steps with plain FedAvg; write "
                          f"`aggregator: {{name: {self.AGGREGATOR}}}` (its default server_lr 1), got {got}")


REFERENCES: Registry[type[Reference]] = Registry("reference")


@REFERENCES.register("centralized")
class Centralized(Reference):
    """One model on the union of all clients' data, one persistent optimizer state.

    It takes as many optimizer steps as one client over the run (rounds x one client's steps
    per round; ``centralized_client``) without restarting its optimizer between rounds, and is
    evaluated at the same rounds as the federated runs, so its curve is one uninterrupted
    centralized training drawn beside theirs.
    """

    name = "centralized"
    keep_optimizer = True

    def clients(self, client: ClientConfig, parts: list[np.ndarray]) -> tuple[ClientConfig, list[np.ndarray]]:
        """One client on the sorted union of ``parts``, with one client's steps per round."""
        return centralized_client(client, [len(p) for p in parts]), [np.sort(np.concatenate(parts))]


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


def run_regime(cfg: RunConfig) -> Regime:
    """The regime of a run: its ``reference`` entry, or a federated run (``reference: null``)."""
    return Regime() if cfg.reference is None else REFERENCES.get(cfg.reference, key="reference")()


def check_reference(cfg: RunConfig) -> None:
    """A run config's ``reference`` names a regime whose aggregator rule the config keeps."""
    run_regime(cfg).check(cfg.aggregator)


def refuse_aggregator_name(name: object) -> None:
    """Refuse a reference regime's name written as an aggregator (``aggregator: {name: centralized}``,
    as configs wrote the reference before it became a run-level regime), with what to write."""
    if isinstance(name, str) and name in REFERENCES:
        raise ConfigError(f"aggregator.name: {name!r} is a reference regime, not an aggregator; write "
                          f"`reference: {name}` at the top level of the run config and "
                          f"`aggregator: {{name: {Reference.AGGREGATOR}}}`")
