"""Choose the torch device of a job: the GPU its scheduler bound, a free GPU of a lock pool, or the CPU.

Snakemake's ``--resources gpu=N`` bounds how many training jobs run at once; this module
decides *which* GPU each one gets.

- **Scheduler-bound**: when a scheduler bound exactly one GPU to the job (``SLURM_STEP_GPUS``
  or ``SLURM_JOB_GPUS``, or ``CUDA_VISIBLE_DEVICES`` inside a SLURM/PBS/LSF job: what
  profiles/slurm's ``--gpus=1`` gives each training job), that GPU is used as is, without
  a lock: the scheduler already keeps other jobs off it.
- **Lock pool** (a workstation, or several GPUs in one allocation): a job holds an exclusive
  ``flock`` on one lock file per *physical* GPU, keyed by its UUID (from
  ``CUDA_VISIBLE_DEVICES`` when it lists UUIDs, else the CUDA runtime's), else by its index
  in the unmasked device list, so two jobs meet on a lock only when they really share a GPU,
  whatever CUDA's renumbering calls it in each. The lock files live in a per-node, per-user
  directory (``/dev/shm/fipa-gpu-locks-<uid>``). The kernel drops a lock when its process
  ends, so a crashed or killed job never leaves its GPU reserved. A job waits at most
  ``$FIPA_GPU_WAIT_S`` seconds (600) for a free GPU, then fails naming the holders.
- ``cuda:N`` is the N-th GPU granted to the job (CUDA counts the visible devices from 0);
  asking for more than were granted is an error before training.
- Inside a scheduler job that was granted no GPU, ``auto`` is the CPU and ``cuda`` an error,
  even where the node's GPUs are visible: they belong to other jobs.

Test-only: ``FIPA_FAKE_CUDA=1`` treats the entries of ``CUDA_VISIBLE_DEVICES`` as GPUs on a
machine without CUDA; every step above runs, but the job trains on the CPU.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fipa.errors import ConfigError, FipaError

GPUS_ENV = "FIPA_GPUS"  # comma-separated GPU ordinals this job may use; overrides detection
LOCK_DIR_ENV = "FIPA_GPU_LOCK_DIR"
WAIT_ENV = "FIPA_GPU_WAIT_S"  # seconds a job waits for a free GPU of the pool
FAKE_ENV = "FIPA_FAKE_CUDA"  # test-only: CUDA_VISIBLE_DEVICES lists stand-in GPUs; train on the CPU
DEFAULT_WAIT_S = 600.0
SCHEDULER_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
SCHEDULER_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


class GpuWaitTimeout(FipaError, TimeoutError):
    """Every GPU of the pool stayed held by other jobs for longer than the wait allows."""


@dataclass(frozen=True)
class Gpu:
    """One GPU a job may use: torch's ordinal in this process and the physical device's key."""

    ordinal: int  # cuda:<ordinal>, counted among the visible devices (after CUDA_VISIBLE_DEVICES)
    key: str  # GPU-<uuid>, or index<N> in the unmasked device list

    def __str__(self) -> str:
        return f"{self.key} (cuda:{self.ordinal})"


@dataclass(frozen=True)
class Grant:
    """The GPUs granted to this job and what granted them (``bound_by`` is None on a workstation)."""

    gpus: tuple[Gpu, ...]
    bound_by: str | None
    in_scheduler_job: bool


def fake_cuda() -> bool:
    return os.environ.get(FAKE_ENV, "") not in ("", "0")


def _cuda_visible() -> list[str] | None:
    """The entries of $CUDA_VISIBLE_DEVICES, or None when it is unset."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if raw is None else [x.strip() for x in raw.split(",") if x.strip()]


