"""Local training settings of a client (the ``client`` section of a run config).

Its keys are documented and bounded on the fields (fipa/keys.py). A leaf module (it imports
only fipa.keys): the client methods (fipa/clients/) and the config parser (fipa/config.py) both
read it, neither through the other.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from fipa.keys import key


@dataclass
class ClientConfig:
    """Local training: optimizer and amount of local work per round."""

    method: str = key("local", "the client method (`fipa list`); its options sit beside these keys")
    optimizer: typing.Literal["sgd", "adam"] = key("adam", "local optimizer")
    lr: float = key(1e-3, "local learning rate (of round 1, see `lr_decay`)", gt=0)
    lr_decay: float = key(
        1.0, "the lr of round k (from 1) is lr x lr_decay^(k-1): a per-round exponential schedule shared "
        "by every client and by the centralized reference", gt=0, le=1, note="(per-round factor on lr)")
    momentum: float = key(0.0, "heavy-ball momentum of `sgd` (`adam` ignores it)", ge=0, lt=1)
    weight_decay: float = key(0.0, "L2 weight decay, added to the gradient", ge=0)
    local_epochs: int = key(1, "local epochs per round", ge=1)
    local_steps: int | None = key(
        None, "local optimizer steps per round; overrides `local_epochs` when set", ge=1)
    batch_size: int | None = key(None, "local minibatch size; null: full batch", ge=1)
    params: Any = None  # the client method's validated Params (set by fipa.config), not a key
