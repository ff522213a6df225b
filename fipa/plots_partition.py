"""Figure of a label-skewed split: a clients x classes heat map of sample counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fipa.partition import PartitionInput


def label_histogram(data: PartitionInput, parts: list[np.ndarray]) -> np.ndarray:
    """Counts [M, K]: entry (m, k) is how many samples of class k client m holds."""
    if data.labels is None:
        raise ValueError("label_histogram needs a task with class labels")
    labels = np.asarray(data.labels, dtype=np.int64)
    k = int(data.num_classes or labels.max() + 1)
    return np.stack([np.bincount(labels[p], minlength=k) for p in parts])


def plot_label_histogram(
    data: PartitionInput, parts: list[np.ndarray], path: str | Path, title: str | None = None
) -> Path:
    """Save a seaborn heat map of :func:`label_histogram` (rows clients, columns classes)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    counts = label_histogram(data, parts)
    m, k = counts.shape
    # readable at 10 x 10 and still bounded at 100 clients x 200 classes
    fig = Figure(figsize=(min(2 + 0.35 * k, 16), min(1.5 + 0.25 * m, 14)))
    ax = fig.subplots()
    sns.heatmap(counts, ax=ax, cmap="viridis", annot=m * k <= 400, fmt="d",
                cbar_kws={"label": "samples"}, xticklabels=k <= 50, yticklabels=m <= 50)
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title or f"label histogram: {m} clients, {k} classes")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
