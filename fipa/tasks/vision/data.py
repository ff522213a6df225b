"""Labelled arrays held in memory: the DATASETS registry and its loaders (digits, MNIST-1D, CIFAR,
Tiny-ImageNet).

Inputs are kept raw, [n, C, *spatial]: images as uint8 [n, C, H, W] (CIFAR-10 is 150 MB this way
instead of 600 MB in float32), 1-D signals as float32 [n, C, L]; the task normalizes them on the
device.

A data set is one loader function registered with what the pipeline reads of it:
``@DATASETS.register(name, params=Options, train_size=..., spatial_dims=..., missing=...)``.
``params`` is the data set's own options dataclass (``task.data`` in a config, checked against it),
``train_size`` the training pool for the time-left estimate's cost prior, ``spatial_dims`` the
axes after the channel (2 for images, 1 for signals; a model declares the same), ``missing(root)``
what is absent on disk. The loader receives one :class:`DataRequest`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fipa.errors import ConfigError
from fipa.registry import Registry


@dataclass(frozen=True)
class ArrayData:
    """A labelled data set held in memory (raw values, normalized later by the task)."""

    x_train: torch.Tensor  # [n, C, *spatial]: uint8 images [n, C, H, W] or float32 signals [n, C, L]
    y_train: torch.Tensor  # [n] int64
    x_test: torch.Tensor  # [n_test, C, *spatial]
    y_test: torch.Tensor  # [n_test] int64
    num_classes: int
    scale: float  # raw value * scale: images in [0, 1]; 1 for data stored as floats
    mean: tuple[float, ...]  # per channel, after scaling
    std: tuple[float, ...]
    crop_pad: int = 0  # augmentation of 2-D images: random crop after zero padding by this many pixels
    flip: bool = False  # augmentation of 2-D images: random horizontal flips (never for digits)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of one sample."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DataRequest:
    """What a loader is asked for: where data and caches live, digits' split, its own options."""

    root: str  # folder of downloaded data sets
    cache: str  # folder of generated data sets (under results/)
    split_seed: int  # seed of a held-out split the data set does not ship
    test_fraction: float  # its size
    options: Any  # the data set's own options: an instance of its ``Params``


@dataclass
class NoOptions:
    """A data set without options of its own."""


def nothing_missing(root: str) -> str | None:
    """Data generated or shipped with a package: nothing to download."""
    return None


Loader = Callable[[DataRequest], ArrayData]
DATASETS: Registry[Loader] = Registry("vision data set", declares={
    "Params": NoOptions, "train_size": 10000, "spatial_dims": 2, "missing": nothing_missing})


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


@DATASETS.register("digits", train_size=1438)
def load_digits_data(req: DataRequest) -> ArrayData:
    """scikit-learn's 8x8 digits (1797 images, values 0..16, shipped with the package), a held-out
    share ``test_fraction`` drawn with ``split_seed``."""
    images, target = _sklearn_digits()
    x = torch.as_tensor(images, dtype=torch.uint8)[:, None]  # [1797, 1, 8, 8]
    y = torch.as_tensor(target, dtype=torch.int64)
    perm = torch.as_tensor(np.random.default_rng([req.split_seed, 0xD161]).permutation(len(y)))
    n_test = round(req.test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    scaled = x[train].double() / 16
    return ArrayData(x[train], y[train], x[test], y[test], 10, 1 / 16,
                     (float(scaled.mean()),), (float(scaled.std()),), crop_pad=1, flip=False)


_CIFAR_STATS = {  # channel means / stds of the training sets, the usual constants
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR data set lies under ``root``: torchvision's on-disk format, which
    ``fipa download`` writes (pickled dicts with ``data`` uint8 [n, 3072] in C, H, W order)."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str  # class names in the meta file
    labels_key: str  # labels in each data file


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           ("test_batch",), "batches.meta", "label_names", "labels"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_label_names",
                            "fine_labels"),
}


