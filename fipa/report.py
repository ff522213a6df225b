"""Summary tables and figures from run directories (used by the CLI and the notebook)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from fipa.io import atomic_write

ID_COLUMNS = ["task", "partition", "client_method", "aggregator", "seed"]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding final.json) under or at the given paths, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if (p / "final.json").is_file():
            found.add(p)
        elif p.is_file() and p.name == "final.json":
            found.add(p.parent)
        elif p.is_dir():
            found.update(f.parent for f in p.rglob("final.json"))
    return sorted(found)


def summary_row(run_dir: Path) -> dict:
    """One summary row from a run's final.json."""
    final = json.loads((run_dir / "final.json").read_text())
    row = {k: final[k] for k in ID_COLUMNS}
    row.update({
        "task_family": final.get("task_family", final["task"]),
        "rounds_completed": final["rounds_completed"],
        "diverged": bool(final["diverged"]),
        "primary_metric": final["primary_metric"],
    })
    row.update({f"final_{k}": v for k, v in final["final"].items()})
    row.update({f"best_{k}": v for k, v in final["best"].items()})
    row.update({"uplink_bytes_total": final["uplink_bytes_total"], "wall_s": final["wall_s"],
                "num_params": final["num_params"], "run_dir": str(run_dir)})
    return row


def collect(paths: Iterable[str | Path], output: str | Path | None = None) -> pd.DataFrame:
    """All runs -> one row each (ID columns, outcome, final and best metrics)."""
    rows = [summary_row(d) for d in find_runs(paths)]
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(ID_COLUMNS, kind="stable").reset_index(drop=True)
    if output is not None:
        atomic_write(output, lambda fh: df.to_csv(fh, index=False))
    return df


def load_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every run in the summary, with its ID columns: long format."""
    frames = []
    for _, r in summary.iterrows():
        m = pd.read_csv(Path(r["run_dir"]) / "metrics.csv")
        for k in ID_COLUMNS:
            m[k] = r[k]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def final_table(summary: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Mean and std over seeds of the final primary metric, per task x partition x method x agg."""
    out = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        m = metric or g["primary_metric"].iloc[0]
        col = f"final_{m}"
        t = (g.groupby(["client_method", "aggregator"])[col]
             .agg(["mean", "std", "count"]).reset_index())
        t["diverged"] = g.groupby(["client_method", "aggregator"])["diverged"].sum().values
        t["best"] = t["mean"] == (t["mean"].min() if direction_of(m) == "min" else t["mean"].max())
        t.insert(0, "partition", part)
        t.insert(0, "task", task)
        t["metric"] = m
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def plot_convergence(curves: pd.DataFrame, metric: str, title: str):
    """Metric vs round: one line per aggregator (median), seeds as a min-max band; a Figure."""
    import seaborn as sns

    _style()
    facet = "client_method" if curves["client_method"].nunique() > 1 else None
    hue_order = aggregator_order(curves["aggregator"])
    g = sns.relplot(data=curves, x="round", y=metric, hue="aggregator", kind="line",
                    hue_order=hue_order, palette=aggregator_palette(hue_order),
                    col=facet, col_wrap=3 if facet else None, errorbar=("pi", 100), estimator="median",
                    height=3.6, aspect=1.35, facet_kws={"sharey": True})
    if direction_of(metric) == "min":
        g.set(yscale="log")
    g.figure.suptitle(title, y=1.02)
    return g.figure


def aggregator_order(names: pd.Series) -> list[str]:
    """FedAvg first, FIPA variants last but the centralized reference: a stable legend order."""
    def rank(name: str) -> tuple[int, str]:
        return (0 if name == "fedavg" else 3 if name == "centralized" else 2 if name.startswith("fipa")
                else 1, name)

    return sorted(pd.unique(names), key=rank)


