"""Fetching the vision data sets (``fipa download``) and arranging Tiny-ImageNet (``fipa prepare``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fipa.errors import ConfigError
from fipa.tasks.vision.data import TINY_DIR, image_folder


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
        image_folder(dest / split)
    return dest
