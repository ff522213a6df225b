"""The ``fipa`` command: list, partition, train, status, collect, figures."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fipa import paths
from fipa.errors import ConfigError, FipaError

STARTED = time.time()  # process start, near enough: a grid job's cost includes its imports and set-up


def cmd_list(args: argparse.Namespace) -> None:
    """Every registry: what a config may name, with the entries of ``--plugins``."""
    from fipa.plugins import load

    load(args.plugins, "--plugins")  # before the registries are read: they add entries
    from fipa.aggregators import AGGREGATORS
    from fipa.clients import CLIENT_METHODS
    from fipa.optim import OPTIMIZERS
    from fipa.partition import SCHEMES
    from fipa.tasks import TASKS

    lists = {"aggregators (aggregator.name)": AGGREGATORS, "client methods (client.method)": CLIENT_METHODS,
             "optimizers (client.optimizer)": OPTIMIZERS, "partition schemes (partition.scheme)": SCHEMES,
             "tasks (task.name)": TASKS}
    for name in TASKS.names():  # each family's own registries (targets, problems, data sets, ...)
        lists.update(TASKS.get(name).catalog())
    for title, reg in lists.items():
        print(f"{title}: {', '.join(reg.names())}")


def wants_progress_bar(stream, env) -> bool:
    """A progress bar only for a person at a terminal: never in logs, pipes or CI (CI=true)."""
    return bool(getattr(stream, "isatty", lambda: False)()) and env.get("CI", "").lower() not in ("1", "true")


def _run_config(args: argparse.Namespace):
    """The job's RunConfig from ``-c FILE`` or from ``--spec TEXT`` (the workflow passes the
    spec inline so that Snakemake's params trigger, not a spec file per job, tracks changes)."""
    from fipa.config import load_run_config, parse_run_config

    if args.spec is None:
        return load_run_config(args.config)
    import yaml

    from fipa.io import load_yaml

    try:
        raw = load_yaml(args.spec)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"--spec: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    return parse_run_config(raw, "--spec")


def _add_config_args(s: argparse.ArgumentParser, what: str) -> None:
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help=f"run YAML ({what})")
    src.add_argument("--spec", help="the run YAML's content itself, as one string")


def cmd_partition(args: argparse.Namespace) -> None:
    """One partition file, or one per seed of ``--seeds`` (``-o`` then holds ``{seed}``): the
    workflow splits every seed of a task in one process, paying the task's imports once."""
    import dataclasses

    cfg = _run_config(args)
    if not args.seeds:
        _write_partition(cfg, args.output, args.figure)
        return
    for name, path in (("--output", args.output), ("--figure", args.figure)):
        if path is not None and "{seed}" not in path:
            raise ConfigError(f"{name}: with --seeds the path needs a {{seed}} placeholder, got {path!r}")
    for seed in args.seeds:
        _write_partition(dataclasses.replace(cfg, seed=seed), args.output.format(seed=seed),
                         args.figure.format(seed=seed) if args.figure else None)


def _write_partition(cfg, output: str, figure: str | None) -> None:
    """Split the task's training pool for ``cfg`` (task, partition, seed) into ``output``."""
    import torch

    from fipa.io import write_json
    from fipa.partition import heterogeneity, make_partition
    from fipa.tasks import build_task

    task = build_task(cfg.task.name, cfg.task.params, cfg.seed, getattr(torch, cfg.dtype))
    data = task.partition_input()
    parts = make_partition(data, cfg.partition.name, cfg.clients, cfg.partition.params, cfg.seed)
    write_json(output, {
        "task": cfg.task.to_dict("name"),
        "partition": {**cfg.partition.to_dict("scheme"), "clients": cfg.clients},
        "seed": cfg.seed,
        "n": data.n,
        "stats": heterogeneity(data, parts),
        "indices": [p.tolist() for p in parts],
    })
    print(f"wrote {output}: {len(parts)} clients, sizes {[len(p) for p in parts]}")
    if figure:
        if data.labels is None:
            raise ConfigError("--figure: the label histogram needs a task with class labels")
        from fipa.plots_partition import plot_label_histogram

        print(f"wrote {plot_label_histogram(data, parts, figure)}")


