"""Paired statistics of the report: effects paired by seed, t intervals, verdicts, seeds needed.

Every comparison of aggregator a with b is *paired by seed* (same task, partition, client
method, seed: same data split, same warm-up). For a metric where lower is better the per-seed
effect is the log-ratio of errors ``log(e_a / e_b)``; for an accuracy it is the log-ratio of
error rates ``1 - acc``, so a negative effect always means "a has the lower error". The
interval over seeds is the Student t interval ``mean +- t_{n-1, 0.975} sd / sqrt(n)``.
Diverged runs never enter a mean as numbers: they are counted and shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fipa.report.runs import CELL

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
INCONCLUSIVE, NOT_MEASURED = "inconclusive at this budget", "not measured in this run"

METRIC_LABELS = {"test_mse": "test MSE", "rel_l2": "relative L2 error", "test_acc": "test accuracy",
                 "test_loss": "test loss", "train_loss": "training loss"}


def direction_of(metric: str) -> str:
    """"max" for accuracies, "min" for errors and losses."""
    return "max" if metric.endswith(("acc", "accuracy")) else "min"


def metric_label(metric: str) -> str:
    """Plain words and the better direction: 'relative L2 error (lower is better)'."""
    better = "higher" if direction_of(metric) == "max" else "lower"
    return f"{METRIC_LABELS.get(metric, metric)} ({better} is better)"


def arrow(metric: str) -> str:
    """An arrow pointing to the better direction of ``metric``."""
    return "\u2191" if direction_of(metric) == "max" else "\u2193"


def error_of(value: float, metric: str) -> float:
    """The error a metric value stands for: the value itself, or 1 - accuracy."""
    return 1.0 - value if direction_of(metric) == "max" else value


@dataclass(frozen=True)
class Interval:
    """Mean of n values and its two-sided t interval (lo, hi NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float


def t_interval(values, level: float = 0.95) -> Interval:
    """Student t interval of the mean of the finite ``values``: mean +- t_{n-1} sd / sqrt(n)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def seeds_needed(iv: Interval, level: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds n at which an effect of ``iv``'s mean and spread (its sd) would give a
    t interval that excludes 0: the smallest n >= 2 with t_{n-1} sd / sqrt(n) < |mean| (None
    beyond ``most``, a zero mean or no spread measured)."""
    from scipy import stats

    if iv.n < 2 or not (np.isfinite(iv.sd) and np.isfinite(iv.mean)) or iv.mean == 0:
        return None
    for n in range(2, most + 1):
        if float(stats.t.ppf(0.5 + level / 2, n - 1)) * iv.sd / math.sqrt(n) < abs(iv.mean):
            return n
    return None


def verdict_of(iv: Interval, margin: float = 0.0, a_diverged: int = 0) -> str:
    """From an interval of a log-ratio (a vs b, negative = a better): "supported" when it lies
    below ``margin``, "not supported" when above, else inconclusive; never "supported" when a
    diverged in some seed, and inconclusive below two seeds."""
    if iv.n == 0:
        return NOT_MEASURED
    if iv.n < 2 or not np.isfinite(iv.hi):
        return INCONCLUSIVE
    if iv.lo > margin:
        return NOT_SUPPORTED
    if iv.hi < margin and not a_diverged:
        return SUPPORTED
    return INCONCLUSIVE


PAIRED_COLUMNS = [*CELL, "seed", "metric", "value_a", "value_b", "diverged_a", "diverged_b", "log_ratio",
                  "difference"]


def _paired_cell(g: pd.DataFrame, a: str, b: str) -> list[dict]:
    """The seeds of one cell (task x partition x client method) where both ``a`` and ``b`` ran,
    as rows of paired_effects without the cell's columns."""
    metric = g["primary_metric"].iloc[0]
    col = f"final_{metric}"
    ga, gb = (g[g["aggregator"] == x].set_index("seed") for x in (a, b))
    ga, gb = ga[~ga.index.duplicated()], gb[~gb.index.duplicated()]
    out = []
    for seed in sorted(set(ga.index) & set(gb.index)):
        va, vb = float(ga.at[seed, col]), float(gb.at[seed, col])
        da, db = bool(ga.at[seed, "diverged"]), bool(gb.at[seed, "diverged"])
        ea, eb = error_of(va, metric), error_of(vb, metric)
        ok = not (da or db) and np.isfinite([ea, eb]).all() and ea > 0 and eb > 0
        out.append({"seed": int(seed), "metric": metric, "value_a": va, "value_b": vb, "diverged_a": da,
                    "diverged_b": db, "log_ratio": math.log(ea / eb) if ok else math.nan,
                    "difference": va - vb if not (da or db) else math.nan})
    return out


def paired_effects(summary: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (task, partition, client method, seed) where both ``a`` and ``b`` ran: their final
    primary metric, diverged flags, ``log_ratio`` = log(error_a / error_b) (NaN if either
    diverged or an error is not positive) and ``difference`` = value_a - value_b."""
    out = []
    for keys, g in summary.groupby(CELL, sort=False):
        cell = dict(zip(CELL, keys, strict=True))
        out += [{**cell, **r} for r in _paired_cell(g, a, b)]
    return pd.DataFrame(out, columns=PAIRED_COLUMNS)


def pooled_interval(effects: pd.DataFrame, level: float = 0.95) -> tuple[Interval, pd.Series]:
    """Per seed, the mean log-ratio over the cells (task x partition x method) of ``effects``
    (seeds missing a finite value in some cell are left out), and the t interval over seeds."""
    if effects.empty:
        return t_interval([], level), pd.Series(dtype=float)
    wide = effects.pivot_table(index="seed", columns=CELL, values="log_ratio", aggfunc="first",
                               dropna=False)
    per_seed = wide.dropna(how="any").mean(axis=1)
    return t_interval(per_seed.values, level), per_seed


def comparison_table(summary: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """One row per task x partition x client method: a vs b paired over seeds, as the ratio of
    errors exp(mean log-ratio) with its 95% interval, n seeds, diverged counts and a verdict."""
    effects = paired_effects(summary, a, b)
    rows = []
    for keys, e in effects.groupby(CELL, sort=False):
        iv = t_interval(e["log_ratio"])
        metric = e["metric"].iloc[0]
        row = dict(zip(CELL, keys, strict=True))
        row.update({"metric": metric, "n": iv.n, "ratio": math.exp(iv.mean) if iv.n else math.nan,
                    "ratio_lo": math.exp(iv.lo) if np.isfinite(iv.lo) else math.nan,
                    "ratio_hi": math.exp(iv.hi) if np.isfinite(iv.hi) else math.nan,
                    "diverged_a": int(e["diverged_a"].sum()), "diverged_b": int(e["diverged_b"].sum()),
                    "verdict": verdict_of(iv, a_diverged=int(e["diverged_a"].sum()))})
        if direction_of(metric) == "max":
            d = t_interval(e["difference"])
            row.update({"diff": d.mean, "diff_lo": d.lo, "diff_hi": d.hi})
        rows.append(row)
    return pd.DataFrame(rows)


def format_ratio(ratio: float, lo: float, hi: float) -> str:
    """'0.31 [0.12, 0.80]'; the interval left out when there is none (one seed)."""
    if not np.isfinite(ratio):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{ratio:.3g} (one seed, no interval)"
    return f"{ratio:.3g} [{lo:.3g}, {hi:.3g}]"


def cell_stats(values: pd.Series, diverged: pd.Series) -> dict:
    """mean, sd over the finite, non-diverged values; n of them; count of diverged runs."""
    v = values[~diverged.astype(bool)].astype(float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else math.nan,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "n": int(len(v)), "diverged": int(diverged.astype(bool).sum())}
