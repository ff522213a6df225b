"""Run checkpoints and warm-up states: the one place that reads, checks and writes them.

A checkpoint (``<run dir>/checkpoint.pt``) holds a :class:`RunState` and the fingerprint of
the config that made it, so that a run resumes only under its own config; a warm-up state
(``fipa export-warmup``) is a run's latest parameters and buffers, the start of refinement
runs (``warmup_checkpoint``). Each file is checked once, here, where it is read: against what
the run expects (:class:`Expected`), by a tuple of rules that each name one problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from fipa.config import RunConfig
from fipa.errors import ConfigError, UnreadableFileError

CHECKPOINT = "checkpoint.pt"
# the files of a run directory (fipa/loop.py writes them): an export must never replace one
RUN_FILES = (CHECKPOINT, "final.json", "metrics.csv", "run.yaml")
# keys that may change between a run and its resumption without changing its numbers
# (vectorize: the two local-training paths agree up to floating-point rounding)
_RESUMABLE_KEYS = ("rounds", "device", "eval_every", "checkpoint_every", "labels", "partition_file",
                   "vectorize", "threads")
RESTART = "delete it to restart this run from round 0"


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
    model: str = ""  # ParamLayout.architecture of the run's model ("" in older checkpoints)

    def to_dict(self, fp: str) -> dict[str, Any]:
        return {**self.__dict__, "fingerprint": fp}


@dataclass(frozen=True)
class Expected:
    """What a run's checkpoint must match: the state a fresh start of the run would hold
    (theta [P] in the run's dtype, server, method and buffer state), the config's rounds and
    fingerprint, the number of clients whose local state may be kept and a fresh one's state."""

    fresh: RunState
    rounds: int
    fp: str
    clients: int
    client_state: dict[str, torch.Tensor]  # a fresh client's local state (the method's keys)


def read_checkpoint(path: Path, device: torch.device | str = "cpu", fix: str = RESTART) -> dict[str, Any]:
    """The raw content of a checkpoint file; UnreadableFileError (saying ``fix``) if it is not one."""
    try:
        raw = torch.load(path, weights_only=True, map_location=device)
    except Exception as e:
        raise UnreadableFileError(f"{path}: checkpoint is corrupt or truncated ({type(e).__name__}); "
                                  f"{fix}") from None
    if not isinstance(raw, dict) or not {"theta", "round"} <= raw.keys():
        raise UnreadableFileError(f"{path}: not a fipa checkpoint (no theta and round); {fix}")
    return raw


def stale_reason(raw: dict[str, Any], fp: str, rounds: int) -> str | None:
    """Why a readable checkpoint cannot be resumed under this config (None: it can): made by
    another config, or already past this config's rounds (a finished run is never shortened:
    its final.json would record more rounds than its config). ``--supersede`` moves such a run."""
    if raw.get("fingerprint") != fp:
        return "belongs to a different config"
    rnd = raw.get("round")
    if _is_int(rnd) and rnd > rounds:
        return f"is at round {rnd}, past this config's rounds: {rounds} (a run is never shortened)"
    return None


def load_checkpoint(path: Path, expected: Expected, device: torch.device | str = "cpu") -> RunState:
    """The run state of ``path``, checked against what the run ``expected`` (every rule of
    CHECKPOINT_RULES); one error naming the file, the problem and the fix otherwise."""
    raw = read_checkpoint(path, device)
    why = stale_reason(raw, expected.fp, expected.rounds)
    if why is not None:
        raise ConfigError(f"{path}: checkpoint {why}; rerun with --supersede to keep it in superseded/ and "
                          "start again, move it away or use another output directory")
    raw.pop("fingerprint")
    for rule in CHECKPOINT_RULES:
        problem = rule(raw, expected)
        if problem is not None:
            raise UnreadableFileError(f"{path}: {problem}; {RESTART}")
    return RunState(**raw)


def save_checkpoint(path: Path, state: RunState, fp: str) -> None:
    from fipa.io import atomic_write

    atomic_write(path, lambda fh: torch.save(state.to_dict(fp), fh), mode="wb")


# ----------------------------------------------------------------------------- checkpoint rules
# each: (raw checkpoint without its fingerprint, Expected) -> one problem, or None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _keys(raw: dict[str, Any], exp: Expected) -> str | None:
    """The key set of a RunState: every field without a default, nothing unknown."""
    known = {f.name for f in fields(RunState)}
    required = {"round", "theta", "agg_state", "client_states"}
    unknown, missing = sorted(raw.keys() - known), sorted(required - raw.keys())
    if unknown or missing:
        return f"checkpoint of another fipa version (unknown keys {unknown}, missing {missing})"
    return None


def _tensor_like(x: Any, like: torch.Tensor) -> bool:
    return isinstance(x, torch.Tensor) and x.shape == like.shape and x.dtype == like.dtype


def _theta(raw: dict[str, Any], exp: Expected) -> str | None:
    """theta: a tensor of the run's model size [P] and dtype."""
    theta, like = raw["theta"], exp.fresh.theta
    if not _tensor_like(theta, like):
        got = (f"{theta.dtype} {list(theta.shape)}" if isinstance(theta, torch.Tensor)
               else type(theta).__name__)
        return f"theta is {got}, the run's model needs {like.dtype} [{like.numel()}]"
    if raw.get("diverged") is False and not bool(torch.isfinite(theta).all()):
        return "theta holds NaN or inf, but the run is not marked diverged"
    return None


def _model(raw: dict[str, Any], exp: Expected) -> str | None:
    """The architecture fingerprint, where the checkpoint has one."""
    stored = raw.get("model", "")
    if stored and stored != exp.fresh.model:
        return "made for another model architecture (parameter names or shapes differ)"
    return None


def _round(raw: dict[str, Any], exp: Expected) -> str | None:
    """round: an integer >= 0 (past the config's rounds is stale_reason's)."""
    if not _is_int(raw["round"]) or raw["round"] < 0:
        return f"round is {raw['round']!r}, not a round number >= 0"
    return None


def _rows(raw: dict[str, Any], exp: Expected) -> str | None:
    """rows (metrics.csv's): evaluated rounds strictly increasing from 0 up to ``round``, the last
    row's diverged flag equal to the checkpoint's."""
    rows = raw.get("rows", [])
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return "rows is not a non-empty list of metric rows"
    rounds = [r.get("round") for r in rows]
    if not all(map(_is_int, rounds)) or rounds[0] != 0 or any(
            b <= a for a, b in zip(rounds, rounds[1:], strict=False)):
        return f"rows hold rounds {rounds}, not increasing from 0"
    if rounds[-1] > raw["round"]:
        return f"rows reach round {rounds[-1]} but the checkpoint is at round {raw['round']}"
    if bool(rows[-1].get("diverged")) != raw.get("diverged", False):
        return "its diverged flag disagrees with its last metrics row"
    return None


ROW_KEYS = {"round", "train_loss", "test_loss", "uplink_bytes", "uplink_bytes_total", "diverged", "wall_s"}


def _row_values(raw: dict[str, Any], exp: Expected) -> str | None:
    """Every row a mapping of numbers; the first (round 0) holds at least ROW_KEYS, every later
    evaluated row exactly its keys (a diverged row has no metrics, so a subset); the checkpoint's
    uplink total is its last row's where that row is the checkpoint's round."""
    rows = raw["rows"]
    first = set(rows[0])
    if not first >= ROW_KEYS:
        return f"its first metrics row lacks {sorted(ROW_KEYS - first)}"
    for r in rows:
        keys_ok = set(r) <= first if r.get("diverged") else set(r) == first
        if not keys_ok or not all(_is_number(v) for v in r.values()):
            return f"its metrics row of round {r['round']} holds other keys than round 0's, or non-numbers"
    last = rows[-1]
    if last["round"] == raw["round"] and raw.get("uplink_total", 0) != last["uplink_bytes_total"]:
        return (f"uplink_total {raw.get('uplink_total', 0)!r} disagrees with its last metrics row "
                f"({last['uplink_bytes_total']})")
    return None


def _scalars(raw: dict[str, Any], exp: Expected) -> str | None:
    """diverged a bool, uplink_total an integer >= 0, wall_s a number >= 0, model a string."""
    checks = {"diverged": lambda v: isinstance(v, bool),
              "uplink_total": lambda v: _is_int(v) and v >= 0,
              "wall_s": lambda v: _is_number(v) and v >= 0,
              "model": lambda v: isinstance(v, str)}
    for key, ok in checks.items():
        if key in raw and not ok(raw[key]):
            return f"{key} is {raw[key]!r}"
    return None


def _state_dicts(raw: dict[str, Any], exp: Expected) -> str | None:
    """Server, method and buffer state: every key a fresh run holds, each of its shape and dtype
    (the aggregator may add keys of its own, e.g. FIPA's curvature memory: tensors)."""
    fresh = exp.fresh
    for key, like, exact in (("agg_state", fresh.agg_state, False),
                             ("method_state", fresh.method_state, True), ("buffers", fresh.buffers, True)):
        got = raw.get(key, {})
        if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor) for v in got.values()):
            return f"{key} is not a mapping of tensors"
        missing = sorted(like.keys() - got.keys())
        extra = sorted(got.keys() - like.keys()) if exact else []
        wrong = sorted(k for k in like.keys() & got.keys() if not _tensor_like(got[k], like[k]))
        if missing or extra or wrong:
            return (f"{key} does not match the run (missing {missing}, unknown {extra}, wrong shape or dtype "
                    f"{wrong})")
    return None


