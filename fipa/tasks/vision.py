"""Image classification: digits / CIFAR / Tiny-ImageNet data, small CNNs and a CIFAR ResNet-18.

Images are kept as raw uint8 tensors [n, C, H, W] (CIFAR-10 is 150 MB this way instead
of 600 MB in float32) and normalized inside :meth:`Vision.outputs`, on the device.
Vision runs should set ``dtype: float32`` in the run config (the global default is the
float64 of the small regression/PDE tasks).

Normalization layers: GroupNorm by default (no running statistics, so the flat parameter
vector is the whole model state and FIPA/FedAvg see everything). ``norm: batch`` uses
BatchNorm with running statistics: batch statistics in local training, running ones in
evaluation and curvature; the clients' running statistics are averaged by sample count
each round, whatever the aggregator (fipa/buffers.py).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fipa.errors import ConfigError
from fipa.losses import per_sample_loss
from fipa.partition import PartitionInput
from fipa.registry import Registry
from fipa.tasks.base import TASKS, Batch, Task

# ----------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set held in memory (raw values, normalized later)."""

    x_train: torch.Tensor  # [n, C, H, W] uint8
    y_train: torch.Tensor  # [n] int64
    x_test: torch.Tensor  # [n_test, C, H, W] uint8
    y_test: torch.Tensor  # [n_test] int64
    num_classes: int
    scale: float  # raw value * scale lies in [0, 1]
    mean: tuple[float, ...]  # per channel, after scaling
    std: tuple[float, ...]
    crop_pad: int  # augmentation: random crop after zero padding by this many pixels
    flip: bool  # augmentation: random horizontal flips (never for digits)


Loader = Callable[[str, int, float], ImageData]  # (root, split_seed, test_fraction)
DATASETS: Registry[Loader] = Registry("vision data set")


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8], labels [1797]) from the CSV file that scikit-learn ships and its
    ``load_digits`` parses the same way; read directly, since importing scikit-learn costs
    about 2 s of every job's start-up. Falls back to ``load_digits`` if the file moved."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


@DATASETS.register("digits")
def load_digits_data(root: str, split_seed: int, test_fraction: float) -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, values 0..16, shipped with the package)."""
    images, target = _sklearn_digits()
    x = torch.as_tensor(images, dtype=torch.uint8)[:, None]  # [1797, 1, 8, 8]
    y = torch.as_tensor(target, dtype=torch.int64)
    perm = torch.as_tensor(np.random.default_rng([split_seed, 0xD161]).permutation(len(y)))
    n_test = round(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    scaled = x[train].double() / 16
    return ImageData(x[train], y[train], x[test], y[test], 10, 1 / 16,
                     (float(scaled.mean()),), (float(scaled.std()),), crop_pad=1, flip=False)


_CIFAR_STATS = {  # channel means / stds of the training sets, the usual constants
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(name: str, root: str) -> ImageData:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        train, test = cls(root, train=True), cls(root, train=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        raise ConfigError(
            f"task.root: {name} not found under {root}; download it with "
            f"`fipa download {name} --root {root}`") from None

    def arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision keeps CIFAR as a uint8 array [n, H, W, C] and a list of labels
        x = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    mean, std = _CIFAR_STATS[name]
    return ImageData(*arrays(train), *arrays(test), len(train.classes), 1 / 255, mean, std,
                     crop_pad=4, flip=True)


DATASETS.register("cifar10")(lambda root, split_seed, test_fraction: _cifar("cifar10", root))
DATASETS.register("cifar100")(lambda root, split_seed, test_fraction: _cifar("cifar100", root))

TINY_DIR = "tiny_imagenet"  # under ``root``: train/<wnid>/*, val/<wnid>/* and tensor caches


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(root: str, split_seed: int, test_fraction: float) -> ImageData:
    """Tiny-ImageNet (200 classes, 64x64) from the ImageFolder tree ``fipa prepare`` writes.

    The decoded images are cached as uint8 tensors next to the tree on first use.
    """
    base = Path(root) / TINY_DIR
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise ConfigError(
            f"task.root: no prepared Tiny-ImageNet under {base}; get tiny-imagenet-200 and run "
            f"`fipa prepare tiny-imagenet PATH --root {root}` (or `fipa download tiny_imagenet "
            f"--root {root}`)")
    (xtr, ytr, classes), (xte, yte, _) = _image_folder(base / "train"), _image_folder(base / "val")
    return ImageData(xtr, ytr, xte, yte, len(classes), 1 / 255, (0.4802, 0.4481, 0.3975),
                     (0.2770, 0.2691, 0.2821), crop_pad=8, flip=True)


def _image_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x uint8 [n, 3, H, W], y [n], class names) of an ImageFolder tree, cached in a .pt file."""
    from fipa.io import atomic_write

    cache = folder.with_suffix(".pt")
    if cache.is_file():
        raw = torch.load(cache, weights_only=True)
        return raw["x"], raw["y"], raw["classes"]
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    ds = ImageFolder(str(folder), transform=lambda im: pil_to_tensor(im.convert("RGB")))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    atomic_write(cache, lambda fh: torch.save({"x": x, "y": y, "classes": ds.classes}, fh), mode="wb")
    return x, y, list(ds.classes)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str, split_seed: int, test_fraction: float) -> ImageData:
    """The data set, loaded once per process (tests and sweeps build many tasks)."""
    return DATASETS.get(name, key="task.dataset")(root, split_seed, test_fraction)


