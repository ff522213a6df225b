"""Non-IID client partitions: a registry of schemes and heterogeneity statistics.

A scheme maps a task's :class:`PartitionInput` (sample count, coordinates, labels) to a
list of index arrays, one per client. Everything is seeded by a numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fipa.config import ConfigError
from fipa.registry import Registry


@dataclass
class PartitionInput:
    """What a task exposes for splitting: n samples, optional coordinates and labels."""

    n: int
    coords: np.ndarray | None = None  # [n, d] sample locations in the domain
    bounds: list[tuple[float, float]] | None = None  # per coordinate axis
    labels: np.ndarray | None = None  # [n] integer class labels
    num_classes: int | None = None


class Scheme(Protocol):
    Params: type

    def __call__(
        self, data: PartitionInput, clients: int, rng: np.random.Generator, params: Any
    ) -> list[np.ndarray]: ...


SCHEMES: Registry[Scheme] = Registry("partition scheme")


def _require_nonempty(parts: list[np.ndarray], hint: str) -> list[np.ndarray]:
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"partition.clients: client {empty[0]} receives no samples ({len(empty)} empty clients); {hint}"
        )
    return [np.sort(p).astype(np.int64) for p in parts]


def _check_enough(data: PartitionInput, clients: int) -> None:
    if clients > data.n:
        raise ConfigError(
            f"partition.clients: {clients} clients but only {data.n} training samples; "
            "use fewer clients or more samples"
        )


# ----------------------------------------------------------------------------- schemes


@dataclass
class IIDParams:
    """Uniformly random equal-size shards."""


def iid(data: PartitionInput, clients: int, rng: np.random.Generator, params: Any):
    _check_enough(data, clients)
    return _require_nonempty(np.array_split(rng.permutation(data.n), clients), "")


iid.Params = IIDParams
SCHEMES.register("iid")(iid)


@dataclass
class DomainSplitParams:
    """Cut the domain into ``pieces * clients`` cells, dealt to clients in turn.

    ``axis``: split along this coordinate only (intervals); null splits every axis into a
    grid of blocks. pieces = 1 gives each client one contiguous part (the hardest case).
    """

    pieces: int = 1
    axis: int | None = None

    def check(self) -> list[tuple[str, str]]:
        if self.pieces < 1:
            return [("pieces", f"must be >= 1, got {self.pieces}")]
        return []


def grid_shape(cells: int, dims: int) -> list[int]:
    """Split ``cells`` into ``dims`` factors as equal as possible (largest first)."""
    shape = [1] * dims
    rest = cells
    for d in range(dims):
        target = round(rest ** (1 / (dims - d)))
        f = max(k for k in range(1, max(target, 1) + 1) if rest % k == 0)
        f = max(f, rest // f) if d == dims - 1 else f
        shape[d] = f
        rest //= f
    return sorted(shape, reverse=True)


def cell_of(coords: np.ndarray, bounds: list[tuple[float, float]], shape: list[int], axes: list[int]):
    """Row-major cell index [n] of each point on a grid of ``shape`` over ``axes``."""
    idx = np.zeros(len(coords), dtype=np.int64)
    for ax, k in zip(axes, shape, strict=True):
        lo, hi = bounds[ax]
        pos = np.floor((coords[:, ax] - lo) / (hi - lo) * k).astype(np.int64)
        idx = idx * k + np.clip(pos, 0, k - 1)
    return idx


def domain_split(data: PartitionInput, clients: int, rng: np.random.Generator, params):
    if data.coords is None or data.bounds is None:
        raise ConfigError("partition.scheme: domain_split needs a task with input coordinates")
    _check_enough(data, clients)
    dims = data.coords.shape[1]
    if params.axis is not None and not 0 <= params.axis < dims:
        raise ConfigError(f"partition.axis: {params.axis} but the task has {dims} input axes")
    cells = params.pieces * clients
    axes = [params.axis] if params.axis is not None else list(range(dims))
    shape = [cells] if len(axes) == 1 else grid_shape(cells, len(axes))
    owner = cell_of(data.coords, data.bounds, shape, axes) % clients
    return _require_nonempty(
        [np.flatnonzero(owner == c) for c in range(clients)],
        "use fewer clients or pieces, or more samples",
    )


domain_split.Params = DomainSplitParams
SCHEMES.register("domain_split")(domain_split)


# ----------------------------------------------------------------------------- api


def make_partition(
    data: PartitionInput, scheme: str, clients: int, params: Any, seed: int
) -> list[np.ndarray]:
    """Indices per client; seeded, so the same inputs give the same split."""
    rng = np.random.default_rng([seed, 0x9A27])
    return SCHEMES.get(scheme, key="partition.scheme")(data, clients, rng, params)


def heterogeneity(data: PartitionInput, parts: list[np.ndarray]) -> dict[str, Any]:
    """Summary statistics of a split: sizes, and label or spatial skew where defined."""
    sizes = np.array([len(p) for p in parts])
    stats: dict[str, Any] = {
        "sizes": sizes.tolist(),
        "size_cv": float(sizes.std() / sizes.mean()),
    }
    if data.labels is not None:
        k = data.num_classes or int(data.labels.max()) + 1
        glob = np.bincount(data.labels, minlength=k) / len(data.labels)
        hist = [np.bincount(data.labels[p], minlength=k) for p in parts]
        tv = [0.5 * np.abs(h / h.sum() - glob).sum() for h in hist]
        stats["label_hist"] = [h.tolist() for h in hist]
        stats["mean_tv_distance"] = float(np.mean(tv))
        stats["classes_per_client"] = float(np.mean([(h > 0).sum() for h in hist]))
    if data.coords is not None:
        centers = np.array([data.coords[p].mean(0) for p in parts])
        spread = np.linalg.norm(centers - data.coords.mean(0), axis=1)
        stats["centroids"] = centers.tolist()
        stats["mean_centroid_offset"] = float(spread.mean())
    return stats

