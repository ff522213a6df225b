"""A built-in aggregator, task family or client method is one new file: in a temporary copy of the
package, one module added to its package (fipa/aggregators/, fipa/tasks/, fipa/clients/) runs
through `fipa train` and `snakemake -n`, with nothing else edited (no schema enum, palette or
list: the registries discover the package's modules, fipa/registry.py; the workflow schema's
names and bounds come from them, fipa/schema.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import BIN, ROOT

TOY_AGGREGATOR = textwrap.dedent('''
    """A toy aggregator: FedAvg's step at half length."""

    from __future__ import annotations

    from dataclasses import dataclass

    from fipa.aggregators.base import AGGREGATORS, Aggregator, mean_delta
    from fipa.keys import key


    @dataclass
    class HalfStepParams:
        fraction: float = key(0.5, "the fraction of FedAvg's step taken", gt=0, le=1)


    @AGGREGATORS.register("half_step")
    class HalfStep(Aggregator):
        """theta^{k+1} = theta^k + fraction x dbar."""

        Params = HalfStepParams

        def step(self, theta, updates, state, ctx):
            return theta + self.params.fraction * mean_delta(updates)
''')

TOY_TASK = textwrap.dedent('''
    """A toy task family: least squares y = X w* with a linear model."""

    from __future__ import annotations

    from dataclasses import dataclass

    import numpy as np
    import torch
    from torch import nn
    from torch.func import functional_call

    from fipa.keys import key
    from fipa.partition import PartitionInput
    from fipa.tasks.base import TASKS, Task


    @dataclass
    class ToyLinearParams:
        n_train: int = key(40, "training samples", ge=1)
        dim: int = key(3, "input dimension", ge=1)


    @TASKS.register("toylinear")
    class ToyLinear(Task):
        """mean_i (x_i^T w - y_i)^2 with y = X w*, w* drawn from the seed."""

        Params = ToyLinearParams
        metrics = {"test_mse": "min"}
        primary_metric = "test_mse"

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
''')

TOY_METHOD = textwrap.dedent('''
    """A toy client method: local training pulled towards zero, (lam / 2) ||theta||^2."""

    from __future__ import annotations

    from dataclasses import dataclass

    from fipa.clients.base import CLIENT_METHODS, ClientMethod
    from fipa.keys import key


    @dataclass
    class ShrinkParams:
        lam: float = key(0.01, "weight of (lam / 2) ||theta||^2", ge=0)


    @CLIENT_METHODS.register("shrink")
    class Shrink(ClientMethod):
        """Local loss + (lam / 2) ||theta||^2."""

        Params = ShrinkParams

        def extra_loss(self, flat, theta0, state):
            return 0.5 * self.params.lam * flat.pow(2).sum()
''')

REGRESSION = {"name": "regression", "n_train": 64, "hidden": [8]}


@dataclass(frozen=True)
class Extension:
    """One new module: where it goes in the package, and the names a config then uses."""

    path: str
    source: str
    task: dict
    method: dict
    aggregator: dict

    def run_config(self) -> dict:
        return {"task": self.task, "partition": {"scheme": "iid", "clients": 2},
                "client": {**self.method, "optimizer": "sgd", "lr": 0.05, "local_steps": 2},
                "aggregator": self.aggregator, "rounds": 2, "seed": 0}

    def workflow_config(self) -> dict:
        return {"seeds": [0],
                "client_methods": {"m": {**self.method}},
                "aggregators": {"a": {**self.aggregator}},
                "tasks": {"t": {"task": self.task, "partitions": {"iid2": {"scheme": "iid", "clients": 2}},
                                "client": {"optimizer": "sgd", "lr": 0.05, "local_steps": 2}, "rounds": 2}}}


CASES = [
    pytest.param(Extension("aggregators/half_step.py", TOY_AGGREGATOR, REGRESSION, {"method": "local"},
                           {"name": "half_step", "fraction": 0.5}), id="aggregator"),
    pytest.param(Extension("tasks/toylinear.py", TOY_TASK, {"name": "toylinear", "dim": 3},
                           {"method": "local"}, {"name": "fedavg"}), id="task-family"),
    pytest.param(Extension("clients/shrink.py", TOY_METHOD, REGRESSION, {"method": "shrink", "lam": 0.01},
                           {"name": "fedavg"}), id="client-method"),
]


def package_with(tmp_path: Path, ext: Extension) -> Path:
    """A copy of the fipa package under tmp_path/pkg with ``ext``'s one file added; returns pkg."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "fipa", pkg / "fipa", ignore=shutil.ignore_patterns("__pycache__"))
    target = pkg / "fipa" / ext.path
    assert target.parent.is_dir(), f"fipa/{Path(ext.path).parent} is not a package of one module per entry"
    assert not target.exists()
    target.write_text(ext.source)
    return pkg


def run(cmd: list[str], pkg: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``cmd`` with the copy first on the import path (before the installed package)."""
    env = {**os.environ, "CI": "true", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(pkg), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("ext", CASES)
def test_one_new_module_trains_with_fipa_train(ext, tmp_path):
    pkg = package_with(tmp_path, ext)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(ext.run_config()))
    res = run([str(BIN / "fipa"), "train", "-c", "run.yaml", "-o", "out"], pkg, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    assert final["rounds_completed"] == 2 and not final["diverged"]
    config = final["config"]
    assert (config["task"]["name"], config["client"]["method"], config["aggregator"]["name"]) == (
        ext.task["name"], ext.method["method"], ext.aggregator["name"])
    listing = run([str(BIN / "fipa"), "list"], pkg, tmp_path)
    names = [ext.task["name"], ext.method["method"], ext.aggregator["name"]]
    assert listing.returncode == 0 and all(f" {n}" in listing.stdout for n in names), listing.stdout


@pytest.mark.parametrize("ext", CASES)
def test_one_new_module_passes_the_workflow(ext, tmp_path):
    """`snakemake -n` on a tiny workflow config naming the new entry: the generated schema admits
    it and the grid check validates its cell with `fipa train`'s validator."""
    pkg = package_with(tmp_path, ext)
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(ext.workflow_config()))
    res = run([str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
               "--cores", "1", "-n", "-p"], pkg, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "results/runs/t/iid2/m/a/seed0" in out, out[-3000:]
