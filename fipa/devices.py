"""Choose the torch device for a job."""

from __future__ import annotations

import torch


def resolve(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (first CUDA device, else CPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from fipa.config import ConfigError

        raise ConfigError(f"device: {device!r} requested but no CUDA device is visible; use cpu or auto")
    return torch.device(device)
