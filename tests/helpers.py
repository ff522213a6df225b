"""Small run configs shared by the tests."""

from __future__ import annotations

import copy
from typing import Any

TINY_REGRESSION: dict[str, Any] = {
    "task": {"name": "regression", "target": "multiscale_sine", "n_train": 64, "hidden": [8, 8],
             "test_points": 200},
    "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1},
    "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_epochs": 2, "batch_size": 8},
    "aggregator": {"name": "fipa", "rho": 1e-3, "rank": 4},
    "rounds": 4,
    "eval_every": 1,
    "seed": 0,
}


def tiny(**over: Any) -> dict[str, Any]:
    """TINY_REGRESSION with top-level keys replaced and nested dicts merged.

    A nested dict naming another entry (a new aggregator ``name``, say) replaces the old one.
    """
    cfg = copy.deepcopy(TINY_REGRESSION)
    for k, v in over.items():
        switches = any(key in v and v[key] != cfg[k].get(key) for key in ("name", "scheme", "method")
                       ) if isinstance(v, dict) and isinstance(cfg.get(k), dict) else True
        if not switches:
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg
