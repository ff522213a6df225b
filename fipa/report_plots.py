"""Figures of the report and the ``figures`` rule, drawn with matplotlib's object API.

Every function returns a ``matplotlib.figure.Figure`` (no pyplot, no backend switch: saving
and showing work in a notebook kernel, a headless job and a test alike). Every artist drawn
for an aggregator takes its colour from fipa.palette and carries ``gid = "agg:<name>"``, so
:func:`check_colors` can verify that one aggregator looks the same in every panel. Legends
sit outside the data, to the right of the panels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fipa import palette
from fipa.report import (
    ABLATION_KNOBS,
    KNOB_LABELS,
    METRIC_LABELS,
    KnobPanel,
    ablation_panels,
    at_value,
    attach_knobs,
    direction_of,
    is_ablation_run,
    knob_text,
    load_curves,
    paired_effects,
    read_summary,
)

GID = "agg:"


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def _tag(artists, aggregator: str):
    for a in artists if isinstance(artists, list | tuple) else [artists]:
        a.set_gid(GID + aggregator)
    return artists


def _ylabel(metric: str, log: bool) -> str:
    better = "higher" if direction_of(metric) == "max" else "lower"
    return f"{METRIC_LABELS.get(metric, metric)}{' (log scale)' if log else ''}\n{better} is better"


def _positive(values) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool((v > 0).all())


def plain_log(ax, axis: str = "y") -> None:
    """Log scale with ticks written as plain numbers (0.2, 1, 30), not as powers like 2 x 10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 1e3:  # a few decades: ticks at 1, 2, 5 x 10^k; wider: decades only
        a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    a.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _panels(n: int, width: float = 4.6, height: float = 3.4, wrap: int = 3) -> tuple[Figure, list]:
    ncol = min(n, wrap)
    nrow = -(-n // ncol)
    fig = Figure(figsize=(width * ncol + 1.8, height * nrow), layout="constrained")
    axs = fig.subplots(nrow, ncol, squeeze=False).ravel().tolist()
    for ax in axs[n:]:
        ax.set_axis_off()
    return fig, axs[:n]


def _legend(fig: Figure, axs, title: str = "aggregator"):
    """One legend for the figure, right of the panels, from every panel's labelled artists."""
    seen = {}
    for ax in axs:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), title=title, loc="outside right center",
                   frameon=False)


def convergence_figure(curves: pd.DataFrame, metric: str, title: str) -> Figure:
    """Metric vs round, one panel per client method: per aggregator the median over seeds (line)
    and the min-max over seeds (band). Log y for errors."""
    _style()
    methods = list(dict.fromkeys(curves["client_method"]))
    fig, axs = _panels(len(methods))
    log = direction_of(metric) == "min" and _positive(curves[metric])
    for ax, method in zip(axs, methods, strict=True):
        c = curves[curves["client_method"] == method]
        for agg in palette.order(c["aggregator"]):
            g = c[c["aggregator"] == agg].replace([np.inf, -np.inf], np.nan)
            q = g.groupby("round")[metric].agg(["median", "min", "max"])
            st = palette.style(agg)
            _tag(ax.plot(q.index, q["median"], **st.line_kw(), markersize=4, lw=1.6, label=agg), agg)
            _tag(ax.fill_between(q.index, q["min"], q["max"], color=st.color, alpha=0.12, lw=0), agg)
        if log:
            plain_log(ax)
        ax.set_xlabel("round")
        ax.set_ylabel(_ylabel(metric, log))
        ax.set_title(f"client method: {method}" if len(methods) > 1 else "")
    fig.suptitle(f"{title}: median over seeds, band = min to max")
    _legend(fig, axs)
    return fig


