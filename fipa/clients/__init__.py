"""Client-side local training methods: a registry from config name to class, one module per method.

``base`` holds the registry, the base class (plain local training, ``local``) and its hooks;
``schedule`` a round's minibatch plans and optimizer; every other module one method. A new
built-in method is one new module here that registers its class with
``@CLIENT_METHODS.register(name)``.
"""

from __future__ import annotations

from fipa.clients.base import (
    CLIENT_METHODS,
    OPT_PREFIX,
    ClientMethod,
    GradFn,
    LocalParams,
    LocalResult,
)

# every method module registers itself on import (until the registry discovers the package's modules)
from fipa.clients.feddyn import FedDyn, FedDynParams
from fipa.clients.fedprox import FedProx, FedProxParams
from fipa.clients.fedrcl import FedRCL, FedRCLParams, relaxed_contrastive_loss
from fipa.clients.fedsam import FedSAM, FedSAMParams
from fipa.clients.scaffold import Scaffold, ScaffoldParams
from fipa.clients.schedule import (
    batch_plan,
    batch_size,
    epoch_plans,
    make_optimizer,
    minibatches,
    steps_per_round,
)
from fipa.round_context import ClientState

__all__ = [
    "CLIENT_METHODS", "OPT_PREFIX", "ClientMethod", "ClientState", "FedDyn", "FedDynParams", "FedProx",
    "FedProxParams", "FedRCL", "FedRCLParams", "FedSAM", "FedSAMParams", "GradFn", "LocalParams",
    "LocalResult", "Scaffold", "ScaffoldParams", "batch_plan", "batch_size", "epoch_plans", "make_optimizer",
    "minibatches", "relaxed_contrastive_loss", "steps_per_round",
]
