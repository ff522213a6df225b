"""Plugins: an aggregator and a task from modules outside the package, through `fipa train` and
the workflow, with no file of the package, schema or rules edited (fipa/plugins.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.test_workflow import ROOT, snakemake

FEDMEDIAN = ROOT / "examples" / "plugins" / "fedmedian.py"

# A toy task (linear least squares, y = X w*) and a toy aggregator (FedAvg written again): the
# task declares no `resources`, so the workflow must size its jobs with Task's default.
TOY_PLUGIN = textwrap.dedent('''
    """A toy task and aggregator, registered from outside the fipa package."""

    from __future__ import annotations

    from dataclasses import dataclass

    import numpy as np
    import torch
    from torch import nn
    from torch.func import functional_call

    from fipa.aggregators import AGGREGATORS, Aggregator, mean_delta
    from fipa.partition import PartitionInput
    from fipa.tasks.base import TASKS, Task


    @dataclass
    class ToyParams:
        n_train: int = 40
        dim: int = 3


    @TASKS.register("toy_linear")
    class ToyLinear(Task):
        """Least squares y = X w* with a linear model."""

        Params = ToyParams
        metrics = {"test_mse": "min"}
        primary_metric = "test_mse"

        @classmethod
        def sample_count(cls, params):
            return params.n_train

        def __init__(self, params, seed, dtype):
            super().__init__(params, seed, dtype)
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(params.dim, 1, generator=g, dtype=dtype)
            self.x = torch.randn(params.n_train, params.dim, generator=g, dtype=dtype)
            self.y = self.x @ w
            self.x_test = torch.randn(50, params.dim, generator=g, dtype=dtype)
            self.y_test = self.x_test @ w

        def partition_input(self):
            return PartitionInput(n=self.params.n_train)

        def client_data(self, indices):
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            return {"x": self.x[idx], "y": self.y[idx]}

        def build_model(self):
            return nn.Linear(self.params.dim, 1).to(self.dtype)

        def outputs(self, model, params, batch):
            return functional_call(model, params, (batch["x"],))

        def evaluate(self, model, params):
            with torch.no_grad():
                mse = float(((functional_call(model, params, (self.x_test,)) - self.y_test) ** 2).mean())
            return {"test_loss": mse, "test_mse": mse}


    @AGGREGATORS.register("toy_mean")
    class ToyMean(Aggregator):
        """theta + sum_m w_m delta_m: FedAvg, written outside the package."""

        def step(self, theta, updates, state, ctx):
            return theta + mean_delta(updates)
''')


def write_plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toyplug.py"
    path.write_text(TOY_PLUGIN)
    return path


def toy_run(aggregator: str, plugins: list[str]) -> dict:
    return {
        "plugins": plugins,
        "task": {"name": "toy_linear", "n_train": 40, "dim": 3},
        "partition": {"scheme": "iid", "clients": 2},
        "client": {"method": "local", "optimizer": "sgd", "lr": 0.05, "local_steps": 5},
        "aggregator": {"name": aggregator},
        "rounds": 3,
        "seed": 0,
    }


def fipa(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([str(Path(sys.executable).parent / "fipa"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=["wall_s"])


def test_fipa_train_runs_a_plugin_task_and_aggregator(tmp_path):
    """`plugins: [toyplug]` (a module on PYTHONPATH) registers both; the toy aggregator is FedAvg
    written again, so its run equals the built-in fedavg's run of the toy task, bit for bit."""
    write_plugin(tmp_path / "plug")
    for agg in ("toy_mean", "fedavg"):
        (tmp_path / f"{agg}.yaml").write_text(yaml.safe_dump(toy_run(agg, ["toyplug"])))
        res = fipa("train", "-c", f"{agg}.yaml", "-o", f"runs/{agg}", cwd=tmp_path,
                   pythonpath=tmp_path / "plug")
        assert res.returncode == 0, res.stderr[-3000:]
    final = json.loads((tmp_path / "runs" / "toy_mean" / "final.json").read_text())
    assert final["config"]["plugins"] == ["toyplug"] and final["rounds_completed"] == 3
    toy, avg = metrics(tmp_path / "runs" / "toy_mean"), metrics(tmp_path / "runs" / "fedavg")
    assert toy["test_mse"].iloc[-1] < 0.5 * toy["test_mse"].iloc[0]  # it learns
    pd.testing.assert_frame_equal(toy, avg, check_exact=True)


