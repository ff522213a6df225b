"""The ``vision`` task: softmax classification of images (data from DATASETS, model from MODELS).

Images stay raw uint8 tensors [n, C, H, W] until :meth:`Vision.normalize`, on the device.
Vision runs should set ``dtype: float32`` in the run config (the global default is the
float64 of the small regression/PDE tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fipa.keys import key
from fipa.losses import per_sample_loss
from fipa.partition import PartitionInput
from fipa.tasks.base import TASKS, Batch, Task
from fipa.tasks.vision.data import DATASETS, load_dataset, missing
from fipa.tasks.vision.models import MODELS


@dataclass
class VisionParams:
    """A data set from DATASETS and a model from MODELS; each key's meaning is on its field."""

    dataset: str = key(
        "digits", "`digits` (offline, from scikit-learn); `cifar10`, `cifar100` (`fipa download cifar10 "
        "--root data`); `tiny_imagenet` (`fipa prepare tiny-imagenet PATH --root data`)")
    root: str = key("data", "folder of the downloaded data sets")
    model: str = key("digits_cnn", "`digits_cnn`, `cnn2` or `resnet18`")
    norm: Literal["default", "none", "group", "batch"] = key(
        "default", "`default`: GroupNorm in ResNet-18, none in the small CNNs; `none`, `group` or `batch` "
        "after every convolution. `batch` keeps running statistics: batch statistics in local training, "
        "running ones in evaluation and curvature; each round the clients' statistics are averaged by sample "
        "count whatever the aggregator, and they count in the uplink bytes. Such models train one client at "
        "a time")
    groups: int = key(2, "GroupNorm groups (Hsieh et al. 2020 use 2 for federated ResNets)", ge=1)
    width: int = key(64, "ResNet-18's first-stage channels w (stages w-2w-4w-8w): a small w makes a quick "
                     "test model", ge=1)
    augment: bool = key(False, "random crop and flip in local training")
    test_subsample: int | None = key(None, "seeded random subset of the test set for quick runs (null: all)",
                                     ge=1, note="(all)")
    train_subsample: int | None = key(None, "seeded random subset of the training set (null: all)", ge=1,
                                      note="(all)")
    test_fraction: float = key(0.2, "held-out share of digits, which has no official split", gt=0, lt=1)
    split_seed: int = key(0, "seed of digits' held-out split")
    eval_batch: int = key(1000, "evaluation batch size", ge=1)
    amp: bool = key(
        False, "bfloat16 autocast of local training's forward passes; evaluation and FIPA's curvature stay "
        "in float32 (for GPUs; benchmarks/bench_vision_precision.py measures the gain)")
    channels_last: bool = key(
        False, "NHWC images on CUDA, which lets cuDNN use its channels-last (tensor-core) convolutions")

    def check(self) -> list[tuple[str, str]]:
        out = DATASETS.name_problems(self.dataset, "dataset") + MODELS.name_problems(self.model, "model")
        if self.model == "resnet18" and self.norm == "none":
            out.append(("norm", "resnet18 needs a normalization layer: group or batch"))
        return out


def _subsample(x: torch.Tensor, y: torch.Tensor, k: int | None, seed: int, salt: int):
    if k is None or k >= len(y):
        return x, y
    idx = torch.as_tensor(np.sort(np.random.default_rng([seed, salt]).permutation(len(y))[:k]))
    return x[idx], y[idx]