def aggregator_palette(order: list[str]) -> dict[str, Any]:
    """Muted colours for baselines, strong reds for FIPA variants, black for centralized."""
    import seaborn as sns

    baselines = [a for a in order if not a.startswith("fipa") and a != "centralized"]
    fipas = [a for a in order if a.startswith("fipa")]
    muted = sns.color_palette("muted", 10)
    not_red = [muted[i] for i in (0, 2, 4, 9, 8, 1, 7, 6, 5)]  # reds stay FIPA's
    pal = {a: not_red[i % len(not_red)] for i, a in enumerate(baselines)}
    pal.update(zip(fipas, sns.color_palette("Reds_r", len(fipas) + 1), strict=False))
    pal["centralized"] = (0.15, 0.15, 0.15)
    return {a: pal[a] for a in order}


def plot_final(summary: pd.DataFrame, metric: str, title: str):
    """Final metric per aggregator (best first): seeds as dots, mean +- sd as a diamond, one
    colour per client method; log scale for errors, a zoomed axis for accuracies; a Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    col = f"final_{metric}"
    ascending = direction_of(metric) == "min"
    order = summary.groupby("aggregator")[col].mean().sort_values(ascending=ascending).index.tolist()
    hue = "client_method" if summary["client_method"].nunique() > 1 else None
    fig, ax = plt.subplots(figsize=(2.0 + 1.0 * len(order), 4.2))
    common = {"data": summary, "x": "aggregator", "y": col, "order": order, "hue": hue, "ax": ax}
    sns.stripplot(**common, dodge=hue is not None, alpha=0.4, size=4, legend=False,
                  **({} if hue else {"color": "0.35"}))
    sns.pointplot(**common, dodge=0.55 if hue else False, errorbar="sd", linestyle="none", markers="D",
                  markersize=6, capsize=0.08, **({} if hue else {"color": "C3"}))
    if hue:
        ax.legend(title="client method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    if ascending:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return fig


def save_figure(fig, path_stem: Path) -> list[Path]:
    """Write ``fig`` as PNG and PDF beside each other and close it."""
    import matplotlib.pyplot as plt

    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(s) for s in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return paths


def figures(summary_csv: str | Path, outdir: str | Path) -> list[Path]:
    """Convergence and final-metric figures for every task x partition in the summary."""
    import matplotlib

    matplotlib.use("Agg")
    summary = pd.read_csv(summary_csv)
    outdir = Path(outdir)
    written: list[Path] = []
    curves = load_curves(summary)
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        c = curves[(curves["task"] == task) & (curves["partition"] == part)]
        title = f"{task} / {part}"
        written += save_figure(plot_convergence(c, metric, title), outdir / f"convergence_{task}_{part}")
        written += save_figure(plot_final(g, metric, title), outdir / f"final_{task}_{part}")
    return written


# ----------------------------------------------------------------------------- report pieces


def attach_benchmarks(summary: pd.DataFrame, bench_root: str | Path) -> pd.DataFrame:
    """Join Snakemake ``benchmark:`` records (s, max_rss) of each run as bench_s, bench_max_rss_mb."""
    bench_root = Path(bench_root)
    s, rss = [], []
    for _, r in summary.iterrows():
        cell = [r["task"], r["partition"], r["client_method"], r["aggregator"]]
        f = bench_root.joinpath(*cell, f"seed{r['seed']}.tsv")
        if f.is_file():
            b = pd.read_csv(f, sep="\t")
            s.append(float(b["s"].iloc[-1]))
            rss.append(pd.to_numeric(b["max_rss"], errors="coerce").iloc[-1])
        else:
            s.append(float("nan"))
            rss.append(float("nan"))
    return summary.assign(bench_s=s, bench_max_rss_mb=rss)


def direction_of(metric: str) -> str:
    return "max" if metric.endswith(("acc", "accuracy")) else "min"


def styled_final_table(summary: pd.DataFrame):
    """final_table as a pandas Styler: mean and std over seeds, the best mean in bold."""
    t = final_table(summary)
    bold = t["best"].tolist()
    return (t.drop(columns="best").style
            .apply(lambda row: ["font-weight: bold" if bold[row.name] else ""] * len(row), axis=1)
            .format({"mean": "{:.3g}", "std": "{:.2g}"}).hide(axis="index"))


def paired_difference(summary: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per seed, final primary metric of aggregator ``a`` minus ``b`` (same task, partition, method)."""
    out = []
    for (task, part, method), g in summary.groupby(["task", "partition", "client_method"], sort=False):
        metric = g["primary_metric"].iloc[0]
        col = f"final_{metric}"
        ga = g[g.aggregator == a].set_index("seed")[col]
        gb = g[g.aggregator == b].set_index("seed")[col]
        for seed in sorted(set(ga.index) & set(gb.index)):
            out.append({"task": task, "partition": part, "client_method": method, "seed": seed,
                        "metric": metric, "difference": ga[seed] - gb[seed],
                        "ratio": ga[seed] / gb[seed] if gb[seed] else float("nan")})
    return pd.DataFrame(out)