# ----------------------------------------------------------------------------- download, prepare


def download(name: str, root: str) -> list[str]:
    """Fetch a data set into ``root`` (needs the internet); returns what was written."""
    name = name.replace("-", "_")
    try:
        return _download(name, root)
    except OSError as e:  # urllib's URLError is an OSError: no network, proxy, full disk
        raise ConfigError(f"download: fetching {name} into {root} failed ({e}); check the network, "
                          f"or copy the data set there by hand") from None


def _download(name: str, root: str) -> list[str]:
    if name in ("cifar10", "cifar100"):
        from torchvision import datasets

        cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
        return [str(Path(root))]
    if name == "tiny_imagenet":
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", root)
        return [str(prepare_tiny_imagenet(Path(root) / "tiny-imagenet-200", root))]
    raise ConfigError(f"download: unknown data set {name!r}; choose cifar10, cifar100 or tiny_imagenet "
                      "(digits ships with scikit-learn)")


def prepare_tiny_imagenet(source: str | Path, root: str | Path) -> Path:
    """Arrange an extracted ``tiny-imagenet-200`` folder as ImageFolder trees under root.

    ``source/train/<wnid>/images/*`` -> ``root/tiny_imagenet/train/<wnid>/*``;
    ``source/val/images/*`` sorted by ``val/val_annotations.txt`` -> ``.../val/<wnid>/*``
    (the official test split has no labels; its val split is the test set here).
    Files are hard-linked where possible, else copied; the source is left as it is.
    """
    source, dest = Path(source), Path(root) / TINY_DIR
    ann = source / "val" / "val_annotations.txt"
    if not (source / "train").is_dir() or not ann.is_file():
        raise ConfigError(f"prepare: {source} is not an extracted tiny-imagenet-200 folder "
                          "(needs train/ and val/val_annotations.txt)")
    pairs: list[tuple[Path, Path]] = []
    for cls_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        img_dir = cls_dir / "images" if (cls_dir / "images").is_dir() else cls_dir
        pairs += [(f, dest / "train" / cls_dir.name / f.name) for f in sorted(img_dir.iterdir())
                  if f.is_file() and not f.name.endswith(".txt")]
    for line in ann.read_text().splitlines():
        fname, wnid = line.split("\t")[:2]
        pairs.append((source / "val" / "images" / fname, dest / "val" / wnid / fname))
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(src, dst)
    for split in ("train", "val"):
        (dest / f"{split}.pt").unlink(missing_ok=True)  # a stale cache would hide new files
        _image_folder(dest / split)
    return dest


