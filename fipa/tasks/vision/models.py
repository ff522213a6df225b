"""Classifiers: the MODELS registry (digits_cnn, cnn2, CIFAR ResNet-18; the 1-D mnist1d_cnn) and
their norm layers.

A model is one builder ``(input_shape (C, *spatial), classes, options) -> nn.Module`` registered
with what the pipeline reads of it: ``@MODELS.register(name, spatial_dims=..., cost=...)``.
``spatial_dims`` is the axes after the channel it takes (2: images, 1: signals; checked against
the data set's before a run), ``cost(options)`` its per-sample training cost relative to
digits_cnn on an 8x8 digit, the cost prior of the time-left estimate (fipa/progress.py).

Normalization layers: GroupNorm by default in ResNet-18 (no running statistics, so the flat
parameter vector is the whole model state and FIPA/FedAvg see everything), none in the small
CNNs. ``norm: batch`` uses BatchNorm with running statistics: batch statistics in local
training, running ones in evaluation and curvature; the clients' running statistics are
averaged by sample count each round, whatever the aggregator (fipa/buffers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fipa.registry import Registry


class ModelOptions(Protocol):
    """The task options a model builder reads (VisionParams has them)."""

    norm: str  # "default", "none", "group" or "batch"
    groups: int  # GroupNorm groups
    width: int  # ResNet-18's first-stage channels


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(groups, channels), channels)


def _norm_layers(p: ModelOptions, channels: int, default: str) -> list[nn.Module]:
    """The normalization after a convolution: [] for ``none``, else one layer (``default``
    when the config says ``default``)."""
    kind = default if p.norm == "default" else p.norm
    return [] if kind == "none" else [_norm(kind, channels, p.groups)]


class Classifier(nn.Module):
    """``body`` maps images to feature vectors [n, d]; ``head`` maps features to logits."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor, features: bool = False):
        """x [n, C, *spatial] -> logits [n, K], or (features [n, d], logits [n, K])."""
        z = self.body(x)
        out = self.head(z)
        return (z, out) if features else out


ModelBuilder = Callable[[tuple[int, ...], int, ModelOptions], nn.Module]  # ((C, *spatial), classes, p)


def unit_cost(p: ModelOptions) -> float:
    """A model that declares no cost is priced like digits_cnn until observed."""
    return 1.0


MODELS: Registry[ModelBuilder] = Registry("vision model", declares={"spatial_dims": 2, "cost": unit_cost})


@MODELS.register("digits_cnn")
def digits_cnn(input_shape: tuple[int, ...], classes: int, p: ModelOptions) -> nn.Module:
    """conv3x3(16) relu pool, conv3x3(32) relu pool, fc 64 relu, fc K: P = 13,706 on 1x8x8
    (no normalization unless ``norm`` asks for one after each convolution)."""
    return _two_conv(input_shape, classes, p, (16, 32), 3, 64)


@MODELS.register("cnn2", cost=lambda p: 20.0)
def cnn2(input_shape: tuple[int, ...], classes: int, p: ModelOptions) -> nn.Module:
    """The two-conv CNN of McMahan et al. (2017): conv5x5(32), pool, conv5x5(64), pool, fc 512
    (no normalization unless ``norm`` asks for one after each convolution)."""
    return _two_conv(input_shape, classes, p, (32, 64), 5, 512)


def _two_conv(input_shape: tuple[int, ...], classes: int, p: ModelOptions, widths: tuple[int, int],
              kernel: int, hidden: int) -> nn.Module:
    """conv(k) relu pool, conv(k) relu pool, fc ``hidden`` relu, fc K on [n, C, H, W]."""
    channels, h, w = input_shape
    (c1, c2), pad = widths, kernel // 2
    body = nn.Sequential(
        nn.Conv2d(channels, c1, kernel, padding=pad), *_norm_layers(p, c1, "none"), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel, padding=pad), *_norm_layers(p, c2, "none"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
    )
    return Classifier(body, nn.Linear(hidden, classes))


@MODELS.register("mnist1d_cnn", spatial_dims=1, cost=lambda p: 0.4)
def mnist1d_cnn(input_shape: tuple[int, ...], classes: int, p: ModelOptions) -> nn.Module:
    """The MNIST-1D authors' CNN: conv1d(25, k5, stride 2, pad 1), then two conv1d(25, k3, stride 2,
    pad 1), relu after each, fc K on the flattened features: P = 5,210 on 1x40 signals."""
    channels, length = input_shape
    layers: list[nn.Module] = []
    c_in = channels
    for kernel in (5, 3, 3):
        layers += [nn.Conv1d(c_in, 25, kernel, stride=2, padding=1), nn.ReLU()]
        c_in = 25
        length = (length + 2 - kernel) // 2 + 1  # the convolution's output length
    body = nn.Sequential(*layers, nn.Flatten())
    return Classifier(body, nn.Linear(25 * length, classes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = norm(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.conv1(x)))
        return F.relu(self.n2(self.conv2(y)) + self.short(x))


@MODELS.register("resnet18", cost=lambda p: 500.0 * (p.width / 64) ** 2)  # conv cost ~ channels^2
def resnet18(input_shape: tuple[int, ...], classes: int, p: ModelOptions) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem without max-pool, stages w-2w-4w-8w for ``width`` w
    (64: the standard 64-128-256-512, P ~ 1.1e7; P scales as w^2)."""

    def norm(c: int) -> nn.Module:
        return _norm("group" if p.norm == "default" else p.norm, c, p.groups)

    w, channels = p.width, input_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(channels, w, 3, 1, 1, bias=False), norm(w), nn.ReLU()]
    c_in = w
    for c_out, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
        layers += [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
        c_in = c_out
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(8 * w, classes))