def _ordinals() -> list[int]:
    """torch ordinals this job may use: $FIPA_GPUS if set, else every visible device."""
    raw = os.environ.get(GPUS_ENV)
    if raw is not None:
        return [int(x) for x in raw.split(",") if x.strip()]
    if fake_cuda():
        return list(range(len(_cuda_visible() or [])))
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _runtime_uuid(ordinal: int) -> str | None:
    """The CUDA runtime's UUID of a visible device (the one nvidia-smi shows), where there is CUDA."""
    if fake_cuda() or not torch.cuda.is_available():
        return None
    try:
        return f"GPU-{torch.cuda.get_device_properties(ordinal).uuid}"
    except (AttributeError, RuntimeError, AssertionError):
        return None


def physical_key(ordinal: int) -> str:
    """Name of the physical device behind cuda:<ordinal>: a UUID, else its unmasked index."""
    visible = _cuda_visible()
    entry = visible[ordinal] if visible is not None and ordinal < len(visible) else None
    if entry is not None and entry.startswith(("GPU-", "MIG-")):
        return entry
    uuid = _runtime_uuid(ordinal)
    if uuid is not None:
        return uuid
    return f"index{entry if entry is not None and entry.isdigit() else ordinal}"


def _scheduler_binding() -> tuple[str | None, bool]:
    """What bound this job's GPUs (e.g. ``SLURM_JOB_GPUS=1``) or None, and whether it runs in a job."""
    in_job = any(os.environ.get(v) for v in SCHEDULER_JOB_VARS)
    for var in SCHEDULER_GPU_VARS:
        if os.environ.get(var):
            return f"{var}={os.environ[var]}", True
    if in_job and _cuda_visible():
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} in a scheduler job", True
    return None, in_job


def granted() -> Grant:
    """The GPUs this job may use, each with its physical key, and what bound them."""
    bound_by, in_job = _scheduler_binding()
    if in_job and bound_by is None and os.environ.get(GPUS_ENV) is None:
        return Grant((), None, True)  # the node's GPUs belong to the jobs that were granted them
    return Grant(tuple(Gpu(i, physical_key(i)) for i in _ordinals()), bound_by, in_job)


def lock_dir() -> Path:
    """$FIPA_GPU_LOCK_DIR, else a per-node, per-user directory (/dev/shm, else the temp directory).

    /dev/shm is local to the node and, unlike $TMPDIR, not redirected per job by schedulers.
    """
    if os.environ.get(LOCK_DIR_ENV):
        d = Path(os.environ[LOCK_DIR_ENV])
    else:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
        d = base / f"fipa-gpu-locks-{os.getuid()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def lock_path(gpu: Gpu) -> Path:
    """One lock file per physical GPU of this node (the host name keeps index keys apart on shared dirs)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{socket.gethostname()}-{gpu.key}")
    return lock_dir() / f"{name}.lock"


def _holder(path: Path) -> str:
    """Who holds a lock, as its holder wrote it: pid, host, scheduler job, since when, command."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "an unknown process"
    job = f", job {info['job']}" if info.get("job") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{job} since {info.get('since')} ({info.get('cmd')})"


def _wait_limit(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    raw = os.environ.get(WAIT_ENV)
    try:
        return float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        raise ConfigError(f"{WAIT_ENV}: expected seconds, got {raw!r}") from None


@contextmanager
def gpu_slot(gpus: list[Gpu], poll_s: float = 0.2, timeout_s: float | None = None) -> Iterator[Gpu]:
    """Hold an exclusive lock on one free GPU of ``gpus`` for the duration of the block.

    Waits at most ``timeout_s`` (default $FIPA_GPU_WAIT_S, else 600 s), then raises
    GpuWaitTimeout naming the holder of each GPU.
    """
    limit = _wait_limit(timeout_s)
    start, told = time.monotonic(), False
    while True:
        for gpu in gpus:
            fh = open(lock_path(gpu), "a+")  # noqa: SIM115 - held across the yield
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps({
                    "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%H:%M:%S"),
                    "job": next((os.environ[v] for v in SCHEDULER_JOB_VARS if os.environ.get(v)), None),
                    "cmd": " ".join(sys.argv)[:200],
                }) + "\n")
                fh.flush()
                yield gpu
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        waited = time.monotonic() - start
        if waited > limit:
            held = "; ".join(f"{g.key} by {_holder(lock_path(g))}" for g in gpus)
            raise GpuWaitTimeout(
                f"no free GPU after {waited:.1f} s ({WAIT_ENV}={limit:g}): {held}. Wait for or stop those "
                f"jobs, or raise {WAIT_ENV}; lock files in {lock_dir()}"
            )
        if not told:
            print(f"fipa devices: every GPU is held ({', '.join(map(str, gpus))}); waiting up to {limit:g} s",
                  file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_s)


