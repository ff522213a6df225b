"""What every client computes with, built once per run: the task, the model and its parameter layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fipa.params import ParamLayout, model_params
from fipa.tasks.base import Batch, Task


@dataclass(frozen=True, eq=False)
class ClientModel:
    """The model a client trains and takes curvature of, evaluated functionally at any theta.

    ``task`` gives the data transforms, the loss kind and the outputs f(x; params);
    ``model`` the architecture (its own weights are never read: every evaluation is at a
    flat parameter vector theta [P]); ``layout`` the names, shapes and offsets of the
    parameter tensors inside theta. One per run, shared by its clients and every round;
    compared by identity (the runs of a lockstep group share the lead run's).
    """

    task: Task
    model: nn.Module
    layout: ParamLayout

    @classmethod
    def of(cls, task: Task, model: nn.Module) -> ClientModel:
        """The client model of ``model``, its layout read from its parameters."""
        return cls(task, model, ParamLayout.of(model))

    @property
    def numel(self) -> int:
        """P, the number of trainable scalars."""
        return self.layout.numel

    def theta(self) -> torch.Tensor:
        """The model's own parameters as a flat vector [P] (detached copies)."""
        return self.layout.flatten(model_params(self.model))

    def outputs(self, theta: torch.Tensor, batch: Batch) -> torch.Tensor:
        """f(x_i; theta) [n, C] of the task's model at theta [P] on ``batch`` (n samples)."""
        return self.task.outputs(self.model, self.layout.unflatten(theta), batch)
