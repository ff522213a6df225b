"""How many CPU threads torch may use for a run: chosen from the work, never inherited.

torch's default intra-op pool has one thread per core. For the small models of this
project (regression MLPs, PINNs, the digits CNN) every operation is far too small to
split, and the pool's threads spin instead of working: a 4-client regression job ran
5x slower on 2 cores with the default than with one thread, and up to 50x slower beside
another busy process (notes/speed-results.md). Large operations (a ResNet-18 minibatch)
do gain from more threads, so the rule looks at the size of one local step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

# threads help once one local step multiplies more than this many (batch x parameters)
# numbers; below it a step is a few dozen microsecond-sized kernels
THREADS_WORK = 1 << 24


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of a run and why (recorded in final.json)."""

    intra: int
    interop: int
    rule: str

    def to_dict(self) -> dict[str, int | str]:
        return {"intra": self.intra, "interop": self.interop, "rule": self.rule}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or taskset allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(setting: int | str | None, work: int) -> ThreadChoice:
    """The thread count for ``setting`` (an int forces it; "auto"/None applies the rule) and one
    local step of ``work`` = batch samples x parameters numbers."""
    if isinstance(setting, int):
        return ThreadChoice(setting, 1, "set by --threads or the config's threads key")
    if work <= THREADS_WORK:
        return ThreadChoice(1, 1, f"batch x parameters = {work} <= {THREADS_WORK}: operations too "
                            "small to split")
    cores = available_cores()
    return ThreadChoice(cores, 1, f"batch x parameters = {work} > {THREADS_WORK}: one thread per "
                        f"available core ({cores})")


def apply(choice: ThreadChoice) -> None:
    """Set torch's pools. The inter-op pool can be sized only before its first use in the
    process, so a later call (the second cell of a batch) leaves it as it is."""
    torch.set_num_threads(choice.intra)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(choice.interop)