def _torch_device(gpu: Gpu) -> torch.device:
    """The device the job computes on: the GPU, or the CPU under FIPA_FAKE_CUDA."""
    return torch.device("cpu") if fake_cuda() else torch.device(f"cuda:{gpu.ordinal}")


@contextmanager
def _using(gpu: Gpu, how: str) -> Iterator[torch.device]:
    """Yield the device of ``gpu`` and log (stderr, the rule's log) which GPU and when."""
    device = _torch_device(gpu)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    fake = " (FIPA_FAKE_CUDA: computing on the CPU)" if fake_cuda() else ""
    print(f"fipa devices: {gpu}, {how}, CUDA_VISIBLE_DEVICES={cvd}, from {time.time():.3f}{fake}",
          file=sys.stderr, flush=True)
    try:
        yield device
    finally:
        print(f"fipa devices: {gpu.key} released at {time.time():.3f}", file=sys.stderr, flush=True)


def _granted_text(grant: Grant) -> str:
    where = f"bound by {grant.bound_by}" if grant.bound_by else "visible"
    return f"{len(grant.gpus)} GPU(s) {where}: {', '.join(map(str, grant.gpus)) or 'none'}"


@contextmanager
def claim(device: str) -> Iterator[torch.device]:
    """The device of a job: ``cpu``; ``cuda:N`` the N-th granted GPU; ``cuda``/``auto`` a free one."""
    if device == "cpu":
        yield torch.device("cpu")
        return
    grant = granted()
    if not grant.gpus:
        if device == "auto":
            yield torch.device("cpu")
            return
        why = ("this scheduler job was granted no GPU (request one: device cuda/auto makes training jobs "
               "ask for gpu=1)") if grant.in_scheduler_job else "no CUDA device is visible"
        raise ConfigError(f"device: {device!r} requested but {why}; use cpu or auto")
    if device.startswith("cuda:"):
        n = int(device.split(":", 1)[1])
        if n >= len(grant.gpus):
            raise ConfigError(
                f"device: {device!r} means GPU {n} (counted from 0) of those granted to this job, but it was "
                f"granted {_granted_text(grant)}; use cuda:0 to cuda:{len(grant.gpus) - 1}, cuda or auto"
            )
        with _using(grant.gpus[n], "as configured") as d:
            yield d
        return
    if grant.bound_by is not None and len(grant.gpus) == 1:
        with _using(grant.gpus[0], f"bound by the scheduler ({grant.bound_by}), no lock") as d:
            yield d
        return
    t0 = time.monotonic()
    with gpu_slot(list(grant.gpus)) as gpu, _using(gpu, f"locked after {time.monotonic() - t0:.1f} s") as d:
        yield d


def _host_free_bytes(device: torch.device) -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None (the check is skipped)."""
    try:
        with open("/proc/meminfo") as fh:
            line = next(ln for ln in fh if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024  # kB


def _cuda_free_bytes(device: torch.device) -> int | None:
    """Free memory of the GPU (``torch.cuda.mem_get_info``); None without CUDA (fake GPUs)."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])


# device type -> memory a job there may still allocate, in bytes (None: unknown)
FREE_BYTES = {"cpu": _host_free_bytes, "cuda": _cuda_free_bytes}


def free_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on ``device`` can still get (None where unknown)."""
    probe = FREE_BYTES.get(device.type)
    return probe(device) if probe is not None else None
