"""The report's figures of a results tree, and ``fipa figures`` (the workflow's figures rule).

Every function returns a ``matplotlib.figure.Figure``; styles, tags and output are
fipa.report.draw's. The reference runs (role ``reference``) are drawn in the palette's
reference style and last; they communicate nothing, so the cost figure leaves them out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fipa.report.ablations import ablation_panels, is_ablation_run
from fipa.report.draw import (
    Styles,
    errorbar_artists,
    legend,
    panels,
    plain_log,
    positive,
    save_figure,
    theme,
    ylabel,
)
from fipa.report.knob_plots import knob_figures
from fipa.report.runs import attach_knobs, load_curves, read_summary
from fipa.report.stats import METRIC_LABELS, direction_of, paired_effects, t_interval


def convergence_figure(curves: pd.DataFrame, metric: str, title: str) -> Figure:
    """Metric vs round, one panel per client method: per aggregator the median over seeds (line)
    and the min-max over seeds (band). Log y for errors."""
    theme()
    styles = Styles(curves)
    methods = list(dict.fromkeys(curves["client_method"]))
    fig, axs = panels(len(methods))
    log = direction_of(metric) == "min" and positive(curves[metric])
    for ax, method in zip(axs, methods, strict=True):
        c = curves[curves["client_method"] == method]
        for agg in styles.order(c["aggregator"]):
            g = c[c["aggregator"] == agg].replace([np.inf, -np.inf], np.nan)
            q = g.groupby("round")[metric].agg(["median", "min", "max"])
            st = styles.style(agg)
            styles.tag(ax.plot(q.index, q["median"], **st.line_kw(), markersize=4, lw=1.6, label=agg), agg)
            styles.tag(ax.fill_between(q.index, q["min"], q["max"], color=st.color, alpha=0.12, lw=0), agg)
        if log:
            plain_log(ax)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel(metric, log))
        ax.set_title(f"client method: {method}" if len(methods) > 1 else "")
    fig.suptitle(f"{title}: median over seeds, band = min to max")
    legend(fig, axs)
    return fig


def _seed_column(ax, x: float, h: pd.DataFrame, col: str, styles: Styles, agg: str, rng) -> None:
    """One aggregator's column of a final figure at ``x``: seeds as dots, mean +- sd as a
    diamond with bars, the diverged count above the axis."""
    ok = h[~h["diverged"].astype(bool)][col].astype(float)
    ok = ok[np.isfinite(ok)]
    st = styles.style(agg)
    if len(ok):
        styles.tag(ax.scatter(x + rng.uniform(-0.15, 0.15, len(ok)), ok, color=st.color, alpha=0.45, s=16,
                              lw=0), agg)
        sd = ok.std(ddof=1) if len(ok) > 1 else 0.0
        eb = ax.errorbar(x, ok.mean(), yerr=sd, color=st.color, marker="D", markersize=6, capsize=3,
                         label=agg)
        styles.tag(errorbar_artists(eb), agg)
    ndiv = int(h["diverged"].astype(bool).sum())
    if ndiv:
        ax.annotate(f"{ndiv} div.", (x, 1.0), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=8, color=st.color)


def final_figure(summary: pd.DataFrame, metric: str, title: str) -> Figure:
    """Final metric per aggregator, one panel per client method: seeds as dots, mean +- sd as a
    diamond with bars; diverged runs are not drawn but counted above their column."""
    theme()
    styles = Styles(summary)
    col = f"final_{metric}"
    methods = list(dict.fromkeys(summary["client_method"]))
    fig, axs = panels(len(methods), width=max(4.0, 0.55 * summary["aggregator"].nunique() + 1.5))
    ok_all = summary[~summary["diverged"].astype(bool)][col]
    log = direction_of(metric) == "min" and positive(ok_all)
    rng = np.random.default_rng(0)
    for ax, method in zip(axs, methods, strict=True):
        g = summary[summary["client_method"] == method]
        order = styles.order(g["aggregator"])
        for x, agg in enumerate(order):
            _seed_column(ax, x, g[g["aggregator"] == agg], col, styles, agg, rng)
        ax.set_xticks(range(len(order)), order, rotation=35, ha="right")
        ax.set_xlim(-0.6, len(order) - 0.4)
        if log:
            plain_log(ax)
        ax.set_ylabel(ylabel(metric, log))
        ax.set_title(f"client method: {method}" if len(methods) > 1 else "")
    what = METRIC_LABELS.get(metric, metric)
    fig.suptitle(f"{title}: final {what}, dots = seeds, diamond = mean \u00b1 sd")
    return fig


def _forest_row(ax, y: float, lr: pd.Series, styles: Styles, v: str, label: str) -> None:
    """One variant's row of a forest figure: seeds as dots, the t interval as a bar, the mean."""
    st = styles.style(v)
    styles.tag(ax.scatter(np.exp(lr), np.full(len(lr), y), color=st.color, alpha=0.45, s=14, lw=0), v)
    iv = t_interval(lr)
    if iv.n > 1:
        styles.tag(ax.plot([np.exp(iv.lo), np.exp(iv.hi)], [y, y], color=st.color, lw=2), v)
    styles.tag(ax.plot([np.exp(iv.mean)], [y], color=st.color, marker=st.marker, ls="none", markersize=7,
                       label=label), v)


