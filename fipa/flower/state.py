"""A Flower strategy's mutable state as a dict of tensors (a checkpoint's aggregator state).

Flower's strategies keep their state in instance attributes (FedAvgM's momentum vector,
FedAdam's m_t, v_t and the last global arrays, the DP wrappers' clipping norm). The codec
below writes every attribute of a supported kind into tensors under ``PREFIX`` and sets it
back from them, so a checkpointed run resumes with the strategy it stopped with:

    None               ->  "<attr>:none"            (an empty tensor)
    bool / int / float ->  "<attr>:bool|int|float"  (a 0-d tensor; float64 keeps every bit)
    ndarray            ->  "<attr>:ndarray"
    list/tuple of ndarrays       -> "<attr>:list" (the length) + "<attr>:list:<i>"
    dict of str -> ndarray       -> "<attr>:dict" + "<attr>:dict:<key>"
    ArrayRecord                  -> "<attr>:arrayrecord" + "<attr>:arrayrecord:<key>"

Strings and callables are construction-time settings, rebuilt from the config, never saved.
Any other value (a nested strategy, an accountant object) cannot be checkpointed:
:func:`unsupported` names it, and the aggregator refuses such a strategy before training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PREFIX = "flower."
SCALARS = {bool: "bool", int: "int", float: "float"}


def _is_setting(value: Any) -> bool:
    """Construction-time settings that the config rebuilds: strings and functions."""
    return isinstance(value, str) or callable(value)


def _numeric(a: np.ndarray) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "biuf"


def _kind(value: Any) -> str | None:
    """The codec kind of an attribute value (None: not encodable, and not a setting)."""
    from flwr.app import ArrayRecord

    if value is None:
        return "none"
    if type(value) in SCALARS:
        return SCALARS[type(value)]
    if isinstance(value, np.floating | np.integer):
        return "float" if isinstance(value, np.floating) else "int"
    if _numeric(value):
        return "ndarray"
    if isinstance(value, ArrayRecord):
        return "arrayrecord"
    if isinstance(value, list | tuple) and all(_numeric(v) for v in value):
        return "list"
    if isinstance(value, dict) and all(isinstance(k, str) and _numeric(v) for k, v in value.items()):
        return "dict"
    return None


def unsupported(strategy: Any) -> list[tuple[str, str]]:
    """(attribute, type name) of every attribute that is neither a setting nor encodable."""
    return [(name, type(v).__name__) for name, v in vars(strategy).items()
            if not _is_setting(v) and _kind(v) is None]


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def encode(strategy: Any) -> dict[str, torch.Tensor]:
    """The strategy's state attributes as tensors under ``PREFIX`` (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in vars(strategy).items():
        if _is_setting(value):
            continue
        kind = _kind(value)
        if kind is None:
            raise TypeError(f"{type(strategy).__name__}.{name}: a {type(value).__name__} cannot be "
                            "saved in a checkpoint")
        key = f"{PREFIX}{name}:{kind}"
        if kind == "none":
            out[key] = torch.empty(0)
        elif kind in ("bool", "int", "float"):
            dtype = {"bool": torch.bool, "int": torch.int64, "float": torch.float64}[kind]
            out[key] = torch.tensor(value, dtype=dtype)
        elif kind == "ndarray":
            out[key] = _tensor(value)
        elif kind == "list":
            out[key] = torch.tensor(len(value))
            out.update({f"{key}:{i}": _tensor(v) for i, v in enumerate(value)})
        else:  # dict or ArrayRecord: named arrays, in their order
            items = value.items() if kind == "dict" else ((k, a.numpy()) for k, a in value.items())
            out[key] = torch.empty(0)
            out.update({f"{key}:{k}": _tensor(v) for k, v in items})
    return out


def decode(strategy: Any, state: dict[str, torch.Tensor]) -> None:
    """Set the strategy's attributes back from :func:`encode`'s tensors (copies: the strategy
    may change its arrays in place without touching the checkpointed state)."""
    from flwr.app import ArrayRecord

    from fipa.flower.records import to_array

    for key, t in state.items():
        if not key.startswith(PREFIX) or key.count(":") != 1:
            continue  # other keys of the aggregator, or the items of a container
        name, kind = key[len(PREFIX):].split(":")
        items = {k.split(":", 2)[2]: v.numpy().copy() for k, v in state.items() if k.startswith(f"{key}:")}
        if kind == "none":
            value: Any = None
        elif kind in ("bool", "int", "float"):
            value = {"bool": bool, "int": int, "float": float}[kind](t.item())
        elif kind == "ndarray":
            value = t.numpy().copy()
        elif kind == "list":
            value = [items[str(i)] for i in range(int(t))]
        elif kind == "dict":
            value = items
        else:
            value = ArrayRecord({k: to_array(v) for k, v in items.items()})
        setattr(strategy, name, value)
