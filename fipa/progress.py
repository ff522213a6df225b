"""One status line per finished job with an estimate of what remains of the grid."""

from __future__ import annotations

import json
import time
from pathlib import Path


def grid_status(runs_root: str | Path, total: int, now: float | None = None) -> tuple[int, float | None]:
    """(finished jobs, estimated seconds left) from the final.json files under ``runs_root``.

    The pace is the observed throughput: finished jobs per second since the first of them
    started (its final.json mtime minus its wall time), so parallel jobs are accounted for.
    """
    now = time.time() if now is None else now
    starts = []
    for f in Path(runs_root).rglob("final.json"):
        if "superseded" in f.relative_to(runs_root).parts:  # an earlier config's run, kept aside
            continue
        try:
            wall = float(json.loads(f.read_text()).get("wall_s", 0.0))
        except (OSError, ValueError):
            continue
        starts.append(f.stat().st_mtime - wall)
    done = len(starts)
    if done == 0 or done >= total:
        return done, 0.0 if done >= total else None
    elapsed = max(now - min(starts), 1e-9)
    return done, (total - done) * elapsed / done


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def status_line(label: str, final: dict, runs_root: str | Path, total: int) -> str:
    """``[done 14/27] <label>: test_mse 0.0015 (21.3 s); 13 jobs left, about 4 min 10 s``."""
    done, left = grid_status(runs_root, total)
    metric = final.get("primary_metric")
    value = final.get("final", {}).get(metric)
    if final.get("diverged"):
        outcome = "DIVERGED"
    else:
        outcome = f"{metric} {value:.4g}" if value is not None else "done"
    return (f"[done {done}/{total}] {label}: {outcome} ({final.get('wall_s', 0):.1f} s); "
            f"{max(total - done, 0)} jobs left, about {format_duration(left)}")
