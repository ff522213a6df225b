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


class Task(ABC):
    """A learning problem seen by the federated loop.

    The training objective of client m is ``mean_i loss(outputs(theta, batch)_i, y_i)``
    with ``loss`` either squared error (``loss_kind = "mse"``, GGN ``J^T J / n``) or
    softmax cross-entropy (``"ce"``, GGN ``J^T (diag p - p p^T) J / n``).
    """

    Params: ClassVar[type]
    loss_kind: ClassVar[str] = "mse"
    metrics: ClassVar[dict[str, str]] = {}  # metric column -> "min" or "max" is better
    primary_metric: ClassVar[str] = "test_loss"

    def __init__(self, params: Any, seed: int, dtype: torch.dtype) -> None:
        self.params = params
        self.seed = seed
        self.dtype = dtype

    @classmethod
    def sample_count(cls, params: Any) -> int | None:
        """Training samples the task will have under ``params``, when known without building it
        (lets a config with more clients than samples fail before any job runs); None: unknown."""
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


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register_lazy("regression", "fipa.tasks.regression")
TASKS.register_lazy("pde", "fipa.tasks.pde")
TASKS.register_lazy("vision", "fipa.tasks.vision")
