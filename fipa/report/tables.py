"""Tables of the report: the run's setting, final metrics per aggregator, and the pivot of
aggregators against tasks (or client methods) with health marks and the best federated mean."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fipa.palette import order as aggregator_order
from fipa.report.health import THRESHOLDS, learned
from fipa.report.roles import reference_names
from fipa.report.runs import CELL
from fipa.report.stats import arrow, cell_stats, direction_of

# the mark a health flag of each kind leaves in a pivot cell
FLAG_MARKS = {"worse_than_start": "\u2020", "centralized_worse": "\u2021"}
REFERENCE_CSS = "color: #666666; font-style: italic"


def setting_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task x partition, this run's setting (needs attach_knobs): family, parameters P,
    clients, participation, rounds, seeds, client methods and aggregators (the reference last)."""
    rows = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        rows.append({"task": task, "partition": part, "family": g["task_family"].iloc[0],
                     "metric": g["primary_metric"].iloc[0], "P": int(g["num_params"].max()),
                     "clients": int(g["clients"].max()), "participation": float(g["participation"].max()),
                     "rounds": int(g["rounds"].max()), "seeds": int(g["seed"].nunique()),
                     "client methods": ", ".join(dict.fromkeys(g["client_method"])),
                     "aggregators": ", ".join(aggregator_order(g["aggregator"], reference_names(g)))})
    return pd.DataFrame(rows)


def final_table(summary: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Mean and sd over seeds (diverged runs left out and counted) of the final primary metric,
    per task x partition x client method x aggregator; ``best`` marks the best federated mean
    (the reference runs never count as best)."""
    out = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        m = metric or g["primary_metric"].iloc[0]
        col = f"final_{m}"
        rows = [{"client_method": k[0], "aggregator": k[1], **cell_stats(h[col], h["diverged"])}
                for k, h in g.groupby(["client_method", "aggregator"], sort=False)]
        t = pd.DataFrame(rows)
        federated = ~t["aggregator"].isin(reference_names(g))
        fed = t[federated]["mean"]
        target = fed.min() if direction_of(m) == "min" else fed.max()
        t["best"] = (t["mean"] == target) & federated
        t.insert(0, "partition", part)
        t.insert(0, "task", task)
        t["metric"] = m
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _fmt_cell(s: dict, flags: str) -> str:
    """One pivot cell: 'mean +- sd', 'x (n = 1)', 'all diverged' or 'n/a', the diverged count
    and the health marks."""
    if s["n"] == 0:
        text = "all diverged" if s["diverged"] else "n/a"
    elif s["n"] == 1:
        text = f"{s['mean']:.3g} (n = 1)"
    else:
        text = f"{s['mean']:.3g} \u00b1 {s['sd']:.2g}"
    if s["diverged"] and s["n"]:
        text += f" ({s['diverged']} div.)"
    return text + flags


def _pivot_column(g: pd.DataFrame, metric: str, flags: pd.DataFrame) -> tuple[dict, dict]:
    """One pivot column from the runs ``g`` of one task x partition (or client method): the
    cell text per aggregator and whether it holds the best federated mean."""
    text, means = {}, {}
    for agg, h in g.groupby("aggregator", sort=False):
        s = cell_stats(h[f"final_{metric}"], h["diverged"])
        f = flags[(flags["task"].isin(h["task"])) & (flags["aggregator"] == agg)
                  & (flags["client_method"].isin(h["client_method"]))]
        marks = "".join(mark for kind, mark in FLAG_MARKS.items() if (f["kind"] == kind).any())
        means[agg] = s["mean"]
        text[agg] = _fmt_cell(s, marks)
    refs = reference_names(g)
    fed = {a: m for a, m in means.items() if a not in refs and np.isfinite(m)}
    win = (min if direction_of(metric) == "min" else max)(fed, key=fed.get) if fed else None
    return text, {a: a == win for a in means}


def pivot(summary: pd.DataFrame, flags: pd.DataFrame | None = None, client_method: str | None = "local",
          columns: str = "task") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregator x task (``columns="task"``, one client method) or aggregator x client method
    (``columns="client_method"``, one task): cells 'mean +- sd' over seeds with health marks,
    and a boolean frame marking the best federated mean per column (the reference rows last,
    never best). Column names carry the metric and an arrow to its better direction."""
    rows = summary if client_method is None else summary[summary["client_method"] == client_method]
    text, best = {}, {}
    flags = flags if flags is not None else pd.DataFrame(columns=["kind", *CELL, "aggregator"])
    for key, g in rows.groupby(["task", "partition"] if columns == "task" else ["client_method"], sort=False):
        metric = g["primary_metric"].iloc[0]
        name = (f"{key[0]} / {key[1]}" if columns == "task" else key[0]) + f" ({metric} {arrow(metric)})"
        if not learned(g).all():
            name += f" \u2717 no method <= {THRESHOLDS[metric]:g}"
        text[name], best[name] = _pivot_column(g, metric, flags)
    t = pd.DataFrame(text)
    b = pd.DataFrame(best).reindex_like(t).fillna(False).astype(bool)
    idx = aggregator_order(t.index, reference_names(rows))
    return t.loc[idx].fillna(""), b.loc[idx]


def styled_pivot(text: pd.DataFrame, best: pd.DataFrame, references=()):
    """A pandas Styler of :func:`pivot`: best federated mean in bold, the rows of the
    ``references`` (fipa.report.roles.reference_names of the summary) in grey."""
    def css(col):
        return ["font-weight: bold" if best.at[i, col.name] else
                (REFERENCE_CSS if i in references else "") for i in col.index]

    return text.style.apply(css, axis=0).set_table_attributes('class="pivot"')
