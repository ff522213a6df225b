"""The client side of FIPA in Flower: a model's curvature factor, and the replies clients send.

:func:`curvature_factor` is for any PyTorch model: it computes the rank-r factor of the GGN of
``loss`` on ``batch`` at the model's current parameters with the project's curvature code
(fipa/curvature.py: exact per-sample Jacobians, or the Gram / matrix-free routes for large
models). :func:`fipa_reply` packs delta, factor and eigenvalues into the reply that
:class:`fipa.flower.strategy.FIPAStrategy` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

from fipa.client_model import ClientModel
from fipa.curvature import CurvatureRequest, client_curvature
from fipa.flower.records import flat_record, record_shapes, upload_record
from fipa.flower.strategy import CLIENT_ID, CLIENT_RECORD
from fipa.params import ParamLayout, call, model_params

LOSS_KINDS = {nn.MSELoss: "mse", nn.CrossEntropyLoss: "ce"}


@dataclass
class _ModelOutputs:
    """The two things the curvature code asks of a task: its loss kind and per-sample outputs."""

    loss_kind: str
    input_key: str = "x"
    stacks_clients: ClassVar[bool] = False

    def outputs(self, model: nn.Module, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                ) -> torch.Tensor:
        """f(x_i; theta) [n, C] at ``params`` (functional: the model's own weights untouched)."""
        return call(model, params, batch[self.input_key])


def loss_kind(loss: nn.Module | str) -> str:
    """"mse" (squared error: L_i = I) or "ce" (softmax cross-entropy: L_i = diag p - p p^T)."""
    if isinstance(loss, str) and loss in ("mse", "ce"):
        return loss
    for cls, kind in LOSS_KINDS.items():
        if isinstance(loss, cls):
            return kind
    raise ValueError(f"loss {loss!r}: use nn.MSELoss(), nn.CrossEntropyLoss(), 'mse' or 'ce'")


def curvature_factor(model: nn.Module, loss: nn.Module | str, inputs: torch.Tensor, rank: int,
                     method: str = "auto", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [r], A [r, P]) with H ~= A^T A, H = (1/n) sum_i J_i^T L_i J_i the GGN of ``loss``
    at the model's current parameters on ``inputs`` [n, ...] (targets do not enter the GGN).

    A = diag(sqrt sigma) V^T, V the top-r eigenvectors; P counts the model's parameters in
    ``named_parameters`` order (the order of :func:`flat_params`). ``method``: "exact", "gram",
    "matrix_free" or "auto" (fipa/curvature.py's size rule); ``seed`` draws the matrix-free probes.
    """
    cm = ClientModel.of(_ModelOutputs(loss_kind(loss)), model)  # type: ignore[arg-type]
    request = CurvatureRequest(kind="lowrank", rank=rank, curvature_method=method)
    gen = torch.Generator().manual_seed(seed)
    out = client_curvature(request, cm, cm.theta(), {"x": inputs}, gen)
    return out.eigvals, out.factor


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one vector [P], in ``named_parameters`` order."""
    return ParamLayout.of(model).flatten(model_params(model))


def fipa_reply(msg: Message, delta: torch.Tensor, num_examples: int, factor: torch.Tensor,
               eigvals: torch.Tensor | None = None, client_id: int | None = None,
               metrics: dict[str, float] | None = None) -> Message:
    """The reply FIPAStrategy reads: delta [P], factor [r, P], eigvals [r] (default: the squared
    row norms of the factor), N_m as ``num-examples``, and the client's id if given."""
    content = RecordDict({"arrays": upload_record(delta, factor, eigvals),
                          "metrics": MetricRecord({"num-examples": num_examples, **(metrics or {})})})
    if client_id is not None:
        content[CLIENT_RECORD] = ConfigRecord({CLIENT_ID: int(client_id)})
    return Message(content, reply_to=msg)


def model_reply(msg: Message, theta_m: torch.Tensor, num_examples: int) -> Message:
    """The reply of Flower's built-in strategies: the client's model theta_m [P] as arrays shaped
    like the instruction's, and ``num-examples``."""
    arrays = flat_record(theta_m, record_shapes(msg.content["arrays"]))
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": num_examples})}),
                   reply_to=msg)
