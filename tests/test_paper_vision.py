"""config/paper.yaml's vision grid end to end through Snakemake, shrunk by overrides only.

The data sets are small generated stand-ins in the real on-disk formats (tests/fake_datasets.py):
found under ``data/``, never downloaded. Everything the overrides do not name (aggregators, FIPA's
curvature method and rank, client methods, partition schemes, augmentation, warm-up) is
paper.yaml's own entry at the time the test runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from fipa import grid
from tests.fake_datasets import write_cifar10, write_cifar100, write_tiny_imagenet_source
from tests.test_workflow import BIN, ROOT, snakemake

PAPER = ROOT / "config" / "paper.yaml"

# Sizes only: one seed on the CPU, 4 clients (2 per round), a ResNet-18 of width 4, two rounds
# of warm-up and of refinement, eight curvature samples per client.
SHRINK: dict[str, Any] = {"seeds": [0], "threads_per_job": 1, "device": "cpu"}
TASK_SHRINK: dict[str, Any] = {
    "task": {"width": 4},
    "warmup": {"rounds": 2},
    "rounds": 2,
    "participation": 0.5,
    "eval_every": 1,
}
CLIENTS = 4
CURVATURE_SAMPLES = 8
PARTITION = "dir0.3"  # one of paper.yaml's three Dirichlet partitions


def shrunk_paper(tasks: list[str], client_methods: list[str] | None = None,
                 aggregators: list[str] | None = None) -> dict[str, Any]:
    """paper.yaml with only ``tasks`` (each on PARTITION), merged with the size overrides above
    the way Snakemake merges a second --configfile; ``client_methods`` and ``aggregators`` (each
    a subset of paper.yaml's) narrow the grid."""
    paper = yaml.safe_load(PAPER.read_text())
    cfg = {**paper, "tasks": {t: paper["tasks"][t] for t in tasks}}
    for name, t in cfg["tasks"].items():
        over = yaml.safe_load(yaml.safe_dump(TASK_SHRINK))  # a fresh copy per task (YAML anchors share)
        over["partitions"] = {PARTITION: {"clients": CLIENTS}}
        t = cfg["tasks"][name] = yaml.safe_load(yaml.safe_dump(t))
        t["partitions"] = {PARTITION: t["partitions"][PARTITION]}
        if client_methods is not None:
            t["client_methods"] = client_methods
        if aggregators is not None:
            t["aggregators"] = aggregators
            t["reference"] = None  # the reference run is no aggregator of the narrowed list
            t["aggregator_overrides"] = {k: v for k, v in t.get("aggregator_overrides", {}).items()
                                         if k in aggregators}
        over["aggregator_overrides"] = {
            agg: {"curvature_samples": CURVATURE_SAMPLES}
            for agg, keys in t.get("aggregator_overrides", {}).items() if "curvature_samples" in keys}
        update_config(t, over)
    update_config(cfg, SHRINK)
    return cfg


def write_data(root: Path, tasks: list[str]) -> None:
    """The stand-in data sets under ``root`` as `fipa download` / `fipa prepare` leave them."""
    if "cifar10" in tasks:
        write_cifar10(root)
    if "cifar100" in tasks:
        write_cifar100(root)
    if "tiny_imagenet" in tasks:
        src = write_tiny_imagenet_source(root.parent / "tiny-imagenet-200")
        res = subprocess.run([str(BIN / "fipa"), "prepare", "tiny-imagenet", str(src), "--root", str(root)],
                             capture_output=True, text=True, check=False, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]


def run_paper(work: Path, tasks: list[str], client_methods: list[str] | None = None,
              aggregators: list[str] | None = None, data: bool = True) -> subprocess.CompletedProcess:
    """Snakemake on the shrunk paper.yaml in ``work``, with the stand-in data under work/data."""
    (work / "config").mkdir(parents=True)
    cfg = work / "config" / "paper_shrunk.yaml"
    cfg.write_text(yaml.safe_dump(shrunk_paper(tasks, client_methods, aggregators), sort_keys=False))
    if data:
        write_data(work / "data", tasks)
    return snakemake(work, "--configfile", str(cfg), timeout=1800)


def check_summary(work: Path, tasks: list[str], methods: list[str], aggregators: list[str] | None = None
                  ) -> pd.DataFrame:
    """Every cell (client method x aggregator, default paper.yaml's aggregators) of every task in
    the summary, none diverged, each refinement starting from its warm-up's final state (its
    round-0 evaluation is the warm-up's last), which moved the model. (Two warm-up rounds on
    Dirichlet-skewed clients are too few to assert accuracy gains.)"""
    paper = yaml.safe_load(PAPER.read_text())
    summary = pd.read_csv(work / "results" / "summary.csv")
    for task in tasks:
        rows = summary[summary["task"] == task]
        aggs = aggregators or [*paper["tasks"][task]["aggregators"], grid.reference(paper, task)]
        assert sorted(zip(rows["client_method"], rows["aggregator"], strict=True)) == sorted(
            (m, a) for m in methods for a in aggs), task
        warm = pd.read_csv(work / "results" / "warmup" / task / PARTITION / "seed0" / "run" / "metrics.csv")
        assert len(warm) == TASK_SHRINK["warmup"]["rounds"] + 1
        assert warm["test_loss"].iloc[-1] != warm["test_loss"].iloc[0], (task, warm)  # it trained
        for run in (work / "results" / "runs" / task / PARTITION).glob("*/*/seed0"):
            first = pd.read_csv(run / "metrics.csv").iloc[0]
            assert first["round"] == 0 and first["test_loss"] == warm["test_loss"].iloc[-1], run
            assert first["test_acc"] == warm["test_acc"].iloc[-1], run
    assert not summary["diverged"].any()
    assert (summary["rounds_completed"] == TASK_SHRINK["rounds"]).all()
    assert summary["final_test_acc"].between(0, 1).all()
    assert (work / "results" / "report.html").is_file()
    return summary


def test_shrunk_config_keeps_papers_settings():
    """The overrides change sizes only: FIPA's entries (curvature method, rank, damping) and
    the refinement's client settings are paper.yaml's."""
    paper = yaml.safe_load(PAPER.read_text())
    cfg = shrunk_paper(["cifar10"])
    assert cfg["aggregators"] == paper["aggregators"] and cfg["client_methods"] == paper["client_methods"]
    t, p = cfg["tasks"]["cifar10"], paper["tasks"]["cifar10"]
    for agg, keys in p["aggregator_overrides"].items():
        assert t["aggregator_overrides"][agg] == {**keys, **({"curvature_samples": CURVATURE_SAMPLES}
                                                          if "curvature_samples" in keys else {})}
    assert t["task"] == {**p["task"], "width": 4}
    assert t["partitions"] == {PARTITION: {**p["partitions"][PARTITION], "clients": CLIENTS}}
    assert t["client"] == p["client"]


def test_paper_vision_cifar10(tmp_path):
    """CIFAR-10 on paper.yaml: partition, warm-up, every aggregator's refinement, collect, report."""
    res = run_paper(tmp_path, ["cifar10"], client_methods=["local"])
    assert res.returncode == 0, res.stderr[-4000:]
    check_summary(tmp_path, ["cifar10"], ["local"])


@pytest.mark.slow
def test_paper_vision_all_data_sets(tmp_path):
    """The three data sets of paper.yaml (Tiny-ImageNet through `fipa prepare`), every aggregator."""
    tasks = ["cifar10", "cifar100", "tiny_imagenet"]
    res = run_paper(tmp_path, tasks, client_methods=["local"])
    assert res.returncode == 0, res.stderr[-4000:]
    check_summary(tmp_path, tasks, ["local"])


@pytest.mark.slow
def test_paper_vision_client_methods(tmp_path):
    """Every client method of paper.yaml refining with its FIPA entries, on CIFAR-10."""
    methods = list(yaml.safe_load(PAPER.read_text())["client_methods"])
    fipas = ["fipa", "fipa_rho1e-3"]
    res = run_paper(tmp_path, ["cifar10"], client_methods=methods, aggregators=fipas)
    assert res.returncode == 0, res.stderr[-4000:]
    check_summary(tmp_path, ["cifar10"], methods, fipas)


def test_paper_vision_without_data_names_the_download_command(tmp_path):
    """No data under data/: the run stops before its first job with one message per task that
    names the command fetching its data set; a dry run (-n) still lists the grid."""
    tasks = ["cifar10", "cifar100", "tiny_imagenet"]
    res = run_paper(tmp_path, tasks, client_methods=["local"], data=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "Data sets missing; nothing was run" in out, out[-3000:]
    for line in ("tasks.cifar10: cifar10 not found under data", "`fipa download cifar10 --root data`",
                 "`fipa download cifar100 --root data`", "tasks.tiny_imagenet: no prepared Tiny-ImageNet",
                 "`fipa prepare tiny-imagenet PATH --root data`"):
        assert line in out, out[-3000:]
    assert not (tmp_path / "results").exists()
    dry = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "config" / "paper_shrunk.yaml"))
    assert dry.returncode == 0, dry.stderr[-3000:]
