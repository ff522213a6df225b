"""Several grid cells in one process: start-up (import torch, ...) paid once, not per cell.

A manifest lists the cells, each with its own run config and output directory, so every
cell keeps what a ``fipa train`` job has: its run directory (metrics.csv, final.json,
checkpoint, resumed where a checkpoint exists), its progress log, and a Snakemake-format
benchmark record (the columns of Snakemake's ``benchmark:`` files; ``s`` and ``h:m:s``
are this cell's own wall time, ``cpu_time`` its own CPU seconds, ``max_rss`` the process's
peak so far, as the cells share one process).

    - {config: results/runs/a/run.yaml, output: results/runs/a,
       benchmark: results/benchmarks/a.tsv, log: results/logs/a.log, label: a}
    - {spec: {task: ..., ...}, output: ...}          # the run config inline

The workflow's ``train_batch`` rule passes that list inline (``fipa train-batch --cells``)
and tracks it as a param: a changed cell reruns the batch, whose finished cells are skipped.
"""

from __future__ import annotations

import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fipa.errors import ConfigError, FipaError

BENCHMARK_COLUMNS = ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out",
                     "mean_load", "cpu_time"]


@dataclass
class CellJob:
    """One grid cell of a batch: where its config comes from and where its outputs go."""

    output: str
    config: str | None = None  # a run YAML file
    spec: dict[str, Any] | None = None  # or the run config itself
    benchmark: str | None = None
    log: str | None = None
    label: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> CellJob:
        if not isinstance(raw, dict) or "output" not in raw:
            raise ConfigError(f"{where}: each cell needs an `output` directory and a `config` or `spec`")
        unknown = sorted(set(raw) - {"output", "config", "spec", "benchmark", "log", "label"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; valid: output, config, spec, "
                              "benchmark, log, label")
        if (raw.get("config") is None) == (raw.get("spec") is None):
            raise ConfigError(f"{where}: give exactly one of `config` (a run YAML) or `spec` (inline)")
        return cls(**raw)

    def run_config(self):
        from fipa.config import load_run_config, parse_run_config

        if self.config is not None:
            return load_run_config(self.config)
        return parse_run_config(self.spec, f"spec of {self.output}")


def load_manifest(path: str | Path) -> list[CellJob]:
    from fipa.io import read_yaml

    try:
        raw = read_yaml(path)
    except OSError:
        raise ConfigError(f"{path}: batch manifest not found") from None
    return parse_cells(raw, str(path))


def parse_cells(raw: Any, where: str) -> list[CellJob]:
    """Cells from a manifest's content: a non-empty list, or a JSON string of one."""
    if isinstance(raw, str):
        import json

        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list of cells")
    return [CellJob.parse(c, f"{where}[{i}]") for i, c in enumerate(raw)]


def check_distinct_outputs(cells: list[CellJob]) -> None:
    """Refuse a batch in which two cells resolve to one run directory (before any work): the
    directory lock keeps out other processes, not a second cell of this one, whose run would
    silently replace the first's."""
    import os

    seen: dict[str, CellJob] = {}
    for cell in cells:
        where = os.path.realpath(cell.output)
        if where in seen:
            first = seen[where]
            names = f"{first.label or first.output} and {cell.label or cell.output}"
            raise ConfigError(f"{cell.output}: two cells of this batch write into one run directory "
                              f"({names}, both {where}); give each cell its own output directory")
        seen[where] = cell


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def write_benchmark(path: str | Path, wall_s: float, cpu_s: float) -> None:
    """One Snakemake-format benchmark row: [s, h:m:s, max_rss (MB), ..., cpu_time] (TSV)."""
    from fipa.io import atomic_write

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    row = [f"{wall_s:.4f}", hms(wall_s), f"{rss_mb:.2f}", "NA", "NA", "NA", "NA", "NA", "NA",
           f"{cpu_s:.2f}"]
    atomic_write(path, lambda fh: fh.write("\t".join(BENCHMARK_COLUMNS) + "\n" + "\t".join(row) + "\n"))


def run_cells(cells: list[CellJob], make_log: Callable[[CellJob], Callable[[str], None]],
              supersede: bool = False, echo: Callable[[str], None] = print,
              status: Callable[[str, dict[str, Any]], str] | None = None,
              threads: int | None = None, lockstep: bool = True) -> dict[str, dict | None]:
    """Train every cell; returns each cell's final.json content (None where it failed).

    A cell already finished with the same config is skipped without building its task (so a
    batch rerun because one cell's config changed recomputes that cell only); a cell with a
    checkpoint resumes at its last round; a cell whose config is bad fails alone, with the
    message ``fipa train`` would give, and the others go on. The remaining cells advance in
    lockstep (``loop.train_lockstep``): cells that share task settings, client config and
    model train their clients in one vectorized call per round (the runs axis), each keeping
    its own run directory, log, checkpoint and benchmark record (whose ``s`` is the cell's
    share of its group's wall time). ``status`` turns a finished cell into its progress line.
    ``lockstep=False`` trains the cells one after another, each alone as ``fipa train`` would
    (its numbers bit for bit): the workflow's bundles of short ``batch: false`` cells, whose
    point is one process start for many cells, not a shared round loop.
    """
    from fipa.rundir import finished_run, prepare_run_dir

    check_distinct_outputs(cells)
    results: dict[str, dict | None] = {}
    todo: dict[str, list[tuple[CellJob, Any, str]]] = {}  # device -> (cell, config, label)
    for cell in cells:
        label = cell.label or cell.output
        try:
            cfg = cell.run_config()
            final = finished_run(Path(cell.output), cfg)
            if final is not None:
                echo(f"{label}: finished earlier with this config, skipped")
                results[cell.output] = final
                continue
            prepare_run_dir(Path(cell.output), cfg, supersede, cell.spec is not None, echo)
        except FipaError as e:
            _failed(cell, make_log, echo, f"{label}: error: {e}")
            results[cell.output] = None
            continue
        todo.setdefault(cfg.device, []).append((cell, cfg, label))
    groups = todo.values() if lockstep else [[job] for jobs in todo.values() for job in jobs]
    for jobs in groups:
        results.update(_run_jobs(jobs, make_log, echo, status, threads))
    return results


def _run_jobs(jobs: list[tuple[CellJob, Any, str]], make_log, echo, status, threads
              ) -> dict[str, dict | None]:
    """Build and train cells of one device in lockstep; a failing cell fails alone."""
    from fipa import devices
    from fipa.loop import RunLoop, prepared, train_lockstep
    from fipa.simulation import Simulation

    results: dict[str, dict | None] = {}
    with devices.claim(jobs[0][1].device) as device:
        loops, t0, c0 = [], time.perf_counter(), time.process_time()
        for cell, cfg, label in jobs:
            try:
                sim = prepared(Simulation.build(cfg, device), threads)
                loops.append((cell, label, RunLoop(sim, Path(cell.output), make_log(cell), label)))
            except FipaError as e:
                _failed(cell, make_log, echo, f"{label}: error: {e}")
                results[cell.output] = None
            except Exception:
                _failed(cell, make_log, echo, f"{label}: crashed:\n{traceback.format_exc()}")
                results[cell.output] = None
        label_of = {id(lp): label for _, label, lp in loops}

        def done(loop, final: dict) -> None:
            label = label_of[id(loop)]
            echo(status(label, final) if status else _done_line(label, final, final["wall_s"]))

        try:
            finals = train_lockstep([lp for _, _, lp in loops], on_done=done)
        except Exception:  # find the broken cell: each cell again on its own, from its checkpoint
            echo(f"lockstep training failed; training the {len(loops)} cells one by one:\n"
                 f"{traceback.format_exc()}")
            finals = [_alone(lp, echo, label, done) for _, label, lp in loops]
        share = (time.perf_counter() - t0) / max(len(loops), 1)
        cpu_share = (time.process_time() - c0) / max(len(loops), 1)
    for (cell, _, _), final in zip(loops, finals, strict=True):
        results[cell.output] = final
        if final is not None and cell.benchmark:
            write_benchmark(cell.benchmark, share, cpu_share)
    return results


def _failed(cell: CellJob, make_log, echo: Callable[[str], None], message: str) -> None:
    """Report a failed cell on the batch's output and in the cell's own log (results/logs/...)."""
    echo(message)
    if cell.log:
        make_log(cell)(message)


def _alone(loop, echo: Callable[[str], None], label: str, on_done) -> dict | None:
    """Train one cell by itself from its last checkpoint; None (and the traceback) if it crashes."""
    from fipa.loop import RunLoop, train_lockstep

    try:
        fresh = RunLoop(loop.sim, loop.outdir, loop.log, loop.label)
        return train_lockstep([fresh], on_done=lambda _, final: on_done(loop, final))[0]
    except Exception:
        echo(f"{label}: crashed:\n{traceback.format_exc()}")
        return None


def _done_line(label: str, final: dict[str, Any], seconds: float) -> str:
    outcome = "DIVERGED" if final["diverged"] else "done"
    return f"{label} {outcome}: {final['rounds_completed']} rounds [{seconds:.1f} s]"


def write_summary(path: str | Path, results: dict[str, dict[str, Any]]) -> None:
    """The batch's record (JSON): per cell output directory, its outcome and final metrics."""
    from fipa.io import write_json

    keep = ("task", "partition", "client_method", "aggregator", "seed", "rounds_completed", "diverged",
            "final", "wall_s")
    write_json(path, {out: {k: final.get(k) for k in keep} for out, final in results.items()})
