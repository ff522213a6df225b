"""Summary tables and figures from run directories (used by the CLI and the notebook)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

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
        t.insert(0, "partition", part)
        t.insert(0, "task", task)
        t["metric"] = m
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def convergence_figure(curves: pd.DataFrame, metric: str, title: str, path_stem: Path,
                       log: bool = True) -> list[Path]:
    """Metric vs round: one line per aggregator, seeds as a band (min-max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    facet = "client_method" if curves["client_method"].nunique() > 1 else None
    g = sns.relplot(data=curves, x="round", y=metric, hue="aggregator", kind="line",
                    col=facet, errorbar=("pi", 100), estimator="median", height=4, aspect=1.4,
                    facet_kws={"sharey": True})
    if log:
        g.set(yscale="log")
    g.figure.suptitle(title, y=1.02)
    return _save(g.figure, path_stem, plt)


def final_figure(summary: pd.DataFrame, metric: str, title: str, path_stem: Path) -> list[Path]:
    """Final metric per aggregator: seeds as dots, mean as a bar; log scale for errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    col = f"final_{metric}"
    order = summary.groupby("aggregator")[col].mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(order), 4))
    sns.barplot(data=summary, x="aggregator", y=col, order=order, errorbar=None, alpha=0.5,
                ax=ax, hue="aggregator", legend=False)
    sns.stripplot(data=summary, x="aggregator", y=col, order=order, color="k", size=5, ax=ax)
    if metric.endswith(("mse", "l2", "loss")):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, path_stem, plt)


def _save(fig, path_stem: Path, plt) -> list[Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(s) for s in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return paths


def figures(summary_csv: str | Path, outdir: str | Path) -> list[Path]:
    """Convergence and final-metric figures for every task x partition in the summary."""
    summary = pd.read_csv(summary_csv)
    outdir = Path(outdir)
    written: list[Path] = []
    curves = load_curves(summary)
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        c = curves[(curves["task"] == task) & (curves["partition"] == part)]
        title = f"{task} / {part}"
        written += convergence_figure(c, metric, title, outdir / f"convergence_{task}_{part}",
                                      log=metric != "test_acc")
        written += final_figure(g, metric, title, outdir / f"final_{task}_{part}")
    return written
