"""Atomic file writes: a reader never sees half a file, a killed writer leaves the old one."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write through ``write(fh)`` into a temp file beside ``path``, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=str))


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda fh: yaml.safe_dump(obj, fh, sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str]):
    """Rows of dicts -> CSV with a fixed column order; floats in full precision (repr)."""

    def write(fh: IO) -> None:
        w = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k, "")) for k in columns})

    atomic_write(path, write)


def _fmt(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v
