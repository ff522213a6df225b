"""Figures of the ablation study: the final metric against each knob (fipa.report.ablations.KnobPanel)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fipa.report.ablations import (
    ABLATION_KNOBS,
    BASELINE,
    KNOB_LABELS,
    SUBJECT,
    TUNED_FEDAVG,
    KnobPanel,
    at_value,
    knob_text,
)
from fipa.report.draw import (
    NO_REFERENCE,
    errorbar_artists,
    legend,
    panels,
    plain_log,
    positive,
    theme,
    ylabel,
)
from fipa.report.stats import direction_of

STYLES = NO_REFERENCE  # an ablation draws FIPA and averaging, never the reference


def _knob_positions(values: list) -> tuple[dict, bool]:
    """x position of each knob value and whether the axis is logarithmic: numbers spanning a
    decade or more on a log axis (rank 1-20), anything else evenly spaced in the given order
    (rho 0, 1e-5, ..., adaptive; alpha 0.05, ..., iid; clients 2, 4, 8, 16)."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric and all(float(v) > 0 for v in values) and max(values) / min(values) >= 10:
        return {v: float(v) for v in values}, True
    return {v: float(i) for i, v in enumerate(values)}, False


def seed_spread(values, log: bool) -> tuple[float, float, float]:
    """(centre, low, high) of the finite ``values`` of one setting over seeds: mean -+ sd, or on a
    log axis the geometric mean x/÷ the geometric sd (mean -+ sd of the logs), which stays positive."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (np.nan, np.nan, np.nan)
    x = np.log(v) if log else v
    m, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return tuple(np.exp([m, m - sd, m + sd])) if log else (m, m - sd, m + sd)


def _spread_bars(ax, xs, groups, log: bool, **kw):
    """An errorbar from seed_spread of each group of values at the positions ``xs``."""
    c, lo, hi = np.array([seed_spread(g, log) for g in groups]).reshape(-1, 3).T
    return ax.errorbar(xs, c, yerr=np.nan_to_num([c - lo, hi - c]), capsize=3, **kw)


def _subject(ax, panel: KnobPanel, pos: dict, ok: pd.DataFrame, runs: pd.DataFrame, log: bool,
             spread: str) -> None:
    """FIPA's runs of a panel: seeds as dots, their spread as bars, diverged seeds counted above
    the axis (a cross on the top edge where every seed of a value diverged)."""
    col = f"final_{panel.metric}"
    st = STYLES.style(SUBJECT)
    STYLES.tag(ax.scatter(ok["x"], ok[col], color=st.color, alpha=0.45, s=16, lw=0), SUBJECT)
    eb = _spread_bars(ax, [pos[v] for v in panel.values], [at_value(ok, v)[col] for v in panel.values], log,
                      color=st.color, marker=st.marker, label=f"FIPA: {spread} over seeds")
    STYLES.tag(errorbar_artists(eb), SUBJECT)
    for v in panel.values:
        at = at_value(runs, v)
        ndiv = int(at["diverged"].astype(bool).sum())
        if ndiv:
            ax.annotate(f"{ndiv}/{len(at)}\ndiverged", (pos[v], 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8, color=st.color)
        if ndiv and ndiv == len(at):
            STYLES.tag(ax.scatter([pos[v]], [0.97], marker="x", s=60, color=st.color,
                                  transform=ax.get_xaxis_transform(), clip_on=False,
                                  label="FIPA diverged (not averaged)"), SUBJECT)


def _baselines(ax, panel: KnobPanel, pos: dict, ref: pd.DataFrame, log: bool, spread: str) -> None:
    """FedAvg (dashed) and, where run, FedAvg with its tuned server step: bars at each knob value
    where they change with the knob (a property of the data split), else a line with its band."""
    col = f"final_{panel.metric}"
    if ref["value"].notna().any():
        for name, runs_b, label, ls in ((BASELINE, ref, "FedAvg", "--"),
                                        (TUNED_FEDAVG, panel.tuned, "FedAvg, tuned server step", None)):
            if runs_b is None:
                continue
            ok_b = runs_b[~runs_b["diverged"].astype(bool)]
            vals = [v for v in panel.values if len(at_value(ok_b, v))]
            st = STYLES.style(name)
            eb = _spread_bars(ax, [pos[v] for v in vals], [at_value(ok_b, v)[col] for v in vals], log,
                              color=st.color, ls=ls or st.linestyle, marker=st.marker,
                              label=f"{label}: {spread}")
            STYLES.tag(errorbar_artists(eb), name)
    elif len(ref):
        avg_color = STYLES.style(BASELINE).color
        m, lo, hi = seed_spread(ref[col], log)
        STYLES.tag(ax.axhline(m, color=avg_color, ls="--", label=f"FedAvg: {spread} (band)"), BASELINE)
        if len(ref) > 1:
            STYLES.tag(ax.axhspan(lo, hi, color=avg_color, alpha=0.12, lw=0), BASELINE)


def knob_panel(ax, panel: KnobPanel) -> None:
    """One ablation panel on ``ax``: FIPA's final metric against the knob over seeds (dots =
    seeds; bars: mean +- sd, on a log axis geometric mean x/÷ geometric sd); diverged seeds are
    counted above the axis and never averaged. FedAvg is the dashed reference (and FedAvg with
    its tuned server step, where the run has it, dash-dot): a line with its band where FedAvg
    does not depend on the knob (rho, rank), else bars at each value (clients, alpha)."""
    col = f"final_{panel.metric}"
    pos, logx = _knob_positions(panel.values)
    runs = panel.fipa.assign(x=panel.fipa["value"].map(lambda v: pos.get(v, np.nan)))
    ok = runs[~runs["diverged"].astype(bool) & np.isfinite(runs[col].astype(float))]
    ref = panel.fedavg[~panel.fedavg["diverged"].astype(bool)]
    log = direction_of(panel.metric) == "min" and positive(pd.concat([ok[col], ref[col]]))
    spread = "geometric mean \u00d7/\u00f7 sd" if log else "mean \u00b1 sd"
    _subject(ax, panel, pos, ok, runs, log, spread)
    _baselines(ax, panel, pos, ref, log, spread)
    if logx:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([pos[v] for v in panel.values]))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks([pos[v] for v in panel.values], [knob_text(v) for v in panel.values])
    if log:
        plain_log(ax)
    ax.set_ylabel(ylabel(panel.metric, log))
    ax.set_title(panel.title, fontsize=10, pad=26)


def knob_figure(panels_: list[KnobPanel], xlabel: str) -> Figure:
    """An ablation figure: one knob_panel per KnobPanel (two per row), one legend."""
    theme()
    fig, axs = panels(len(panels_), width=5.2, height=3.9, wrap=2)
    for ax, p in zip(axs, panels_, strict=True):
        knob_panel(ax, p)
    fig.supxlabel(xlabel, fontsize=11)
    legend(fig, axs, title="")
    return fig


def knob_figures(panels_: list[KnobPanel]) -> dict[str, Figure]:
    """{knob: figure} with one panel per KnobPanel, knobs in ABLATION_KNOBS order."""
    return {k: knob_figure([p for p in panels_ if p.knob == k], KNOB_LABELS[k])
            for k in ABLATION_KNOBS if any(p.knob == k for p in panels_)}
