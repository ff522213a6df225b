"""Flat parameter vectors and client uploads as Flower records (float64 kept bit for bit).

Flower's ``Array`` stores a numpy array's bytes with its dtype, so a float64 vector crosses a
Flower message unchanged; nothing here casts. The order of an ``ArrayRecord``'s keys is the
order of the flat vector's segments (insertion order, as the model's named parameters).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

# names of a client's upload in its reply's ArrayRecord (FIPAStrategy)
DELTA, FACTOR, EIGVALS = "delta", "factor", "eigvals"
# the one array of the `flower` aggregator's model record: the flat theta [P]
THETA = "theta"


def to_array(x: torch.Tensor | np.ndarray) -> Array:
    """A tensor or ndarray as a Flower Array of the same dtype and shape (a copy)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return Array(np.ascontiguousarray(x))


def flat_record(theta: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> ArrayRecord:
    """theta [P] -> ArrayRecord {name: array of ``shapes[name]``}, segments in ``shapes`` order."""
    out, start = ArrayRecord(), 0
    for name, shape in shapes.items():
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = to_array(theta[start : start + n].reshape(shape))
        start += n
    if start != theta.numel():
        raise ValueError(f"the shapes hold {start} numbers, theta {theta.numel()}")
    return out


def record_shapes(arrays: ArrayRecord) -> dict[str, tuple[int, ...]]:
    """{name: shape} of an ArrayRecord, in its key order (the layout of :func:`flat_record`)."""
    return {name: tuple(a.shape) for name, a in arrays.items()}


def flatten_record(arrays: ArrayRecord) -> torch.Tensor:
    """ArrayRecord -> theta [P]: its arrays raveled and concatenated in key order, dtype kept."""
    parts = [torch.from_numpy(np.array(a.numpy(), copy=True)).reshape(-1) for a in arrays.values()]
    return torch.cat(parts)


def upload_record(delta: torch.Tensor, factor: torch.Tensor | None = None,
                  eigvals: torch.Tensor | None = None) -> ArrayRecord:
    """A client's upload: delta [P], and FIPA's factor A [r, P] and eigenvalues sigma [r]."""
    out = ArrayRecord()
    out[DELTA] = to_array(delta)
    if factor is not None:
        out[FACTOR] = to_array(factor)
        out[EIGVALS] = to_array(factor.pow(2).sum(dim=1) if eigvals is None else eigvals)
    return out


def read_upload(arrays: ArrayRecord) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(delta [P], factor [r, P] or None) of a client's upload record."""
    delta = torch.from_numpy(np.array(arrays[DELTA].numpy(), copy=True))
    factor = torch.from_numpy(np.array(arrays[FACTOR].numpy(), copy=True)) if FACTOR in arrays else None
    return delta, factor
