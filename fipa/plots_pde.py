"""Figures of federated PINN runs: learned solution and pointwise error beside the reference.

A run directory (``fipa train -o DIR``) holds ``final.json`` (with the resolved run config)
or ``run.yaml``, and ``checkpoint.pt`` (the last parameters ``theta``). From these the task,
its test grid and the client split are rebuilt, so a figure needs nothing but the run
directories. 2-D inputs (x, y) or (x, t) are drawn as heat maps with the domain_split
cells outlined; 1-D problems as line plots with the cell boundaries as vertical lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fipa.checkpoint import CHECKPOINT, read_checkpoint
from fipa.config import RunConfig, parse_run_config
from fipa.io import read_yaml
from fipa.partition import grid_shape, make_partition
from fipa.report.roles import REFERENCE, role_of
from fipa.simulate import Simulation


@dataclass
class RunSolution:
    """One run's prediction on its task's test grid (shape = (test_points,) * d, "ij" order).

    X [*shape, d] points, u_pred / u_ref / err [*shape] with err = |u_pred - u_ref|,
    rel_l2 = ||u_pred - u_ref|| / ||u_ref|| (the run's metric, recomputed from the checkpoint).
    """

    label: str
    cfg: RunConfig
    X: np.ndarray
    u_pred: np.ndarray
    u_ref: np.ndarray
    err: np.ndarray
    rel_l2: float
    round: int
    coords: np.ndarray  # training points [n, d]
    owner: np.ndarray  # client of each training point [n]
    reference: bool = False  # the run's role (final.json) is the reference: drawn in its style


def run_config(run_dir: str | Path) -> RunConfig:
    """The run's resolved config: final.json's ``config``, else the run.yaml it was started from.

    Paths to the partition file and warm-up checkpoint are dropped: they may be relative to
    another working directory, and neither is needed (the split is rebuilt from scheme, seed
    and points exactly as ``fipa partition`` made it; the parameters come from the checkpoint).
    """
    quiet_deepxde()  # parsing a pde config loads the task, and with it DeepXDE
    run_dir = Path(run_dir)
    final, spec = run_dir / "final.json", run_dir / "run.yaml"
    if final.is_file():
        raw, source = json.loads(final.read_text())["config"], final
    elif spec.is_file():
        raw, source = read_yaml(spec), spec
    else:
        raise FileNotFoundError(f"{run_dir}: neither final.json nor run.yaml; is this a run directory?")
    raw = {k: v for k, v in raw.items() if k not in ("partition_file", "warmup_checkpoint")}
    return parse_run_config(raw, source=str(source))


def is_reference_run(run_dir: str | Path) -> bool:
    """Whether the run's final.json records the reference role (a run without one is federated)."""
    final = Path(run_dir) / "final.json"
    return final.is_file() and role_of(json.loads(final.read_text())) == REFERENCE


def load_solution(run_dir: str | Path, label: str | None = None) -> RunSolution:
    """Rebuild the task of ``run_dir``, load its last parameters and evaluate on the test grid."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if cfg.task.name != "pde":
        raise ValueError(f"{run_dir}: task {cfg.task.name!r} is not a PINN (task.name: pde)")
    sim = Simulation.build(cfg)
    state = read_checkpoint(run_dir / CHECKPOINT)
    params = sim.layout.unflatten(state["theta"].to(sim.layout.flatten(
        dict(sim.model.named_parameters())).dtype))
    X, u_pred, u_ref = sim.task.solution_grid(sim.model, params)
    # the client split exactly as the run made it (same scheme, seed and points)
    pin = sim.task.partition_input()
    parts = make_partition(pin, cfg.partition.name, cfg.clients, cfg.partition.params, cfg.seed)
    owner = np.empty(pin.n, dtype=np.int64)
    for m, p in enumerate(parts):
        owner[p] = m
    err = np.abs(u_pred - u_ref)
    return RunSolution(
        label=label or cfg.labels.get("aggregator", cfg.aggregator.name), cfg=cfg, X=X, u_pred=u_pred,
        u_ref=u_ref, err=err, rel_l2=float(np.linalg.norm(u_pred - u_ref) / np.linalg.norm(u_ref)),
        round=int(state["round"]), coords=pin.coords, owner=owner, reference=is_reference_run(run_dir),
    )


def solution_arrays(run_dirs: dict[str, str | Path]) -> dict[str, RunSolution]:
    """load_solution for each labelled run; all must share one problem and test grid."""
    sols = {label: load_solution(d, label) for label, d in run_dirs.items()}
    first = next(iter(sols.values()))
    for label, s in sols.items():
        if s.cfg.task.params.problem != first.cfg.task.params.problem or s.X.shape != first.X.shape:
            raise ValueError(f"run {label!r} solves {s.cfg.task.params.problem} on a {s.X.shape[:-1]} grid, "
                             f"but {first.label!r} solves {first.cfg.task.params.problem} on "
                             f"{first.X.shape[:-1]}: compare runs of one task")
    return sols


def _final_key(d: str | Path, metric: str) -> float:
    """A run's final ``metric`` from final.json; +inf for a diverged or non-finite run."""
    f = json.loads((Path(d) / "final.json").read_text())
    v = f["final"].get(metric, float("inf"))
    return float("inf") if f["diverged"] or v is None or not np.isfinite(v) else float(v)


def median_seed(run_dirs: list[str | Path], metric: str = "rel_l2") -> Path:
    """The run directory at the median final ``metric`` (diverged runs count as the worst): the
    lower middle one, ``sorted[(n - 1) // 2]``, of an even number of runs. The run a report
    should show as typical, where the best seed would flatter."""
    ranked = sorted(run_dirs, key=lambda d: (_final_key(d, metric), str(d)))
    return Path(ranked[(len(ranked) - 1) // 2])


def quiet_deepxde() -> None:
    """Import DeepXDE with the pytorch backend and without its banner on stderr ("Using backend:
    pytorch", the list of other backends): the report records anything on stderr as a fault."""
    import contextlib
    import io
    import os

    os.environ.setdefault("DDE_BACKEND", "pytorch")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import deepxde  # noqa: F401


def cell_edges(cfg: RunConfig, bounds: list[tuple[float, float]]) -> dict[int, np.ndarray]:
    """Interior cut positions per input axis of a domain_split run: {axis: [k - 1]} ({} otherwise)."""
    if cfg.partition.name != "domain_split":
        return {}
    p = cfg.partition.params
    cells = p.pieces * cfg.clients
    axes = [p.axis] if p.axis is not None else list(range(len(bounds)))
    shape = [cells] if len(axes) == 1 else grid_shape(cells, len(axes))
    return {ax: np.linspace(*bounds[ax], k + 1)[1:-1] for ax, k in zip(axes, shape, strict=True)}


def solution_figure(run_dirs: dict[str, str | Path], out: str | Path, title: str | None = None) -> Path:
    """Save a PNG: reference and each run's solution (top), each run's |error| (bottom).

    ``run_dirs`` maps a label (e.g. "FedAvg", "FIPA") to a run directory of one pde task.
    Client subdomains (domain_split cells) are outlined in every panel.
    """
    sols = solution_arrays(run_dirs)
    first = next(iter(sols.values()))
    problem = first.cfg.task.params.problem
    bounds = [(float(a.min()), float(a.max())) for a in np.moveaxis(first.X, -1, 0)]
    edges = cell_edges(first.cfg, bounds)
    if first.X.shape[-1] == 1:
        fig = _line_figure(sols, first, edges)
    elif first.X.shape[-1] == 2:
        fig = _map_figure(sols, first, edges, _axis_names(first))
    else:
        raise ValueError(f"{problem}: solution figures need 1 or 2 input axes, got {first.X.shape[-1]}")
    rounds = {s.round for s in sols.values()}
    fig.suptitle(title or f"{problem}: {', '.join(f'{k} rel. L2 {s.rel_l2:.3g}' for k, s in sols.items())}"
                 f" (round {'/'.join(map(str, sorted(rounds)))})")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def _axis_names(sol: RunSolution) -> tuple[str, ...]:
    from fipa.tasks.pde import PROBLEMS

    return PROBLEMS.get(sol.cfg.task.params.problem).axes


def _aggregator(sol: RunSolution) -> str:
    return sol.cfg.labels.get("aggregator", sol.cfg.aggregator.name)


def _line_figure(sols, first, edges):
    """1-D: u (reference dashed) and |error| (log scale) per run, in each aggregator's palette
    colour; cell boundaries as vertical lines; the legend right of the panels."""
    from matplotlib.figure import Figure

    from fipa.palette import color, gid

    x = first.X[..., 0]
    fig = Figure(figsize=(8.5, 6))
    axs = fig.subplots(2, 1, sharex=True)
    axs[0].plot(x, first.u_ref, color="0.2", ls="--", lw=2, label="reference")
    for label, s in sols.items():
        agg = _aggregator(s)
        kw = {"lw": 1.5, "color": color(agg, s.reference), "gid": gid(agg, s.reference)}
        axs[0].plot(x, s.u_pred, label=f"{label} ({s.rel_l2:.3g})", **kw)
        axs[1].semilogy(x, np.maximum(s.err, 1e-16), label=label, **kw)
    for ax in axs:
        for e in edges.get(0, []):
            ax.axvline(e, color="0.5", ls=":", lw=1)
    _, yhi = axs[0].get_ylim()
    for m, (a, b) in enumerate(_cells_1d(first, edges)):
        axs[0].text((a + b) / 2, yhi, f"client {m}", ha="center", va="top", fontsize=8, color="0.3")
    axs[0].set_ylabel("u")
    axs[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    axs[1].set_ylabel("|u_pred - u_ref| (log scale)")
    axs[1].set_xlabel("x")
    return fig


def _cells_1d(first, edges):
    """(lo, hi) of client m's interval, when each client owns one cell (pieces = 1); else []."""
    lo, hi = float(first.X[..., 0].min()), float(first.X[..., 0].max())
    cuts = [lo, *edges.get(0, []), hi]
    cells = list(zip(cuts[:-1], cuts[1:], strict=True))
    if len(cells) == first.cfg.clients:  # pieces = 1: cell m belongs to client m
        return cells
    return []


def _map_figure(sols, first, edges, names):
    """2-D: heat maps, axis 0 horizontal, axis 1 vertical; shared colour scales per row."""
    from matplotlib.figure import Figure

    X = first.X
    ncol = len(sols) + 1
    extent = [X[..., 0].min(), X[..., 0].max(), X[..., 1].min(), X[..., 1].max()]
    fig = Figure(figsize=(3.6 * ncol, 6.4))
    axs = fig.subplots(2, ncol, squeeze=False)
    umax = max(np.abs(first.u_ref).max(), *(np.abs(s.u_pred).max() for s in sols.values()))
    emax = max(s.err.max() for s in sols.values())
    kw = {"origin": "lower", "extent": extent, "aspect": "auto"}
    im = axs[0, 0].imshow(first.u_ref.T, cmap="RdBu_r", vmin=-umax, vmax=umax, **kw)
    axs[0, 0].set_title("reference")
    fig.colorbar(im, ax=axs[0, 0])
    # bottom-left: the training points, coloured by client
    ax = axs[1, 0]
    ax.scatter(first.coords[:, 0], first.coords[:, 1], c=first.owner, cmap="tab10", s=6,
               vmin=0, vmax=9)
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    for m in np.unique(first.owner):  # client id at the centroid of its points
        c = first.coords[first.owner == m].mean(0)
        ax.text(c[0], c[1], str(m), ha="center", va="center", fontsize=11, weight="bold",
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    ax.set_title(f"training points of {first.cfg.clients} clients")
    for j, (label, s) in enumerate(sols.items(), start=1):
        im = axs[0, j].imshow(s.u_pred.T, cmap="RdBu_r", vmin=-umax, vmax=umax, **kw)
        axs[0, j].set_title(f"{label}: u (rel. L2 {s.rel_l2:.3g})")
        fig.colorbar(im, ax=axs[0, j])
        im = axs[1, j].imshow(s.err.T, cmap="magma", vmin=0, vmax=emax, **kw)
        axs[1, j].set_title(f"{label}: |u - u_ref|")
        fig.colorbar(im, ax=axs[1, j])
    for ax in axs.flat:
        for e in edges.get(0, []):
            ax.axvline(e, color="k", ls="--", lw=0.8)
        for e in edges.get(1, []):
            ax.axhline(e, color="k", ls="--", lw=0.8)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    return fig
