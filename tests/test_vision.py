"""The ``vision`` task: data, models, augmentation, missing-data errors, end-to-end runs.

Oracles: scikit-learn's digits arrays, torchvision's own ResNet-18 parameter count,
hand-computed accuracy and cross-entropy, the padded image for random crops.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call

from fipa import cli
from fipa.config import ConfigError, parse_run_config
from fipa.params import ParamLayout
from fipa.simulate import Simulation, load_warmup, train
from fipa.tasks.vision import MODELS, Vision, VisionParams

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(**kw) -> Vision:
    return Vision(VisionParams(**kw), seed=0, dtype=torch.float64)


def test_digits_data_split_and_normalization():
    from sklearn.datasets import load_digits

    task = digits()
    ref = load_digits()
    pin = task.partition_input()
    assert pin.n == 1438 and pin.num_classes == 10 and pin.labels.shape == (1438,)
    assert len(task.y_test) == 1797 - 1438
    assert task.x_train.shape == (1438, 1, 8, 8) and task.x_train.dtype == torch.uint8
    # every training image is one of sklearn's, with its label
    lookup = {ref.images[i].astype(np.uint8).tobytes(): ref.target[i] for i in range(len(ref.target))}
    assert all(lookup[x[0].numpy().tobytes()] == y for x, y in zip(task.x_train[:50], task.y_train[:50],
                                                                    strict=True))
    z = task.normalize(task.x_train)
    assert abs(float(z.mean())) < 1e-10 and abs(float(z.std()) - 1) < 1e-3
    # the split depends on split_seed only, not on the run seed
    other = Vision(VisionParams(), seed=5, dtype=torch.float64)
    assert torch.equal(other.y_test, task.y_test)
    assert not torch.equal(digits(split_seed=1).y_test, task.y_test)
    assert len(digits(test_subsample=100).y_test) == 100
    assert len(digits(train_subsample=300).partition_input().labels) == 300


def test_model_sizes():
    p = VisionParams()
    # digits_cnn on 1x8x8: conv 1*16*9+16, conv 16*32*9+32, fc 128*64+64, fc 64*10+10
    assert ParamLayout.of(MODELS.get("digits_cnn")((1, 8, 8), 10, p)).numel == 160 + 4640 + 8256 + 650
    # cnn2 on 3x32x32: 3*32*25+32, 32*64*25+64, 4096*512+512, 512*10+10
    assert ParamLayout.of(MODELS.get("cnn2")((3, 32, 32), 10, p)).numel == 2432 + 51264 + 2097664 + 5130
    # CIFAR ResNet-18 = torchvision's with a 3x3 (not 7x7) stem; GroupNorm has BatchNorm's 2C
    from torchvision.models import resnet18

    tv = sum(q.numel() for q in resnet18(num_classes=10).parameters())
    ours = MODELS.get("resnet18")((3, 32, 32), 10, p)
    assert ParamLayout.of(ours).numel == tv - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3 == 11_173_962
    assert not list(ours.buffers())
    bn = MODELS.get("resnet18")((3, 32, 32), 10, VisionParams(norm="batch"))
    # running statistics: 2 per channel of each of the 20 BatchNorms (stem 64 + 8 blocks x 2 + 3
    # shortcuts), beside the same flat vector as GroupNorm
    assert ParamLayout.of(bn).numel == ParamLayout.of(ours).numel
    assert sum(b.numel() for n, b in bn.named_buffers() if "running" in n) == 2 * (
        64 + 2 * (2 * 64 + 2 * 128 + 2 * 256 + 2 * 512) + 128 + 256 + 512)
    x = torch.randn(2, 3, 32, 32)
    for m in (ours, bn, MODELS.get("cnn2")((3, 32, 32), 100, p)):
        feats, logits = m(x, features=True)
        assert feats.shape[0] == logits.shape[0] == 2
        torch.testing.assert_close(m(x), logits)


def test_resnet18_width_scales_every_stage():
    """width w: stages w-2w-4w-8w; P by the closed form (3x3 convs without bias, GroupNorm 2C per
    norm layer, 1x1 shortcuts where the shape changes, linear head)."""

    def count(w: int, c: int = 3, k: int = 10) -> int:
        def block(c_in: int, c_out: int) -> int:
            short = c_in * c_out + 2 * c_out if c_in != c_out else 0
            return 9 * c_in * c_out + 9 * c_out**2 + 2 * 2 * c_out + short

        stages = [(w, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)]
        return (9 * c * w + 2 * w + sum(block(a, b) + block(b, b) for a, b in stages)
                + 8 * w * k + k)

    assert count(64) == 11_173_962  # the torchvision-derived count of test_model_sizes
    for w in (4, 8):
        model = MODELS.get("resnet18")((3, 32, 32), 10, VisionParams(width=w))
        assert ParamLayout.of(model).numel == count(w)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"task\.width: must be >= 1"):
        parse_run_config(digits_run(task={**digits_run()["task"], "width": 0}))


def test_cifar_reader_matches_torchvision_on_its_format(tmp_path, monkeypatch):
    """CIFAR files are read without torchvision's dataset classes (those check the official
    release's MD5): same images, labels and classes as torchvision parses from the same files."""
    import torchvision.datasets.cifar as tv

    from fipa.tasks.vision.data import DataRequest, load_cifar10, load_cifar100
    from tests.fake_datasets import write_cifar10, write_cifar100

    write_cifar10(tmp_path, n_train=50, n_test=20)
    write_cifar100(tmp_path, n_train=120, n_test=30)
    monkeypatch.setattr(tv, "check_integrity", lambda *a, **k: True)  # accept the stand-in files
    for load, cls in ((load_cifar10, tv.CIFAR10), (load_cifar100, tv.CIFAR100)):
        ours = load(DataRequest(str(tmp_path), str(tmp_path), 0, 0.2, None))
        for x, y, is_train in ((ours.x_train, ours.y_train, True), (ours.x_test, ours.y_test, False)):
            ref = cls(str(tmp_path), train=is_train)
            assert torch.equal(x, torch.as_tensor(ref.data).permute(0, 3, 1, 2))  # [n, H, W, C] -> CHW
            assert y.tolist() == ref.targets and x.is_contiguous()
        assert ours.num_classes == len(ref.classes)


