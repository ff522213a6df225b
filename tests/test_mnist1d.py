"""MNIST-1D: the generator's data (oracle: ``mnist1d.data.make_dataset`` itself), its cache, the
1-D CNN's size, 1-D inputs through the vision task, and a federated run through Snakemake."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config

from fipa.config import ConfigError, parse_params
from fipa.params import ParamLayout
from fipa.partition import SCHEMES, make_partition
from fipa.tasks.vision import MODELS, DataRequest, Vision, VisionParams
from fipa.tasks.vision.mnist1d import MNIST1DOptions, generate, load_mnist1d
from tests.test_workflow import ROOT, snakemake

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_samples": 400}  # 320 training, 80 test signals: quick, same generator


def request(tmp_path: Path, **options) -> DataRequest:
    return DataRequest("data", str(tmp_path), 0, 0.2, MNIST1DOptions(**{**SMALL, **options}))


def test_generator_matches_the_package_and_is_reproducible(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = SMALL["num_samples"]
    ref = make_dataset(args)  # the package's own call with its documented arguments
    # the generator seeds numpy's and Python's global generators; loading restores both
    legacy = np.random  # the global (legacy) generator make_dataset reseeds
    legacy.seed(7)  # noqa: NPY002
    random.seed(7)
    before = (legacy.random(), random.random())  # noqa: NPY002
    legacy.seed(7)  # noqa: NPY002
    random.seed(7)
    data = load_mnist1d(request(tmp_path))
    assert (legacy.random(), random.random()) == before  # noqa: NPY002
    assert data.x_train.shape == (320, 1, 40) and data.x_test.shape == (80, 1, 40)
    assert data.x_train.dtype == torch.float32 and data.num_classes == 10
    assert np.array_equal(data.x_train[:, 0].numpy(), ref["x"].astype(np.float32))
    assert np.array_equal(data.y_test.numpy(), ref["y_test"])
    again = generate(MNIST1DOptions(**SMALL))
    assert all(np.array_equal(again[k], ref[k]) for k in ("x", "y", "x_test", "y_test"))
    assert asdict(MNIST1DOptions())["seed"] == args.seed == 42  # the package's published data by default
    other = generate(MNIST1DOptions(**SMALL, seed=43))
    assert not np.array_equal(other["x"], ref["x"])


def test_cache_is_keyed_by_the_generator_arguments(tmp_path, monkeypatch):
    first = load_mnist1d(request(tmp_path))
    files = sorted(p.name for p in tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1

    def no_generation(options):
        raise AssertionError("generated again although cached")

    monkeypatch.setattr("fipa.tasks.vision.mnist1d.generate", no_generation)
    cached = load_mnist1d(request(tmp_path))
    assert torch.equal(cached.x_train, first.x_train) and torch.equal(cached.y_test, first.y_test)
    monkeypatch.undo()
    load_mnist1d(request(tmp_path, iid_noise_scale=0.05))  # another argument: another file
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2


def test_mnist1d_cnn_parameter_count():
    model = MODELS.get("mnist1d_cnn")((1, 40), 10, VisionParams())
    # conv1d 1->25 k5, 25->25 k3, 25->25 k3 (stride 2, pad 1: length 40 -> 19 -> 10 -> 5), fc 125->10
    assert ParamLayout.of(model).numel == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10) == 5210
    assert model(torch.zeros(3, 1, 40)).shape == (3, 10)


def test_vision_task_takes_signals_and_partitions_them(tmp_path):
    task = Vision(VisionParams(dataset="mnist1d", model="mnist1d_cnn", cache=str(tmp_path), data=SMALL),
                  seed=0, dtype=torch.float64)
    z = task.normalize(task.x_train)
    assert z.shape == (320, 1, 40) and abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-3
    out = task.outputs(task.build_model().double(), dict(task.build_model().double().named_parameters()),
                       task.client_data(np.arange(5)))
    assert out.shape == (5, 10)
    pin = task.partition_input()
    alpha = parse_params(SCHEMES.get("dirichlet").Params, {"alpha": 0.1}, "partition")
    parts = make_partition(pin, "dirichlet", 8, alpha, seed=0)
    flat = np.concatenate(parts)
    assert len(parts) == 8 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(flat), np.arange(320))  # every signal once
    # label skew: a client's largest class is far above the 1/10 share of an iid split
    top = [np.bincount(pin.labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top) > 0.4


@pytest.mark.parametrize(("options", "key", "words"), [
    ({"model": "digits_cnn"}, "model", "2 spatial axes, mnist1d has 1"),
    ({"augment": True}, "augment", "1-D inputs"),
    ({"data": {"num_sample": 10}}, "data.num_sample", "unknown key"),
    ({"data": {"padding": [60, 36]}}, "data.padding", "min <= max"),
    ({"data": {"train_split": 1.5}}, "data.train_split", "must lie in (0, 1)"),
])
def test_bad_mnist1d_options_are_named(options, key, words):
    raw = {"dataset": "mnist1d", "model": "mnist1d_cnn", **options}
    with pytest.raises(ConfigError) as e:
        parse_params(VisionParams, raw, "task")
    assert str(e.value).startswith(f"task.{key}") and words in str(e.value), str(e.value)


def test_digits_options_stay_empty():
    with pytest.raises(ConfigError, match="task.data"):
        parse_params(VisionParams, {"dataset": "digits", "data": {"seed": 1}}, "task")


def shrunk_default(work: Path) -> Path:
    """config/config.yaml with only its mnist1d task, shrunk by size overrides: one seed, 400
    signals, 8 clients (4 per round), 2 warm-up and 2 refinement rounds, two client methods."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    task = cfg["tasks"]["mnist1d"]
    cfg["tasks"] = {"mnist1d": task}
    update_config(cfg, {"seeds": [0], "threads_per_job": 1})
    part = next(iter(task["partitions"]))
    update_config(task, {"task": {"data": {"num_samples": 400}},
                         "partitions": {part: {"clients": 8}}, "warmup": {"rounds": 2}, "rounds": 2,
                         "participation": 0.5, "eval_every": 1, "client_methods": ["local", "fedprox"],
                         "seeds": [0]})
    task["method_aggregators"] = {"fedprox": task["method_aggregators"]["fedprox"]}
    (work / "config").mkdir(parents=True)
    path = work / "config" / "mnist1d.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_mnist1d_through_snakemake(tmp_path):
    """The default config's mnist1d task (shrunk): generated data, Dirichlet partitions, a shared
    warm-up, every aggregator's refinement, collect, figures and report."""
    cfg = shrunk_default(tmp_path)
    res = snakemake(tmp_path, "--configfile", str(cfg), timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    task = yaml.safe_load(cfg.read_text())["tasks"]["mnist1d"]
    expected = [("local", a) for a in task["aggregators"]]
    expected += [("fedprox", a) for a in task["method_aggregators"]["fedprox"]]
    assert sorted(zip(summary["client_method"], summary["aggregator"], strict=True)) == sorted(expected)
    assert not summary["diverged"].any() and (summary["rounds_completed"] == 2).all()
    assert summary["final_test_acc"].between(0, 1).all()
    assert len(list((tmp_path / "results" / "data").glob("mnist1d-*.npz"))) == 1  # generated once, cached
    assert (tmp_path / "results" / "report.html").is_file()
