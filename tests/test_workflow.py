"""The real Snakemake workflow on the tiny .test configuration, in a temp directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
           str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wf")
    shutil.copytree(ROOT / ".test" / "config", work / "config")
    res = snakemake(work)
    assert res.returncode == 0, res.stderr[-3000:]
    return work


def test_dag_completes_with_summary_and_figures(finished):
    summary = pd.read_csv(finished / "results" / "summary.csv")
    assert len(summary) == 3 * 2  # aggregators x seeds in .test/config
    assert set(summary["aggregator"]) == {"fedavg", "fipa", "centralized"}
    assert not summary["diverged"].any()
    assert (summary["rounds_completed"] == 4).all()
    figs = sorted(p.name for p in (finished / "results" / "figures").glob("*.png"))
    assert (finished / "results" / "report.html").is_file()
    assert figs == ["convergence_regression_1d_domain4.png", "final_regression_1d_domain4.png"]


def test_progress_plan_and_ledger_cover_every_cell(finished):
    """The status lines' estimate reads the plan written at start and the jobs' ledger lines."""
    from fipa import progress

    runs = finished / "results" / "runs"
    plan = progress.read_plan(runs)
    ledger = progress.read_ledger(runs)
    assert len(plan["cells"]) == 6 and plan["concurrency"] >= 1
    assert {f.label for f in ledger.done} == set(plan["cells"])
    assert set(ledger.started) == set(plan["cells"])  # each job said when it started
    assert progress.estimate_left(plan, ledger, 6, 0.0) == 0.0


def test_report_notebook_executed_to_html(finished):
    import nbformat

    nb = nbformat.read(finished / "results" / "report.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # convergence, per-task panel, partitions
    html = (finished / "results" / "report.html").read_text()
    assert "FIPA reproduction report" in html and "fipa" in html and "<img" in html


def test_benchmarks_join_the_summary(finished):
    from fipa.report import attach_benchmarks

    summary = attach_benchmarks(pd.read_csv(finished / "results" / "summary.csv"),
                                finished / "results" / "benchmarks")
    assert (summary["bench_s"] > 0).all()


def test_second_invocation_has_nothing_to_do(finished):
    res = snakemake(finished, "-n")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_changed_entry_reruns_exactly_its_cells(finished, tmp_path):
    """Run configs travel as params: a new rho for fipa reruns the batch job holding the fipa
    cells (not the warm-ups or partitions), and it retrains the fipa cells only: the other
    aggregators' finished runs are skipped untouched, the old fipa runs kept as superseded."""
    cfg = yaml.safe_load((finished / "config" / "config.yaml").read_text())
    cfg["aggregators"]["fipa"]["rho"] = 1.0e-3
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    res = snakemake(finished, "-n", "--configfile", str(edited))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    jobs = [line.split("wildcards:")[1].strip() for line in out.splitlines() if "wildcards:" in line]
    assert jobs == ["task=regression_1d, partition=domain4, method=local"]  # the batch of both seeds

    work = tmp_path / "copy"
    shutil.copytree(finished, work, symlinks=True)
    runs = work / "results" / "runs" / "regression_1d" / "domain4" / "local"
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/seed*/metrics.csv")}
    res = snakemake(work, "--configfile", str(edited))
    assert res.returncode == 0, res.stderr[-3000:]
    changed = sorted(str(p.relative_to(runs)) for p, t in before.items() if p.stat().st_mtime_ns != t)
    assert changed == ["fipa/seed0/metrics.csv", "fipa/seed1/metrics.csv"]
    for seed in (0, 1):
        run = runs / "fipa" / f"seed{seed}"
        assert yaml.safe_load((run / "run.yaml").read_text())["aggregator"]["rho"] == 1.0e-3
        (old,) = (run / "superseded").iterdir()
        assert yaml.safe_load((old / "run.yaml").read_text())["aggregator"]["rho"] == 1.0e-4