def cmd_train(args: argparse.Namespace) -> None:
    from fipa.simulate import prepare_run_dir

    cfg = _run_config(args)
    prepare_run_dir(Path(args.output), cfg, args.supersede, args.spec is not None, _flush_print)
    label = args.label or f"[{cfg.task.name}/{cfg.partition.name}/{cfg.client.method}/" \
        f"{cfg.aggregator.name} seed {cfg.seed}]"
    with _grid_job(args, [label]):
        _train_one(args, cfg, label)


def _grid_job(args: argparse.Namespace, labels: list[str]):
    """The ledger's start and end lines of a grid job (``--grid-total``), else nothing."""
    from contextlib import nullcontext

    if not args.grid_total:
        return nullcontext()
    from fipa.progress import grid_job

    return grid_job(args.grid_root, labels, STARTED)


def _train_one(args: argparse.Namespace, cfg, label: str) -> None:
    """Train one run with a progress bar at a terminal, else progress lines; print its outcome."""
    from fipa.simulate import train

    log = _log_to(args.log) if args.log else (lambda s: None) if args.quiet else _flush_print
    bar = None
    if wants_progress_bar(sys.stdout, os.environ) and not (args.log or args.quiet or args.grid_total):
        from tqdm import tqdm

        bar = tqdm(total=cfg.rounds, desc=label, unit="round", dynamic_ncols=True)
        log = bar.write  # progress lines above the bar, not through it
    try:
        final = train(cfg, args.output, log=log, label=label, threads=args.threads,
                      on_round=None if bar is None else lambda rnd, _: bar.update(rnd - bar.n))
    finally:
        if bar is not None:
            bar.close()
    if args.grid_total:
        from fipa.progress import status_line

        print(status_line(label, final, args.grid_root, args.grid_total), flush=True)
    else:
        status = "DIVERGED" if final["diverged"] else "done"
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in final["final"].items())
        print(f"{label} {status}: {final['rounds_completed']} rounds in {final['wall_s']:.1f} s; "
              f"final {metrics}; outputs in {args.output}")


def cmd_train_batch(args: argparse.Namespace) -> None:
    """Several cells in one process (fipa/batch.py): start-up paid once for the batch."""
    from fipa.batch import (
        CellJob,
        check_distinct_outputs,
        load_manifest,
        parse_cells,
        run_cells,
        write_summary,
    )

    cells = load_manifest(args.manifest) if args.manifest else []
    cells += parse_cells(args.cells, "--cells") if args.cells else []
    cells += [CellJob(config=c, output=o) for c, o in args.cell or []]
    if not cells:
        raise ConfigError("train-batch: give a manifest file, --cells JSON or at least one "
                          "--cell CONFIG OUTDIR")
    check_distinct_outputs(cells)  # before the progress ledger records the cells as started

    def make_log(cell):
        return _log_to(cell.log) if cell.log else (lambda s: None) if args.quiet else _flush_print

    status = None
    if args.grid_total:
        from fipa.progress import status_line

        def status(label, final):
            return status_line(label, final, args.grid_root, args.grid_total)

    with _grid_job(args, [cell.label or cell.output for cell in cells]):
        results = run_cells(cells, make_log, supersede=args.supersede, echo=_flush_print, status=status,
                            threads=args.threads, lockstep=not args.one_by_one)
        failed = [out for out, final in results.items() if final is None]
        if failed:
            raise ConfigError(f"{len(failed)} of {len(cells)} cells failed: {', '.join(failed)}")
    if args.summary:
        write_summary(args.summary, results)


def _flush_print(s: str) -> None:
    print(s, flush=True)


def _log_to(path: str):
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")  # noqa: SIM115 - lives as long as the job
    except OSError as e:
        raise ConfigError(f"--log: cannot append to {path} ({e.strerror}); give a writable file path"
                          ) from None

    def log(s: str) -> None:
        fh.write(s + "\n")
        fh.flush()

    return log


def cmd_status(args: argparse.Namespace) -> None:
    """The grid's cells done, running, queued and failed, and the time left, from the plan and
    ledger only (fipa/grid_status.py); ``--watch`` refreshes until the grid is finished."""
    from fipa.grid_status import find_root, format_status, status, watch

    if args.watch is None:
        root = find_root(args.results)
        print(format_status(status(root), root))
        return
    from contextlib import suppress

    with suppress(KeyboardInterrupt):  # Ctrl-C ends the watch, not the grid
        watch(args.results, args.watch, echo=lambda s: print(f"{s}\n", flush=True))