def final_figure(summary: pd.DataFrame, metric: str, title: str) -> Figure:
    """Final metric per aggregator, one panel per client method: seeds as dots, mean +- sd as a
    diamond with bars; diverged runs are not drawn but counted above their column."""
    _style()
    col = f"final_{metric}"
    methods = list(dict.fromkeys(summary["client_method"]))
    fig, axs = _panels(len(methods), width=max(4.0, 0.55 * summary["aggregator"].nunique() + 1.5))
    ok_all = summary[~summary["diverged"].astype(bool)][col]
    log = direction_of(metric) == "min" and _positive(ok_all)
    rng = np.random.default_rng(0)
    for ax, method in zip(axs, methods, strict=True):
        g = summary[summary["client_method"] == method]
        order = palette.order(g["aggregator"])
        for x, agg in enumerate(order):
            h = g[g["aggregator"] == agg]
            ok = h[~h["diverged"].astype(bool)][col].astype(float)
            ok = ok[np.isfinite(ok)]
            st = palette.style(agg)
            if len(ok):
                _tag(ax.scatter(x + rng.uniform(-0.15, 0.15, len(ok)), ok, color=st.color, alpha=0.45, s=16,
                                lw=0), agg)
                sd = ok.std(ddof=1) if len(ok) > 1 else 0.0
                eb = ax.errorbar(x, ok.mean(), yerr=sd, color=st.color, marker="D", markersize=6, capsize=3,
                                 label=agg)
                _tag([eb.lines[0], *eb.lines[1], *eb.lines[2]], agg)
            ndiv = int(h["diverged"].astype(bool).sum())
            if ndiv:
                ax.annotate(f"{ndiv} div.", (x, 1.0), xycoords=("data", "axes fraction"), ha="center",
                            va="bottom", fontsize=8, color=st.color)
        ax.set_xticks(range(len(order)), order, rotation=35, ha="right")
        ax.set_xlim(-0.6, len(order) - 0.4)
        if log:
            plain_log(ax)
        ax.set_ylabel(_ylabel(metric, log))
        ax.set_title(f"client method: {method}" if len(methods) > 1 else "")
    what = METRIC_LABELS.get(metric, metric)
    fig.suptitle(f"{title}: final {what}, dots = seeds, diamond = mean \u00b1 sd")
    return fig


