"""Milliseconds per local SGD step of a vision model: float32 against bfloat16 autocast (``amp``)
and channels-last images (``channels_last``), through the task's own training path.

One client's minibatch step (forward, loss, backward, SGD update) is timed as the
federated loop runs it (``ClientMethod.gradient`` + the optimizer), on random images of
the data set's shape, so no download is needed. Prints ms per step and the ratio to
float32 for each setting. Meant for a GPU (``--device cuda``); on a CPU bfloat16 autocast
runs but rarely helps and channels-last does nothing.

    .venv/bin/python benchmarks/bench_vision_precision.py --device cuda
    .venv/bin/python benchmarks/bench_vision_precision.py --model digits_cnn --size 8 --channels 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fipa.client_model import ClientModel  # noqa: E402
from fipa.clients import CLIENT_METHODS, make_optimizer  # noqa: E402
from fipa.config import ClientConfig  # noqa: E402
from fipa.params import ParamLayout  # noqa: E402
from fipa.round_context import RoundContext  # noqa: E402
from fipa.tasks.vision import MODELS, Vision, VisionParams  # noqa: E402

SETTINGS = {"float32": {}, "amp": {"amp": True}, "amp+channels_last": {"amp": True, "channels_last": True}}


def task_like(params: VisionParams, channels: int, size: int, classes: int, device: torch.device) -> Vision:
    """A Vision task over random uint8 images [n, C, H, W] (no data set on disk needed)."""
    task = Vision.__new__(Vision)
    task.params, task.seed, task.dtype = params, 0, torch.float32
    task.data = SimpleNamespace(scale=1 / 255, num_classes=classes)
    task._mean = torch.zeros(channels, 1, 1)
    task._std = torch.ones(channels, 1, 1)
    task.x_train = torch.zeros(1, channels, size, size, dtype=torch.uint8, device=device)
    return task


def time_steps(setting: dict, args: argparse.Namespace, device: torch.device) -> float:
    """Median milliseconds of one local step under ``setting`` (VisionParams overrides)."""
    params = VisionParams(model=args.model, **setting)
    task = task_like(params, args.channels, args.size, args.classes, device)
    torch.manual_seed(0)
    model = MODELS.get(args.model)((args.channels, args.size, args.size), args.classes, params).to(device)
    layout = ParamLayout.of(model)
    theta = layout.flatten(dict(model.named_parameters())).detach().clone()
    cfg = ClientConfig(optimizer="sgd", lr=0.01)
    method, opt = CLIENT_METHODS.get("local")(cfg), make_optimizer(cfg)
    opt_state = opt.init(theta)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), generator=gen,
                      dtype=torch.uint8).to(device)
    batch = {"x": x, "y": torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)}
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        grad, _ = method.gradient(ClientModel(task, model, layout), theta, theta, batch, {}, RoundContext(1))
        opt.step(theta, grad, opt_state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet18", choices=MODELS.names())
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"{args.model}, {args.batch} images {args.channels}x{args.size}x{args.size}, device {device}")
    base = None
    for name, setting in SETTINGS.items():
        ms = time_steps(setting, args, device)
        base = base or ms
        print(f"{name:>18}: {ms:8.2f} ms/step   speed-up x{base / ms:.2f}")


if __name__ == "__main__":
    main()
