"""Small generated stand-ins for CIFAR-10, CIFAR-100 and Tiny-ImageNet, in their on-disk formats.

CIFAR: torchvision's pickled batches (what `fipa download` leaves under ``root``); Tiny-ImageNet:
the extracted ``tiny-imagenet-200`` folder that `fipa prepare tiny-imagenet` takes. Each class
has its own colour and stripe period plus noise, so a small network learns them in a few steps.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images [n, size, size, 3]: class k's colour, stripes of period 2 + k % 5, noise."""
    palette = np.random.default_rng(1234).integers(40, 216, (max(256, int(labels.max()) + 1), 3))  # [K, 3]
    rows = np.arange(size)
    period = 2 + labels % 5  # [n]
    # stripes: +-25 in rows where (row // period) is even, per image's class period
    stripes = np.where((rows[None, :] // period[:, None]) % 2 == 0, 25, -25)  # [n, size]
    img = palette[labels][:, None, None, :] + stripes[:, :, None, None] + rng.normal(0, 15, (
        len(labels), size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels [n] with every class (nearly) equally often, shuffled."""
    return rng.permutation(np.arange(n) % classes)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _cifar_entry(labels: np.ndarray, labels_key: str, rng: np.random.Generator) -> dict:
    """One pickled CIFAR file: data uint8 [n, 3072] in C, H, W order, labels as a list."""
    x = class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return {"data": x, labels_key: labels.tolist(),
            "filenames": [f"img_{i}.png" for i in range(len(labels))]}


def write_cifar10(root: Path, n_train: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py``: data_batch_1..5, test_batch and batches.meta, 10 classes."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = balanced_labels(n_train, 10, rng)
    for i, part in enumerate(np.array_split(labels, 5), start=1):
        entry = _cifar_entry(part, "labels", rng)
        _pickle(folder / f"data_batch_{i}", {**entry, "batch_label": f"training batch {i} of 5"})
    _pickle(folder / "test_batch", _cifar_entry(balanced_labels(n_test, 10, rng), "labels", rng))
    _pickle(folder / "batches.meta", {"label_names": [f"class{k}" for k in range(10)],
                                      "num_cases_per_batch": n_train // 5, "num_vis": 3072})
    return folder


def write_cifar100(root: Path, n_train: int = 400, n_test: int = 200, seed: int = 1) -> Path:
    """``root/cifar-100-python``: train, test and meta with 100 fine (and 20 coarse) classes."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 100, rng)
        entry = _cifar_entry(labels, "fine_labels", rng)
        _pickle(folder / name, {**entry, "coarse_labels": (labels // 5).tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                              "coarse_label_names": [f"coarse{k}" for k in range(20)]})
    return folder


def write_tiny_imagenet_source(path: Path, classes: int = 8, train_per_class: int = 40,
                               val_per_class: int = 10, seed: int = 2) -> Path:
    """An extracted ``tiny-imagenet-200`` folder: train/<wnid>/images/*.JPEG (+ boxes file),
    val/images/*.JPEG with val/val_annotations.txt, as the official zip holds (64x64 RGB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = Path(path)
    wnids = [f"n{k:08d}" for k in range(classes)]
    (src / "val" / "images").mkdir(parents=True, exist_ok=True)
    (src / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for k, wnid in enumerate(wnids):
        (src / "train" / wnid / "images").mkdir(parents=True, exist_ok=True)
        (src / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        train = class_images(np.full(train_per_class, k), 64, rng)
        for i, img in enumerate(train):
            Image.fromarray(img).save(src / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", quality=95)
        for i, img in enumerate(class_images(np.full(val_per_class, k), 64, rng)):
            name = f"val_{k * val_per_class + i}.JPEG"
            Image.fromarray(img).save(src / "val" / "images" / name, quality=95)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (src / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return src
