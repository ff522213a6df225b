"""Flat parameter vectors at the aggregation boundary, and back."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a model's parameters inside a flat vector of length P."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        named = [(n, p.shape) for n, p in model.named_parameters()]
        return cls(tuple(n for n, _ in named), tuple(s for _, s in named))

    @property
    def architecture(self) -> str:
        """A hash of the parameter names and shapes (not their values): tells two models of the
        same parameter count apart (a warm-up state checks it, fipa/checkpoint.py)."""
        import hashlib
        import json

        text = json.dumps([[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def sizes(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def numel(self) -> int:
        """P, the number of trainable scalars."""
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """dict of tensors -> flat vector [P] (in layout order)."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """flat vector [P] -> dict of views with the model's shapes."""
        chunks = torch.split(flat, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def unflatten_batched(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """stacked flat vectors [K, P] -> dict of views [K, *shape] (row k: client k's tensors)."""
        chunks = torch.split(flat, self.sizes, dim=-1)
        return {n: c.unflatten(-1, s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}


def model_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters, keyed by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class FunctionalModel(nn.Module):
    """A module that evaluates itself at given parameters: ``functional_forward(params, *args)``
    reads the tensors of ``params`` directly, without ``functional_call``'s reparametrization of
    its submodules (the stacked MLP of fipa/vectorized.py)."""

    def functional_forward(self, params: dict[str, torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def call(model: nn.Module, params: dict[str, torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``model`` evaluated at ``params`` (functional): its own ``functional_forward`` where it is
    a :class:`FunctionalModel`, else ``torch.func.functional_call``."""
    if isinstance(model, FunctionalModel):
        return model.functional_forward(params, *args)
    return functional_call(model, params, args)
