"""Server-side aggregation rules: a registry from config name to class, one module per family.

``base`` holds the registry, a client's upload (:class:`ClientUpdate`) and the base class whose
``step`` every rule implements; ``fedavg`` the averaging rules, ``adaptive`` the adaptive server
optimizers, ``diag_fisher`` Fisher merging, ``fipa`` FIPA and ``fipa_system`` its server solve.
A new built-in aggregator is one new module here that registers its class with
``@AGGREGATORS.register(name)``.
"""

from __future__ import annotations

# every module registers its aggregators on import (until the registry discovers the package's modules)
from fipa.aggregators.adaptive import AdaptiveParams, FedAdagrad, FedAdam, FedOpt, FedYogi
from fipa.aggregators.base import (
    AGGREGATORS,
    Aggregator,
    ClientUpdate,
    ServerLRParams,
    State,
    client_weights,
    mean_delta,
)
from fipa.aggregators.diag_fisher import DiagFisher, DiagFisherParams
from fipa.aggregators.fedavg import FedAvg, FedAvgM, FedAvgMParams
from fipa.aggregators.fipa import FIPA, FIPAParams
from fipa.aggregators.fipa_system import FIPASystem, fipa_direction
from fipa.round_context import LossProbe, RoundContext

__all__ = [
    "AGGREGATORS", "FIPA", "AdaptiveParams", "Aggregator", "ClientUpdate", "DiagFisher",
    "DiagFisherParams", "FIPAParams", "FIPASystem", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM",
    "FedAvgMParams", "FedOpt", "FedYogi", "LossProbe", "RoundContext", "ServerLRParams", "State",
    "client_weights", "fipa_direction", "mean_delta",
]
