"""The ``fipa`` command: list, partition, train, collect, figures."""

from __future__ import annotations

import argparse
import os
import sys

from fipa.config import ConfigError


def cmd_list(args: argparse.Namespace) -> None:
    from fipa.aggregators import AGGREGATORS
    from fipa.clients import CLIENT_METHODS
    from fipa.partition import SCHEMES
    from fipa.tasks import TASKS

    for title, reg in (("aggregators", AGGREGATORS), ("client methods", CLIENT_METHODS),
                       ("tasks", TASKS), ("partition schemes", SCHEMES)):
        print(f"{title}: {', '.join(reg.names())}")


def cmd_partition(args: argparse.Namespace) -> None:
    import torch

    from fipa.config import load_run_config
    from fipa.io import write_json
    from fipa.partition import heterogeneity, make_partition
    from fipa.tasks import build_task

    cfg = load_run_config(args.config)
    task = build_task(cfg.task.name, cfg.task.params, cfg.seed, getattr(torch, cfg.dtype))
    data = task.partition_input()
    parts = make_partition(data, cfg.partition.name, cfg.clients, cfg.partition.params, cfg.seed)
    write_json(args.output, {
        "task": cfg.task.to_dict("name"),
        "partition": {**cfg.partition.to_dict("scheme"), "clients": cfg.clients},
        "seed": cfg.seed,
        "n": data.n,
        "stats": heterogeneity(data, parts),
        "indices": [p.tolist() for p in parts],
    })
    print(f"wrote {args.output}: {len(parts)} clients, sizes {[len(p) for p in parts]}")


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from fipa.config import load_run_config
    from fipa.simulate import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config(args.config)
    label = args.label or f"[{cfg.task.name}/{cfg.partition.name}/{cfg.client.method}/" \
        f"{cfg.aggregator.name} seed {cfg.seed}]"
    quiet = args.quiet
    final = train(cfg, args.output, log=(lambda s: None) if quiet else _flush_print, label=label)
    status = "DIVERGED" if final["diverged"] else "done"
    print(f"{label} {status}: {final['rounds_completed']} rounds, final {final['final']}")


def _flush_print(s: str) -> None:
    print(s, flush=True)


def cmd_collect(args: argparse.Namespace) -> None:
    from fipa.report import collect

    df = collect(args.runs, args.output)
    if df.empty:
        raise ConfigError(f"no run directories with final.json under {', '.join(args.runs)}")
    print(f"wrote {args.output}: {len(df)} runs")


def cmd_figures(args: argparse.Namespace) -> None:
    from fipa.report import figures

    paths = figures(args.summary, args.outdir)
    for p in paths:
        print(f"wrote {p}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fipa", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="every registered aggregator, client method, task, scheme")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("partition", help="split a task's training data among clients")
    s.add_argument("-c", "--config", required=True, help="run YAML (task, partition, seed used)")
    s.add_argument("-o", "--output", required=True, help="partition JSON to write")
    s.set_defaults(func=cmd_partition)

    s = sub.add_parser("train", help="run one job; resumes if OUTPUT holds a checkpoint")
    s.add_argument("-c", "--config", required=True, help="run YAML")
    s.add_argument("-o", "--output", required=True, help="run directory")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--label", default=None, help="prefix of progress lines")
    s.add_argument("-q", "--quiet", action="store_true", help="no per-evaluation progress lines")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("collect", help="all run dirs -> summary.csv")
    s.add_argument("runs", nargs="*", default=["results/runs"],
                   help="run directories, or roots searched for final.json")
    s.add_argument("-o", "--output", default="results/summary.csv")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("figures", help="convergence and summary figures")
    s.add_argument("--summary", default="results/summary.csv")
    s.add_argument("-o", "--outdir", default="results/figures")
    s.set_defaults(func=cmd_figures)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"fipa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    sys.exit(main())