def _client_fits(state: Any, exp: Expected) -> bool:
    """A mapping of tensors holding the method's keys in their fresh shape and dtype (and, for
    the centralized reference, its optimizer's state)."""
    return (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
            and all(_tensor_like(state.get(k), like) for k, like in exp.client_state.items()))


def _client_states(raw: dict[str, Any], exp: Expected) -> str | None:
    """Per-client state: keyed by client index 0 .. M-1, each fitting a fresh client's."""
    states = raw["client_states"]
    if not isinstance(states, dict):
        return "client_states is not a mapping"
    valid = {str(m) for m in range(exp.clients)}
    bad = sorted(str(k) for k, v in states.items() if k not in valid or not _client_fits(v, exp))
    return f"client_states of clients {bad} do not fit {exp.clients} clients of this run" if bad else None


CHECKPOINT_RULES: tuple[Callable[[dict[str, Any], Expected], str | None], ...] = (
    _keys, _scalars, _theta, _model, _round, _rows, _row_values, _state_dicts, _client_states)


# ----------------------------------------------------------------------------- warm-up states


def warmup_state(run_dir: Path) -> dict[str, Any]:
    """A run's latest state as a warm-up file's content {"theta": [P], "round": k, "buffers": {...},
    "model": architecture fingerprint} (``fipa export-warmup``); refuses a diverged run."""
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no checkpoint; train the warm-up run into {run_dir} first")
    raw = read_checkpoint(ckpt, fix="rerun the warm-up")
    theta, rnd = raw["theta"], raw["round"]
    if not isinstance(theta, torch.Tensor) or not _is_int(rnd):
        raise UnreadableFileError(f"{ckpt}: theta or round of the wrong type; rerun the warm-up")
    if raw.get("diverged") or not bool(torch.isfinite(theta).all()):
        raise ConfigError(f"{ckpt}: the warm-up run diverged at round {rnd}; nothing to export")
    return {"theta": theta, "round": rnd, "buffers": raw.get("buffers", {}), "model": raw.get("model", "")}