def test_vision_data_set_and_model_from_a_plugin(tmp_path, isolated_registries):
    """examples/plugins/waves.py adds a data set with options of its own and a 1-D model to the
    vision family; `fipa list` shows both, a run learns the frequencies (chance: 1/4), and the
    data set's and model's declared priors price the run for the time-left estimate."""
    plugin = str(ROOT / "examples" / "plugins" / "waves.py")
    listed = fipa("list", "--plugins", plugin, cwd=tmp_path)
    assert listed.returncode == 0 and "waves" in listed.stdout and "wave_cnn" in listed.stdout
    run = {"plugins": [plugin], "task": {"name": "vision", "dataset": "waves", "model": "wave_cnn",
                                         "data": {"n": 400, "noise": 0.2}},
           "partition": {"scheme": "iid", "clients": 4},
           "client": {"method": "local", "optimizer": "adam", "lr": 0.02, "local_epochs": 2,
                      "batch_size": 32},
           "aggregator": {"name": "fedavg"}, "rounds": 15, "eval_every": 15, "dtype": "float32", "seed": 0}
    (tmp_path / "waves.yaml").write_text(yaml.safe_dump(run))
    res = fipa("train", "-c", "waves.yaml", "-o", "runs/waves", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert pd.read_csv(tmp_path / "runs" / "waves" / "metrics.csv")["test_acc"].iloc[-1] > 0.8
    bad = {**run, "task": {**run["task"], "data": {"n": 5}}}  # the plugin's own bound
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = fipa("train", "-c", "bad.yaml", "-o", "runs/bad", cwd=tmp_path)
    assert res.returncode == 2 and "task.data.n: must be >= 10, got 5" in res.stderr, res.stderr

    from fipa import plugins
    from fipa.tasks.vision import Vision, VisionParams

    plugins.load([plugin])
    params = VisionParams(dataset="waves", model="wave_cnn")
    assert Vision.work_samples(params) == 320
    assert Vision.sample_seconds(params) == pytest.approx(0.2 * Vision.sample_step_seconds)


def test_unimportable_plugin_is_one_line_naming_the_key_and_module(tmp_path):
    run = toy_run("fedavg", ["fipa.aggregators", "no_such_fipa_plugin"])  # the first one imports
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    res = fipa("train", "-c", "run.yaml", "-o", "out", cwd=tmp_path)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("fipa train: error: plugins[1]: cannot import plugin module 'no_such_fipa_plugin'")
    assert "PYTHONPATH" in err and not (tmp_path / "out").exists()


def test_plugin_that_fails_names_its_line(tmp_path):
    """A plugin's own error (here a name registered twice) points at the plugin's line."""
    (tmp_path / "clash.py").write_text("from fipa.aggregators import AGGREGATORS, FedAvg\n\n"
                                       "AGGREGATORS.register('fedavg')(FedAvg)\n")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(toy_run("fedavg", ["clash.py"])))
    res = fipa("train", "-c", "run.yaml", "-o", "out", cwd=tmp_path)
    assert res.returncode == 2
    assert (f"plugins[0]: plugin 'clash.py' failed to import: ValueError: aggregator 'fedavg' is "
            f"registered twice (at {tmp_path / 'clash.py'}:3)") in res.stderr