def verdict(summary: pd.DataFrame) -> str:
    """A few sentences: the best aggregator per task x partition, and FIPA against FedAvg."""
    lines = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        col = f"final_{metric}"
        fed = g[g.aggregator != "centralized"]
        means = fed.groupby("aggregator")[col].mean()
        best = means.idxmin() if direction_of(metric) == "min" else means.idxmax()
        s = (f"On {task} / {part}, {best} attains the best federated {metric} "
             f"({means[best]:.3g}, mean of seeds)")
        if "fipa" in means and "fedavg" in means and best != "fedavg":
            ratio = means["fipa"] / means["fedavg"]
            s += f"; FIPA's {metric} is {ratio:.3g} x FedAvg's"
        cen = g[g.aggregator == "centralized"][col]
        if not cen.empty:
            s += f"; the centralized reference reaches {cen.mean():.3g}"
        ndiv = int(g["diverged"].sum())
        if ndiv:
            s += f"; {ndiv} run(s) diverged ({', '.join(sorted(set(g[g.diverged].aggregator)))})"
        lines.append(s + ".")
    return "\n".join(f"- {line}" for line in lines)


def uplink_figure(curves: pd.DataFrame, metric: str, title: str, ax=None):
    """Metric against cumulative uplink bytes per aggregator (median over seeds)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    c = curves[curves["uplink_bytes_total"] > 0]
    sns.lineplot(data=c, x="uplink_bytes_total", y=metric, hue="aggregator", estimator="median",
                 errorbar=None, ax=ax, marker="o", markersize=3)
    ax.set_xscale("log")
    if direction_of(metric) == "min":
        ax.set_yscale("log")
    ax.set_xlabel("cumulative uplink bytes")
    ax.set_title(title)
    return ax


def partition_figure(partition_json: str | Path, ax=None):
    """Client sizes and label histograms (if any) of one partition file."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    data = json.loads(Path(partition_json).read_text())
    stats = data["stats"]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    if "label_hist" in stats:
        sns.heatmap(pd.DataFrame(stats["label_hist"]).T, ax=ax, cmap="viridis", cbar_kws={"label": "samples"})
        ax.set_xlabel("client")
        ax.set_ylabel("class")
    else:
        ax.bar(range(len(stats["sizes"])), stats["sizes"], color=sns.color_palette()[0])
        ax.set_xlabel("client")
        ax.set_ylabel("samples")
        if "centroids" in stats:
            for i, c in enumerate(stats["centroids"]):
                ax.annotate(f"c={c[0]:.2g}" if len(c) == 1 else "", (i, stats["sizes"][i]),
                            ha="center", va="bottom", fontsize=8)
    part = data["partition"]
    ax.set_title(f"{part['scheme']} over {part['clients']} clients")
    return ax


def execute_report(notebook: str | Path, output: str | Path, html: str | Path | None,
                   results_dir: str | Path) -> None:
    """Run the notebook with papermill (parameter ``results_dir``), then export HTML with nbconvert."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    output = Path(output)
    tmp = output.with_name(f".running.{output.name}")
    papermill.execute_notebook(str(notebook), str(tmp), parameters={"results_dir": str(results_dir)},
                               progress_bar=False, kernel_name="python3")
    tmp.replace(output)
    if html is not None:
        body, _ = HTMLExporter(exclude_input=False).from_notebook_node(nbformat.read(output, as_version=4))
        atomic_write(html, lambda fh: fh.write(body))
