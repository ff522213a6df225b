"""The task interface: data, model, per-sample outputs, loss kind and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fipa.partition import PartitionInput
from fipa.registry import Registry

Batch = dict[str, torch.Tensor]  # every tensor has the sample axis first: [n, ...]


def num_samples(batch: Batch) -> int:
    """n, the leading axis every tensor of ``batch`` shares."""
    return next(iter(batch.values())).shape[0]


class Task(ABC):
    """A learning problem seen by the federated loop.

    The training objective of client m is ``mean_i loss(outputs(theta, batch)_i, y_i)``
    with ``loss`` either squared error (``loss_kind = "mse"``, GGN ``J^T J / n``) or
    softmax cross-entropy (``"ce"``, GGN ``J^T (diag p - p p^T) J / n``).
    """

    Params: ClassVar[type]
    loss_kind: ClassVar[str] = "mse"
    # outputs() broadcasts over a leading client axis of stacked parameters [K, ...]: the
    # vectorized path then skips vmap (fipa/vectorized.py DirectGrad)
    stacks_clients: ClassVar[bool] = False
    has_features: ClassVar[bool] = False  # features() is implemented (FedRCL needs it)
    metrics: ClassVar[dict[str, str]] = {}  # metric column -> "min" or "max" is better
    primary_metric: ClassVar[str] = "test_loss"

    def __init__(self, params: Any, seed: int, dtype: torch.dtype) -> None:
        self.params = params
        self.seed = seed
        self.dtype = dtype

    # rough CPU seconds of one training sample through one local step, in a lockstep batch on
    # 2 cores; only the grid's time-left estimate uses it (fipa/progress.py), and the observed
    # pace corrects it once a job of the task has finished
    sample_step_seconds: ClassVar[float] = 1e-5

    # cluster sizing of one training or warm-up job of the family, read by the workflow
    # (workflow/rules/common.smk): "mem_mb" (memory, MB) and "runtime" (wall time, minutes), each
    # multiplied by the attempt number under --retries; a family that needs more declares its own
    # (keys it leaves out keep these), and `--set-resources train_batch:mem_mb=...` overrides a run
    resources: ClassVar[dict[str, int]] = {"mem_mb": 4000, "runtime": 120}

    @classmethod
    def work_samples(cls, params: Any) -> int:
        """Training pool size under ``params`` for run-time estimates: :meth:`sample_count`
        where known, else a guess."""
        return cls.sample_count(params) or 1000

    @classmethod
    def sample_seconds(cls, params: Any) -> float:
        """Rough seconds of one sample through one local step under ``params``."""
        return cls.sample_step_seconds

    @classmethod
    def sample_count(cls, params: Any) -> int | None:
        """Training samples the task will have under ``params``, when known without building it
        (lets a config with more clients than samples fail before any job runs); None: unknown."""
        return None

    @classmethod
    def missing_data(cls, params: Any) -> str | None:
        """What the task's data under ``params`` lack on disk and the command that fetches them,
        or None when nothing is missing (tasks that generate their data). Looks at paths only:
        the workflow asks before its first job (rules/preflight.smk, data_preflight)."""
        return None

    @abstractmethod
    def partition_input(self) -> PartitionInput:
        """Sample count, coordinates and labels of the training pool, for the split."""

    @abstractmethod
    def client_data(self, indices: np.ndarray) -> Batch:
        """The training samples of one client as a batch of tensors [n, ...]."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialized model (the caller seeds torch)."""

    @abstractmethod
    def outputs(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Per-sample outputs [n, C] of ``model`` evaluated at ``params`` (functional)."""

    def train_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        """A training minibatch as local training sees it: unchanged here; a task with data
        augmentation transforms it, drawing from ``gen`` only while :attr:`augments`."""
        return batch

    @property
    def augments(self) -> bool:
        """Whether :meth:`train_batch` draws random transforms (then clients train one at a time)."""
        return False

    def features(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features [n, F], outputs [n, C]) in one forward pass, for methods that
        need representations (FedRCL); only tasks with ``has_features`` provide them."""
        raise NotImplementedError(f"{self.describe()} has no penultimate features")

    def targets(self, batch: Batch) -> torch.Tensor:
        """Targets [n, C] (mse) or labels [n] (ce)."""
        return batch["y"]

    @abstractmethod
    def evaluate(self, model: nn.Module, params: dict[str, torch.Tensor]) -> dict[str, float]:
        """Test metrics (keys of ``metrics``) and ``test_loss`` on held-out data."""

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """Context of a local training step's forward pass (vision: bfloat16 autocast when
        ``amp`` is on); evaluation and curvature stay in the task's dtype."""
        return nullcontext()

    def describe(self) -> str:
        return type(self).__name__

    @classmethod
    def catalog(cls) -> dict[str, Registry]:
        """The family's own registries a config names entries of, for ``fipa list``:
        {"PDE problems (task.problem)": PROBLEMS, ...}; none by default."""
        return {}


# a module or package fipa/tasks/<name> registers the task <name>: adding a family is adding its file
TASKS: Registry[type[Task]] = Registry("task", discover="fipa.tasks", lazy=True)
