"""Choose the torch device for a job: a distinct free GPU from a lock-file pool, or the CPU.

Snakemake's ``--resources gpu=N`` bounds how many training jobs run at once; this module
decides *which* GPU each one gets. A job holds an exclusive ``flock`` on one lock file per
GPU; the kernel drops the lock when the process ends, so a crashed or killed job never
leaves its GPU reserved.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fipa.config import ConfigError

GPUS_ENV = "FIPA_GPUS"  # comma-separated GPU indices; overrides detection (tests fake GPUs)
LOCK_DIR_ENV = "FIPA_GPU_LOCK_DIR"


def visible_gpus() -> list[int]:
    """GPU indices this job may use: $FIPA_GPUS if set, else every CUDA device."""
    raw = os.environ.get(GPUS_ENV)
    if raw is not None:
        return [int(x) for x in raw.split(",") if x.strip()]
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def lock_dir() -> Path:
    d = Path(os.environ.get(LOCK_DIR_ENV, Path(tempfile.gettempdir()) / f"fipa-gpu-locks-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def gpu_slot(gpus: list[int], poll_s: float = 0.2, timeout_s: float | None = None) -> Iterator[int]:
    """Hold an exclusive lock on one free GPU of ``gpus`` for the duration of the block."""
    start = time.monotonic()
    while True:
        for gpu in gpus:
            fh = open(lock_dir() / f"gpu{gpu}.lock", "a+")  # noqa: SIM115 - held across the yield
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()}\n")
                fh.flush()
                yield gpu
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free GPU among {gpus} after {timeout_s} s")
        time.sleep(poll_s)


@contextmanager
def claim(device: str) -> Iterator[torch.device]:
    """The device for a job: ``cpu``; ``cuda:N`` as given; ``cuda``/``auto`` from the pool."""
    if device == "cpu":
        yield torch.device("cpu")
        return
    if device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} requested but no CUDA device is visible; use cpu")
        yield torch.device(device)
        return
    gpus = visible_gpus()
    if not gpus:
        if device == "cuda":
            raise ConfigError("device: 'cuda' requested but no CUDA device is visible; use cpu or auto")
        yield torch.device("cpu")
        return
    with gpu_slot(gpus) as gpu:
        yield torch.device(f"cuda:{gpu}")