def cmd_collect(args: argparse.Namespace) -> None:
    from fipa.report import collect

    df = collect(args.runs, args.output, superseded=args.superseded)
    if df.empty:
        raise ConfigError(f"no run directories with final.json under {', '.join(args.runs)}")
    print(f"wrote {args.output}: {len(df)} runs")


def cmd_figures(args: argparse.Namespace) -> None:
    from fipa.report.plots import figures

    paths = figures(args.summary, args.outdir)
    for p in paths:
        print(f"wrote {p}")


def cmd_report(args: argparse.Namespace) -> None:
    from fipa.report import execute_report

    execute_report(args.notebook, args.output, args.html, args.results)
    print(f"wrote {args.output}" + (f" and {args.html}" if args.html else ""))


def cmd_download(args: argparse.Namespace) -> None:
    from fipa.tasks.vision import download

    for path in download(args.dataset, args.root):
        print(f"{args.dataset} ready under {path}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from fipa.tasks.vision import prepare_tiny_imagenet

    print(f"wrote {prepare_tiny_imagenet(args.path, args.root)}")


def cmd_export_warmup(args: argparse.Namespace) -> None:
    """A run's latest state as a warm-up file {"theta": [P], "round": k, "buffers": {...}} for
    ``warmup_checkpoint`` (buffers: BatchNorm statistics, for models that have them)."""
    import torch

    from fipa.checkpoint import check_export_target, warmup_state
    from fipa.io import atomic_write

    check_export_target(Path(args.run_dir), args.output)
    state = warmup_state(Path(args.run_dir))
    theta, rnd = state["theta"], state["round"]
    atomic_write(args.output, lambda fh: torch.save(state, fh), mode="wb")
    print(f"wrote {args.output}: theta after round {rnd} ({theta.numel()} parameters)")


class _DefaultsShown(argparse.HelpFormatter):
    """Appends an option's default to its help, unless the help already states one or the
    default is an empty value (None, False, 0 for counts that mean "off")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default in (None, False, argparse.SUPPRESS)
        if "default" in text or empty or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fipa", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def with_defaults(name: str, **kw):
        # every subcommand: its help as description, and each option's default in its help
        return add_parser(name, description=kw.get("help"), formatter_class=_DefaultsShown, **kw)

    sub.add_parser = with_defaults  # type: ignore[method-assign]
    for add in (_add_list, _add_partition, _add_train, _add_train_batch, _add_status, _add_outputs,
                _add_data):
        add(sub)
    return p


def _add_list(sub) -> None:
    s = sub.add_parser("list", help="every registered aggregator, client method, task, scheme")
    s.add_argument("--plugins", nargs="+", default=[], metavar="MODULE",
                   help="also import these plugins (module names or .py files, as a config's `plugins`)")
    s.set_defaults(func=cmd_list)


def _add_partition(sub) -> None:
    s = sub.add_parser("partition", help="split a task's training data among clients")
    _add_config_args(s, "task, partition, seed used")
    s.add_argument("-o", "--output", required=True, help="partition JSON to write")
    s.add_argument("--figure", default=None, help="also save a clients x classes label heat map here")
    s.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="split for each of these seeds instead of the config's; OUTPUT (and FIGURE) "
                        "then name the files with a {seed} placeholder")
    s.set_defaults(func=cmd_partition)


def _add_job_args(s: argparse.ArgumentParser, grid_what: str) -> None:
    """The options ``train`` and ``train-batch`` share: threads, quiet, and the grid's ledger."""
    s.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: the config's threads key, auto = 1 for small models, "
                        "every core for large ones; fipa/threads.py)")
    s.add_argument("-q", "--quiet", action="store_true", help="no per-evaluation progress lines")
    s.add_argument("--grid-total", type=int, default=0,
                   help=f"jobs in the whole grid: {grid_what} with an estimate of what remains")
    s.add_argument("--grid-root", default=paths.RUNS, help="where the grid's run directories live")


def _add_train(sub) -> None:
    s = sub.add_parser("train", help="run one job; resumes if OUTPUT holds a checkpoint")
    _add_config_args(s, "one job")
    s.add_argument("-o", "--output", required=True, help="run directory")
    s.add_argument("--supersede", action="store_true",
                   help="if OUTPUT holds a checkpoint of another config, move it to OUTPUT/superseded/ "
                        "and start afresh (default: refuse)")
    s.add_argument("--label", default=None, help="prefix of progress lines")
    s.add_argument("--log", default=None, help="append progress lines to this file instead of stdout")
    _add_job_args(s, "print one status line")
    s.set_defaults(func=cmd_train)


