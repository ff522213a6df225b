"""Non-IID client partitions: a registry of schemes and heterogeneity statistics.

A scheme maps a task's :class:`PartitionInput` (sample count, coordinates, labels) to a
list of index arrays, one per client. Everything is seeded by a numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fipa.errors import ConfigError
from fipa.keys import key
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
    covers_all: bool  # every sample goes to some client (a partition file is checked for it)

    def __call__(
        self, data: PartitionInput, clients: int, rng: np.random.Generator, params: Any
    ) -> list[np.ndarray]: ...


# ``covers_all``: the scheme gives every sample to some client; one that leaves samples out
# registers with covers_all=False (``@SCHEMES.register(name, params=..., covers_all=False)``)
SCHEMES: Registry[Scheme] = Registry("partition scheme", declares={"covers_all": True})


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


@SCHEMES.register("iid", params=IIDParams)
def iid(data: PartitionInput, clients: int, rng: np.random.Generator, params: Any):
    _check_enough(data, clients)
    return _require_nonempty(np.array_split(rng.permutation(data.n), clients), "")




@dataclass
class DomainSplitParams:
    """Cut the domain into ``pieces * clients`` cells, dealt to clients in turn.

    ``axis``: split along this coordinate only (intervals); null splits every axis into a
    grid of blocks. pieces = 1 gives each client one contiguous part (the hardest case).
    """

    pieces: int = key(1, "the domain is cut into `pieces x clients` cells, dealt to clients in turn", ge=1)
    axis: int | None = key(None, "split along this input axis only (intervals); null: a grid of blocks over "
                           "every axis")


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


def block_of(coords: np.ndarray, bounds: list[tuple[float, float]], shape: list[int], axes: list[int]):
    """Row-major cell index [n] of each point on a grid of ``shape`` over ``axes``."""
    idx = np.zeros(len(coords), dtype=np.int64)
    for ax, k in zip(axes, shape, strict=True):
        lo, hi = bounds[ax]
        pos = np.floor((coords[:, ax] - lo) / (hi - lo) * k).astype(np.int64)
        idx = idx * k + np.clip(pos, 0, k - 1)
    return idx


@SCHEMES.register("domain_split", params=DomainSplitParams)
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
    owner = block_of(data.coords, data.bounds, shape, axes) % clients
    return _require_nonempty(
        [np.flatnonzero(owner == c) for c in range(clients)],
        "use fewer clients or pieces, or more samples",
    )




# ----------------------------------------------------------------------------- label skew


def _require_labels(data: PartitionInput, scheme: str) -> tuple[np.ndarray, int]:
    """The labels [n] and class count K of a classification task, or a ConfigError."""
    if data.labels is None:
        raise ConfigError(f"partition.scheme: {scheme} needs a task with class labels; this task has "
                          "none (use iid, quantity_skew or domain_split)")
    labels = np.asarray(data.labels, dtype=np.int64)
    return labels, int(data.num_classes or labels.max() + 1)


def _check_alpha(alpha: float) -> None:
    # parse_params already rejects this from YAML; repeat it for direct callers
    if not alpha > 0:
        raise ConfigError(f"partition.alpha: must be > 0, got {alpha}")


def _check_min_size(data: PartitionInput, clients: int, min_size: int) -> None:
    if min_size * clients > data.n:
        raise ConfigError(f"partition.min_size: {clients} clients x {min_size} samples exceeds the "
                          f"{data.n} training samples; lower min_size or use fewer clients")


@dataclass
class DirichletParams:
    """Per-label Dirichlet skew (Hsu et al. 2019 as in NIID-Bench / FedLab ``hetero_dir``).

    For every class k, proportions q_k ~ Dir(alpha 1_M) over the M clients split that class;
    clients already holding N/M samples get no more of later classes. The whole draw is
    repeated until every client holds at least ``min_size`` samples (at most ``max_tries``).
    Small alpha: each client sees few classes and sizes vary.
    """

    alpha: float = key(0.5, "concentration of each class's split Dir(alpha 1_M) over the clients; small "
                       "alpha: few classes per client, unequal sizes", gt=0)
    min_size: int = key(10, "samples every client must hold; the whole draw is repeated until all do", ge=1)
    max_tries: int = key(1000, "draws before giving up (an error naming min_size)", ge=1)


@SCHEMES.register("dirichlet", params=DirichletParams)
def dirichlet(data: PartitionInput, clients: int, rng: np.random.Generator, params: DirichletParams):
    labels, k = _require_labels(data, "dirichlet")
    _check_alpha(params.alpha)
    _check_enough(data, clients)
    _check_min_size(data, clients, params.min_size)
    by_class = [np.flatnonzero(labels == c) for c in range(k)]
    for _ in range(params.max_tries):
        owned: list[list[np.ndarray]] = [[] for _ in range(clients)]
        sizes = np.zeros(clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            q = rng.dirichlet(np.full(clients, params.alpha))
            # balance: a client that already holds its fair share N/M takes no more
            q = q * (sizes < data.n / clients)
            q = q / q.sum() if q.sum() > 0 else np.full(clients, 1.0 / clients)
            cuts = (np.cumsum(q) * len(idx)).astype(np.int64)[:-1]
            for c, piece in enumerate(np.split(idx, cuts)):
                owned[c].append(piece)
                sizes[c] += len(piece)
        if sizes.min() >= params.min_size:
            return _require_nonempty([np.concatenate(o) for o in owned], "")
    raise ConfigError(f"partition.min_size: no Dirichlet(alpha={params.alpha}) draw in {params.max_tries} "
                      f"tries gave every client >= {params.min_size} samples; lower min_size, raise "
                      "alpha or use fewer clients")




@dataclass
class DirichletBalancedParams:
    """Equal client sizes, Dirichlet class mix (FedRCL / FedDyn ``balanced`` split).

    Client m draws class priors pi_m ~ Dir(alpha 1_K) and receives exactly N/M samples
    (sizes differ by at most one when M does not divide N), drawn without replacement:
    repeatedly a not-yet-full client is picked uniformly and takes one sample of a class
    drawn from pi_m renormalized over the classes that still have samples left.
    """

    alpha: float = key(0.5, "concentration of each client's class priors Dir(alpha 1_K)", gt=0)


@SCHEMES.register("dirichlet_balanced", params=DirichletBalancedParams)
def dirichlet_balanced(
    data: PartitionInput, clients: int, rng: np.random.Generator, params: DirichletBalancedParams
):
    labels, k = _require_labels(data, "dirichlet_balanced")
    _check_alpha(params.alpha)
    _check_enough(data, clients)
    priors = rng.dirichlet(np.full(k, params.alpha), size=clients)  # [M, K]
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(k)]
    left = np.array([len(p) for p in pools], dtype=np.float64)
    quota = np.full(clients, data.n // clients) + (np.arange(clients) < data.n % clients)
    owned: list[list[int]] = [[] for _ in range(clients)]
    open_ = list(range(clients))
    while open_:
        pos = int(rng.integers(len(open_)))
        m = open_[pos]
        # pi_m restricted to classes with samples left; a client whose classes ran out
        # falls back to the remaining classes in proportion to what is left
        w = priors[m] * (left > 0)
        w = w / w.sum() if w.sum() > 0 else left / left.sum()
        c = int(rng.choice(k, p=w))
        owned[m].append(pools[c].pop())
        left[c] -= 1
        if len(owned[m]) == quota[m]:
            open_.pop(pos)
    return _require_nonempty([np.asarray(o) for o in owned], "")




@dataclass
class ShardsParams:
    """Pathological split of McMahan et al. (2017): sort by label, cut into
    ``clients * shards_per_client`` equal shards, deal each client ``shards_per_client``
    of them at random. Each client sees at most ``shards_per_client`` classes."""

    shards_per_client: int = key(2, "label-sorted shards per client: at most that many classes each; at "
                                 "most the task's class count", ge=1)


@SCHEMES.register("shards", params=ShardsParams)
def shards(data: PartitionInput, clients: int, rng: np.random.Generator, params: ShardsParams):
    labels, k = _require_labels(data, "shards")
    s = params.shards_per_client
    if s > k:
        raise ConfigError(f"partition.shards_per_client: {s} shards per client but the task has only "
                          f"{k} classes; use at most {k}")
    if clients * s > data.n:
        raise ConfigError(f"partition.clients: {clients} clients x {s} shards exceeds the {data.n} "
                          "training samples; use fewer clients or shards")
    # random order first, then a stable sort: samples of one class are shuffled within it
    perm = rng.permutation(data.n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, clients * s)
    deal = rng.permutation(clients * s).reshape(clients, s)
    return _require_nonempty([np.concatenate([pieces[j] for j in row]) for row in deal], "")




@dataclass
class QuantitySkewParams:
    """Client sizes from Dir(alpha 1_M), samples otherwise iid (NIID-Bench's quantity skew).

    Every client first gets ``min_size`` samples; the other N - M min_size are cut by
    proportions q ~ Dir(alpha 1_M). (NIID-Bench redraws q until all sizes reach the minimum,
    which for small alpha and many clients almost never ends; shifting by the minimum
    keeps the same shape of skew and always succeeds.)
    """

    alpha: float = key(0.5, "concentration of the client proportions Dir(alpha 1_M) of the samples above "
                       "the minimum", gt=0)
    min_size: int = key(10, "samples every client gets before the Dirichlet cut", ge=1)


@SCHEMES.register("quantity_skew", params=QuantitySkewParams)
def quantity_skew(data: PartitionInput, clients: int, rng: np.random.Generator, params: QuantitySkewParams):
    _check_alpha(params.alpha)
    _check_enough(data, clients)
    _check_min_size(data, clients, params.min_size)
    perm = rng.permutation(data.n)
    q = rng.dirichlet(np.full(clients, params.alpha))
    rest = data.n - clients * params.min_size
    # cut points: i * min_size + floor(rest * (q_1 + ... + q_i)) for i = 1 .. M-1
    cuts = np.arange(1, clients) * params.min_size + (np.cumsum(q)[:-1] * rest).astype(np.int64)
    return _require_nonempty(np.split(perm, cuts), "")




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