def test_missing_and_corrupt_cifar_say_what_to_do(tmp_path):
    from fipa.tasks.vision.data import DataRequest, load_cifar10
    from tests.fake_datasets import write_cifar10

    folder = write_cifar10(tmp_path, n_train=50, n_test=20)
    assert Vision.missing_data(VisionParams(dataset="cifar10", root=str(tmp_path))) is None
    assert Vision.missing_data(VisionParams()) is None  # digits ship with scikit-learn
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"cifar10 under .* is corrupt .*`fipa download cifar10"):
        load_cifar10(DataRequest(str(tmp_path), str(tmp_path), 0, 0.2, None))
    (folder / "test_batch").unlink()
    why = Vision.missing_data(VisionParams(dataset="cifar10", root=str(tmp_path)))
    assert why == (f"cifar10 not found under {tmp_path} (no {folder / 'test_batch'}); download it with "
                   f"`fipa download cifar10 --root {tmp_path}`")


def test_evaluate_matches_hand_computed_accuracy_and_loss():
    task = digits(test_subsample=200)
    torch.manual_seed(0)
    model = task.build_model()
    params = dict(model.named_parameters())
    with torch.no_grad():
        logits = model(task.normalize(task.x_test))
    got = task.evaluate(model, params)
    assert got["test_acc"] == pytest.approx(float((logits.argmax(1) == task.y_test).double().mean()), abs=0)
    assert got["test_loss"] == pytest.approx(float(F.cross_entropy(logits, task.y_test)), rel=1e-12)
    out = task.outputs(model, params, task.client_data(np.arange(7)))
    feats, logits7 = task.features(model, params, task.client_data(np.arange(7)))
    assert out.shape == (7, 10) and feats.shape == (7, 64)
    torch.testing.assert_close(out, logits7, rtol=0, atol=0)


