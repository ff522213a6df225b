"""Run directories -> one summary table (``fipa collect``), and the readers of that table.

A run directory holds ``final.json`` and ``metrics.csv`` (see ``fipa train``); the summary
has one row per run: its ID columns, outcome, final and best metrics, and last its ``role``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fipa import paths
from fipa.errors import ConfigError
from fipa.io import atomic_write
from fipa.report.roles import ROLES, role_column, role_of

ID_COLUMNS = ["task", "partition", "client_method", "aggregator", "seed"]
CELL = ["task", "partition", "client_method"]
SUMMARY_COLUMNS = [*ID_COLUMNS, "primary_metric", "diverged", "run_dir"]
# the knobs of a FIPA run an ablation may sweep (keys of the run config's aggregator block)
KNOBS = ("rank", "rho", "server_lr", "complement", "damping", "curvature_at", "curvature_samples")


def under(results_dir: str | Path, template: str) -> Path:
    """A path of fipa.paths (``results/...``) in the results tree ``results_dir`` instead of
    ``paths.RESULTS``: the same layout read from another root (the ablations' tree, a test)."""
    return Path(results_dir) / Path(template).relative_to(paths.RESULTS)


def find_runs(paths_: Iterable[str | Path], superseded: bool = False) -> list[Path]:
    """Run directories (holding final.json) under or at the given paths, sorted; runs kept aside
    in a ``superseded/`` folder (an earlier config's) only when ``superseded``."""
    found: set[Path] = set()
    for p in map(Path, paths_):
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
    wrong type, an unknown role, or rounds that disagree with its own config (a run ends at its
    config's rounds, or earlier when it diverged)."""
    if not isinstance(final, dict):
        return "is not a JSON object"
    missing = [k for k in FINAL_TYPES if k not in final]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (what, ok) in FINAL_TYPES.items():
        if not ok(final[key]):
            return f"{key} is {final[key]!r}, not {what}"
    if role_of(final) not in ROLES:
        return f"role is {final['role']!r}, not one of {', '.join(ROLES)}"
    rounds = (final.get("config") or {}).get("rounds") if isinstance(final.get("config"), dict) else None
    done = final["rounds_completed"]
    if _is_int(rounds) and (done > rounds or (done < rounds and not final["diverged"])):
        return f"records rounds_completed {done} for a config of {rounds} rounds"
    return None


def read_final(run_dir: Path) -> dict:
    """A run's final.json, or one ConfigError naming the file and what is wrong with it."""
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


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary table of ``fipa collect``: at least one run, with the columns every reader needs;
    one ConfigError naming the file and the fix otherwise."""
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
    """One summary row from a run's final.json; its ``role`` is federated for a run directory
    written before runs recorded one (see fipa.report.roles.role_of)."""
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
                "num_params": final["num_params"], "run_dir": str(run_dir), "role": role_of(final)})
    return row


def collect(paths_: Iterable[str | Path], output: str | Path | None = None,
            superseded: bool = False) -> pd.DataFrame:
    """All runs -> one row each (ID columns, outcome, final and best metrics, ``role`` last).

    ``role`` is the last column, after every metric column of every task, so the columns a
    summary had before runs recorded roles keep their order and bytes."""
    rows = [summary_row(d) for d in find_runs(paths_, superseded)]
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(ID_COLUMNS, kind="stable").reset_index(drop=True)
        df["role"] = df.pop("role")
    if output is not None:
        atomic_write(output, lambda fh: df.to_csv(fh, index=False))
    return df


def load_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every run in the summary, with its ID columns and role: long format."""
    frames = []
    for (_, r), role in zip(summary.iterrows(), role_column(summary), strict=True):
        m = read_metrics(Path(r["run_dir"]) / "metrics.csv")
        for k in ID_COLUMNS:
            m[k] = r[k]
        m["role"] = role
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
