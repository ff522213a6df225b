"""Summary tables, paired statistics, claims and health checks from run directories.

Used by ``fipa collect``, ``fipa figures``, ``fipa report`` and notebooks/report.ipynb.
Figures live in fipa/report_plots.py, colours in fipa/palette.py.

Statistics, in one place: every comparison of aggregator a with b is *paired by seed*
(same task, partition, client method, seed: same data split, same warm-up). For a
metric where lower is better the per-seed effect is the log-ratio of errors
``log(e_a / e_b)``; for an accuracy it is the log-ratio of error rates ``1 - acc``, so a
negative effect always means "a has the lower error". The interval over seeds is the
Student t interval ``mean +- t_{n-1, 0.975} sd / sqrt(n)``. Diverged runs never enter a
mean as numbers: they are counted and shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fipa.errors import FipaError
from fipa.io import atomic_write
from fipa.palette import order as aggregator_order

ID_COLUMNS = ["task", "partition", "client_method", "aggregator", "seed"]
CELL = ["task", "partition", "client_method"]

# a problem counts as learned when some method's mean final metric is at or below this
THRESHOLDS = {"rel_l2": 0.1}
# "low rank is enough": the low rank's error at most this factor above the highest rank's
RANK_MARGIN = 1.25
# the knobs of a FIPA run an ablation may sweep (keys of the run config's aggregator block)
KNOBS = ("rank", "rho", "server_lr", "complement", "damping", "curvature_at", "curvature_samples")

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
INCONCLUSIVE, NOT_MEASURED = "inconclusive at this budget", "not measured in this run"

METRIC_LABELS = {"test_mse": "test MSE", "rel_l2": "relative L2 error", "test_acc": "test accuracy",
                 "test_loss": "test loss", "train_loss": "training loss"}


class ReportError(FipaError):
    """The executed report is incomplete (a figure without an image, output on stderr)."""


# ----------------------------------------------------------------------------- collecting runs


def find_runs(paths: Iterable[str | Path], superseded: bool = False) -> list[Path]:
    """Run directories (holding final.json) under or at the given paths, sorted; runs kept aside
    in a ``superseded/`` folder (an earlier config's) only when ``superseded``."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if (p / "final.json").is_file():
            found.add(p)
        elif p.is_file() and p.name == "final.json":
            found.add(p.parent)
        elif p.is_dir():
            found.update(f.parent for f in p.rglob("final.json")
                         if superseded or "superseded" not in f.relative_to(p).parts)
    return sorted(found)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _metrics_map(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items())


# the keys of final.json that collect reads, each with what its value must be
FINAL_TYPES = {
    **dict.fromkeys(("task", "partition", "client_method", "aggregator", "primary_metric"),
                    ("a string", lambda v: isinstance(v, str))),
    "seed": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "rounds_completed": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "diverged": ("true or false", lambda v: isinstance(v, bool)),
    "final": ("a mapping of metric names to numbers", _metrics_map),
    "best": ("a mapping of metric names to numbers", _metrics_map),
    "uplink_bytes_total": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "wall_s": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "num_params": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
}


def _final_problem(final: object) -> str | None:
    """What is wrong with a final.json's content (None: nothing): a key missing, a value of the
    wrong type, or rounds that disagree with its own config (a run ends at its config's rounds,
    or earlier when it diverged)."""
    if not isinstance(final, dict):
        return "is not a JSON object"
    missing = [k for k in FINAL_TYPES if k not in final]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (what, ok) in FINAL_TYPES.items():
        if not ok(final[key]):
            return f"{key} is {final[key]!r}, not {what}"
    rounds = (final.get("config") or {}).get("rounds") if isinstance(final.get("config"), dict) else None
    done = final["rounds_completed"]
    if _is_int(rounds) and (done > rounds or (done < rounds and not final["diverged"])):
        return f"records rounds_completed {done} for a config of {rounds} rounds"
    return None


def read_final(run_dir: Path) -> dict:
    """A run's final.json, or one ConfigError naming the file and what is wrong with it."""
    from fipa.errors import ConfigError

    path = run_dir / "final.json"
    try:
        final = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}: {e}); rerun that run "
                          "(its checkpoint resumes it) or move the directory away") from None
    problem = _final_problem(final)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}; not a final.json as `fipa train` writes it (rerun that run)")
    return final


