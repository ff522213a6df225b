"""Atomic file writes: a reader never sees half a file, a killed writer leaves the old one.

Also the cache of computed inputs (reference solutions, generated data sets) built on them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

TEMP_SUFFIX = ".partial"  # temp files of atomic_write: .<name>.<random>.partial


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write through ``write(fh)`` into a temp file beside ``path``, then ``os.replace`` it.

    The file gets the permissions of an ordinary new file (0666 minus the umask), not
    mkstemp's private 0600, so a group can read results on a shared cluster.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                from fipa.errors import ConfigError

                mark = key_node.start_mark
                raise ConfigError(f"{key}: given twice in one mapping (line {mark.line + 1}); "
                                  "keep one, YAML would silently use the last")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text_or_stream: Any) -> Any:
    """yaml.safe_load with duplicate keys rejected (ConfigError naming the key and line)."""
    return yaml.load(text_or_stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return load_yaml(fh)


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


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Delete temp files that killed writers left in ``directory`` (not recursive); their count.

    Called by the one process that holds the directory's run lock, so no live writer owns them.
    """
    d = Path(directory)
    stale = list(d.glob(f".*{TEMP_SUFFIX}")) if d.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


class RunDirLock:
    """An exclusive lock on a run directory for as long as one process trains into it.

    ``flock`` on ``<dir>/.lock`` (released by the kernel when the holder dies, so a SIGKILL
    never leaves a stale lock); the file records the holder's host and pid for the message
    a second process gets. Re-entrant within one process (a batch resumes a cell alone).
    """

    _held: dict[Path, tuple[IO, int]] = {}

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).resolve()

    def acquire(self) -> None:
        import fcntl
        import socket

        if self.directory in self._held:
            fh, n = self._held[self.directory]
            self._held[self.directory] = (fh, n + 1)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = open(self.directory / ".lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            from fipa.errors import RunDirBusy

            raise RunDirBusy(f"{self.directory}: another run is training into this directory "
                             f"({holder}); wait for it to finish or use another output directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        fh.flush()
        self._held[self.directory] = (fh, 1)

    def release(self) -> None:
        if self.directory not in self._held:
            return
        fh, n = self._held.pop(self.directory)
        if n > 1:
            self._held[self.directory] = (fh, n - 1)
            return
        fh.close()  # closing the descriptor drops the flock


def cached_arrays(directory: str | os.PathLike, name: str, key: dict,
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()`` (named arrays) once per distinct ``key``; later calls read
    ``directory/name-<hash>.npz``, the hash a fingerprint of every number in ``key``.

    The file also stores the key itself, so a hash collision or hand-edited file is
    detected and the value recomputed instead of trusted; an unreadable entry is recomputed
    and overwritten (atomically, so parallel jobs never read half a file).
    """
    blob = json.dumps(key, sort_keys=True, default=float)
    path = Path(directory) / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                if str(f["key"]) == blob:
                    return {k: f[k] for k in f.files if k != "key"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable cache entry: recompute and overwrite it
    value = compute()
    atomic_write(path, lambda fh: np.savez(fh, key=np.array(blob), **value), mode="wb")
    return value