def test_augmentation_is_a_padded_crop_and_off_by_default():
    task = digits(augment=True)
    batch = task.client_data(np.arange(32))
    gen = torch.Generator().manual_seed(0)
    aug = task.train_batch(batch, gen)["x"]
    padded = F.pad(batch["x"], (1, 1, 1, 1))
    shifted = 0
    for a, p in zip(aug, padded, strict=True):
        windows = [p[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(a, w) for w in windows)  # digits: crops only, never flips
        shifted += not torch.equal(a, windows[4])
    assert shifted > 10
    plain, gen2 = digits(), torch.Generator().manual_seed(0)
    assert plain.train_batch(batch, gen2) is batch
    assert torch.equal(gen2.get_state(), torch.Generator().manual_seed(0).get_state())


def test_missing_cifar_names_the_download_command(tmp_path, capsys):
    root = tmp_path / "nodata"
    with pytest.raises(ConfigError, match=rf"`fipa download cifar10 --root {root}`"):
        Vision(VisionParams(dataset="cifar10", root=str(root), model="cnn2"), seed=0, dtype=torch.float32)
    cfg = {"task": {"name": "vision", "dataset": "cifar100", "root": str(root), "model": "resnet18"},
           "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.1},
           "client": {"optimizer": "sgd", "lr": 0.1}, "aggregator": {"name": "fedavg"}, "rounds": 1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "-c", str(path), "-o", str(tmp_path / "run")]) == 2
    assert f"`fipa download cifar100 --root {root}`" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_prepare_tiny_imagenet_tree_and_load(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    wnids = ["n01", "n02", "n03"]
    lines = []
    for k, w in enumerate(wnids):
        (src / "train" / w / "images").mkdir(parents=True)
        (src / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            img = np.full((64, 64, 3), 40 * k + i, dtype=np.uint8)
            Image.fromarray(img).save(src / "train" / w / "images" / f"{w}_{i}.png")
        (src / "val" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            src / "val" / "images" / f"val_{k}.png")
        lines.append(f"val_{k}.png\t{w}\t0\t0\t63\t63")
    (src / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    root = tmp_path / "data"
    with pytest.raises(ConfigError, match=r"fipa prepare tiny-imagenet PATH"):
        Vision(VisionParams(dataset="tiny_imagenet", root=str(root), model="cnn2"), 0, torch.float32)
    assert cli.main(["prepare", "tiny-imagenet", str(src), "--root", str(root)]) == 0
    task = Vision(VisionParams(dataset="tiny_imagenet", root=str(root), model="cnn2"), 0, torch.float32)
    assert task.x_train.shape == (6, 3, 64, 64) and task.data.num_classes == 3
    assert task.y_train.tolist() == [0, 0, 1, 1, 2, 2] and task.y_test.tolist() == [0, 1, 2]
    assert task.x_train[3, 0, 0, 0] == 41  # class n02, image 1
    assert task.build_model()(task.normalize(task.x_test)).shape == (3, 3)


# ----------------------------------------------------------------------------- runs


def digits_run(**over) -> dict:
    cfg = {
        "task": {"name": "vision", "dataset": "digits", "model": "digits_cnn", "train_subsample": 300,
                 "test_subsample": 100},
        "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
        "client": {"method": "local", "optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 16},
        "aggregator": {"name": "fipa", "rho": 1e-3, "rank": 4, "curvature_samples": 16},
        "rounds": 2,
        "dtype": "float32",
    }
    cfg.update(over)
    return cfg


def test_digits_fipa_run_is_deterministic_and_reports_accuracy(tmp_path):
    a = train(parse_run_config(digits_run()), tmp_path / "a", log=lambda s: None)
    b = train(parse_run_config(digits_run()), tmp_path / "b", log=lambda s: None)
    assert a["final"] == b["final"] and a["primary_metric"] == "test_acc"
    assert 0 <= a["final"]["test_acc"] <= 1 and a["metric_directions"]["test_acc"] == "max"
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].split(",")[:4] == [
        "round", "train_loss", "test_loss", "test_acc"]


@pytest.mark.parametrize("norm", ["default", "batch"])
def test_export_warmup_then_refine_starts_where_the_warmup_ended(tmp_path, capsys, norm):
    """The refinement's round-0 evaluation is the warm-up's last one: same parameters and, with
    BatchNorm, the same running statistics."""
    task = {**digits_run()["task"], "norm": norm}
    warm = train(parse_run_config(digits_run(task=task, aggregator={"name": "fedavg"})), tmp_path / "warm",
                 log=lambda s: None)
    state = tmp_path / "state.pt"
    assert cli.main(["export-warmup", str(tmp_path / "warm"), "-o", str(state)]) == 0
    raw = torch.load(state, weights_only=True)
    ckpt = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)
    assert torch.equal(raw["theta"], ckpt["theta"]) and raw["round"] == 2
    theta, warm_buffers = load_warmup(str(state), ckpt["theta"])
    assert torch.equal(theta, ckpt["theta"]) and warm_buffers.keys() == ckpt["buffers"].keys()
    assert bool(warm_buffers) == (norm == "batch")
    refine = digits_run(task=task, warmup_checkpoint=str(state), rounds=1)
    train(parse_run_config(refine), tmp_path / "refine", log=lambda s: None)
    rows = (tmp_path / "refine" / "metrics.csv").read_text().splitlines()
    first = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert float(first["test_acc"]) == warm["final"]["test_acc"]
    assert float(first["test_loss"]) == warm["final"]["test_loss"]


def test_export_warmup_errors(tmp_path, capsys):
    assert cli.main(["export-warmup", str(tmp_path / "none"), "-o", str(tmp_path / "s.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["export-warmup", str(tmp_path / "bad"), "-o", str(tmp_path / "s.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err and not (tmp_path / "s.pt").exists()


def test_partition_cli_writes_label_figure(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(digits_run()))
    fig = tmp_path / "labels.png"
    assert cli.main(["partition", "-c", str(path), "-o", str(tmp_path / "p.json"), "--figure", str(fig)]) == 0
    stats = json.loads((tmp_path / "p.json").read_text())["stats"]
    assert len(stats["label_hist"]) == 4 and fig.stat().st_size > 0


def test_fedrcl_needs_features_before_training(tmp_path):
    from tests.helpers import tiny

    cfg = parse_run_config(tiny(client={"method": "fedrcl"}))
    with pytest.raises(ConfigError, match=r"^client\.method: fedrcl needs .*features"):
        Simulation.build(cfg)


def test_features_functional_call_matches_module():
    task = digits()
    torch.manual_seed(1)
    model = task.build_model()
    params = {k: v.detach() * 1.5 for k, v in model.named_parameters()}
    x = task.client_data(np.arange(5))
    z, out = task.features(model, params, x)
    ref = functional_call(model.head, {"weight": params["head.weight"], "bias": params["head.bias"]}, (z,))
    torch.testing.assert_close(out, ref)


def test_amp_runs_local_forward_passes_in_bfloat16_and_nothing_else():
    """amp: local training's forward pass autocasts to bfloat16 (gradients close to, but not
    equal to, float32 ones); evaluation stays in float32, bit for bit."""
    from fipa.client_model import ClientModel
    from fipa.clients import CLIENT_METHODS
    from fipa.config import ClientConfig
    from fipa.round_context import RoundContext

    full, amp = (Vision(VisionParams(train_subsample=200, amp=on), seed=0, dtype=torch.float32)
                 for on in (False, True))  # autocast leaves float64 alone
    torch.manual_seed(0)
    model = full.build_model()
    layout = ParamLayout.of(model)
    theta = layout.flatten(dict(model.named_parameters())).detach()
    batch = full.client_data(np.arange(64))
    with amp.autocast(theta.device):
        assert amp.outputs(model, layout.unflatten(theta), batch).dtype == torch.bfloat16
    method = CLIENT_METHODS.get("local")(ClientConfig())
    grads = [method.gradient(ClientModel(t, model, layout), theta, theta, batch, {}, RoundContext(1))[0]
             for t in (full, amp)]
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert not torch.equal(grads[0], grads[1]) and cos > 0.99
    assert amp.evaluate(model, layout.unflatten(theta)) == full.evaluate(model, layout.unflatten(theta))


def test_digits_load_without_importing_scikit_learn():
    """The digits are read from scikit-learn's own CSV (equal to load_digits: the split test
    above), without the ~2 s import of scikit-learn in every job."""
    import subprocess
    import sys

    code = ("import sys; from fipa.tasks.vision import DataRequest, load_digits_data; "
            "d = load_digits_data(DataRequest('data', 'results/data', 0, 0.2, None)); "
            "print(len(d.y_train) + len(d.y_test), 'sklearn' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1797", "False"]
