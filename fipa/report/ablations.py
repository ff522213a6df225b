"""The ablation study (config/ablations.yaml, ``make ablations``): its runs, knob sweeps and table.

Knob values are read from each run's resolved config in final.json (``attach_knobs``), never
from the variant names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fipa import paths
from fipa.report.runs import attach_knobs, collect, under
from fipa.report.stats import cell_stats, error_of

SUBJECT = "fipa"  # the aggregator kind whose knobs an ablation sweeps
BASELINE = "fedavg"  # the grid name of the averaging it is drawn against
TUNED_FEDAVG = "fedavg_tuned"  # the grid name of FedAvg with its server step tuned per task

# The knobs of config/ablations.yaml, in the order a task is searched for the one it sweeps.
# rho: FIPA's damping, a fixed rho (0 = the paper's pinv) or the name of an adaptive rule;
# clients and alpha are properties of the data split, so they vary across a task's partitions
# (and FedAvg varies with them); rho and rank vary across aggregator variants of one partition.
ABLATION_KNOBS = ("rho", "rank", "clients", "alpha")
PARTITION_KNOBS = ("clients", "alpha")
KNOB_LABELS = {"rho": "FIPA damping: fixed rho = lambda / lambda_max, or the adaptive rule",
               "rank": "FIPA rank r per client", "clients": "clients M (domain split)",
               "alpha": "Dirichlet label skew alpha (iid = alpha -> infinity)"}


def _knob_row(r) -> dict:
    """The ablation knobs of one run (a row of an attach_knobs frame)."""
    fipa = r.agg_kind == SUBJECT
    damping = r.damping if isinstance(r.damping, str) else "fixed"  # the dataclass default
    rho = (float(r.rho) if damping == "fixed" else damping) if fipa else None
    scheme, alpha = r.partition_scheme, None
    if scheme == "iid":
        alpha = "iid"
    elif scheme in ("dirichlet", "dirichlet_balanced") and pd.notna(r.partition_alpha):
        alpha = float(r.partition_alpha)
    return {"knob_rho": rho, "knob_rank": int(r.rank) if fipa and pd.notna(r.rank) else None,
            "knob_clients": int(r.clients) if pd.notna(r.clients) else None, "knob_alpha": alpha}


def knob_values(summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (needs attach_knobs) the value of each ablation knob, read from the resolved config:
    ``knob_rho``: a float for fixed damping (0.0 = undamped), else the rule's name ("adaptive");
    ``knob_rank``: int; ``knob_clients``: int; ``knob_alpha``: the Dirichlet alpha, "iid" for an
    iid split. None where a knob does not apply (FedAvg has no rho or rank)."""
    rows = [_knob_row(r) for r in summary.itertuples()]
    return pd.DataFrame(rows, index=summary.index, columns=[f"knob_{k}" for k in ABLATION_KNOBS],
                        dtype=object)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def at_value(runs: pd.DataFrame, value) -> pd.DataFrame:
    """The runs whose ``value`` column equals ``value`` (knob values mix numbers and names)."""
    return runs[runs["value"].map(lambda x: not _missing(x) and x == value)]


def knob_order(values) -> list:
    """Distinct knob values in plotting order: numbers ascending, then names (adaptive, iid) as given."""
    vals = [v for v in dict.fromkeys(values) if not _missing(v)]
    nums = sorted(v for v in vals if isinstance(v, int | float) and not isinstance(v, bool))
    return nums + [v for v in vals if isinstance(v, str)]


def knob_text(value) -> str:
    """A knob value as an axis label: 0, 1e-4, 0.05, 20, adaptive, iid."""
    if isinstance(value, str):
        return value
    v = float(value)
    if v == 0:
        return "0"
    e = math.log10(abs(v))
    if v <= 1e-2 and abs(e - round(e)) < 1e-9:
        return f"1e{round(e)}"
    return f"{v:g}"


