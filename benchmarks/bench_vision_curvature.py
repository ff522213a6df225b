"""Benchmark FIPA's client and server cost on a CIFAR-shaped ResNet-18 (random inputs).

Three phases, each in a fresh subprocess so that its peak memory is its own:
  epoch   one local epoch of plain SGD (fipa.clients, the real training path) on
          ``--epoch-samples`` images in batches of ``--batch-size``;
  curv    one client's top-``--rank`` GGN eigenpairs, matrix-free (fipa.curvature:
          jvp/vjp GGN-vector products in a randomized range finder) on ``--curv-samples``
          images: (rank + oversample) (power_iters + 2) products;
  server  the FIPA server step fipa.aggregators.fipa_direction for ``--clients`` clients
          with random factors [rank, P] and deltas [P].
Peak memory: on CUDA torch's max_memory_allocated; on CPU the RSS high-water mark, reset
through /proc/self/clear_refs just before the timed call (tracemalloc does not see torch's
allocations), so it counts what the call allocates beyond its inputs. The ratios printed
compare with one local epoch and with the size of one client's factor, r P numbers.

    .venv/bin/python benchmarks/bench_vision_curvature.py                       # paper-like
    .venv/bin/python benchmarks/bench_vision_curvature.py --image-size 16 --curv-samples 8 \\
        --power-iters 2                                                         # quick on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from procmem import proc_status_kib, reset_peak_rss  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Extra peak memory (bytes) of the code inside ``with``, beyond what existed before."""

    def __init__(self, device) -> None:
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.exact = reset_peak_rss()
            self.base = proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = proc_status_kib("VmHWM") * 1024 - self.base


# ----------------------------------------------------------------------------- worker


def build(args):
    """A vision task over random uint8 CIFAR-shaped images, its ResNet-18, theta and data."""
    import numpy as np
    import torch

    from fipa.params import ParamLayout, model_params
    from fipa.tasks.vision import DATASETS, ImageData, Vision, VisionParams

    def random_images(root, split_seed, test_fraction):
        g = torch.Generator().manual_seed(0)
        n, s = max(args.epoch_samples, args.curv_samples), args.image_size
        x = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g)
        return ImageData(x, y, x[:8], y[:8], 10, 1 / 255, (0.5,) * 3, (0.25,) * 3, 4, True)

    DATASETS.register("random_cifar")(random_images)
    task = Vision(VisionParams(dataset="random_cifar", model="resnet18"), seed=0, dtype=torch.float32)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = task.build_model().to(device)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model_params(model))
    data = {k: v.to(device) for k, v in task.client_data(np.arange(task.partition_input().n)).items()}
    return task, model, layout, theta, data, device


def phase_epoch(args) -> dict:
    import torch

    from fipa.clients import ClientMethod, LocalParams
    from fipa.config import ClientConfig

    task, model, layout, theta, data, device = build(args)
    data = {k: v[: args.epoch_samples] for k, v in data.items()}
    cfg = ClientConfig(optimizer="sgd", lr=0.05, local_epochs=1, batch_size=args.batch_size,
                       params=LocalParams())
    method = ClientMethod(cfg)
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        method.train(task, model, layout, theta, data, torch.Generator().manual_seed(0), {})
        sync(device)
        elapsed = time.perf_counter() - t
    return {"seconds": elapsed, "peak_bytes": mem.peak, "P": theta.numel()}


def phase_curv(args) -> dict:
    import torch

    from fipa.curvature import CurvatureRequest, client_curvature

    task, model, layout, theta, data, device = build(args)
    req = CurvatureRequest("lowrank", rank=args.rank, samples=args.curv_samples, method="matrix_free",
                           oversample=args.oversample, power_iters=args.power_iters, chunk=args.chunk)
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        out = client_curvature(req, task, model, layout, theta, data, torch.Generator().manual_seed(0))
        sync(device)
        elapsed = time.perf_counter() - t
    products = (args.rank + args.oversample) * (args.power_iters + 2)
    return {"seconds": elapsed, "peak_bytes": mem.peak, "P": theta.numel(), "products": products,
            "top_eigs": out["eigvals"][:3].tolist()}


def phase_server(args) -> dict:
    import torch

    from fipa.aggregators import fipa_direction
    from fipa.tasks.vision import MODELS, VisionParams

    P = sum(p.numel() for p in MODELS.get("resnet18")(3, 32, 10, VisionParams()).parameters())
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    factors = [torch.empty(args.rank, P, device=device).normal_(generator=g) for _ in range(args.clients)]
    deltas = [torch.empty(P, device=device).normal_(generator=g) for _ in range(args.clients)]
    w = torch.full((args.clients,), 1.0 / args.clients, dtype=torch.float64)
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        fipa_direction(deltas, factors, w, rho=1e-3)
        sync(device)
        elapsed = time.perf_counter() - t
    return {"seconds": elapsed, "peak_bytes": mem.peak, "P": P,
            "input_bytes": 4 * P * (args.rank + 1) * args.clients}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


PHASES = {"epoch": phase_epoch, "curv": phase_curv, "server": phase_server}


# ----------------------------------------------------------------------------- driver


def run_phase(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, *argv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epoch-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--curv-samples", type=int, default=32)
    p.add_argument("--rank", type=int, default=20)
    p.add_argument("--oversample", type=int, default=10)
    p.add_argument("--power-iters", type=int, default=4)
    p.add_argument("--chunk", type=int, default=8, help="GGN-vector products per vmap call")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-server", action="store_true", help="leave out the server phase "
                   "(it does not depend on the image size or the curvature settings)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(PHASES[args.phase](args)))
        return
    argv = sys.argv[1:]
    names = ("epoch", "curv") if args.skip_server else ("epoch", "curv", "server")
    res = {name: run_phase(name, argv) for name in names}
    P, r = res["curv"]["P"], args.rank
    factor_bytes = 4 * P * r
    gib = 2.0**30
    print(f"ResNet-18 (GroupNorm), P = {P:,}, inputs 3x{args.image_size}x{args.image_size}, "
          f"{args.threads} thread(s), device {args.device}")
    print(f"{'phase':<52}{'seconds':>9}{'peak extra GiB':>16}")
    rows = [
        (f"local epoch: {args.epoch_samples} samples, batch {args.batch_size}", res["epoch"]),
        (f"matrix-free r={r} (+{args.oversample}, q={args.power_iters}, {args.curv_samples} samples, "
         f"{res['curv']['products']} GGNvp)", res["curv"]),
    ]
    if "server" in res:
        rows.append((f"FIPA server step, {args.clients} clients x r={r}", res["server"]))
    for label, v in rows:
        print(f"{label:<52}{v['seconds']:>9.2f}{v['peak_bytes'] / gib:>16.3f}")
    e = res["epoch"]["seconds"]
    print(f"ratio  curvature / local epoch      = {res['curv']['seconds'] / e:.2f}")
    if "server" in res:
        print(f"ratio  server step / local epoch    = {res['server']['seconds'] / e:.2f}")
    print(f"ratio  curvature time per GGNvp / (epoch time / epoch samples) = "
          f"{res['curv']['seconds'] / res['curv']['products'] / (e / args.epoch_samples):.1f} samples")
    print(f"memory curvature peak / (r P float32 = {factor_bytes / gib:.2f} GiB) = "
          f"{res['curv']['peak_bytes'] / factor_bytes:.2f}")
    if "server" in res:
        print(f"memory server peak extra / inputs ({res['server']['input_bytes'] / gib:.2f} GiB) = "
              f"{res['server']['peak_bytes'] / res['server']['input_bytes']:.2f}")


if __name__ == "__main__":
    main()
