"""Local training settings of a client (the ``client`` section of a run config).

A leaf module: the client methods (fipa/clients.py) and the config parser (fipa/config.py)
both read it, neither through the other.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any


@dataclass
class ClientConfig:
    """Local training: optimizer and amount of local work per round."""

    method: str = "local"
    optimizer: typing.Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    # lr of round k (from 1) is lr * lr_decay^(k - 1): a per-round exponential schedule
    lr_decay: float = 1.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    local_steps: int | None = None  # overrides local_epochs when set
    batch_size: int | None = None  # None: full batch
    params: Any = None

    def check(self) -> list[tuple[str, str]]:
        out = []
        if self.lr <= 0:
            out.append(("lr", f"must be > 0, got {self.lr}"))
        for key in ("momentum", "weight_decay"):
            if getattr(self, key) < 0:
                out.append((key, f"must be >= 0, got {getattr(self, key)}"))
        if self.momentum >= 1:
            out.append(("momentum", f"must be < 1, got {self.momentum}"))
        if not 0 < self.lr_decay <= 1:
            out.append(("lr_decay", f"must lie in (0, 1] (per-round factor on lr), got {self.lr_decay}"))
        if self.local_epochs < 1:
            out.append(("local_epochs", f"must be >= 1, got {self.local_epochs}"))
        if self.local_steps is not None and self.local_steps < 1:
            out.append(("local_steps", f"must be >= 1 or null, got {self.local_steps}"))
        if self.batch_size is not None and self.batch_size < 1:
            out.append(("batch_size", f"must be >= 1 or null, got {self.batch_size}"))
        return out
