"""Label-skew partitions: dirichlet, dirichlet_balanced, shards, quantity_skew (fipa/partition.py).

Oracles: every split is a partition of the pool (disjoint, covering); closed forms where the
scheme is deterministic in the limit (alpha -> infinity gives the equal split, shards of
single-class blocks give at most ``shards_per_client`` classes); seeded reproducibility; the
errors named in the design (alpha <= 0, too many shards or clients, no labels).
"""

from __future__ import annotations

import numpy as np
import pytest

from fipa.config import ConfigError, parse_run_config
from fipa.partition import (
    SCHEMES,
    DirichletBalancedParams,
    DirichletParams,
    PartitionInput,
    QuantitySkewParams,
    ShardsParams,
    heterogeneity,
    make_partition,
)
from fipa.plots_partition import label_histogram, plot_label_histogram
from tests.helpers import tiny

K, PER_CLASS = 10, 100
LABELS = np.repeat(np.arange(K), PER_CLASS)  # 1000 samples, 100 per class
DATA = PartitionInput(n=len(LABELS), labels=LABELS, num_classes=K)

SCHEME_PARAMS = {
    "dirichlet": DirichletParams(alpha=0.1),
    "dirichlet_balanced": DirichletBalancedParams(alpha=0.1),
    "shards": ShardsParams(shards_per_client=2),
    "quantity_skew": QuantitySkewParams(alpha=0.5),
}


def hist(parts: list[np.ndarray]) -> np.ndarray:
    """[M, K] label counts."""
    return np.stack([np.bincount(LABELS[p], minlength=K) for p in parts])


