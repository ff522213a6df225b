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


def sigkill_after_round(cmd: list[str], ckpt, round_: int = 3, timeout_s: float = 120) -> None:
    """Start ``cmd`` in its own session and SIGKILL its whole group once the checkpoint ``ckpt``
    holds round ``round_`` or later (or the process ended, or ``timeout_s`` passed)."""
    import os
    import signal
    import subprocess
    import time

    import torch

    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["round"] >= round_:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def digits_cnn_client(samples: int, dtype=None):
    """(task, model, layout, theta [P], batch of ``samples`` images) of a seeded digits CNN in
    float64: the small real CNN the curvature tests compare every method on."""
    import numpy as np
    import torch

    from fipa.params import ParamLayout, model_params
    from fipa.tasks.vision import Vision, VisionParams

    task = Vision(VisionParams(train_subsample=300, test_subsample=10), seed=0, dtype=dtype or torch.float64)
    torch.manual_seed(0)
    model = task.build_model()
    layout = ParamLayout.of(model)
    return task, model, layout, layout.flatten(model_params(model)), task.client_data(np.arange(samples))


def parse_every_cell(config: dict[str, Any], tmp_path, source: str) -> list:
    """Parse every training and warm-up job of a workflow config with `fipa train`'s validator
    (placeholder partition and warm-up files: existence is checked here, content at training);
    returns the grid's cells."""
    from fipa import grid
    from fipa.config import parse_run_config

    part, warm = tmp_path / "partition.json", tmp_path / "warm.pt"
    part.touch()
    warm.touch()
    cells = grid.cells(config)
    for cell in cells:
        parse_run_config(grid.run_spec(config, cell, str(part), str(warm)), source=f"{source}: {cell.run_id}")
    for task, partition in {(c.task, c.partition) for c in cells}:
        if "warmup" in config["tasks"][task]:
            parse_run_config(grid.warmup_spec(config, task, partition, 0, str(part)))
    return cells


def flwr_installed() -> bool:
    """Whether Flower (the optional extra `flower`) can be imported."""
    import importlib.util

    return importlib.util.find_spec("flwr") is not None


def available_aggregators() -> list[str]:
    """Every registered aggregator whose optional dependency is installed: `flower` needs the extra
    `pip install .[flower]`; without it the tests that run every aggregator leave it out
    (tests/test_flower.py is skipped then, with its reason)."""
    from fipa.aggregators import AGGREGATORS

    return [n for n in AGGREGATORS.names() if n != "flower" or flwr_installed()]
