"""Start-up: lazy imports of a regression job, and several cells in one process (train-batch)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fipa.cli import main
from fipa.config import parse_run_config
from fipa.simulate import train
from tests.helpers import tiny

HEAVY = ("deepxde", "torchvision", "pandas", "matplotlib", "seaborn", "scipy", "sympy", "torch._dynamo")


def test_a_regression_job_imports_nothing_heavy(tmp_path):
    """A whole FIPA regression job (vectorized training and curvature) in a fresh interpreter:
    no DeepXDE, torchvision, plotting or table libraries, no torch._dynamo."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny(rounds=1)))
    code = ("import sys; from fipa.cli import main; "
            f"rc = main(['train', '-c', {str(cfg)!r}, '-o', {str(tmp_path / 'out')!r}, '-q']); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "final.json").is_file()


def metrics(d) -> pd.DataFrame:
    return pd.read_csv(d / "metrics.csv").drop(columns=["wall_s"])


def test_train_batch_keeps_per_cell_outputs_resume_and_benchmarks(tmp_path, capsys):
    cfgs = [tiny(rounds=2, aggregator={"name": "fedavg"}), tiny(rounds=2, seed=1)]
    for i, c in enumerate(cfgs):
        (tmp_path / f"c{i}.yaml").write_text(yaml.safe_dump(c))
        train(parse_run_config(c), tmp_path / f"alone{i}", log=lambda s: None)
    manifest = [{"config": str(tmp_path / "c0.yaml"), "output": str(tmp_path / "b0"),
                 "benchmark": str(tmp_path / "bench" / "b0.tsv"), "log": str(tmp_path / "b0.log")},
                {"spec": cfgs[1], "output": str(tmp_path / "b1"),
                 "benchmark": str(tmp_path / "bench" / "b1.tsv"), "label": "cell-1"}]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["train-batch", str(tmp_path / "m.yaml"), "-q"]) == 0
    for i in range(2):
        pd.testing.assert_frame_equal(metrics(tmp_path / f"b{i}"), metrics(tmp_path / f"alone{i}"))
        bench = pd.read_csv(tmp_path / "bench" / f"b{i}.tsv", sep="\t")
        assert list(bench.columns[:3]) == ["s", "h:m:s", "max_rss"] and bench["s"].iloc[0] > 0
        assert pd.to_numeric(bench["max_rss"]).iloc[0] > 0
    assert (tmp_path / "b1" / "run.yaml").is_file()  # an inline spec is kept beside its run
    assert "round 2/2" in (tmp_path / "b0.log").read_text()
    # a second batch extended by one round resumes every cell from its checkpoint
    for m, c in zip(manifest, cfgs, strict=True):
        c["rounds"] = 3
        m.pop("config", None)
        m["spec"] = c
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    capsys.readouterr()
    assert main(["train-batch", str(tmp_path / "m.yaml"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "resuming from round 2" in (tmp_path / "b0.log").read_text()
    assert "done: 3 rounds" in out and len(metrics(tmp_path / "b1")) == 4


def test_train_batch_a_bad_cell_fails_alone(tmp_path, capsys):
    good, bad = tiny(rounds=1), tiny(rounds=1, aggregator={"name": "fipa", "rho": -1.0})
    manifest = [{"spec": bad, "output": str(tmp_path / "bad")},
                {"spec": good, "output": str(tmp_path / "good")}]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["train-batch", str(tmp_path / "m.yaml"), "-q"]) == 2
    err = capsys.readouterr()
    assert "aggregator.rho" in err.out and "1 of 2 cells failed" in err.err
    assert (tmp_path / "good" / "final.json").is_file() and not (tmp_path / "bad" / "final.json").exists()


@pytest.mark.parametrize("manifest", [[{"output": "x"}], [{"output": "x", "config": "a", "spec": {}}],
                                      [{"output": "x", "config": "a", "bench": "b"}], {"not": "a list"}])
def test_train_batch_manifest_errors_name_the_cell(tmp_path, capsys, manifest):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["train-batch", str(tmp_path / "m.yaml")]) == 2
    assert "m.yaml" in capsys.readouterr().err


def test_train_batch_skips_cells_finished_with_the_same_config(tmp_path, capsys):
    """A batch rerun because one cell changed retrains that cell only; the record (--summary)
    lists every cell's outcome, the status lines count the grid's finished runs."""
    import json

    same, changed = tiny(rounds=2, aggregator={"name": "fedavg"}), tiny(rounds=2)
    cells = [{"spec": same, "output": str(tmp_path / "same")},
             {"spec": changed, "output": str(tmp_path / "changed")}]
    args = ["train-batch", "--cells", json.dumps(cells), "-q", "--supersede",
            "--summary", str(tmp_path / "batch.json"), "--grid-total", "2", "--grid-root", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "[done 1/2]" in first and "[done 2/2]" in first
    kept = (tmp_path / "same" / "metrics.csv").stat().st_mtime_ns
    expected_same = metrics(tmp_path / "same")

    changed["aggregator"]["rho"] = 0.5
    args[2] = json.dumps(cells)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'same'}: finished earlier with this config, skipped" in out
    assert (tmp_path / "same" / "metrics.csv").stat().st_mtime_ns == kept
    pd.testing.assert_frame_equal(metrics(tmp_path / "same"), expected_same)
    assert yaml.safe_load((tmp_path / "changed" / "run.yaml").read_text())["aggregator"]["rho"] == 0.5
    assert len(list((tmp_path / "changed" / "superseded").iterdir())) == 1
    record = json.loads((tmp_path / "batch.json").read_text())
    for name in ("same", "changed"):
        final = json.loads((tmp_path / name / "final.json").read_text())
        assert record[str(tmp_path / name)]["final"] == final["final"]
        assert record[str(tmp_path / name)]["rounds_completed"] == 2


def test_train_batch_writes_no_record_when_a_cell_fails(tmp_path, capsys):
    import json

    cells = [{"spec": tiny(rounds=1), "output": str(tmp_path / "good")},
             {"spec": tiny(rounds=1, aggregator={"name": "nosuch"}), "output": str(tmp_path / "bad")}]
    record = tmp_path / "b.json"
    assert main(["train-batch", "--cells", json.dumps(cells), "-q", "--summary", str(record)]) == 2
    assert "1 of 2 cells failed" in capsys.readouterr().err
    assert (tmp_path / "good" / "final.json").is_file() and not record.exists()


def test_train_batch_rejects_cells_that_are_not_json(capsys):
    assert main(["train-batch", "--cells", "[{oops"]) == 2
    assert "--cells: not valid JSON" in capsys.readouterr().err