def test_every_task_family_reaches_summary_and_report(tmp_path):
    """Regression, PINN and vision (with its warm-up) in one DAG: each family's runs are in the
    summary and the executed report draws the PINN solutions and the label histogram."""
    import nbformat

    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    res = snakemake(tmp_path, "--configfile", str(tmp_path / "config" / "families.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    jobs = res.stdout + res.stderr
    assert jobs.count("(Rule: train_batch)") == 2 and jobs.count("(Rule: train)") == 4  # vision unbatched
    counts = summary.groupby("task_family").size().to_dict()
    assert counts == {"regression": 2, "pde": 2, "vision": 4}  # aggregators (x methods)
    assert not summary["diverged"].any()
    assert summary["final_rel_l2"].notna().sum() == 2 and summary["final_test_acc"].notna().sum() == 4
    assert sorted(p.name for p in (tmp_path / "results" / "report_files").iterdir()) == [
        "solution_pde_poisson1d_domain2.png"
    ]
    nb = nbformat.read(tmp_path / "results" / "report.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors


def test_lint_is_clean():
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--lint",
                          "--configfile", str(ROOT / ".test/config/config.yaml")],
                         cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Congratulations" in out or "no issues" in out.lower(), out


def test_sigkill_mid_dag_then_rerun_incomplete_gives_the_same_summary(finished, tmp_path):
    work = tmp_path / "killed"
    shutil.copytree(ROOT / ".test" / "config", work / "config")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
           "--cores", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = work / "results" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(runs.rglob("final.json"))) >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "results" / "summary.csv").exists(), "the DAG finished before the kill"
    assert snakemake(work, "--unlock").returncode == 0
    res = snakemake(work, "--rerun-incomplete")
    assert res.returncode == 0, res.stderr[-3000:]
    cols = ["task", "partition", "client_method", "aggregator", "seed", "rounds_completed", "diverged",
            "final_train_loss", "final_test_loss", "final_test_mse"]
    a = pd.read_csv(work / "results" / "summary.csv")[cols]
    b = pd.read_csv(finished / "results" / "summary.csv")[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def bad_config(tmp_path: Path, edit) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    edit(cfg)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return snakemake(tmp_path, "-n")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda c: c["aggregators"].update(fipa={"name": "fipaa"}),
         ["'fipaa' is not one of", "instance['aggregators']['fipa']['name']"]),
        (lambda c: c["tasks"]["regression_1d"]["partitions"].update(
            dirichlet={"scheme": "dirichlet", "clients": 4, "alpha": -0.5}),
         ["-0.5 is less than or equal to the minimum of 0",
          "instance['tasks']['regression_1d']['partitions']['dirichlet']['alpha']"]),
        (lambda c: c.update(seed=[0]), ["Additional properties are not allowed ('seed' was unexpected)"]),
        # every grid cell is validated by `fipa train`'s own validator while the DAG is built
        (lambda c: c["aggregators"]["fipa"].update(rhoo=1), ["aggregator.rhoo: unknown key"]),
        (lambda c: c["tasks"]["regression_1d"]["client"].update(lr=-1), ["client.lr: must be > 0"]),
        (lambda c: c["tasks"]["regression_1d"]["client"].update(momentum=1.5),
         ["client.momentum: must lie in [0, 1)"]),
        (lambda c: c["tasks"]["regression_1d"]["task"].update(target="sinc"),
         ["task.target: unknown target"]),
        (lambda c: c["tasks"]["regression_1d"]["partitions"]["domain4"].update(clients=500),
         ["partition.clients: 500 clients but only 128 training samples"]),
        (lambda c: c["tasks"]["regression_1d"].update(aggregators=["fipaa"]),
         ["tasks.regression_1d.aggregators: 'fipaa' is not defined"]),
        (lambda c: c["tasks"]["regression_1d"].update(client_methods=["prox"]),
         ["tasks.regression_1d.client_methods: 'prox' is not defined"]),
        (lambda c: c["tasks"]["regression_1d"]["warmup"].update(aggregator="avg"),
         ["tasks.regression_1d.warmup.aggregator: 'avg' is not defined"]),
        (lambda c: c["tasks"]["regression_1d"].update(aggregator_overrides={"fipa2": {"rho": 1.0}}),
         ["tasks.regression_1d.aggregator_overrides.fipa2"]),
        (lambda c: c.update(seeds=[0, 0]), ["seeds", "non-unique"]),
        (lambda c: c["aggregators"].update({"my fipa": {"name": "fipa"}}), ["my fipa", "does not match"]),
        (lambda c: c["aggregators"].update({".": {"name": "fedavg"}}), ["'.' does not match"]),
        (lambda c: c["tasks"]["regression_1d"].update(aggregators=[], reference=None),
         ["tasks.regression_1d.aggregators: an empty list gives this task no training job"]),
        # the schema's bounds come from the Params fields (fipa/schema.py)
        (lambda c: c["aggregators"]["fipa"].update(rank=0),
         ["0 is less than the minimum of 1", "FIPAParams.rank", "instance['aggregators']['fipa']['rank']"]),
        # the retired aggregator entry names its replacement
        (lambda c: c["aggregators"].update(centralized={"name": "centralized"}),
         ["aggregators.centralized: `centralized` is no longer an aggregator but a task's reference run: "
          "write `reference: centralized` in the task"]),
    ],
    ids=["unknown-aggregator", "negative-alpha", "top-level-typo", "option-typo", "negative-lr",
         "momentum-1.5", "unknown-target", "clients-gt-samples", "task-aggregator-ref", "task-method-ref",
         "warmup-ref", "override-ref", "duplicate-seeds", "name-with-space", "name-dot", "no-aggregator",
         "rank-0", "retired-centralized"],
)
def test_schema_rejects_bad_config_before_any_job(tmp_path, edit, needles):
    res = bad_config(tmp_path, edit)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for needle in needles:
        assert needle in out, out[-2000:]
    assert not (tmp_path / "results").exists()