def forest_figure(summary: pd.DataFrame, variants: list[str], baseline: str = "fedavg") -> Figure | None:
    """Per task x partition x client method (rows), each FIPA variant's error over the baseline's,
    paired by seed: seeds as dots, mean log-ratio and its 95% t interval as a bar; log x.
    None when no variant pairs with the baseline."""
    from fipa.report import t_interval

    _style()
    blocks = []
    for v in variants:
        e = paired_effects(summary, v, baseline)
        if not e.empty:
            blocks.append((v, e))
    if not blocks:
        return None
    cells = list(dict.fromkeys(tuple(r) for b in blocks for r in b[1][["task", "partition", "client_method"]]
                               .itertuples(index=False)))
    fig = Figure(figsize=(8.5, 1.0 + 0.45 * len(cells) * max(1, len(blocks)) ** 0.5), layout="constrained")
    ax = fig.subplots()
    step = 0.6 / max(1, len(blocks))
    for j, (v, e) in enumerate(blocks):
        st = palette.style(v)
        labelled = False
        for i, cell in enumerate(cells):
            y = i + (j - (len(blocks) - 1) / 2) * step
            ei = e[(e["task"] == cell[0]) & (e["partition"] == cell[1]) & (e["client_method"] == cell[2])]
            lr = ei["log_ratio"].astype(float)
            lr = lr[np.isfinite(lr)]
            if lr.empty:
                continue
            _tag(ax.scatter(np.exp(lr), np.full(len(lr), y), color=st.color, alpha=0.45, s=14, lw=0), v)
            iv = t_interval(lr)
            if iv.n > 1:
                _tag(ax.plot([np.exp(iv.lo), np.exp(iv.hi)], [y, y], color=st.color, lw=2), v)
            _tag(ax.plot([np.exp(iv.mean)], [y], color=st.color, marker=st.marker, ls="none", markersize=7,
                         label="_" if labelled else f"{v} / {baseline}"), v)
            labelled = True
    ax.axvline(1.0, color="0.3", lw=1)
    plain_log(ax, "x")
    ax.set_yticks(range(len(cells)), [" / ".join(c) for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel(f"final error of the variant / {baseline}'s, paired by seed (log scale)\n"
                  "< 1: lower error than " + baseline + "; accuracies as error rate 1 - acc")
    ax.set_title("Paired comparison: dots = seeds, marker = geometric mean, bar = 95% t interval")
    _legend(fig, [ax], title="ratio")
    return fig


def cost_figure(curves: pd.DataFrame, runs: pd.DataFrame, metric: str, title: str) -> Figure:
    """Left: metric against cumulative uplink bytes (median over seeds, plain client method);
    right: job wall time per aggregator from the benchmark records (mean +- sd over seeds)."""
    _style()
    fig = Figure(figsize=(12.5, 3.8), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    method = "local" if (curves["client_method"] == "local").any() else curves["client_method"].iloc[0]
    c = curves[(curves["client_method"] == method) & (curves["uplink_bytes_total"] > 0)
               & (curves["aggregator"] != "centralized")]  # the reference communicates nothing
    log = direction_of(metric) == "min" and _positive(c[metric])
    for agg in palette.order(c["aggregator"]):
        q = c[c["aggregator"] == agg].groupby("round")[["uplink_bytes_total", metric]].median()
        _tag(ax.plot(q["uplink_bytes_total"], q[metric], **palette.style(agg).line_kw(), markersize=4,
                     label=agg), agg)
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log:
        plain_log(ax)
    ax.set_xlabel("cumulative uplink bytes, all clients (log scale)")
    ax.set_ylabel(_ylabel(metric, log))
    ax.set_title(f"{metric} against communication ({method})")
    r = runs[runs["client_method"] == method]
    order = palette.order(r["aggregator"])
    col = "wall_s"  # the run's own training time (a batch job's benchmark record covers many runs)
    for x, agg in enumerate(order):
        v = r[r["aggregator"] == agg][col].astype(float).dropna()
        if v.empty:
            continue
        _tag(bx.bar(x, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, color=palette.color(agg),
                    capsize=3, label=agg).patches, agg)
    bx.set_xticks(range(len(order)), order, rotation=35, ha="right")
    bx.set_ylabel("training wall time per run [s]")
    bx.set_title("time per run (mean \u00b1 sd over seeds)")
    fig.suptitle(title)
    _legend(fig, [ax])
    return fig


def sweep_figure(runs: pd.DataFrame, knob: str, reference: pd.DataFrame, metric: str, title: str) -> Figure:
    """An ablation: final metric against ``knob`` (mean +- sd over seeds, seeds as dots) for one
    aggregator kind; ``reference`` runs (FedAvg) as a horizontal line with a +-sd band."""
    _style()
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
    st = palette.style(name)
    stats = ok.groupby(knob)[col].agg(["mean", "std"]).reindex(xs)
    _tag(ax.scatter([pos[v] for v in ok[knob]], ok[col], color=st.color, alpha=0.45, s=16, lw=0), name)
    eb = ax.errorbar([pos[v] for v in xs], stats["mean"], yerr=stats["std"].fillna(0), color=st.color,
                     marker=st.marker, capsize=3, label=f"{name} ({knob} varies)")
    _tag([eb.lines[0], *eb.lines[1], *eb.lines[2]], name)
    ref = reference[~reference["diverged"].astype(bool)][col].astype(float)
    if len(ref):
        c = palette.color("fedavg")
        _tag(ax.axhline(ref.mean(), color=c, ls="--", label="fedavg (mean over seeds)"), "fedavg")
        if len(ref) > 1:
            _tag(ax.axhspan(ref.mean() - ref.std(ddof=1), ref.mean() + ref.std(ddof=1), color=c, alpha=0.12,
                            lw=0), "fedavg")
    for v in xs:
        ndiv = int(runs[(runs[knob] == v) & runs["diverged"].astype(bool)].shape[0])
        if ndiv:
            ax.annotate(f"{ndiv} div.", (pos[v], 1.0), xycoords=("data", "axes fraction"), ha="center",
                        va="bottom", fontsize=8)
    log = direction_of(metric) == "min" and _positive(ok[col])
    if logx:
        plain_log(ax, "x")
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    if log:
        plain_log(ax)
    ax.set_xlabel(knob + (" (log scale)" if logx else ""))
    ax.set_ylabel(_ylabel(metric, log))
    ax.set_title(title)
    _legend(fig, [ax], title="")
    return fig


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


def knob_panel(ax, panel) -> None:
    """One ablation panel (a fipa.report.KnobPanel) on ``ax``: FIPA's final metric against the knob
    over seeds (dots = seeds; bars: mean +- sd, on a log axis geometric mean x/÷ geometric sd);
    diverged seeds are counted above the axis and never averaged (a knob value where every seed
    diverged shows only the count and a cross on the top edge). FedAvg is the dashed reference (and
    FedAvg with its tuned server step, where the run has it, dash-dot): a
    line with its band where FedAvg does not depend on the knob (rho, rank), else bars at each
    value (clients, alpha)."""
    col = f"final_{panel.metric}"
    pos, logx = _knob_positions(panel.values)
    fipa_style, avg_color = palette.style("fipa"), palette.color("fedavg")
    runs = panel.fipa.assign(x=panel.fipa["value"].map(lambda v: pos.get(v, np.nan)))
    ok = runs[~runs["diverged"].astype(bool) & np.isfinite(runs[col].astype(float))]
    ref = panel.fedavg[~panel.fedavg["diverged"].astype(bool)]
    log = direction_of(panel.metric) == "min" and _positive(pd.concat([ok[col], ref[col]]))
    spread = "geometric mean \u00d7/\u00f7 sd" if log else "mean \u00b1 sd"
    _tag(ax.scatter(ok["x"], ok[col], color=fipa_style.color, alpha=0.45, s=16, lw=0), "fipa")
    eb = _spread_bars(ax, [pos[v] for v in panel.values], [at_value(ok, v)[col] for v in panel.values], log,
                      color=fipa_style.color, marker=fipa_style.marker, label=f"FIPA: {spread} over seeds")
    _tag([eb.lines[0], *eb.lines[1], *eb.lines[2]], "fipa")
    for v in panel.values:
        at = at_value(runs, v)
        ndiv = int(at["diverged"].astype(bool).sum())
        if ndiv:
            ax.annotate(f"{ndiv}/{len(at)}\ndiverged", (pos[v], 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8, color=fipa_style.color)
        if ndiv and ndiv == len(at):
            _tag(ax.scatter([pos[v]], [0.97], marker="x", s=60, color=fipa_style.color,
                            transform=ax.get_xaxis_transform(), clip_on=False,
                            label="FIPA diverged (not averaged)"), "fipa")
    if ref["value"].notna().any():  # FedAvg changes with the knob (a property of the data split)
        # FedAvg dashed as everywhere in these figures; its tuned server step (where run) in its own style
        for name, runs_b, label, ls in (("fedavg", ref, "FedAvg", "--"),
                                        ("fedavg_tuned", panel.tuned, "FedAvg, tuned server step", None)):
            if runs_b is None:
                continue
            ok_b = runs_b[~runs_b["diverged"].astype(bool)]
            vals = [v for v in panel.values if len(at_value(ok_b, v))]
            st = palette.style(name)
            eb = _spread_bars(ax, [pos[v] for v in vals], [at_value(ok_b, v)[col] for v in vals], log,
                              color=st.color, ls=ls or st.linestyle, marker=st.marker,
                              label=f"{label}: {spread}")
            _tag([eb.lines[0], *eb.lines[1], *eb.lines[2]], name)
    elif len(ref):
        m, lo, hi = seed_spread(ref[col], log)
        _tag(ax.axhline(m, color=avg_color, ls="--", label=f"FedAvg: {spread} (band)"), "fedavg")
        if len(ref) > 1:
            _tag(ax.axhspan(lo, hi, color=avg_color, alpha=0.12, lw=0), "fedavg")
    if logx:
        ax.set_xscale("log")
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.xaxis.set_major_locator(FixedLocator([pos[v] for v in panel.values]))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks([pos[v] for v in panel.values], [knob_text(v) for v in panel.values])
    if log:
        plain_log(ax)
    ax.set_ylabel(_ylabel(panel.metric, log))
    ax.set_title(panel.title, fontsize=10, pad=26)


def knob_figure(panels: list, xlabel: str) -> Figure:
    """An ablation figure: one knob_panel per fipa.report.KnobPanel (two per row), one legend."""
    _style()
    fig, axs = _panels(len(panels), width=5.2, height=3.9, wrap=2)
    for ax, p in zip(axs, panels, strict=True):
        knob_panel(ax, p)
    fig.supxlabel(xlabel, fontsize=11)
    _legend(fig, axs, title="")
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
    _style()
    fig, axs = _panels(len(paths), width=5.6, height=3.4)
    for ax, path in zip(axs, paths, strict=True):
        partition_panel(path, ax)
        ax.set_title(f"{path.parent.parent.name} / {path.parent.name}: " + ax.get_title(), fontsize=10)
    return fig


# ----------------------------------------------------------------------------- output


def _artist_color(a):
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(a, Line2D):
        return a.get_color()
    if isinstance(a, Collection):
        fc = a.get_facecolor()
        return fc[0] if len(fc) else (a.get_edgecolor()[0] if len(a.get_edgecolor()) else None)
    if isinstance(a, Patch):
        return a.get_facecolor()
    return None


def figure_colors(fig: Figure) -> dict[str, set[str]]:
    """{aggregator: the set of hex colours its tagged artists have} over every panel of ``fig``."""
    from matplotlib.colors import to_hex

    out: dict[str, set[str]] = {}
    for a in fig.findobj(lambda o: (o.get_gid() or "").startswith(GID)):
        c = _artist_color(a)
        if c is not None:
            out.setdefault(a.get_gid()[len(GID):], set()).add(to_hex(c, keep_alpha=False))
    return out


def check_colors(fig: Figure) -> list[str]:
    """Aggregators drawn in ``fig`` in a colour other than their palette colour (empty if none)."""
    return [f"{agg} drawn in {sorted(cs)}, palette says {palette.color(agg)}"
            for agg, cs in figure_colors(fig).items() if cs != {palette.color(agg)}]


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def show(fig: Figure | None) -> None:
    """Display ``fig`` as a PNG in the notebook, after checking its colours against the palette."""
    from IPython.display import Image, display

    if fig is None:
        return
    bad = check_colors(fig)
    if bad:
        raise ValueError("figure colours disagree with fipa.palette: " + "; ".join(bad))
    display(Image(data=png_bytes(fig)))


SKIP_KEY = "fipa_skipped"


def skip(reason: str) -> None:
    """Display why a figure section is empty on purpose (no PDE runs, no ablations): the report
    check accepts a figure cell without an image only when it says so through this."""
    from IPython.display import Markdown, display

    display(Markdown(f"*{reason}*"), metadata={SKIP_KEY: True})


def save_figure(fig: Figure, path_stem: Path) -> list[Path]:
    """Write ``fig`` as PNG and PDF beside each other."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(s) for s in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    return paths


# ----------------------------------------------------------------------------- the figures rule


def knob_figures(panels: list[KnobPanel]) -> dict[str, object]:
    """{knob: figure} with one panel per KnobPanel, knobs in ABLATION_KNOBS order."""
    return {k: knob_figure([p for p in panels if p.knob == k], KNOB_LABELS[k])
            for k in ABLATION_KNOBS if any(p.knob == k for p in panels)}


def figures(summary_csv: str | Path, outdir: str | Path) -> list[Path]:
    """Convergence and final-metric figures for every task x partition in the summary; for an
    ablation run (is_ablation_run) also ``knob_<knob>`` figures, the metric against each knob."""
    summary = read_summary(summary_csv)
    outdir = Path(outdir)
    written: list[Path] = []
    curves = load_curves(summary)
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        c = curves[(curves["task"] == task) & (curves["partition"] == part)]
        title = f"{task} / {part}"
        written += save_figure(convergence_figure(c, metric, title),
                                  outdir / f"convergence_{task}_{part}")
        written += save_figure(final_figure(g, metric, title), outdir / f"final_{task}_{part}")
    knobs = attach_knobs(summary) if not summary.empty else summary
    if is_ablation_run(knobs):  # an ablation run (config/ablations.yaml): metric against each knob
        for knob, fig in knob_figures(ablation_panels(knobs)).items():
            written += save_figure(fig, outdir / f"knob_{knob}")
    return written
