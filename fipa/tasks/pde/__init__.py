"""Federated PINNs: PDE problems on DeepXDE geometries, reference solutions, the ``pde`` task.

Importing this package selects DeepXDE's pytorch backend (unless DDE_BACKEND says
otherwise) and registers the task; the task registry loads it lazily, so other tasks never
pay DeepXDE's import time.
"""

import os

os.environ.setdefault("DDE_BACKEND", "pytorch")

from fipa.tasks.pde.problems import PROBLEMS, Problem, point_derivatives, residual_rows  # noqa: E402
from fipa.tasks.pde.task import PINN, PDEParams  # noqa: E402

__all__ = ["PINN", "PDEParams", "PROBLEMS", "Problem", "point_derivatives", "residual_rows"]
