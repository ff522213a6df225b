"""Which runs are federated methods and which are the reference, read from final.json's ``role``.

A run records its role in final.json: ``federated`` for every aggregator of the grid,
``reference`` for the centralized reference (one model on the union of the data; its
aggregator label stays ``centralized``). The report, its tables, health flags and figures
tell the two apart by this role, never by an aggregator's name.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

FEDERATED = "federated"
REFERENCE = "reference"
ROLES = (FEDERATED, REFERENCE)


def role_of(final: Mapping) -> str:
    """The role recorded in a run's final.json. A run directory written before runs recorded a
    role (no ``role`` key) counts as federated."""
    return final.get("role", FEDERATED)


def role_column(frame: pd.DataFrame) -> pd.Series:
    """Per row of a summary or curves frame, its run's role: FEDERATED where the frame has no
    ``role`` column (a summary.csv collected before roles were recorded) or the cell is empty."""
    if "role" not in frame:
        return pd.Series(FEDERATED, index=frame.index, dtype=object)
    return frame["role"].fillna(FEDERATED)


def is_reference(frame: pd.DataFrame) -> pd.Series:
    """Per row of ``frame``: whether its run is the reference (a boolean Series)."""
    return role_column(frame) == REFERENCE


def reference_names(frame: pd.DataFrame) -> list[str]:
    """The aggregator labels of the reference runs in ``frame``, in order of first appearance."""
    return list(dict.fromkeys(frame.loc[is_reference(frame), "aggregator"]))
