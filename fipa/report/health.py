"""Health flags: what a reader should see beside the numbers (divergence, runs that end worse
than they started, a reference beaten by federated runs, problems no method learns)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fipa.report.roles import is_reference
from fipa.report.runs import CELL, ID_COLUMNS
from fipa.report.stats import direction_of

# a problem counts as learned when some method's mean final metric is at or below this
THRESHOLDS = {"rel_l2": 0.1}
FLAG_COLUMNS = ["kind", *CELL, "aggregator", "detail"]


def learned(summary: pd.DataFrame) -> pd.Series:
    """Per (task, partition): whether some method's mean final metric meets THRESHOLDS (True
    when the metric has no threshold)."""
    out = {}
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        if metric not in THRESHOLDS:
            out[(task, part)] = True
            continue
        ok = g[~g["diverged"]]
        means = ok.groupby(["client_method", "aggregator"])[f"final_{metric}"].mean()
        out[(task, part)] = bool((means <= THRESHOLDS[metric]).any())
    return pd.Series(out, dtype=bool)


def initial_and_final(curves: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per run: the primary metric at its first evaluated round (round 0: the broadcast model,
    after any warm-up) and at its last one."""
    metric = summary.set_index(ID_COLUMNS)["primary_metric"]
    rows = []
    for keys, g in curves.groupby(ID_COLUMNS, sort=False):
        m = metric.get(keys)
        if m is None or m not in g:
            continue
        g = g.sort_values("round")
        rows.append(dict(zip(ID_COLUMNS, keys, strict=True), metric=m, initial=float(g[m].iloc[0]),
                         final=float(g[m].iloc[-1])))
    return pd.DataFrame(rows)


def _flag(kind: str, task: str, part: str, method: str, agg: str, detail: str) -> dict:
    return {"kind": kind, "task": task, "partition": part, "client_method": method, "aggregator": agg,
            "detail": detail}


def _diverged(summary: pd.DataFrame) -> list[dict]:
    """One ``diverged`` flag per cell and aggregator where some seed diverged."""
    flags = []
    for keys, g in summary.groupby([*CELL, "aggregator"], sort=False):
        if g["diverged"].any():
            flags.append(_flag("diverged", *keys, f"{int(g['diverged'].sum())} of {len(g)} seeds diverged "
                         f"(seeds {', '.join(map(str, sorted(g.loc[g['diverged'], 'seed'].tolist())))}); "
                         "left out of every mean"))
    return flags


def _worse_than_start(summary: pd.DataFrame, curves: pd.DataFrame) -> list[dict]:
    """One ``worse_than_start`` flag per cell and aggregator where some seed ends worse than its
    round-0 model (or non-finite)."""
    flags = []
    io = initial_and_final(curves, summary)
    for keys, g in io.groupby([*CELL, "aggregator"], sort=False):
        m = g["metric"].iloc[0]
        worse = (g["final"] < g["initial"]) if direction_of(m) == "max" else (g["final"] > g["initial"])
        worse |= ~np.isfinite(g["final"])
        if worse.any():
            flags.append(_flag("worse_than_start", *keys, f"ends worse than its round-0 model in "
                               f"{int(worse.sum())} of {len(g)} seeds (round 0 {g['initial'].median():.3g}, "
                               f"final {g['final'].median():.3g}, medians)"))
    return flags


def _problem_flags(task: str, part: str, g: pd.DataFrame) -> list[dict]:
    """The flags of one task x partition: ``centralized_worse`` where federated run groups beat
    the reference runs, ``unlearned`` where no method meets the metric's threshold."""
    flags = []
    metric = g["primary_metric"].iloc[0]
    col, sign = f"final_{metric}", 1 if direction_of(metric) == "min" else -1
    ok = g[~g["diverged"]]
    means = ok.groupby(["client_method", "aggregator"])[col].mean()
    ref = ok[is_reference(ok)].groupby(["client_method", "aggregator"])[col].mean()
    fed = means.drop(ref.index)
    if len(ref):
        better = fed[sign * fed < sign * ref.min()]
        if len(better):
            top = better.sort_values(ascending=sign > 0).head(4)
            names = ", ".join(f"{a} ({m}) {v:.3g}" for (m, a), v in top.items())
            method, agg = ref.index[0]
            flags.append(_flag("centralized_worse", task, part, method, agg,
                               f"the {agg} reference ({ref.min():.3g}) is worse than {len(better)} federated "
                               f"run group(s): {names}"))
    if metric in THRESHOLDS and len(means) and (means > THRESHOLDS[metric]).all():
        best = means.idxmin()
        flags.append(_flag("unlearned", task, part, "", "", f"no method reaches {metric} <= "
                           f"{THRESHOLDS[metric]:g}; the best is {best[1]} ({means.min():.3g}): the "
                           "comparison says which method fails less"))
    return flags


def health_flags(summary: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Findings a reader should see beside the numbers, one row each: ``kind`` in
    {diverged, worse_than_start, centralized_worse, unlearned}, the cell and a sentence. The
    reference is the runs whose role is ``reference`` (fipa.report.roles)."""
    flags = _diverged(summary)
    if not curves.empty:
        flags += _worse_than_start(summary, curves)
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        flags += _problem_flags(task, part, g)
    return pd.DataFrame(flags, columns=FLAG_COLUMNS)
