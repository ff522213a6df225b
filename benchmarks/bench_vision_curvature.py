"""Benchmark FIPA's client and server cost on a CIFAR-shaped ResNet-18 (random inputs).

Four phases, each in a fresh subprocess so that its peak memory is its own:
  epoch    one local epoch of plain SGD (fipa.clients, the real training path) on
           ``--epoch-samples`` images in batches of ``--batch-size``;
  curv     one client's top-``--rank`` eigenpairs by ``--curv-method`` on ``--curv-samples``
           images (fipa.curvature.client_curvature): gram (default; per-sample rows of the
           ``--fisher`` factor, one reverse pass each, and an eigensolve of their Gram) or
           matrix_free (jvp/vjp GGN-vector products in a randomized range finder,
           (rank + oversample)(power_iters + 2) products);
  quality  the same method on ``--quality-samples`` images against the exact top-r GGN
           eigenpairs of the same images (reference: the Gram of all n C rows M_i^T J_i,
           formed ``--quality-groups`` parameter groups at a time so that n C P numbers
           never sit in memory at once; exact up to round-off, unlike a range finder
           without a spectral gap): largest relative error of the top-r eigenvalues and
           largest principal angle between the top-r (and top C-1) eigenvector spaces;
  server   the FIPA server step fipa.aggregators.fipa_direction for ``--clients`` clients
           with random factors [rank, P] and deltas [P].
Peak memory: on CUDA torch's max_memory_allocated; on CPU the RSS high-water mark, reset
through /proc/self/clear_refs just before the timed call (tracemalloc does not see torch's
allocations), so it counts what the call allocates beyond its inputs. The ratios printed
compare with one local epoch and with the size of one client's factor, r P numbers.

    .venv/bin/python benchmarks/bench_vision_curvature.py --threads 2 --skip-server  # acceptance
    .venv/bin/python benchmarks/bench_vision_curvature.py --curv-method matrix_free --fisher ggn \\
        --curv-samples 8 --power-iters 0 --skip-quality                             # the old path
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
    from fipa.tasks.vision import DATASETS, ArrayData, Vision, VisionParams

    @DATASETS.register("random_cifar")
    def random_images(request):
        g = torch.Generator().manual_seed(0)
        n, s = max(args.epoch_samples, args.curv_samples, args.quality_samples), args.image_size
        x = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g)
        return ArrayData(x, y, x[:8], y[:8], 10, 1 / 255, (0.5,) * 3, (0.25,) * 3, 4, True)

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

    from fipa.client_model import ClientModel
    from fipa.clients import ClientMethod, LocalParams
    from fipa.config import ClientConfig
    from fipa.round_context import RoundContext

    task, model, layout, theta, data, device = build(args)
    cm, ctx = ClientModel(task, model, layout), RoundContext(1)
    data = {k: v[: args.epoch_samples] for k, v in data.items()}
    cfg = ClientConfig(optimizer="sgd", lr=0.05, local_epochs=1, batch_size=args.batch_size,
                       params=LocalParams())
    method = ClientMethod(cfg)
    if args.warm:  # one untimed minibatch: kernels and allocator warm, as in round 2 onwards
        method.train(cm, theta, {k: v[: args.batch_size] for k, v in data.items()},
                     torch.Generator().manual_seed(0), {}, ctx)
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        method.train(cm, theta, data, torch.Generator().manual_seed(0), {}, ctx)
        sync(device)
        elapsed = time.perf_counter() - t
    return {"seconds": elapsed, "peak_bytes": mem.peak, "P": theta.numel()}


def curvature_request(args, samples: int | None):
    from fipa.curvature import CurvatureRequest

    return CurvatureRequest(kind="lowrank", rank=args.rank, curvature_samples=samples,
                            curvature_method=args.curv_method, curvature_fisher=args.fisher,
                            oversample=args.oversample, power_iters=args.power_iters, chunk=args.chunk)


def phase_curv(args) -> dict:
    import torch

    from fipa.client_model import ClientModel
    from fipa.curvature import client_curvature

    task, model, layout, theta, data, device = build(args)
    cm = ClientModel(task, model, layout)
    req = curvature_request(args, args.curv_samples)
    if args.warm:  # one untimed call on 2 samples, as for the epoch
        client_curvature(curvature_request(args, 2), cm, theta, data, torch.Generator())
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        out = client_curvature(req, cm, theta, data, torch.Generator().manual_seed(0))
        sync(device)
        elapsed = time.perf_counter() - t
    return {"seconds": elapsed, "peak_bytes": mem.peak, "P": theta.numel(), "work": work(args),
            "top_eigs": out.eigvals[:3].tolist()}


def work(args) -> str:
    """What the curvature phase computes, in words."""
    if args.curv_method == "matrix_free":
        products = (args.rank + args.oversample) * (args.power_iters + 2)
        return f"+{args.oversample}, q={args.power_iters}, {products} GGNvp"
    rows = "1 row" if args.fisher == "sampled" else "C rows"
    return f"{args.fisher} Fisher, {rows}/sample"


def reference_eigs(task, model, layout, theta, batch, rank: int, groups: int):
    """Exact top-``rank`` GGN eigenpairs of ``batch``: (sigma [r], A [r, P]), H = A^T A on them.

    G = S S^T [n C, n C] accumulated over parameter groups (rows M_i^T J_i restricted to one
    group's columns at a time: memory n C P / groups), eigh in float64; then A = U_r^T S
    through r reverse passes of the whole batch, cotangent W_j [n, C] = sum_k M_i[:, k] U[(i, k), j]
    / sqrt(n) (apply S^T to u_j without forming S).
    """
    import math

    import torch

    from fipa.client_model import ClientModel
    from fipa.curvature import GRAM_COLUMNS, _gram, output_sqrt, per_sample_rows

    with torch.no_grad():
        out = task.outputs(model, layout.unflatten(theta), batch)  # [n, C]
    M = output_sqrt(task.loss_kind, "ggn", out, torch.Generator())  # [n, C, C]
    n, C, _ = M.shape
    G = torch.zeros(n * C, n * C, dtype=torch.float64)
    bounds = torch.linspace(0, layout.numel, groups + 1)
    ends = torch.tensor(layout.sizes).cumsum(0)
    for g in range(groups):  # a parameter tensor belongs to the group where it ends
        names = [nm for nm, e in zip(layout.names, ends, strict=True) if bounds[g] < e <= bounds[g + 1]]
        if not names:  # one big tensor spans this group's range: it counts in a later one
            continue
        for block in per_sample_rows(ClientModel(task, model, layout), theta, batch, M, 1, names):
            G += _gram(block, GRAM_COLUMNS)
    sigma, U = torch.linalg.eigh(G)
    sigma_r, U_r = sigma[-rank:].flip(-1), U[:, -rank:].flip(-1)  # [r], [n C, r]
    W = torch.einsum("nck,nkr->rnc", M.double(), U_r.view(n, C, rank)) / math.sqrt(n)
    params = {k: v.detach().requires_grad_(True) for k, v in layout.unflatten(theta).items()}
    f = task.outputs(model, params, batch)  # [n, C]
    A = torch.empty(rank, theta.numel(), dtype=theta.dtype)
    for j in range(rank):  # apply S^T to u_j: J^T W_j
        grads = torch.autograd.grad((f * W[j].to(f.dtype)).sum(), list(params.values()),
                                    retain_graph=j < rank - 1)
        A[j] = torch.cat([gr.reshape(-1) for gr in grads])
    return sigma_r, A


def principal_angle(A1, A2) -> float:
    """Largest principal angle (radians) between the row spaces of two factors [k, P] whose rows
    are orthogonal (A = diag(sqrt sigma) V^T): cosines = singular values of Q1 Q2^T."""
    import torch

    from fipa.curvature import COLUMN_CHUNK

    Q1, Q2 = (A / A.norm(dim=1, keepdim=True) for A in (A1, A2))
    C = torch.zeros(Q1.shape[0], Q2.shape[0], dtype=torch.float64)
    for i in range(0, Q1.shape[1], COLUMN_CHUNK):
        C += Q1[:, i : i + COLUMN_CHUNK].double() @ Q2[:, i : i + COLUMN_CHUNK].double().T
    return float(torch.arccos(torch.linalg.svdvals(C).clamp(max=1.0).min()))


def phase_quality(args) -> dict:
    import torch

    from fipa.client_model import ClientModel
    from fipa.curvature import client_curvature

    task, model, layout, theta, data, _ = build(args)
    batch = {k: v[: args.quality_samples] for k, v in data.items()}
    r = args.rank
    t = time.perf_counter()
    s_ref, A_ref = reference_eigs(task, model, layout, theta, batch, r, args.quality_groups)
    ref_s = time.perf_counter() - t
    got = client_curvature(curvature_request(args, None), ClientModel(task, model, layout), theta, batch,
                           torch.Generator().manual_seed(0))
    s_fast, A_fast = got.eigvals.double(), got.factor
    k = min(r, s_fast.numel())
    rel = ((s_fast[:k] - s_ref[:k]) / s_ref[:k]).abs()
    C1 = task.data.num_classes - 1  # the softmax GGN's outlier eigenvalues
    return {"reference_seconds": ref_s, "rank": k, "eig_rel_err_max": float(rel.max()),
            "eig_rel_err_median": float(rel.median()), "eig_rel_err_top": float(rel[:C1].max()),
            "angle": principal_angle(A_fast[:k], A_ref[:k]), "angle_top": principal_angle(
                A_fast[:C1], A_ref[:C1]), "outliers": C1,
            "ref_eigs": s_ref[:3].tolist(), "fast_eigs": s_fast[:3].tolist()}


def phase_server(args) -> dict:
    import torch

    from fipa.aggregators import fipa_direction
    from fipa.tasks.vision import MODELS, VisionParams

    P = sum(p.numel() for p in MODELS.get("resnet18")((3, 32, 32), 10, VisionParams()).parameters())
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


PHASES = {"epoch": phase_epoch, "curv": phase_curv, "quality": phase_quality, "server": phase_server}


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
    p.add_argument("--curv-method", default="gram", choices=["gram", "matrix_free", "exact"])
    p.add_argument("--fisher", default="sampled", choices=["sampled", "ggn"])
    p.add_argument("--curv-samples", type=int, default=32)
    p.add_argument("--quality-samples", type=int, default=32)
    p.add_argument("--quality-groups", type=int, default=8, help="parameter groups of the reference")
    p.add_argument("--rank", type=int, default=20)
    p.add_argument("--oversample", type=int, default=10)
    p.add_argument("--power-iters", type=int, default=4)
    p.add_argument("--chunk", type=int, default=8, help="GGN-vector products (or gram samples, "
                   "off the CPU) per vmap call")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-server", action="store_true", help="leave out the server phase "
                   "(it does not depend on the image size or the curvature settings)")
    p.add_argument("--skip-quality", action="store_true", help="leave out the quality phase")
    p.add_argument("--cold", dest="warm", action="store_false", help="time the first call of each phase "
                   "(default: one small untimed call first, the cost per round of a long run)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(PHASES[args.phase](args)))
        return
    argv = sys.argv[1:]
    names = ["epoch", "curv"] + ([] if args.skip_quality else ["quality"]) + \
        ([] if args.skip_server else ["server"])
    res = {name: run_phase(name, argv) for name in names}
    report(args, res)


def report(args, res: dict) -> None:
    P, r = res["curv"]["P"], args.rank
    factor_bytes = 4 * P * r
    gib = 2.0**30
    print(f"ResNet-18 (GroupNorm), P = {P:,}, inputs 3x{args.image_size}x{args.image_size}, "
          f"{args.threads} thread(s), device {args.device}")
    print(f"{'phase':<60}{'seconds':>9}{'peak extra GiB':>16}")
    rows = [
        (f"local epoch: {args.epoch_samples} samples, batch {args.batch_size}", res["epoch"]),
        (f"{args.curv_method} r={r} ({res['curv']['work']}, {args.curv_samples} samples)", res["curv"]),
    ]
    if "server" in res:
        rows.append((f"FIPA server step, {args.clients} clients x r={r}", res["server"]))
    for label, v in rows:
        print(f"{label:<60}{v['seconds']:>9.2f}{v['peak_bytes'] / gib:>16.3f}")
    e = res["epoch"]["seconds"]
    print(f"ratio  curvature / local epoch      = {res['curv']['seconds'] / e:.2f}")
    if "server" in res:
        print(f"ratio  server step / local epoch    = {res['server']['seconds'] / e:.2f}")
    print(f"memory curvature peak / (r P float32 = {factor_bytes / gib:.2f} GiB) = "
          f"{res['curv']['peak_bytes'] / factor_bytes:.2f}")
    if "server" in res:
        print(f"memory server peak extra / inputs ({res['server']['input_bytes'] / gib:.2f} GiB) = "
              f"{res['server']['peak_bytes'] / res['server']['input_bytes']:.2f}")
    if "quality" in res:
        q = res["quality"]
        print(f"quality vs the exact GGN on the same {args.quality_samples} samples (reference "
              f"{q['reference_seconds']:.0f} s), top {q['rank']}:")
        print(f"  eigenvalue relative error  max {q['eig_rel_err_max']:.3f}, median "
              f"{q['eig_rel_err_median']:.3f}, top {q['outliers']} (C-1) max {q['eig_rel_err_top']:.3f}")
        print(f"  largest principal angle    top {q['rank']}: {q['angle']:.3f} rad; "
              f"top {q['outliers']}: {q['angle_top']:.3f} rad")
        print(f"  top-3 eigenvalues          reference {fmt(q['ref_eigs'])}, {args.curv_method} "
              f"{fmt(q['fast_eigs'])}")


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


if __name__ == "__main__":
    main()
