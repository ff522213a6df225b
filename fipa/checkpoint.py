"""Run checkpoints and warm-up states: the one place that reads and writes them.

A checkpoint (``<run dir>/checkpoint.pt``) holds a :class:`RunState` and the fingerprint of
the config that made it, so that a run resumes only under its own config; a warm-up state
(``fipa export-warmup``) is a run's latest parameters and buffers, the start of refinement
runs (``warmup_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fipa.config import RunConfig
from fipa.errors import ConfigError, UnreadableFileError

CHECKPOINT = "checkpoint.pt"
# keys that may change between a run and its resumption without changing its numbers
# (vectorize: the two local-training paths agree up to floating-point rounding)
_RESUMABLE_KEYS = ("rounds", "device", "eval_every", "checkpoint_every", "labels", "partition_file",
                   "vectorize", "threads")


def fingerprint(cfg: RunConfig) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """Everything a checkpoint holds."""

    round: int
    theta: torch.Tensor
    agg_state: dict[str, torch.Tensor]
    client_states: dict[str, dict[str, torch.Tensor]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    uplink_total: int = 0
    wall_s: float = 0.0
    method_state: dict[str, torch.Tensor] = field(default_factory=dict)  # client method's server side
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # global BatchNorm statistics

    def to_dict(self, fp: str) -> dict[str, Any]:
        return {**self.__dict__, "fingerprint": fp}


def read_checkpoint(path: Path, device: torch.device | str = "cpu",
                    fix: str = "delete it to restart this run from round 0") -> dict[str, Any]:
    """The raw content of a checkpoint file; UnreadableFileError (saying ``fix``) if it is not one."""
    try:
        raw = torch.load(path, weights_only=True, map_location=device)
    except Exception as e:
        raise UnreadableFileError(f"{path}: checkpoint is corrupt or truncated ({type(e).__name__}); "
                                  f"{fix}") from None
    if not isinstance(raw, dict) or not {"theta", "round"} <= raw.keys():
        raise UnreadableFileError(f"{path}: not a fipa checkpoint (no theta and round); {fix}")
    return raw


def load_checkpoint(path: Path, fp: str, device: torch.device | str = "cpu") -> RunState:
    """The run state of ``path``, which must belong to the config of fingerprint ``fp``."""
    raw = read_checkpoint(path, device)
    if raw.pop("fingerprint", None) != fp:
        raise ConfigError(f"{path}: checkpoint belongs to a different config; move it away or use "
                          "another output directory")
    try:
        return RunState(**raw)
    except TypeError as e:
        raise UnreadableFileError(f"{path}: checkpoint of another fipa version ({e}); delete it to "
                                  "restart this run from round 0") from None


def save_checkpoint(path: Path, state: RunState, fp: str) -> None:
    from fipa.io import atomic_write

    atomic_write(path, lambda fh: torch.save(state.to_dict(fp), fh), mode="wb")


def warmup_state(run_dir: Path) -> dict[str, Any]:
    """A run's latest state as a warm-up file's content {"theta": [P], "round": k, "buffers": {...}}
    (``fipa export-warmup``); refuses a diverged run."""
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no checkpoint; train the warm-up run into {run_dir} first")
    raw = read_checkpoint(ckpt, fix="rerun the warm-up")
    theta, rnd = raw["theta"], int(raw["round"])
    if raw.get("diverged") or not bool(torch.isfinite(theta).all()):
        raise ConfigError(f"{ckpt}: the warm-up run diverged at round {rnd}; nothing to export")
    return {"theta": theta, "round": rnd, "buffers": raw.get("buffers", {})}


def load_warmup(path: str, like: torch.Tensor, like_buffers: dict[str, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(theta [P], buffers) of a warm-up state file (``fipa export-warmup``), checked against
    the model's parameter count and buffer names."""
    try:
        raw = torch.load(path, weights_only=True)
        theta, warm_buffers = raw["theta"], raw.get("buffers", {})
    except Exception as e:
        raise UnreadableFileError(f"warmup_checkpoint: {path} is unreadable ({type(e).__name__}); "
                                  "rerun the warm-up") from None
    if theta.shape != like.shape:
        raise ConfigError(f"warmup_checkpoint: {path} has {theta.numel()} parameters, the model "
                          f"{like.numel()}; the warm-up was made for another model")
    if like_buffers is not None and set(warm_buffers) != set(like_buffers):
        raise ConfigError(f"warmup_checkpoint: {path} holds running statistics for "
                          f"{len(warm_buffers)} buffers, the model has {len(like_buffers)}; the warm-up "
                          "was made for another model (norm: batch against group?)")
    return theta.to(like), warm_buffers