def check_export_target(run_dir: Path, output: str | os.PathLike) -> None:
    """Refuse an export that would replace a file of a run directory (the run's own checkpoint,
    say: the next resume would read a warm-up state as a checkpoint)."""
    out = Path(os.path.realpath(output))
    if out.name in RUN_FILES and any((out.parent / f).is_file() for f in (CHECKPOINT, "final.json")):
        raise ConfigError(f"-o/--output: {output} is the {out.name} of the run directory {out.parent}; "
                          "exporting there would overwrite it; write the warm-up state elsewhere "
                          f"(e.g. {Path(run_dir).parent / 'state.pt'})")


def load_warmup(path: str, like: torch.Tensor, like_buffers: dict[str, torch.Tensor] | None = None,
                model: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(theta [P], buffers) of a warm-up state file (``fipa export-warmup``), checked by
    WARMUP_RULES against the model: its parameter count ``like`` [P], buffer names and
    architecture fingerprint ``model`` (files written before the fingerprint existed have none)."""
    try:
        raw = torch.load(path, weights_only=True)
    except Exception as e:
        raise UnreadableFileError(f"warmup_checkpoint: {path} is unreadable ({type(e).__name__}); "
                                  "rerun the warm-up") from None
    for rule in WARMUP_RULES:
        problem = rule(raw, like, like_buffers, model)
        if problem is not None:
            raise ConfigError(f"warmup_checkpoint: {path} {problem}")
    return raw["theta"].to(like), raw.get("buffers", {})


def _warm_theta(raw: Any, like: torch.Tensor, like_buffers, model: str) -> str | None:
    """A mapping whose theta is a floating tensor of the model's size [P], every entry finite."""
    theta = raw.get("theta") if isinstance(raw, dict) else None
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        return f"holds no parameter tensor (theta is {type(theta).__name__}); rerun the warm-up"
    if theta.shape != like.shape:
        return (f"has {theta.numel()} parameters, the model {like.numel()}; the warm-up was made for "
                "another model")
    if theta.dtype != like.dtype:  # a cast would start the run from rounded parameters
        return f"holds {theta.dtype} parameters, the run trains in {like.dtype}; rerun the warm-up in it"
    if not bool(torch.isfinite(theta).all()):
        return "holds non-finite parameters (NaN or inf); rerun the warm-up (it diverged)"
    return None


def _warm_model(raw: dict[str, Any], like, like_buffers, model: str) -> str | None:
    """The architecture fingerprint, where the file has one."""
    stored = raw.get("model", "")
    if stored and model and stored != model:
        return ("was made for another model architecture (same size, different layers); rerun the "
                "warm-up with this task's model")
    return None


def _warm_buffers(raw: dict[str, Any], like, like_buffers, model: str) -> str | None:
    """Running statistics for exactly the model's buffers."""
    warm = raw.get("buffers", {})
    if not isinstance(warm, dict) or not all(isinstance(v, torch.Tensor) for v in warm.values()):
        return "holds buffers that are not a mapping of tensors; rerun the warm-up"
    if like_buffers is not None and set(warm) != set(like_buffers):
        return (f"holds running statistics for {len(warm)} buffers, the model has {len(like_buffers)}; "
                "the warm-up was made for another model (norm: batch against group?)")
    return None


WARMUP_RULES = (_warm_theta, _warm_model, _warm_buffers)