@pytest.mark.parametrize("scheme", sorted(SCHEME_PARAMS))
def test_split_is_a_seeded_partition_of_the_pool(scheme):
    parts = make_partition(DATA, scheme, 20, SCHEME_PARAMS[scheme], seed=3)
    allidx = np.concatenate(parts)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(allidx), np.arange(DATA.n))  # disjoint and covering
    again = make_partition(DATA, scheme, 20, SCHEME_PARAMS[scheme], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = make_partition(DATA, scheme, 20, SCHEME_PARAMS[scheme], seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_large_alpha_is_the_equal_split_and_small_alpha_is_skewed():
    # alpha -> inf: q_k -> 1/M, so client m gets PER_CLASS / M of each class (+-1 from rounding)
    parts = make_partition(DATA, "dirichlet", 10, DirichletParams(alpha=1e6), seed=0)
    np.testing.assert_allclose(hist(parts), PER_CLASS / 10, atol=1)
    skewed = make_partition(DATA, "dirichlet", 10, DirichletParams(alpha=0.05, min_size=1), seed=0)
    stats = heterogeneity(DATA, skewed)
    assert stats["mean_tv_distance"] > 0.6 and stats["classes_per_client"] < 5


def test_dirichlet_per_class_shares_follow_the_dirichlet_moments():
    """Before any client is full, class k's shares are Dir(alpha 1_M): mean 1/M, variance
    (1/M)(1 - 1/M) / (M alpha + 1). Pooled over many seeds for the first class only."""
    M, alpha = 5, 2.0
    shares = []
    for seed in range(300):
        parts = make_partition(DATA, "dirichlet", M, DirichletParams(alpha=alpha, min_size=1), seed)
        shares.append(hist(parts)[:, 0] / PER_CLASS)  # class 0 is split first, nobody is full
    shares = np.array(shares)
    mean, var = 1 / M, (1 / M) * (1 - 1 / M) / (M * alpha + 1)
    np.testing.assert_allclose(shares.mean(0), mean, atol=4 * np.sqrt(var / len(shares)))
    np.testing.assert_allclose(shares.var(0), var, rtol=0.3)


def test_dirichlet_balanced_gives_exact_sizes():
    parts = make_partition(DATA, "dirichlet_balanced", 30, DirichletBalancedParams(alpha=0.1), seed=1)
    sizes = sorted(len(p) for p in parts)
    # 1000 = 30 * 33 + 10: ten clients hold 34, twenty hold 33
    assert sizes == [33] * 20 + [34] * 10
    flat = make_partition(DATA, "dirichlet_balanced", 20, DirichletBalancedParams(alpha=1e4), seed=1)
    skew = make_partition(DATA, "dirichlet_balanced", 20, DirichletBalancedParams(alpha=0.01), seed=1)
    # near-uniform priors: only multinomial noise of 50 draws (expected TV about 0.17)
    assert heterogeneity(DATA, flat)["mean_tv_distance"] < 0.3
    assert heterogeneity(DATA, skew)["mean_tv_distance"] > 0.6


def test_shards_of_single_class_blocks_give_at_most_k_classes():
    # 10 clients x 2 shards = 20 shards of 50 samples: every shard lies inside one class
    parts = make_partition(DATA, "shards", 10, ShardsParams(shards_per_client=2), seed=0)
    h = hist(parts)
    assert ((h > 0).sum(1) <= 2).all() and (h.sum(1) == 100).all()
    assert set(np.unique(h)) <= {0, 50, 100}


def test_quantity_skew_varies_sizes_not_labels():
    parts = make_partition(DATA, "quantity_skew", 5, QuantitySkewParams(alpha=0.5, min_size=50), seed=2)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 50 and sizes.std() / sizes.mean() > 0.2
    # labels iid: each client's histogram is a hypergeometric draw around the global mix
    h = hist(parts)
    np.testing.assert_allclose(h / sizes[:, None], 1 / K, atol=4 * np.sqrt(0.09 / sizes.min()))
    even = make_partition(DATA, "quantity_skew", 5, QuantitySkewParams(alpha=1e6), seed=2)
    assert max(abs(len(p) - 200) for p in even) <= 1


# ----------------------------------------------------------------------------- errors


def run_cfg(**partition):
    return tiny(partition={"clients": 4, **partition})


@pytest.mark.parametrize("scheme", ["dirichlet", "dirichlet_balanced", "quantity_skew"])
@pytest.mark.parametrize("alpha", [0, -0.5])
def test_alpha_must_be_positive(scheme, alpha):
    with pytest.raises(ConfigError, match=r"^partition\.alpha: must be > 0"):
        parse_run_config(run_cfg(scheme=scheme, alpha=alpha))
    with pytest.raises(ConfigError, match=r"^partition\.alpha: must be > 0"):
        SCHEMES.get(scheme)(DATA, 4, np.random.default_rng(0), SCHEME_PARAMS[scheme].__class__(alpha=alpha))


def test_more_shards_per_client_than_classes():
    with pytest.raises(ConfigError, match=r"partition\.shards_per_client: 11 shards .* only 10 classes"):
        make_partition(DATA, "shards", 4, ShardsParams(shards_per_client=11), seed=0)


@pytest.mark.parametrize("scheme", sorted(SCHEME_PARAMS))
def test_more_clients_than_samples(scheme):
    small = PartitionInput(n=8, labels=np.arange(8) % 2, num_classes=2)
    params = SCHEME_PARAMS[scheme]
    if hasattr(params, "min_size"):
        params = params.__class__(alpha=params.alpha, min_size=1)
    with pytest.raises(ConfigError, match=r"^partition\.clients: 9 clients"):
        make_partition(small, scheme, 9, params, seed=0)


@pytest.mark.parametrize("scheme", ["dirichlet", "dirichlet_balanced", "shards"])
def test_label_schemes_need_labels(scheme):
    with pytest.raises(ConfigError, match=rf"^partition\.scheme: {scheme} needs a task with class labels"):
        make_partition(PartitionInput(n=100), scheme, 4, SCHEME_PARAMS[scheme], seed=0)


def test_unreachable_min_size_fails_with_the_key():
    with pytest.raises(ConfigError, match=r"^partition\.min_size"):
        make_partition(DATA, "dirichlet", 20, DirichletParams(alpha=0.1, min_size=60), seed=0)


# ----------------------------------------------------------------------------- figure


def test_label_histogram_counts_and_figure(tmp_path):
    parts = make_partition(DATA, "dirichlet", 8, DirichletParams(alpha=0.3), seed=0)
    h = label_histogram(DATA, parts)
    assert h.shape == (8, K)
    assert (h.sum(1) == [len(p) for p in parts]).all() and (h.sum(0) == PER_CLASS).all()
    out = plot_label_histogram(DATA, parts, tmp_path / "fig" / "labels.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
