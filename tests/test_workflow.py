"""The real Snakemake workflow on the tiny .test configuration, in a temp directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
    assert (summary["rounds_completed"] == 6).all()
    figs = sorted(p.name for p in (finished / "results" / "figures").glob("*.png"))
    assert figs == ["convergence_regression_1d_domain4.png", "final_regression_1d_domain4.png"]


def test_second_invocation_has_nothing_to_do(finished):
    res = snakemake(finished, "-n")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_lint_is_clean():
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--lint",
                          "--configfile", str(ROOT / ".test/config/config.yaml")],
                         cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Congratulations" in out or "no issues" in out.lower(), out