@dataclass
class KnobPanel:
    """One panel of an ablation figure: FIPA runs (``fipa``) whose knob takes the values
    ``values`` (in order), each with a ``value`` column, with everything else fixed, and the FedAvg
    runs of the same setting (``fedavg``; ``value`` None unless the knob is a partition property)."""

    knob: str
    task: str
    title: str
    metric: str
    values: list
    fipa: pd.DataFrame
    fedavg: pd.DataFrame
    tuned: pd.DataFrame | None = None  # FedAvg with its tuned server step (TUNED_FEDAVG), where run


def _split_text(g: pd.DataFrame, with_size: bool = True) -> str:
    scheme = g["partition_scheme"].iloc[0]
    text = {"domain_split": "domain split", "iid": "iid"}.get(scheme, scheme)
    if scheme in ("dirichlet", "dirichlet_balanced"):
        text = f"Dirichlet alpha {g['partition_alpha'].iloc[0]:g}"
    return f"{text}, M = {int(g['clients'].iloc[0])}" if with_size else text


def _participation_text(g: pd.DataFrame) -> str:
    p = g["participation"].iloc[0]
    return f"participation {1.0 if pd.isna(p) else float(p):g}"


def _panel_title(task: str, knob: str, key: dict, g: pd.DataFrame) -> str:
    """'<task> / <partition>: <split>, participation p[, <client method>]'."""
    setting = (_split_text(g, with_size=knob != "clients") if knob not in ("alpha",)
               else f"M = {int(g['clients'].iloc[0])}")
    where = f"{task}" if knob in PARTITION_KNOBS else f"{task} / {key['partition']}"
    title = f"{where}: {setting}, {_participation_text(g)}"
    if key["client_method"] != "local":
        title += f", {key['client_method']}"
    return title


def _knob_panel(task: str, t: pd.DataFrame, knob: str, key: dict, g: pd.DataFrame,
                ref: pd.DataFrame | None) -> KnobPanel:
    """The panel of the FIPA runs ``g`` of ``task`` (all its runs: ``t``) that sweep ``knob`` at the
    setting ``key``, with the baselines of that setting (from ``ref`` when the task has none)."""
    col = f"knob_{knob}"
    same = (t[list(key)] == pd.Series(key)).all(axis=1)
    avg = t[(t["aggregator"] == BASELINE) & same]
    tuned = t[(t["aggregator"] == TUNED_FEDAVG) & same]
    if avg.empty and ref is not None:
        avg = ref[(ref["task"] == task) & (ref["aggregator"] == BASELINE)
                  & (ref[list(key)] == pd.Series(key)).all(axis=1)]
    # the baselines vary with the knob only when it is a property of the data split
    def values(b):
        return b[col] if knob in PARTITION_KNOBS else pd.Series(None, index=b.index, dtype=object)

    return KnobPanel(knob, task, _panel_title(task, knob, key, g), g["primary_metric"].iloc[0],
                     knob_order(g[col]), g.assign(value=g[col]), avg.assign(value=values(avg)),
                     tuned.assign(value=values(tuned)) if len(tuned) else None)


def _task_panels(task: str, t: pd.DataFrame, ref: pd.DataFrame | None) -> list[KnobPanel]:
    """The panels of the first knob of ABLATION_KNOBS that ``task``'s FIPA runs sweep."""
    fipa = t[t["agg_kind"] == SUBJECT]
    for knob in ABLATION_KNOBS:
        keys = ["client_method"] if knob in PARTITION_KNOBS else ["partition", "client_method"]
        found = []
        for key, g in fipa.groupby(keys, sort=False):
            if len(knob_order(g[f"knob_{knob}"])) < 2:
                continue
            key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            found.append(_knob_panel(task, t, knob, key, g, ref))
        if found:
            return found
    return []


