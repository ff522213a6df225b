"""Image data sets held in memory: the DATASETS registry and its loaders (digits, CIFAR, Tiny-ImageNet).

Images are kept as raw uint8 tensors [n, C, H, W] (CIFAR-10 is 150 MB this way instead of
600 MB in float32); the task normalizes them on the device.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fipa.errors import ConfigError
from fipa.registry import Registry


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


def _cifar(name: str, root: str) -> ImageData:
    """CIFAR-10/100 read from torchvision's folder under ``root``.

    Read directly rather than through torchvision's dataset classes: those verify each file
    against the MD5 of the official release, which hashes ~180 MB in every job and refuses any
    other data in the same format (a subset, a test fixture); a damaged file still fails here,
    with the command that fetches it again.
    """
    if why := missing(name, root):
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
    return ImageData(xtr, ytr, xte, yte, len(classes), 1 / 255, mean, std, crop_pad=4, flip=True)


@DATASETS.register("cifar10")
def load_cifar10(root: str, split_seed: int, test_fraction: float) -> ImageData:
    """CIFAR-10 (50,000 + 10,000 images 3x32x32, 10 classes) from torchvision's folder under root."""
    return _cifar("cifar10", root)


@DATASETS.register("cifar100")
def load_cifar100(root: str, split_seed: int, test_fraction: float) -> ImageData:
    """CIFAR-100 (50,000 + 10,000 images 3x32x32, 100 classes) from torchvision's folder under root."""
    return _cifar("cifar100", root)


TINY_DIR = "tiny_imagenet"  # under ``root``: train/<wnid>/*, val/<wnid>/* and tensor caches


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(root: str, split_seed: int, test_fraction: float) -> ImageData:
    """Tiny-ImageNet (200 classes, 64x64) from the ImageFolder tree ``fipa prepare`` writes.

    The decoded images are cached as uint8 tensors next to the tree on first use.
    """
    if why := missing("tiny_imagenet", root):
        raise ConfigError(f"task.root: {why}")
    base = Path(root) / TINY_DIR
    (xtr, ytr, classes), (xte, yte, _) = image_folder(base / "train"), image_folder(base / "val")
    return ImageData(xtr, ytr, xte, yte, len(classes), 1 / 255, (0.4802, 0.4481, 0.3975),
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
    its files are there (digits: always). Looks at paths only, so the workflow can ask before
    any job; a loader asks first too, so both report the same thing."""
    if name in CIFAR_LAYOUTS:
        layout = CIFAR_LAYOUTS[name]
        folder = Path(root) / layout.folder
        absent = [f for f in (*layout.train, *layout.test, layout.meta) if not (folder / f).is_file()]
        if absent:
            return (f"{name} not found under {root} (no {folder / absent[0]}); download it with "
                    f"`fipa download {name} --root {root}`")
    if name == "tiny_imagenet":
        base = Path(root) / TINY_DIR
        if not (base / "train").is_dir() or not (base / "val").is_dir():
            return (f"no prepared Tiny-ImageNet under {base}; get tiny-imagenet-200 and run "
                    f"`fipa prepare tiny-imagenet PATH --root {root}` (or `fipa download tiny_imagenet "
                    f"--root {root}`)")
    return None


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str, split_seed: int, test_fraction: float) -> ImageData:
    """The data set, loaded once per process (tests and sweeps build many tasks)."""
    return DATASETS.get(name, key="task.dataset")(root, split_seed, test_fraction)