def _add_train_batch(sub) -> None:
    s = sub.add_parser("train-batch", help="run several jobs (grid cells) in one process, each with its "
                       "own run directory, log and benchmark record")
    s.add_argument("manifest", nargs="?", default=None,
                   help="YAML list of cells {config|spec, output, benchmark, log, label} (fipa/batch.py)")
    s.add_argument("--cell", nargs=2, action="append", metavar=("CONFIG", "OUTDIR"),
                   help="one more cell: its run YAML and run directory (repeatable)")
    s.add_argument("--cells", default=None,
                   help="the manifest's content itself, as one JSON string (a list of cells)")
    s.add_argument("--supersede", action="store_true", help="as for train, per cell")
    s.add_argument("--summary", default=None,
                   help="when every cell succeeded, write their outcomes here (JSON, the batch's record)")
    s.add_argument("--one-by-one", action="store_true",
                   help="train the cells one after another, each alone (the numbers of `fipa train` bit "
                        "for bit), instead of in lockstep")
    _add_job_args(s, "one status line per cell")
    s.set_defaults(func=cmd_train_batch)


def _add_status(sub) -> None:
    s = sub.add_parser("status", help="cells done, running, queued and failed, and the time left, of the "
                       "grid that runs (or ran) in a results directory, locally or on a cluster")
    s.add_argument("results", nargs="?", default=paths.RESULTS,
                   help="results directory (or its runs/ folder) with .grid-plan.json, .grid-ledger.jsonl")
    s.add_argument("--watch", type=_positive_float, nargs="?", const=10.0, default=None, metavar="SECONDS",
                   help="print the status again every SECONDS (10 if not given) until the grid is finished "
                        "or Ctrl-C")
    s.set_defaults(func=cmd_status)


def _add_outputs(sub) -> None:
    """collect, figures, report: the results tree's summary, figures and executed notebook."""
    s = sub.add_parser("collect", help="all run dirs -> summary.csv")
    s.add_argument("runs", nargs="*", default=[paths.RUNS],
                   help="run directories, or roots searched for final.json")
    s.add_argument("-o", "--output", default=paths.SUMMARY, help="summary table to write (CSV)")
    s.add_argument("--superseded", action="store_true",
                   help="also collect runs kept aside in superseded/ folders (earlier configs)")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("figures", help="convergence and summary figures")
    s.add_argument("--summary", default=paths.SUMMARY, help="summary table from `fipa collect`")
    s.add_argument("-o", "--outdir", default=paths.FIGURES, help="folder for the PNG and PDF figures")
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("report", help="execute the report notebook (papermill) and export HTML")
    s.add_argument("--notebook", default="notebooks/report.ipynb", help="the parameterized report notebook")
    s.add_argument("--results", default=paths.RESULTS, help="results directory the notebook reads")
    s.add_argument("-o", "--output", default=paths.REPORT_NOTEBOOK, help="executed notebook to write")
    s.add_argument("--html", default=paths.REPORT_HTML, help="HTML export of the executed notebook")
    s.set_defaults(func=cmd_report)


def _add_data(sub) -> None:
    """download, prepare, export-warmup: data sets and warm-up states."""
    s = sub.add_parser("download", help="fetch a vision data set (needs the internet)")
    s.add_argument("dataset", choices=["cifar10", "cifar100", "tiny_imagenet", "tiny-imagenet"],
                   help="the data set to fetch")
    s.add_argument("--root", default="data", help="data directory (the task's root)")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("prepare", help="arrange a downloaded data set for the vision task")
    s.add_argument("dataset", choices=["tiny-imagenet"], help="the data set to arrange")
    s.add_argument("path", help="the extracted tiny-imagenet-200 folder")
    s.add_argument("--root", default="data", help="data directory (the task's root)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("export-warmup", help="a run's latest parameters as a warm-up state file")
    s.add_argument("run_dir", help="run directory holding checkpoint.pt")
    s.add_argument("-o", "--output", default="state.pt", help="file for warmup_checkpoint")
    s.set_defaults(func=cmd_export_warmup)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FipaError as e:
        print(f"fipa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a vanished directory mid-run: name the file, no traceback
        where = e.filename or "output"
        print(f"fipa {args.command}: error: {where}: {e.strerror or e}; what was written before is kept "
              "(rerun to resume from the last checkpoint)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    sys.exit(main())