SUMMARY_COLUMNS = [*ID_COLUMNS, "primary_metric", "diverged", "run_dir"]


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary table of ``fipa collect``: at least one run, with the columns every reader needs;
    one ConfigError naming the file and the fix otherwise."""
    from fipa.errors import ConfigError

    fix = "run `fipa collect` (or the workflow) to write it"
    try:
        summary = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no summary table; {fix}") from None
    except (OSError, ValueError) as e:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ConfigError(f"{path}: not a summary table ({type(e).__name__}: {e}); {fix}") from None
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise ConfigError(f"{path}: lacks the columns {', '.join(missing)}; {fix}")
    if summary.empty:
        raise ConfigError(f"{path}: holds no runs (a header only); train some runs, then {fix}")
    return summary


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv: at least its initial row, every column numeric (round, losses, the
    task's metrics, ...); one ConfigError naming the file otherwise."""
    from fipa.errors import ConfigError

    fix = "rerun that run (its checkpoint rewrites it) or move the directory away"
    try:
        m = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    bad = [c for c in m.columns if not pd.api.types.is_numeric_dtype(m[c])]
    if m.empty or "round" not in m.columns or bad:
        raise ConfigError(f"{path}: not a metrics table (rows {len(m)}, non-numeric columns {bad}); {fix}")
    return m


def summary_row(run_dir: Path) -> dict:
    """One summary row from a run's final.json."""
    final = read_final(run_dir)
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


def collect(paths: Iterable[str | Path], output: str | Path | None = None,
            superseded: bool = False) -> pd.DataFrame:
    """All runs -> one row each (ID columns, outcome, final and best metrics)."""
    rows = [summary_row(d) for d in find_runs(paths, superseded)]
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
        m = read_metrics(Path(r["run_dir"]) / "metrics.csv")
        for k in ID_COLUMNS:
            m[k] = r[k]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attach_knobs(summary: pd.DataFrame) -> pd.DataFrame:
    """Add each run's aggregator settings (``agg_kind`` = the registered name, KNOBS, and FIPA's
    ``memory``) and its setting (clients, participation, rounds, ``partition_scheme``,
    ``partition_alpha``) from the resolved config in final.json."""
    rows = []
    for d in summary["run_dir"]:
        cfg = json.loads((Path(d) / "final.json").read_text()).get("config", {})
        agg, part = cfg.get("aggregator", {}), cfg.get("partition", {})
        row = {"agg_kind": agg.get("name"), "clients": part.get("clients"),
               "participation": cfg.get("participation"), "rounds": cfg.get("rounds"),
               "partition_scheme": part.get("scheme"), "partition_alpha": part.get("alpha"),
               "memory": agg.get("memory")}
        row.update({k: agg.get(k) for k in KNOBS})
        rows.append(row)
    knobs = pd.DataFrame(rows, index=summary.index)
    return pd.concat([summary.drop(columns=[c for c in knobs if c in summary]), knobs], axis=1)


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


# ----------------------------------------------------------------------------- statistics


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