def test_workflow_runs_plugin_task_and_aggregators(tmp_path):
    """The .test workflow with `plugins:` (a .py path relative to the working directory and the
    README's FedMedian example): the schema admits the plugins' names, every job imports them,
    and the toy task's jobs get Task's default resources. Two equal clients: the coordinate-wise
    median of two deltas is their mean, so fedmedian, toy_mean and fedavg end alike."""
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    write_plugin(tmp_path / "plugins")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    cfg.update(seeds=[0], plugins=["plugins/toyplug.py", str(FEDMEDIAN)], reference=None)
    cfg["aggregators"] = {"fedavg": {"name": "fedavg"}, "toy_mean": {"name": "toy_mean"},
                          "fedmedian": {"name": "fedmedian", "server_lr": 1.0}}
    run = toy_run("fedavg", [])
    cfg["tasks"] = {"toy": {"task": run["task"], "partitions": {"iid2": run["partition"]},
                            "client": {k: v for k, v in run["client"].items() if k != "method"},
                            "rounds": 3, "eval_every": 1}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--printshellcmds")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]

    from fipa.tasks.base import Task

    sizing = f"runtime={Task.resources['runtime'] * 3}, mem_mb={Task.resources['mem_mb']}"
    assert sizing in out  # one batch job of 3 cells, at the base class's per-cell default
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert sorted(summary["aggregator"]) == ["fedavg", "fedmedian", "toy_mean"]
    assert set(summary["task_family"]) == {"toy_linear"} and not summary["diverged"].any()
    final = summary.set_index("aggregator")["final_test_mse"]
    np.testing.assert_allclose(final[["fedmedian", "toy_mean"]], final["fedavg"], rtol=1e-9)
    assert (tmp_path / "results" / "report.html").is_file()


def test_workflow_unimportable_plugin_stops_before_any_job(tmp_path):
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    cfg["plugins"] = ["plugins/missing.py"]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "plugins[0]: plugin file plugins/missing.py not found" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.fixture
def isolated_registries(monkeypatch):
    """Registries, sys.path and sys.modules restored after the test: a plugin imported here
    must not leak into other tests (tests/test_schema.py compares the registries to the schema)."""
    from fipa.aggregators import AGGREGATORS
    from fipa.clients import CLIENT_METHODS
    from fipa.partition import SCHEMES
    from fipa.tasks import TASKS
    from fipa.tasks.vision import DATASETS, MODELS

    for reg in (AGGREGATORS, CLIENT_METHODS, SCHEMES, TASKS, DATASETS, MODELS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_lazy", dict(reg._lazy))
        monkeypatch.setattr(reg, "_pending", reg._pending)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    yield AGGREGATORS
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.mark.parametrize("m", [3, 4])
def test_fedmedian_step_is_the_coordinatewise_median(isolated_registries, m):
    """Oracle: numpy's median of each coordinate over the clients (the mean of the two middle
    values for even M), times server_lr, added to theta."""
    from fipa import plugins
    from fipa.aggregators import ClientUpdate, RoundContext

    plugins.load([str(FEDMEDIAN)])
    cls = isolated_registries.get("fedmedian")
    g = torch.Generator().manual_seed(m)
    theta, deltas = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(m, 7, generator=g,
                                                                                   dtype=torch.float64)
    updates = [ClientUpdate(delta=d, num_samples=10 * (i + 1)) for i, d in enumerate(deltas)]
    got = cls(cls.Params(server_lr=0.5)).step(theta, updates, {}, RoundContext(1))
    want = theta.numpy() + 0.5 * np.median(deltas.numpy(), axis=0)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-15)


def test_plugin_names_and_bounds_join_the_generated_schema(isolated_registries, tmp_path):
    """A plugin's aggregator joins the generated name enum and its Params bound the schema's clause
    for the entry that names it (fipa/schema.py); a value out of that bound fails naming the field."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from fipa import schema

    config = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    config.update(plugins=[str(FEDMEDIAN)])
    config["aggregators"]["median"] = {"name": "fedmedian", "server_lr": 0.5}
    with schema.workflow_schema(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml")) as path:
        generated = json.loads(Path(path).read_text())
        validate(config, path)
    entry = generated["properties"]["aggregators"]["additionalProperties"]
    assert {"fedmedian", "fedavg"} <= set(entry["properties"]["name"]["enum"])
    (clause,) = [c for c in entry["allOf"] if c["if"]["properties"]["name"]["const"] == "fedmedian"]
    assert clause["then"]["properties"]["server_lr"]["exclusiveMinimum"] == 0
    config["aggregators"]["median"]["server_lr"] = 0
    with pytest.raises(WorkflowError) as e, schema.workflow_schema(
            config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml")) as path:
        validate(config, path)
    text = "".join(str(a) for a in e.value.args)
    assert "0 is less than or equal to the minimum of 0" in text and "FedMedianParams.server_lr" in text
    assert "instance['aggregators']['median']['server_lr']" in text


def test_every_task_family_declares_its_resources():
    """The workflow sizes jobs from Task.resources: each built-in family's override keeps the
    keys the rules read, as positive integers."""
    from fipa.tasks import TASKS
    from fipa.tasks.base import Task

    for name in TASKS.names():
        res = {**Task.resources, **TASKS.get(name).resources}
        assert set(res) == {"mem_mb", "runtime"}, name
        assert all(isinstance(v, int) and v > 0 for v in res.values()), (name, res)