def ablation_panels(summary: pd.DataFrame, reference: pd.DataFrame | None = None) -> list[KnobPanel]:
    """The knob sweeps of an ablation run (needs attach_knobs). Per task, the first knob of
    ABLATION_KNOBS that takes two values or more among the task's FIPA runs of one partition (rho,
    rank) or across its partitions (clients, alpha); one panel per partition (or per task) and
    client method. FedAvg runs come from the same task, else from ``reference`` (the main grid)."""
    if summary.empty or "agg_kind" not in summary:
        return []
    runs = summary.join(knob_values(summary))
    ref = None
    if reference is not None and not reference.empty and "agg_kind" in reference:
        ref = reference.join(knob_values(reference))
    panels = [p for task, t in runs.groupby("task", sort=False) for p in _task_panels(task, t, ref)]
    return sorted(panels, key=lambda p: ABLATION_KNOBS.index(p.knob))  # stable: tasks keep their order


def is_ablation_run(summary: pd.DataFrame) -> bool:
    """Whether ``summary`` is an ablation run (config/ablations.yaml): every task sweeps a knob."""
    if summary.empty or "agg_kind" not in summary:
        return False
    swept = {p.task for p in ablation_panels(summary)}
    return bool(swept) and swept == set(summary["task"])


def _log_error_mean(runs: pd.DataFrame, metric: str) -> float:
    """Mean log error of the runs that did not diverge (an accuracy enters as 1 - acc)."""
    e = np.array([error_of(v, metric) for v in runs.loc[~runs["diverged"].astype(bool), f"final_{metric}"]],
                 dtype=float)
    e = e[np.isfinite(e) & (e > 0)]
    return float(np.log(e).mean()) if len(e) else math.nan


def knob_table(panels: list[KnobPanel]) -> pd.DataFrame:
    """Per panel and knob value: FIPA's final metric (mean, sd over the seeds that did not diverge,
    n, diverged count), FedAvg's at the same setting, and ``error_ratio``: the geometric mean of
    FIPA's errors over FedAvg's (an accuracy enters as its error rate 1 - acc; below 1: FIPA better)."""
    rows = []
    for p in panels:
        col = f"final_{p.metric}"
        for v in p.values:
            f = at_value(p.fipa, v)
            a = at_value(p.fedavg, v) if p.knob in PARTITION_KNOBS else p.fedavg
            fs = cell_stats(f[col].astype(float), f["diverged"].astype(bool))
            as_ = cell_stats(a[col].astype(float), a["diverged"].astype(bool))
            ratio = math.exp(_log_error_mean(f, p.metric) - _log_error_mean(a, p.metric))
            rows.append({"knob": p.knob, "panel": p.title, "value": knob_text(v), "metric": p.metric,
                         "fipa_mean": fs["mean"], "fipa_sd": fs["sd"], "n": fs["n"],
                         "diverged": fs["diverged"],
                         "fedavg_mean": as_["mean"], "fedavg_sd": as_["sd"],
                         "error_ratio": ratio})
    return pd.DataFrame(rows)


def load_ablations(results: str | Path) -> pd.DataFrame:
    """The ablation runs beside the results tree ``results`` (with attach_knobs), or an empty frame.

    ``make ablations`` runs the workflow in ``paths.ABLATIONS`` (``snakemake --directory``), so
    its summary is ``paths.SUMMARY`` there, with run directories relative to that directory; a
    hand-made summary.csv directly in it (run directories relative to the working directory) or
    bare run directories (``paths.RUNS`` there, or runs/) are read too."""
    root = under(results, paths.ABLATIONS)
    for summary_csv, base in ((root / paths.SUMMARY, root), (under(root, paths.SUMMARY), None)):
        if summary_csv.is_file():
            s = pd.read_csv(summary_csv)
            if base is not None:
                s["run_dir"] = [d if Path(d).is_absolute() else str(base / d) for d in s["run_dir"]]
            return attach_knobs(s) if not s.empty else s
    dirs = [d for d in (root / paths.RUNS, under(root, paths.RUNS)) if d.is_dir()]
    s = collect(dirs) if dirs else pd.DataFrame()
    return attach_knobs(s) if not s.empty else s