def _unpickle(path: Path) -> dict:
    """One CIFAR file, read as torchvision reads it (latin1: the files were pickled by Python 2)."""
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _cifar_split(folder: Path, files: tuple[str, ...], labels_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 [n, 3, 32, 32], y int64 [n]) of the data files ``files``, in order."""
    entries = [_unpickle(folder / f) for f in files]
    x = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(e[labels_key], dtype=np.int64) for e in entries])
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    return torch.from_numpy(x), torch.from_numpy(y)


def _cifar(name: str, root: str) -> ArrayData:
    """CIFAR-10/100 read from torchvision's folder under ``root``.

    Read directly rather than through torchvision's dataset classes: those verify each file
    against the MD5 of the official release, which hashes ~180 MB in every job and refuses any
    other data in the same format (a subset, a test fixture); a damaged file still fails here,
    with the command that fetches it again.
    """
    if why := cifar_missing(name, root):
        raise ConfigError(f"task.root: {why}")
    layout = CIFAR_LAYOUTS[name]
    folder = Path(root) / layout.folder
    try:
        classes = _unpickle(folder / layout.meta)[layout.names_key]
        (xtr, ytr), (xte, yte) = (_cifar_split(folder, files, layout.labels_key)
                                  for files in (layout.train, layout.test))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"task.root: {name} under {folder} is corrupt ({type(e).__name__}: {e}); delete "
                          f"it and download it again with `fipa download {name} --root {root}`") from None
    mean, std = _CIFAR_STATS[name]
    return ArrayData(xtr, ytr, xte, yte, len(classes), 1 / 255, mean, std, crop_pad=4, flip=True)


def cifar_missing(name: str, root: str) -> str | None:
    """The first CIFAR file absent under ``root`` and the command that fetches it, or None."""
    layout = CIFAR_LAYOUTS[name]
    folder = Path(root) / layout.folder
    absent = [f for f in (*layout.train, *layout.test, layout.meta) if not (folder / f).is_file()]
    if absent:
        return (f"{name} not found under {root} (no {folder / absent[0]}); download it with "
                f"`fipa download {name} --root {root}`")
    return None


@DATASETS.register("cifar10", train_size=50000, missing=functools.partial(cifar_missing, "cifar10"))
def load_cifar10(req: DataRequest) -> ArrayData:
    """CIFAR-10 (50,000 + 10,000 images 3x32x32, 10 classes) from torchvision's folder under root."""
    return _cifar("cifar10", req.root)


@DATASETS.register("cifar100", train_size=50000, missing=functools.partial(cifar_missing, "cifar100"))
def load_cifar100(req: DataRequest) -> ArrayData:
    """CIFAR-100 (50,000 + 10,000 images 3x32x32, 100 classes) from torchvision's folder under root."""
    return _cifar("cifar100", req.root)


TINY_DIR = "tiny_imagenet"  # under ``root``: train/<wnid>/*, val/<wnid>/* and tensor caches


def tiny_imagenet_missing(root: str) -> str | None:
    """What of the prepared Tiny-ImageNet tree is absent under ``root`` and how to make it, or None."""
    base = Path(root) / TINY_DIR
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        return (f"no prepared Tiny-ImageNet under {base}; get tiny-imagenet-200 and run "
                f"`fipa prepare tiny-imagenet PATH --root {root}` (or `fipa download tiny_imagenet "
                f"--root {root}`)")
    return None


@DATASETS.register("tiny_imagenet", train_size=100000, missing=tiny_imagenet_missing)
def load_tiny_imagenet(req: DataRequest) -> ArrayData:
    """Tiny-ImageNet (200 classes, 64x64) from the ImageFolder tree ``fipa prepare`` writes.

    The decoded images are cached as uint8 tensors next to the tree on first use.
    """
    root = req.root
    if why := tiny_imagenet_missing(root):
        raise ConfigError(f"task.root: {why}")
    base = Path(root) / TINY_DIR
    (xtr, ytr, classes), (xte, yte, _) = image_folder(base / "train"), image_folder(base / "val")
    return ArrayData(xtr, ytr, xte, yte, len(classes), 1 / 255, (0.4802, 0.4481, 0.3975),
                     (0.2770, 0.2691, 0.2821), crop_pad=8, flip=True)


def image_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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


def missing(name: str, root: str) -> str | None:
    """What data set ``name`` lacks under ``root`` and the command that fetches it, or None when
    its files are there (digits, MNIST-1D: always). Looks at paths only, so the workflow can ask
    before any job; a loader asks first too, so both report the same thing."""
    return DATASETS.get(name, key="task.dataset").missing(root)


@functools.lru_cache(maxsize=4)
def _load(name: str, root: str, cache: str, split_seed: int, test_fraction: float, options: str) -> ArrayData:
    entry = DATASETS.get(name, key="task.dataset")
    return entry(DataRequest(root, cache, split_seed, test_fraction, entry.Params(**json.loads(options))))


def load_dataset(name: str, req: DataRequest) -> ArrayData:
    """The data set, loaded once per process (tests and sweeps build many tasks)."""
    options = json.dumps(dataclasses.asdict(req.options), sort_keys=True)
    return _load(name, req.root, req.cache, req.split_seed, req.test_fraction, options)