def forest_figure(summary: pd.DataFrame, variants: list[str], baseline: str = "fedavg") -> Figure | None:
    """Per task x partition x client method (rows), each FIPA variant's error over the baseline's,
    paired by seed: seeds as dots, mean log-ratio and its 95% t interval as a bar; log x.
    None when no variant pairs with the baseline."""
    theme()
    styles = Styles(summary)
    blocks = [(v, e) for v in variants if not (e := paired_effects(summary, v, baseline)).empty]
    if not blocks:
        return None
    cells = list(dict.fromkeys(tuple(r) for b in blocks for r in b[1][["task", "partition", "client_method"]]
                               .itertuples(index=False)))
    fig = Figure(figsize=(8.5, 1.0 + 0.45 * len(cells) * max(1, len(blocks)) ** 0.5), layout="constrained")
    ax = fig.subplots()
    step = 0.6 / max(1, len(blocks))
    for j, (v, e) in enumerate(blocks):
        labelled = False
        for i, cell in enumerate(cells):
            ei = e[(e["task"] == cell[0]) & (e["partition"] == cell[1]) & (e["client_method"] == cell[2])]
            lr = ei["log_ratio"].astype(float)
            lr = lr[np.isfinite(lr)]
            if lr.empty:
                continue
            y = i + (j - (len(blocks) - 1) / 2) * step
            _forest_row(ax, y, lr, styles, v, "_" if labelled else f"{v} / {baseline}")
            labelled = True
    ax.axvline(1.0, color="0.3", lw=1)
    plain_log(ax, "x")
    ax.set_yticks(range(len(cells)), [" / ".join(c) for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel(f"final error of the variant / {baseline}'s, paired by seed (log scale)\n"
                  "< 1: lower error than " + baseline + "; accuracies as error rate 1 - acc")
    ax.set_title("Paired comparison: dots = seeds, marker = geometric mean, bar = 95% t interval")
    legend(fig, [ax], title="ratio")
    return fig


def _wall_time_bars(bx, r: pd.DataFrame, styles: Styles) -> None:
    """Training wall time per aggregator (mean +- sd over seeds) as bars."""
    order = styles.order(r["aggregator"])
    col = "wall_s"  # the run's own training time (a batch job's benchmark record covers many runs)
    for x, agg in enumerate(order):
        v = r[r["aggregator"] == agg][col].astype(float).dropna()
        if v.empty:
            continue
        styles.tag(bx.bar(x, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, color=styles.style(agg).color,
                          capsize=3, label=agg).patches, agg)
    bx.set_xticks(range(len(order)), order, rotation=35, ha="right")
    bx.set_ylabel("training wall time per run [s]")
    bx.set_title("time per run (mean \u00b1 sd over seeds)")


def cost_figure(curves: pd.DataFrame, runs: pd.DataFrame, metric: str, title: str) -> Figure:
    """Left: metric against cumulative uplink bytes (median over seeds, plain client method; the
    reference runs communicate nothing and are left out); right: job wall time per aggregator
    (mean +- sd over seeds)."""
    from matplotlib.ticker import NullFormatter

    theme()
    styles = Styles(runs)
    fig = Figure(figsize=(12.5, 3.8), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    method = "local" if (curves["client_method"] == "local").any() else curves["client_method"].iloc[0]
    c = curves[(curves["client_method"] == method) & (curves["uplink_bytes_total"] > 0)
               & ~curves["aggregator"].isin(styles.references)]
    log = direction_of(metric) == "min" and positive(c[metric])
    for agg in styles.order(c["aggregator"]):
        q = c[c["aggregator"] == agg].groupby("round")[["uplink_bytes_total", metric]].median()
        styles.tag(ax.plot(q["uplink_bytes_total"], q[metric], **styles.style(agg).line_kw(), markersize=4,
                           label=agg), agg)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log:
        plain_log(ax)
    ax.set_xlabel("cumulative uplink bytes, all clients (log scale)")
    ax.set_ylabel(ylabel(metric, log))
    ax.set_title(f"{metric} against communication ({method})")
    _wall_time_bars(bx, runs[runs["client_method"] == method], styles)
    fig.suptitle(title)
    legend(fig, [ax])
    return fig


def _reference_line(ax, reference: pd.DataFrame, col: str, styles: Styles) -> None:
    """The ``reference`` runs (FedAvg) of a sweep figure: their mean as a dashed line, +-sd band."""
    ref = reference[~reference["diverged"].astype(bool)][col].astype(float)
    if len(ref):
        name = reference["aggregator"].iloc[0]
        c = styles.style(name).color
        styles.tag(ax.axhline(ref.mean(), color=c, ls="--", label=f"{name} (mean over seeds)"), name)
        if len(ref) > 1:
            styles.tag(ax.axhspan(ref.mean() - ref.std(ddof=1), ref.mean() + ref.std(ddof=1), color=c,
                                  alpha=0.12, lw=0), name)


def sweep_figure(runs: pd.DataFrame, knob: str, reference: pd.DataFrame, metric: str, title: str) -> Figure:
    """An ablation: final metric against ``knob`` (mean +- sd over seeds, seeds as dots) for one
    aggregator kind; ``reference`` runs (FedAvg) as a horizontal line with a +-sd band."""
    theme()
    styles = Styles(pd.concat([runs, reference]))
    col = f"final_{metric}"
    fig = Figure(figsize=(6.8, 3.8), layout="constrained")
    ax = fig.subplots()
    ok = runs[~runs["diverged"].astype(bool)]
    values = list(dict.fromkeys(runs[knob]))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    xs = sorted(values) if numeric else values
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
    logx = numeric and all(float(v) > 0 for v in xs) and max(xs) / min(xs) >= 10
    name = runs["aggregator"].iloc[0].split("_")[0]
    st = styles.style(name)
    stats = ok.groupby(knob)[col].agg(["mean", "std"]).reindex(xs)
    styles.tag(ax.scatter([pos[v] for v in ok[knob]], ok[col], color=st.color, alpha=0.45, s=16, lw=0), name)
    eb = ax.errorbar([pos[v] for v in xs], stats["mean"], yerr=stats["std"].fillna(0), color=st.color,
                     marker=st.marker, capsize=3, label=f"{name} ({knob} varies)")
    styles.tag(errorbar_artists(eb), name)
    _reference_line(ax, reference, col, styles)
    for v in xs:
        ndiv = int(runs[(runs[knob] == v) & runs["diverged"].astype(bool)].shape[0])
        if ndiv:
            ax.annotate(f"{ndiv} div.", (pos[v], 1.0), xycoords=("data", "axes fraction"), ha="center",
                        va="bottom", fontsize=8)
    log = direction_of(metric) == "min" and positive(ok[col])
    if logx:
        plain_log(ax, "x")
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    if log:
        plain_log(ax)
    ax.set_xlabel(knob + (" (log scale)" if logx else ""))
    ax.set_ylabel(ylabel(metric, log))
    ax.set_title(title)
    legend(fig, [ax], title="")
    return fig


def partition_panel(partition_json: str | Path, ax) -> None:
    """Client sizes and label histograms (if any) of one partition file, on ``ax``."""
    import seaborn as sns

    data = json.loads(Path(partition_json).read_text())
    stats = data["stats"]
    if "label_hist" in stats:
        sns.heatmap(pd.DataFrame(stats["label_hist"]).T, ax=ax, cmap="viridis", cbar_kws={"label": "samples"})
        ax.set_xlabel("client")
        ax.set_ylabel("class")
    else:
        ax.bar(range(len(stats["sizes"])), stats["sizes"], color="0.45")
        ax.set_xticks(range(len(stats["sizes"])))
        ax.set_xlabel("client")
        ax.set_ylabel("samples")
        for i, c in enumerate(stats.get("centroids", [])):
            if len(c) == 1:
                ax.annotate(f"centre {c[0]:.2g}", (i, stats["sizes"][i]), ha="center", va="bottom",
                            fontsize=8)
    part = data["partition"]
    ax.set_title(f"{part['scheme']} over {part['clients']} clients")


def partitions_figure(paths: list[Path]) -> Figure:
    """One panel per partition file (seed 0 of each task x partition)."""
    theme()
    fig, axs = panels(len(paths), width=5.6, height=3.4)
    for ax, path in zip(axs, paths, strict=True):
        partition_panel(path, ax)
        ax.set_title(f"{path.parent.parent.name} / {path.parent.name}: " + ax.get_title(), fontsize=10)
    return fig


def figures(summary_csv: str | Path, outdir: str | Path) -> list[Path]:
    """``fipa figures``: convergence and final-metric figures for every task x partition in the
    summary; for an ablation run (is_ablation_run) also ``knob_<knob>`` figures, the metric
    against each knob."""
    summary = read_summary(summary_csv)
    outdir = Path(outdir)
    written: list[Path] = []
    curves = load_curves(summary)
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        c = curves[(curves["task"] == task) & (curves["partition"] == part)]
        title = f"{task} / {part}"
        written += save_figure(convergence_figure(c, metric, title), outdir / f"convergence_{task}_{part}")
        written += save_figure(final_figure(g, metric, title), outdir / f"final_{task}_{part}")
    knobs = attach_knobs(summary) if not summary.empty else summary
    if is_ablation_run(knobs):  # an ablation run (config/ablations.yaml): metric against each knob
        for knob, fig in knob_figures(ablation_panels(knobs)).items():
            written += save_figure(fig, outdir / f"knob_{knob}")
    return written