def paired_effects(summary: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (task, partition, client method, seed) where both ``a`` and ``b`` ran: their final
    primary metric, diverged flags, ``log_ratio`` = log(error_a / error_b) (NaN if either
    diverged or an error is not positive) and ``difference`` = value_a - value_b."""
    out = []
    for (task, part, method), g in summary.groupby(CELL, sort=False):
        metric = g["primary_metric"].iloc[0]
        col = f"final_{metric}"
        ga, gb = (g[g["aggregator"] == x].set_index("seed") for x in (a, b))
        ga, gb = ga[~ga.index.duplicated()], gb[~gb.index.duplicated()]
        for seed in sorted(set(ga.index) & set(gb.index)):
            va, vb = float(ga.at[seed, col]), float(gb.at[seed, col])
            da, db = bool(ga.at[seed, "diverged"]), bool(gb.at[seed, "diverged"])
            ea, eb = error_of(va, metric), error_of(vb, metric)
            ok = not (da or db) and np.isfinite([ea, eb]).all() and ea > 0 and eb > 0
            out.append({"task": task, "partition": part, "client_method": method, "seed": int(seed),
                        "metric": metric, "value_a": va, "value_b": vb, "diverged_a": da,
                        "diverged_b": db, "log_ratio": math.log(ea / eb) if ok else math.nan,
                        "difference": va - vb if not (da or db) else math.nan})
    cols = [*CELL, "seed", "metric", "value_a", "value_b", "diverged_a", "diverged_b", "log_ratio",
            "difference"]
    return pd.DataFrame(out, columns=cols)


def pooled_interval(effects: pd.DataFrame, level: float = 0.95) -> tuple[Interval, pd.Series]:
    """Per seed, the mean log-ratio over the cells (task x partition x method) of ``effects``
    (seeds missing a finite value in some cell are left out), and the t interval over seeds."""
    if effects.empty:
        return t_interval([], level), pd.Series(dtype=float)
    wide = effects.pivot_table(index="seed", columns=CELL, values="log_ratio", aggfunc="first",
                               dropna=False)
    per_seed = wide.dropna(how="any").mean(axis=1)
    return t_interval(per_seed.values, level), per_seed


def comparison_table(summary: pd.DataFrame, a: str = "fipa", b: str = "fedavg") -> pd.DataFrame:
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


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and the runs that test it."""

    key: str
    text: str
    families: tuple[str, ...] = ()  # task families whose runs are evidence (empty: all)
    local_only: bool = True  # the plain client method only; False: every other method
    baseline: str = "fedavg"  # the aggregator (grid name) FIPA is paired with
    per_task: bool = False  # also one row per task of the families, after the pooled row


TUNED_FEDAVG = "fedavg_tuned"  # the grid name of FedAvg with its server step tuned per task

CLAIMS = (
    Claim("regression", "FIPA reaches a lower error than FedAvg on nonlinear function regression",
          ("regression",)),
    Claim("pde", "FIPA reaches a lower error than FedAvg on PDE learning with PINNs", ("pde",)),
    Claim("vision", "FIPA reaches a higher accuracy than FedAvg on image classification (as a refinement "
          "after an averaging warm-up)", ("vision",), per_task=True),
    Claim("vision_tuned", "... and than averaging at its best: FedAvg with a tuned server step "
          "(`fedavg_tuned`)", ("vision",), baseline=TUNED_FEDAVG, per_task=True),
    Claim("client_methods", "FIPA combines with client-side methods (FedProx, SCAFFOLD, FedDyn, FedSAM, "
          "FedRCL): it still beats FedAvg under each of them", (), local_only=False),
    Claim("low_rank", f"A low rank is enough: the lowest rank's error is at most {RANK_MARGIN:g}x the "
          "highest rank's"),
    Claim("communication", "Low-rank curvature keeps communication cheap: a client uploads "
          "P + r(P + 1) numbers (FedAvg: P), never a P x P matrix"),
)


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


def _claim_rows(summary: pd.DataFrame, claim: Claim, task: str | None = None) -> pd.DataFrame:
    rows = summary if task is None else summary[summary["task"] == task]
    if claim.families:
        rows = rows[rows["task_family"].isin(claim.families)]
    is_local = rows["client_method"] == "local"
    return rows[is_local] if claim.local_only else rows[~is_local & ~rows["client_method"].str.startswith(
        "warmup")]


def _ratio_fields(iv: Interval) -> dict:
    """exp of an interval of a log-ratio: the (geometric mean) ratio and its bounds."""
    return {"ratio": math.exp(iv.mean), "ratio_lo": math.exp(iv.lo) if iv.n > 1 else math.nan,
            "ratio_hi": math.exp(iv.hi) if iv.n > 1 else math.nan}


def _ratio_text(iv: Interval) -> str:
    return format_ratio(**dict(zip(("ratio", "lo", "hi"), _ratio_fields(iv).values(), strict=True)))


def _fipa_vs_fedavg_claim(summary: pd.DataFrame, claim: Claim, task: str | None = None) -> dict:
    rows = _claim_rows(summary, claim, task)
    base = claim.baseline
    effects = paired_effects(rows, "fipa", base)
    if effects.empty:
        what = (f"{' or '.join(claim.families)} runs" if claim.families else "runs") + \
            (" with client methods other than local" if not claim.local_only else "")
        return {"evidence": f"no {what} pairing FIPA with {base}", "estimate": "", "n": 0,
                "verdict": NOT_MEASURED}
    ok = learned(rows)
    unlearned = [f"{t}/{p}" for (t, p), v in ok.items() if not v]
    keep = effects.apply(lambda r: ok.get((r["task"], r["partition"]), True), axis=1)
    used = effects[keep]
    iv, _ = pooled_interval(used)
    cells = used.groupby(CELL, sort=False).ngroups
    metrics = sorted(set(used["metric"]))
    per_cell = comparison_table(rows[rows.apply(lambda r: ok.get((r["task"], r["partition"]), True), axis=1)],
                                b=base)
    tally = per_cell["verdict"].value_counts() if not per_cell.empty else pd.Series(dtype=int)
    tasks = ", ".join(sorted(set(used["task"])))
    methods = sorted(set(used["client_method"]))
    evidence = (f"{tasks}; {', '.join(METRIC_LABELS.get(m, m) for m in metrics)}"
                + (" (as error 1 - acc)" if any(direction_of(m) == "max" for m in metrics) else ""))
    if not claim.local_only:
        evidence += f"; client methods {', '.join(methods)}"
    if cells > 1:
        evidence += (f"; geometric mean over {cells} cells, paired by seed; per cell: "
                     f"{int(tally.get(SUPPORTED, 0))} FIPA lower, {int(tally.get(NOT_SUPPORTED, 0))} FIPA "
                     f"higher, {int(tally.get(INCONCLUSIVE, 0))} inconclusive")
    if unlearned:
        bar = ", ".join(f"{k} <= {v:g}" for k, v in THRESHOLDS.items())
        evidence += f"; left out (no method reaches {bar}): {', '.join(unlearned)}"
    ndiv = int(used["diverged_a"].sum())
    if ndiv:
        evidence += f"; FIPA diverged in {ndiv} run(s)"
    if used.empty or iv.n == 0:
        verdict = INCONCLUSIVE if unlearned else NOT_MEASURED
        return {"evidence": evidence, "estimate": "no learned problem to compare" if unlearned else "",
                "n": 0, "verdict": verdict}
    verdict = verdict_of(iv, a_diverged=ndiv)
    if verdict == INCONCLUSIVE:
        need = seeds_needed(iv)
        evidence += (f"; sd of the per-seed log-ratio {iv.sd:.3g}: at this effect about {need} seeds would "
                     "decide it" if need else "; no effect measured that more seeds would resolve")
    return {"evidence": evidence, "estimate": f"FIPA / {base} error: " + _ratio_text(iv), "n": iv.n,
            "verdict": verdict, **_ratio_fields(iv)}


def sweeps(summary: pd.DataFrame, kind: str = "fipa") -> list[tuple[tuple, str, pd.DataFrame]]:
    """Knob sweeps among the runs of aggregator kind ``kind`` (needs attach_knobs): for each
    (task, partition, client method) and knob, the runs that agree on every other knob while
    the knob takes two values or more. A list of ((task, partition, method), knob, runs)."""
    if "agg_kind" not in summary:
        return []
    runs = summary[summary["agg_kind"] == kind]
    found = []
    for cell, g in runs.groupby(CELL, sort=False):
        for knob in KNOBS:
            others = [k for k in KNOBS if k != knob]
            key = g[others].apply(lambda r: "|".join(map(str, r)), axis=1)
            for _, h in g.groupby(key, sort=False):
                if h[knob].map(str).nunique() >= 2:
                    found.append((cell, knob, h))
    return found


def _low_rank_claim(summary: pd.DataFrame) -> dict:
    found = [(cell, h) for cell, knob, h in sweeps(summary) if knob == "rank"]
    if not found:
        return {"evidence": "no runs that differ only in the FIPA rank", "estimate": "", "n": 0,
                "verdict": NOT_MEASURED}
    effects = []
    # "low" is the rank the configuration's own `fipa` entry uses (the claim is about the rank one
    # would run), compared with the highest rank swept; the lowest swept rank only without one
    used = summary.loc[summary["aggregator"] == "fipa", "rank"].dropna() if "rank" in summary else []
    default_rank = float(pd.Series(used).astype(float).mode().iloc[0]) if len(used) else None
    for _, h in found:
        h = h.assign(rank=h["rank"].astype(float))
        hi_r = h["rank"].max()
        lo_r = default_rank if default_rank in set(h["rank"]) and default_rank < hi_r else h["rank"].min()
        pair = pd.concat([h[h["rank"] == lo_r].assign(aggregator="low"),
                          h[h["rank"] == hi_r].assign(aggregator="high")])
        effects.append(paired_effects(pair, "low", "high").assign(ranks=f"{lo_r:g} vs {hi_r:g}"))
    eff = pd.concat(effects, ignore_index=True)
    iv, _ = pooled_interval(eff)
    ranks = ", ".join(sorted(set(eff["ranks"])))
    evidence = f"{', '.join(sorted(set(eff['task'])))}; rank {ranks}; margin {RANK_MARGIN:g}x"
    if iv.n == 0:
        return {"evidence": evidence, "estimate": "", "n": 0, "verdict": NOT_MEASURED}
    return {"evidence": evidence, "estimate": "low / high rank error: " + _ratio_text(iv), "n": iv.n,
            "verdict": verdict_of(iv, margin=math.log(RANK_MARGIN), a_diverged=int(eff["diverged_a"].sum())),
            **_ratio_fields(iv)}


def communication(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task x partition (plain client method): FIPA's uplink bytes over FedAvg's, median over
    seeds, against the count 1 + r (P + 1) / P of P + r (P + 1) numbers (needs attach_knobs)."""
    rows = []
    local = summary[summary["client_method"] == "local"]
    for (task, part), g in local.groupby(["task", "partition"], sort=False):
        f, a = g[g["aggregator"] == "fipa"], g[g["aggregator"] == "fedavg"]
        pairs = f.merge(a, on="seed", suffixes=("_f", "_a"))
        pairs = pairs[pairs["uplink_bytes_total_a"] > 0]
        if pairs.empty:
            continue
        r, p = float(pairs["rank_f"].iloc[0]), float(pairs["num_params_f"].iloc[0])
        ratio = pairs["uplink_bytes_total_f"] / pairs["uplink_bytes_total_a"]
        rows.append({"task": task, "partition": part, "P": int(p), "rank": int(r),
                     "measured": float(ratio.median()), "formula": 1 + r * (p + 1) / p, "dense": 1 + p,
                     "n": len(pairs)})
    return pd.DataFrame(rows)


def _communication_claim(summary: pd.DataFrame) -> dict:
    c = communication(summary)
    if c.empty:
        return {"evidence": "no FIPA and FedAvg runs with uplink records", "estimate": "", "n": 0,
                "verdict": NOT_MEASURED}
    excess = c["measured"] / c["formula"]
    verdict = SUPPORTED if (excess <= 1.05).all() else NOT_SUPPORTED
    est = "; ".join(f"{r.task}: {r.measured:.3g}x FedAvg's bytes (formula {r.formula:.3g}x at r = {r.rank}, "
                    f"P = {r.P:,}; a dense Fisher would be {r.dense:,.0f}x)" for r in c.itertuples())
    return {"evidence": f"measured uplink bytes of every run, {len(c)} task(s)", "estimate": est,
            "n": int(c["n"].min()), "verdict": verdict}


def claims_table(summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim of the paper: evidence here, estimate with its 95% interval, n seeds and
    the verdict, all computed from ``summary`` (with attach_knobs for rank and communication);
    the rank claim also reads the ``ablations`` runs."""
    rows = []
    for claim in CLAIMS:
        if claim.key == "low_rank":
            both = summary if ablations is None or ablations.empty else pd.concat([summary, ablations])
            r = _low_rank_claim(both)
        elif claim.key == "communication":
            r = _communication_claim(summary)
        else:
            r = _fipa_vs_fedavg_claim(summary, claim)
        rows.append({"claim": claim.text, **r})
        if claim.per_task and r["verdict"] != NOT_MEASURED:
            paired = paired_effects(_claim_rows(summary, claim), "fipa", claim.baseline)
            tasks = paired["task"].unique()
            rows += [{"claim": f"... on {task}", **_fipa_vs_fedavg_claim(summary, claim, task)}
                     for task in tasks if len(tasks) > 1]
    return pd.DataFrame(rows, columns=["claim", "evidence", "estimate", "n", "verdict", "ratio", "ratio_lo",
                                       "ratio_hi"])


VERDICT_CSS = {SUPPORTED: "background-color: #d9f0d3", NOT_SUPPORTED: "background-color: #f4cccc",
               INCONCLUSIVE: "background-color: #eeeeee", NOT_MEASURED: "color: #777777"}


def claims_html(claims: pd.DataFrame) -> str:
    """The claims table as HTML: verdicts shaded (green supported, red not supported, grey
    inconclusive or not measured), long text left-aligned."""
    t = claims.drop(columns=["ratio", "ratio_lo", "ratio_hi"], errors="ignore")
    t = t.rename(columns={"claim": "claim of the paper", "evidence": "evidence in this run",
                               "estimate": "estimate [95% t interval over seeds]", "n": "n seeds"})
    return (t.style.map(lambda v: VERDICT_CSS.get(v, ""), subset=["verdict"])
            .set_properties(**{"text-align": "left", "vertical-align": "top"})
            .hide(axis="index").to_html())


def setting_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task x partition, this run's setting (needs attach_knobs): family, parameters P,
    clients, participation, rounds, seeds, client methods and aggregators."""
    rows = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        rows.append({"task": task, "partition": part, "family": g["task_family"].iloc[0],
                     "metric": g["primary_metric"].iloc[0], "P": int(g["num_params"].max()),
                     "clients": int(g["clients"].max()), "participation": float(g["participation"].max()),
                     "rounds": int(g["rounds"].max()), "seeds": int(g["seed"].nunique()),
                     "client methods": ", ".join(dict.fromkeys(g["client_method"])),
                     "aggregators": ", ".join(aggregator_order(g["aggregator"]))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- health checks


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


def health_flags(summary: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Findings a reader should see beside the numbers, one row each: ``kind`` in
    {diverged, worse_than_start, centralized_worse, unlearned}, the cell and a sentence."""
    flags = []

    def add(kind, task, part, method, agg, text):
        flags.append({"kind": kind, "task": task, "partition": part, "client_method": method,
                      "aggregator": agg, "detail": text})

    for keys, g in summary.groupby([*CELL, "aggregator"], sort=False):
        if g["diverged"].any():
            add("diverged", *keys, f"{int(g['diverged'].sum())} of {len(g)} seeds diverged "
                f"(seeds {', '.join(map(str, sorted(g.loc[g['diverged'], 'seed'].tolist())))}); "
                "left out of every mean")
    if not curves.empty:
        io = initial_and_final(curves, summary)
        for keys, g in io.groupby([*CELL, "aggregator"], sort=False):
            m = g["metric"].iloc[0]
            worse = (g["final"] < g["initial"]) if direction_of(m) == "max" else (g["final"] > g["initial"])
            worse |= ~np.isfinite(g["final"])
            if worse.any():
                add("worse_than_start", *keys, f"ends worse than its round-0 model in {int(worse.sum())} of "
                    f"{len(g)} seeds (round 0 {g['initial'].median():.3g}, final {g['final'].median():.3g}, "
                    "medians)")
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        metric = g["primary_metric"].iloc[0]
        col, sign = f"final_{metric}", 1 if direction_of(metric) == "min" else -1
        ok = g[~g["diverged"]]
        means = ok.groupby(["client_method", "aggregator"])[col].mean()
        cen = means[means.index.get_level_values("aggregator") == "centralized"]
        fed = means[means.index.get_level_values("aggregator") != "centralized"]
        if len(cen):
            better = fed[sign * fed < sign * cen.min()]
            if len(better):
                top = better.sort_values(ascending=sign > 0).head(4)
                names = ", ".join(f"{a} ({m}) {v:.3g}" for (m, a), v in top.items())
                add("centralized_worse", task, part, cen.index[0][0], "centralized",
                    f"the centralized reference ({cen.min():.3g}) is worse than {len(better)} federated "
                    f"run group(s): {names}")
        if metric in THRESHOLDS and len(means) and (means > THRESHOLDS[metric]).all():
            best = means.idxmin()
            add("unlearned", task, part, "", "", f"no method reaches {metric} <= {THRESHOLDS[metric]:g}; "
                f"the best is {best[1]} ({means.min():.3g}): the comparison says which method fails less")
    return pd.DataFrame(flags, columns=["kind", *CELL, "aggregator", "detail"])


# ----------------------------------------------------------------------------- tables


def cell_stats(values: pd.Series, diverged: pd.Series) -> dict:
    """mean, sd over the finite, non-diverged values; n of them; count of diverged runs."""
    v = values[~diverged.astype(bool)].astype(float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else math.nan,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "n": int(len(v)), "diverged": int(diverged.astype(bool).sum())}


def final_table(summary: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Mean and sd over seeds (diverged runs left out and counted) of the final primary metric,
    per task x partition x client method x aggregator; ``best`` marks the best federated mean."""
    out = []
    for (task, part), g in summary.groupby(["task", "partition"], sort=False):
        m = metric or g["primary_metric"].iloc[0]
        col = f"final_{m}"
        rows = [{"client_method": k[0], "aggregator": k[1], **cell_stats(h[col], h["diverged"])}
                for k, h in g.groupby(["client_method", "aggregator"], sort=False)]
        t = pd.DataFrame(rows)
        fed = t[t["aggregator"] != "centralized"]["mean"]
        target = fed.min() if direction_of(m) == "min" else fed.max()
        t["best"] = (t["mean"] == target) & (t["aggregator"] != "centralized")
        t.insert(0, "partition", part)
        t.insert(0, "task", task)
        t["metric"] = m
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _fmt_cell(s: dict, flags: str) -> str:
    if s["n"] == 0:
        text = "all diverged" if s["diverged"] else "n/a"
    elif s["n"] == 1:
        text = f"{s['mean']:.3g} (n = 1)"
    else:
        text = f"{s['mean']:.3g} \u00b1 {s['sd']:.2g}"
    if s["diverged"] and s["n"]:
        text += f" ({s['diverged']} div.)"
    return text + flags


FLAG_MARKS = {"worse_than_start": "\u2020", "centralized_worse": "\u2021"}


def pivot(summary: pd.DataFrame, flags: pd.DataFrame | None = None, client_method: str | None = "local",
          columns: str = "task") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregator x task (``columns="task"``, one client method) or aggregator x client method
    (``columns="client_method"``, one task): cells 'mean +- sd' over seeds with health marks,
    and a boolean frame marking the best federated mean per column. Column names carry the
    metric and an arrow to its better direction."""
    rows = summary if client_method is None else summary[summary["client_method"] == client_method]
    text, best = {}, {}
    flags = flags if flags is not None else pd.DataFrame(columns=["kind", *CELL, "aggregator"])
    for key, g in rows.groupby(["task", "partition"] if columns == "task" else ["client_method"], sort=False):
        metric = g["primary_metric"].iloc[0]
        name = (f"{key[0]} / {key[1]}" if columns == "task" else key[0]) + f" ({metric} {arrow(metric)})"
        if not learned(g).all():
            name += f" \u2717 no method <= {THRESHOLDS[metric]:g}"
        stats = {}
        for agg, h in g.groupby("aggregator", sort=False):
            s = cell_stats(h[f"final_{metric}"], h["diverged"])
            f = flags[(flags["task"].isin(h["task"])) & (flags["aggregator"] == agg)
                      & (flags["client_method"].isin(h["client_method"]))]
            marks = "".join(mark for kind, mark in FLAG_MARKS.items() if (f["kind"] == kind).any())
            stats[agg] = s
            text.setdefault(name, {})[agg] = _fmt_cell(s, marks)
        fed = {a: s["mean"] for a, s in stats.items() if a != "centralized" and np.isfinite(s["mean"])}
        win = (min if direction_of(metric) == "min" else max)(fed, key=fed.get) if fed else None
        best[name] = {a: a == win for a in stats}
    t = pd.DataFrame(text)
    b = pd.DataFrame(best).reindex_like(t).fillna(False).astype(bool)
    idx = aggregator_order(t.index)
    return t.loc[idx].fillna(""), b.loc[idx]


def styled_pivot(text: pd.DataFrame, best: pd.DataFrame):
    """A pandas Styler of :func:`pivot`: best federated mean in bold, the centralized row in grey."""
    def css(col):
        return ["font-weight: bold" if best.at[i, col.name] else
                ("color: #666666; font-style: italic" if i == "centralized" else "") for i in col.index]

    return text.style.apply(css, axis=0).set_table_attributes('class="pivot"')


def styled_final_table(summary: pd.DataFrame):
    """final_table as a pandas Styler: mean and sd over seeds, the best federated mean in bold."""
    t = final_table(summary)
    bold = t["best"].tolist()
    return (t.drop(columns="best").style
            .apply(lambda row: ["font-weight: bold" if bold[row.name] else ""] * len(row), axis=1)
            .format({"mean": "{:.3g}", "sd": "{:.2g}"}).hide(axis="index"))


# ----------------------------------------------------------------------------- the figures rule


# ----------------------------------------------------------------------------- ablations

# The knobs of config/ablations.yaml, in the order a task is searched for the one it sweeps.
# rho: FIPA's damping, a fixed rho (0 = the paper's pinv) or the name of an adaptive rule;
# clients and alpha are properties of the data split, so they vary across a task's partitions
# (and FedAvg varies with them); rho and rank vary across aggregator variants of one partition.
ABLATION_KNOBS = ("rho", "rank", "clients", "alpha")
PARTITION_KNOBS = ("clients", "alpha")
KNOB_LABELS = {"rho": "FIPA damping: fixed rho = lambda / lambda_max, or the adaptive rule",
               "rank": "FIPA rank r per client", "clients": "clients M (domain split)",
               "alpha": "Dirichlet label skew alpha (iid = alpha -> infinity)"}


def knob_values(summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (needs attach_knobs) the value of each ablation knob, read from the resolved config:
    ``knob_rho``: a float for fixed damping (0.0 = undamped), else the rule's name ("adaptive");
    ``knob_rank``: int; ``knob_clients``: int; ``knob_alpha``: the Dirichlet alpha, "iid" for an
    iid split. None where a knob does not apply (FedAvg has no rho or rank)."""
    rows = []
    for r in summary.itertuples():
        fipa = r.agg_kind == "fipa"
        damping = r.damping if isinstance(r.damping, str) else "fixed"  # the dataclass default
        rho = (float(r.rho) if damping == "fixed" else damping) if fipa else None
        scheme, alpha = r.partition_scheme, None
        if scheme == "iid":
            alpha = "iid"
        elif scheme in ("dirichlet", "dirichlet_balanced") and pd.notna(r.partition_alpha):
            alpha = float(r.partition_alpha)
        rows.append({"knob_rho": rho, "knob_rank": int(r.rank) if fipa and pd.notna(r.rank) else None,
                     "knob_clients": int(r.clients) if pd.notna(r.clients) else None, "knob_alpha": alpha})
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
    panels = []
    for task, t in runs.groupby("task", sort=False):
        fipa = t[t["agg_kind"] == "fipa"]
        for knob in ABLATION_KNOBS:
            col = f"knob_{knob}"
            keys = ["client_method"] if knob in PARTITION_KNOBS else ["partition", "client_method"]
            found = []
            for key, g in fipa.groupby(keys, sort=False):
                if len(knob_order(g[col])) < 2:
                    continue
                key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
                same = (t[list(key)] == pd.Series(key)).all(axis=1)
                avg = t[(t["aggregator"] == "fedavg") & same]
                tuned = t[(t["aggregator"] == TUNED_FEDAVG) & same]
                if avg.empty and ref is not None:
                    avg = ref[(ref["task"] == task) & (ref["aggregator"] == "fedavg")
                              & (ref[list(key)] == pd.Series(key)).all(axis=1)]
                setting = (_split_text(g, with_size=knob != "clients") if knob not in ("alpha",)
                           else f"M = {int(g['clients'].iloc[0])}")
                where = f"{task}" if knob in PARTITION_KNOBS else f"{task} / {key['partition']}"
                title = f"{where}: {setting}, {_participation_text(g)}"
                if key["client_method"] != "local":
                    title += f", {key['client_method']}"
                vals = knob_order(g[col])
                fedavg_vals = (avg[col] if knob in PARTITION_KNOBS
                               else pd.Series(None, index=avg.index, dtype=object))
                tuned_vals = (tuned[col] if knob in PARTITION_KNOBS
                              else pd.Series(None, index=tuned.index, dtype=object))
                found.append(KnobPanel(knob, task, title, g["primary_metric"].iloc[0], vals,
                                       g.assign(value=g[col]), avg.assign(value=fedavg_vals),
                                       tuned.assign(value=tuned_vals) if len(tuned) else None))
            if found:
                panels += found
                break
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
    """The ablation runs beside the results in ``results`` (with attach_knobs), or an empty frame.

    ``make ablations`` runs the workflow in results/ablations (``snakemake --directory``), so
    its summary is results/ablations/results/summary.csv with run directories relative to
    results/ablations; a hand-made results/ablations/summary.csv (run directories relative to
    the working directory) or bare run directories under results/ablations/runs are read too."""
    root = Path(results) / "ablations"
    for summary_csv, base in ((root / "results" / "summary.csv", root), (root / "summary.csv", None)):
        if summary_csv.is_file():
            s = pd.read_csv(summary_csv)
            if base is not None:
                s["run_dir"] = [d if Path(d).is_absolute() else str(base / d) for d in s["run_dir"]]
            return attach_knobs(s) if not s.empty else s
    dirs = [d for d in (root / "results" / "runs", root / "runs") if d.is_dir()]
    s = collect(dirs) if dirs else pd.DataFrame()
    return attach_knobs(s) if not s.empty else s


# ----------------------------------------------------------------------------- executing the notebook


def check_executed(nb) -> list[str]:
    """Problems of an executed notebook: a cell tagged ``figure`` without an image (unless it
    said why through report_plots.skip), any output on stderr, any error. Empty when complete."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        tags = cell.get("metadata", {}).get("tags", [])
        head = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
        for o in outs:
            if o.output_type == "stream" and o.get("name") == "stderr":
                problems.append(f"cell {i} ({head!r}) wrote to stderr: {o.get('text', '')[:200]!r}")
            if o.output_type == "error":
                problems.append(f"cell {i} ({head!r}) raised {o.get('ename')}: {o.get('evalue', '')[:200]}")
        skipped = any(o.get("metadata", {}).get("fipa_skipped") for o in outs)
        if "figure" in tags and not skipped and not any("image/png" in o.get("data", {}) for o in outs):
            problems.append(f"cell {i} ({head!r}) is a figure cell but produced no image")
    return problems


def execute_report(notebook: str | Path, output: str | Path, html: str | Path | None,
                   results_dir: str | Path) -> None:
    """Run the notebook with papermill (parameter ``results_dir``), check that every figure cell
    drew and nothing went to stderr, then export HTML (code hidden, parameter cells dropped)."""
    import os

    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    read_summary(Path(results_dir) / "summary.csv")  # the notebook's input, checked before a kernel starts
    output = Path(output)
    tmp = output.with_name(f".running.{output.name}")
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    papermill.execute_notebook(str(notebook), str(tmp), parameters={"results_dir": str(results_dir)},
                               progress_bar=False, kernel_name="python3")
    nb = nbformat.read(tmp, as_version=4)
    problems = check_executed(nb)
    if problems:
        raise ReportError(f"{tmp} is incomplete (kept for inspection):\n  " + "\n  ".join(problems))
    tmp.replace(output)
    if html is not None:
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        exporter.register_preprocessor(TagRemovePreprocessor(
            remove_cell_tags={"parameters", "injected-parameters"}, enabled=True), enabled=True)
        body, _ = exporter.from_notebook_node(nb)
        atomic_write(html, lambda fh: fh.write(body))