# ----------------------------------------------------------------------------- models


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(groups, channels), channels)


def _norm_layers(p: VisionParams, channels: int, default: str) -> list[nn.Module]:
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
        """x [n, C, H, W] -> logits [n, K], or (features [n, d], logits [n, K])."""
        z = self.body(x)
        out = self.head(z)
        return (z, out) if features else out


ModelBuilder = Callable[[int, int, int, "VisionParams"], nn.Module]  # (channels, size, classes, p)
MODELS: Registry[ModelBuilder] = Registry("vision model")


@MODELS.register("digits_cnn")
def digits_cnn(channels: int, size: int, classes: int, p: VisionParams) -> nn.Module:
    """conv3x3(16) relu pool, conv3x3(32) relu pool, fc 64 relu, fc K: P = 13,706 on 1x8x8
    (no normalization unless ``norm`` asks for one after each convolution)."""
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), *_norm_layers(p, 16, "none"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), *_norm_layers(p, 32, "none"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(),
    )
    return Classifier(body, nn.Linear(64, classes))


@MODELS.register("cnn2")
def cnn2(channels: int, size: int, classes: int, p: VisionParams) -> nn.Module:
    """The two-conv CNN of McMahan et al. (2017): conv5x5(32), pool, conv5x5(64), pool, fc 512
    (no normalization unless ``norm`` asks for one after each convolution)."""
    body = nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2), *_norm_layers(p, 32, "none"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), *_norm_layers(p, 64, "none"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 512), nn.ReLU(),
    )
    return Classifier(body, nn.Linear(512, classes))


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


@MODELS.register("resnet18")
def resnet18(channels: int, size: int, classes: int, p: VisionParams) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem without max-pool, stages 64-128-256-512, P ~ 1.1e7."""

    def norm(c: int) -> nn.Module:
        return _norm("group" if p.norm == "default" else p.norm, c, p.groups)

    layers: list[nn.Module] = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), norm(64), nn.ReLU()]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
        c_in = c_out
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(512, classes))


# ----------------------------------------------------------------------------- task


@dataclass
class VisionParams:
    """dataset (DATASETS), model (MODELS); ``root`` holds downloaded data.

    test_subsample / train_subsample: seeded random subsets (null: all) for quick runs.
    test_fraction and split_seed only matter for digits, which has no official split.
    """

    dataset: str = "digits"
    root: str = "data"
    model: str = "digits_cnn"
    norm: Literal["default", "none", "group", "batch"] = "default"  # default: group (resnet18), none
    groups: int = 2  # GroupNorm groups (Hsieh et al. 2020 use 2 for federated ResNets)
    augment: bool = False
    test_subsample: int | None = None
    train_subsample: int | None = None
    test_fraction: float = 0.2
    split_seed: int = 0
    eval_batch: int = 1000
    amp: bool = False  # bfloat16 autocast of local training's forward passes
    channels_last: bool = False  # NHWC images on CUDA (tensor-core convolutions)

    def check(self) -> list[tuple[str, str]]:
        out = []
        if self.dataset not in DATASETS:
            out.append(("dataset", f"unknown data set {self.dataset!r}; choose one of "
                        f"{', '.join(DATASETS.names())}"))
        if self.model not in MODELS:
            out.append(("model", f"unknown model {self.model!r}; choose one of {', '.join(MODELS.names())}"))
        for key in ("test_subsample", "train_subsample"):
            v = getattr(self, key)
            if v is not None and v < 1:
                out.append((key, f"must be >= 1 or null (all), got {v}"))
        if not 0 < self.test_fraction < 1:
            out.append(("test_fraction", f"must lie in (0, 1), got {self.test_fraction}"))
        if self.model == "resnet18" and self.norm == "none":
            out.append(("norm", "resnet18 needs a normalization layer: group or batch"))
        if self.groups < 1:
            out.append(("groups", f"must be >= 1, got {self.groups}"))
        if self.eval_batch < 1:
            out.append(("eval_batch", f"must be >= 1, got {self.eval_batch}"))
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