@TASKS.register("vision")
class Vision(Task):
    """Softmax classification of images; test accuracy is the primary metric."""

    Params = VisionParams
    loss_kind = "ce"
    metrics = {"test_acc": "max"}
    primary_metric = "test_acc"
    has_features = True
    sample_step_seconds = 3.8e-4  # a digits_cnn image's forward and backward (2 cores)
    resources = {"mem_mb": 16000, "runtime": 720}  # per job (ResNet-18 on CIFAR); see Task.resources
    # training images of the data sets, and models' per-image cost relative to digits_cnn:
    # rough priors of the grid's time-left estimate, corrected once a job has finished
    POOL_SIZES: ClassVar[dict[str, int]] = {"digits": 1797, "cifar10": 50000, "cifar100": 50000,
                                            "tiny_imagenet": 100000}
    MODEL_COST: ClassVar[dict[str, float]] = {"digits_cnn": 1.0, "cnn2": 20.0, "resnet18": 500.0}

    @classmethod
    def catalog(cls):
        return {"vision data sets (task.dataset)": DATASETS, "vision models (task.model)": MODELS}

    @classmethod
    def work_samples(cls, params: VisionParams) -> int:
        pool = cls.POOL_SIZES.get(params.dataset, 10000)
        if params.dataset == "digits":
            pool = int(pool * (1 - params.test_fraction))
        return pool if params.train_subsample is None else min(pool, params.train_subsample)

    @classmethod
    def sample_seconds(cls, params: VisionParams) -> float:
        scale = cls.MODEL_COST.get(params.model, 1.0)
        if params.model == "resnet18":
            scale *= (params.width / 64) ** 2  # convolution cost grows with channels squared
        return cls.sample_step_seconds * scale

    def __init__(self, params: VisionParams, seed: int, dtype: torch.dtype) -> None:
        super().__init__(params, seed, dtype)
        data = load_dataset(params.dataset, params.root, params.split_seed, params.test_fraction)
        self.data = data
        # subsets depend on split_seed, not the run seed: every seed sees the same pool
        self.x_train, self.y_train = _subsample(data.x_train, data.y_train, params.train_subsample,
                                                params.split_seed, 0x7A1)
        self.x_test, self.y_test = _subsample(data.x_test, data.y_test, params.test_subsample,
                                              params.split_seed, 0x7E5)
        c = data.x_train.shape[1]
        self._mean = torch.tensor(data.mean, dtype=dtype).view(c, 1, 1)
        self._std = torch.tensor(data.std, dtype=dtype).view(c, 1, 1)

    @classmethod
    def missing_data(cls, params: VisionParams) -> str | None:
        return missing(params.dataset, params.root)

    def partition_input(self) -> PartitionInput:
        return PartitionInput(n=len(self.y_train), labels=self.y_train.numpy(),
                              num_classes=self.data.num_classes)

    def client_data(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": self.x_train[idx], "y": self.y_train[idx]}

    def build_model(self) -> nn.Module:
        _, c, h, _ = self.data.x_train.shape
        builder = MODELS.get(self.params.model, key="task.model")
        return builder(c, h, self.data.num_classes, self.params).to(self.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images [n, C, H, W] -> standardized floats of the task dtype, same device
        (channels-last in memory on CUDA when ``channels_last`` is on)."""
        z = x.to(self.dtype) * self.data.scale
        z = (z - self._mean.to(x.device)) / self._std.to(x.device)
        if self.params.channels_last and z.is_cuda:
            z = z.contiguous(memory_format=torch.channels_last)
        return z

    def autocast(self, device: torch.device):
        """bfloat16 autocast on ``device`` when ``amp`` is on (meant for GPUs; CPUs support it
        but rarely gain). Losses are computed in float32 by autocast's own rules."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.params.amp)

    def outputs(self, model, params, batch):
        return functional_call(model, params, (self.normalize(batch["x"]),))

    @property
    def augments(self) -> bool:
        return self.params.augment

    def features(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch):
        """(penultimate features [n, d], logits [n, K]) in one forward pass (for FedRCL)."""
        return functional_call(model, params, (self.normalize(batch["x"]),), {"features": True})

    def train_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Random crop (zero padding) and flip of a training minibatch when ``augment`` is on.

        Draws from ``gen`` only when augmenting, so runs without it keep their random stream.
        """
        if not self.params.augment:
            return batch
        x = batch["x"]
        n, c, h, w = x.shape
        pad = self.data.crop_pad
        # crop: offsets (dy, dx) in [0, 2 pad]; gather rows dy + i and columns dx + j
        off = torch.randint(0, 2 * pad + 1, (2, n), generator=gen).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        xc = xp[torch.arange(n, device=x.device)[:, None, None, None],
                torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.data.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
            xc = torch.where(flip[:, None, None, None], xc.flip(-1), xc)
        return {**batch, "x": xc}

    def evaluate(self, model, params) -> dict[str, float]:
        device = next(iter(params.values())).device
        loss, correct = 0.0, 0
        bs = self.params.eval_batch
        with torch.no_grad():
            for i in range(0, len(self.y_test), bs):
                x, y = self.x_test[i : i + bs].to(device), self.y_test[i : i + bs].to(device)
                out = functional_call(model, params, (self.normalize(x),))
                loss += float(per_sample_loss("ce", out, y).sum())
                correct += int((out.argmax(-1) == y).sum())
        n = len(self.y_test)
        return {"test_loss": loss / n, "test_acc": correct / n}

    def describe(self) -> str:
        return f"vision[{self.params.dataset}/{self.params.model}]"
