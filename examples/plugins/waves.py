"""A data set and a model added to the vision family from outside the package (a plugin).

``waves``: noisy sine waves [n, 1, length] whose class is the frequency (``classes`` of them),
generated from the data set's own options; ``wave_cnn``: one 1-D convolution and a linear head.
Run config: ``plugins: [examples/plugins/waves.py]`` and
``task: {name: vision, dataset: waves, model: wave_cnn, data: {n: 400}}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fipa.keys import key
from fipa.tasks.vision import DATASETS, MODELS, ArrayData, Classifier, DataRequest


@dataclass
class WavesOptions:
    """The data set's own options (``task.data``), checked against these fields' bounds."""

    n: int = key(400, "signals generated (a fifth of them held out)", ge=10)
    length: int = key(32, "points per signal", ge=8)
    classes: int = key(4, "frequencies, one class each", ge=2)
    noise: float = key(0.3, "standard deviation of the added noise", ge=0)
    seed: int = key(0, "generator seed", ge=0)


@DATASETS.register("waves", params=WavesOptions, train_size=320, spatial_dims=1)
def load_waves(req: DataRequest) -> ArrayData:
    """sin(2 pi (k + 1) t + phase) + noise on t in [0, 1): class k, random phase."""
    o: WavesOptions = req.options
    rng = np.random.default_rng(o.seed)
    y = rng.integers(0, o.classes, o.n)
    t = np.arange(o.length) / o.length
    phase = rng.uniform(0, 2 * np.pi, o.n)
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t[None, :] + phase[:, None])
    x = x + o.noise * rng.standard_normal(x.shape)
    x = torch.as_tensor(x, dtype=torch.float32)[:, None]  # [n, 1, length]
    y = torch.as_tensor(y, dtype=torch.int64)
    cut = o.n - o.n // 5
    mean, std = float(x[:cut].mean()), float(x[:cut].std())
    return ArrayData(x[:cut], y[:cut], x[cut:], y[cut:], o.classes, 1.0, (mean,), (std,))


@MODELS.register("wave_cnn", spatial_dims=1, cost=lambda p: 0.2)
def wave_cnn(input_shape: tuple[int, ...], classes: int, p) -> nn.Module:
    """conv1d(8, k5) relu, global average pool, fc K."""
    channels, _ = input_shape
    body = nn.Sequential(nn.Conv1d(channels, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten())
    return Classifier(body, nn.Linear(8, classes))
