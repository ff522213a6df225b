"""The round loop: sampling, local training, aggregation, evaluation, checkpoints, in lockstep.

A run's loop is a ``RunLoop`` (``begin_round``, ``finish_round``); ``train_lockstep`` advances
several runs round by round together, so runs that can share their local training do so in
one call per round (``work.train_work``). ``train`` is one run from its config to final.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fipa import buffers, devices
from fipa.aggregators import ClientUpdate
from fipa.checkpoint import CHECKPOINT, fingerprint, load_checkpoint, save_checkpoint
from fipa.config import RunConfig
from fipa.errors import ConfigError
from fipa.io import RunDirLock, write_csv, write_json
from fipa.records import final_record, metrics_columns, metrics_row, progress_line
from fipa.round_context import RoundContext
from fipa.simulation import Simulation, sample_clients
from fipa.threads import apply as apply_threads
from fipa.threads import choose_threads
from fipa.work import ClientWork, WorkResult, round_work, train_work


def train(
    cfg: RunConfig, outdir: str | Path, log: Callable[[str], None] = print, label: str = "",
    threads: int | None = None, on_round: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one job into ``outdir``; returns the final summary (final.json).

    ``threads`` (``fipa train --threads``) overrides the config's ``threads`` setting;
    ``on_round(round, rounds)`` is called after every round (a terminal's progress bar).
    """
    with devices.claim(cfg.device) as device:
        sim = prepared(Simulation.build(cfg, device), threads)
        loop = RunLoop(sim, Path(outdir), log, label)
        loop.on_round = on_round
        return train_lockstep([loop])[0]


def prepared(sim: Simulation, threads: int | None) -> Simulation:
    """Choose and apply the run's torch thread count (``threads`` overrides the config's)."""
    sim.threads = choose_threads(threads or sim.cfg.threads, sim.step_work())
    apply_threads(sim.threads)
    return sim


def train_lockstep(loops: list[RunLoop], on_done: Callable[[RunLoop, dict[str, Any]], None] | None = None,
                   ) -> list[dict[str, Any]]:
    """Advance runs round by round together; returns each run's final.json content.

    A run is closed (final.json written) as soon as it is done, then ``on_done(loop, final)``.

    Per step, the unfinished runs at the same round whose ``Simulation.stack_key`` agree train
    their client work (every chosen client of every run) in one call (``train_work``); the others,
    and a run resumed at another round, advance in their own group. Each run keeps its own
    aggregation, evaluation, checkpoint and outputs, so a run gives the same numbers whether
    it trains alone or stacked (up to floating-point rounding of the vectorized products).
    """
    finals: dict[int, dict[str, Any]] = {}

    def close_finished() -> None:
        for i, lp in enumerate(loops):
            if lp.done and i not in finals:
                finals[i] = lp.close()
                if on_done is not None:
                    on_done(lp, finals[i])

    close_finished()
    while len(finals) < len(loops):
        for group in _lockstep_groups([lp for lp in loops if not lp.done]):
            work = [(lp, lp.begin_round()) for lp in group]
            units = [unit for lp, chosen in work for unit in lp.work(chosen)]
            vectorize = len(group) > 1 or group[0].sim.vectorized
            results = iter(train_work(units, vectorize))
            for lp, chosen in work:
                lp.finish_round(chosen, [next(results) for _ in chosen])
        close_finished()
    return [finals[i] for i in range(len(loops))]


def _lockstep_groups(loops: list[RunLoop]) -> list[list[RunLoop]]:
    """Runs that can share a round's training call: same round and stack key, split where
    work units x batch x parameters would pass ``STACK_WORK`` (a run whose key is None is alone)."""
    groups: dict[tuple, list[RunLoop]] = {}
    for i, lp in enumerate(loops):
        key = lp.sim.stack_key()
        groups.setdefault((lp.state.round, key if key is not None else f"alone-{i}"), []).append(lp)
    out = []
    for members in groups.values():
        chunk: list[RunLoop] = []
        for lp in members:
            if chunk and (len(chunk) + 1) * lp.sim.clients_per_round * lp.sim.step_work() > STACK_WORK:
                out.append(chunk)
                chunk = []
            chunk.append(lp)
        out.append(chunk)
    return out


# runs stacked in one training call while work units x minibatch x parameters stays below this
# (memory of the stacked activations and gradients; beyond, the stack is split)
STACK_WORK = 1 << 27


class RunLoop:
    """One run's round loop as steps (``begin_round``, ``finish_round``), so that several runs
    can advance in lockstep and share their local training (``train_lockstep``).

    Built from a prepared Simulation and its run directory: resumes from the checkpoint there,
    or starts at round 0 with an evaluation of the initial model.
    """

    def __init__(self, sim: Simulation, outdir: Path, log: Callable[[str], None], label: str) -> None:
        self.sim, self.outdir, self.log, self.label = sim, outdir, log, label
        self.on_round: Callable[[int, int], None] | None = None  # after every round (progress bars)
        cfg = sim.cfg
        self.fp = fingerprint(cfg)
        self.ckpt = outdir / CHECKPOINT
        self.lock = RunDirLock(outdir)
        self.lock.acquire()
        if not self.ckpt.exists() and (outdir / "final.json").exists():
            self.lock.release()
            raise ConfigError(f"{outdir}: holds a finished run (final.json) without its checkpoint; "
                              "rerun with --supersede to keep it in superseded/ and start again, or use "
                              "another output directory")
        if self.ckpt.exists():
            try:
                state = load_checkpoint(self.ckpt, sim.expected(self.fp), sim.device)
            except BaseException:
                self.lock.release()
                raise
            log(f"{label} resuming from round {state.round}")
        else:
            state = sim.fresh_state(sim.initial_theta())
        self.state = state
        buffers.load(sim.model, state.buffers)
        self.stats = stats = sim.aggregator.stats  # server-state scalars (adaptive damping), columns
        self.columns = metrics_columns(list(sim.task.metrics), list(stats(state.agg_state)))
        self.t0 = time.perf_counter() - state.wall_s
        if not state.rows:
            state.rows.append(metrics_row(0, {**sim.evaluate(state.theta), **stats(state.agg_state)}, 0, 0,
                                          False, 0.0))
            log(progress_line(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))

    @property
    def done(self) -> bool:
        return self.state.round >= self.sim.cfg.rounds or self.state.diverged

    def begin_round(self) -> list[int]:
        """Sample the next round's clients."""
        cfg, sim = self.sim.cfg, self.sim
        return sample_clients(cfg.seed, self.state.round + 1, len(sim.data), cfg.participation)

    def work(self, chosen: list[int]) -> list[ClientWork]:
        """The next round's local work of this run: one unit per client in ``chosen``."""
        state = self.state
        return round_work(self.sim, state.theta, state.round + 1, chosen, state.client_states,
                          state.method_state)

    def finish_round(self, chosen: list[int], results: list[WorkResult]) -> None:
        """Keep the clients' next states, aggregate the round's uploads, then evaluate and
        checkpoint where due."""
        sim, cfg, state, label = self.sim, self.sim.cfg, self.state, self.label
        rnd, theta, M, stats = state.round + 1, state.theta, len(sim.data), self.stats
        updates = [r.update for r in results]
        for m, r in zip(chosen, results, strict=True):
            r.update.client = m  # keys server memory across rounds (FIPA's memory: curvature)
            state.client_states[str(m)] = r.state
        finite = finite_uploads(updates)  # NaN/inf uploads end the run diverged, before any eigensolve
        probe = sim.loss_probe(chosen) if sim.aggregator.needs_loss_probe else None
        ctx = RoundContext(rnd, state.method_state, probe)
        theta_new = sim.aggregator.step(theta, updates, state.agg_state, ctx) if finite else theta
        # the client method's server side (SCAFFOLD's c, FedDyn's h) from the round's uploads
        theta_new, state.method_state = sim.method.end_round(theta_new, updates, ctx, M)
        if state.buffers:
            state.buffers = buffers.average([u.buffers for u in updates], [u.num_samples for u in updates])
            buffers.load(sim.model, state.buffers)
        numbers = sum(u.uplink_numbers for u in updates)
        bytes_ = numbers * theta.element_size()
        state.uplink_total += bytes_
        state.round, state.theta = rnd, theta_new
        state.diverged = not finite or not bool(torch.isfinite(theta_new).all())
        if state.diverged or rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            metrics = sim.evaluate(theta_new) if not state.diverged else {}
            state.diverged = state.diverged or not all(math.isfinite(v) for v in metrics.values()) \
                or self.blew_up(metrics)
            metrics.update(stats(state.agg_state))
            state.wall_s = time.perf_counter() - self.t0
            state.rows.append(metrics_row(rnd, metrics, bytes_, state.uplink_total, state.diverged,
                                          state.wall_s))
            self.log(progress_line(label, state.rows[-1], cfg.rounds, sim.task.primary_metric))
        if state.diverged or rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds:
            state.wall_s = time.perf_counter() - self.t0
            save_checkpoint(self.ckpt, state, self.fp)
            write_csv(self.outdir / "metrics.csv", state.rows, self.columns)
        if self.on_round is not None:
            self.on_round(rnd, cfg.rounds)

    def blew_up(self, metrics: dict[str, float]) -> bool:
        """Whether the training loss passed ``divergence_factor`` x the initial one (finite blow-up)."""
        initial = self.state.rows[0].get("train_loss", math.inf)
        return metrics.get("train_loss", 0.0) > self.sim.cfg.divergence_factor * initial

    def close(self) -> dict[str, Any]:
        """Write the final metrics, checkpoint and final.json; returns final.json's content."""
        state, stats = self.state, self.stats
        state.wall_s = time.perf_counter() - self.t0
        write_csv(self.outdir / "metrics.csv", state.rows, self.columns)
        save_checkpoint(self.ckpt, state, self.fp)
        final = final_record(self.sim, state)
        final["aggregator_stats"] = stats(state.agg_state)
        write_json(self.outdir / "final.json", final)
        self.lock.release()
        return final


def finite_uploads(updates: list[ClientUpdate]) -> bool:
    """Whether every delta and curvature upload is finite (a diverging client's is not)."""
    return all(bool(torch.isfinite(x).all()) for u in updates
               for x in (u.delta, u.factor, u.diag) if x is not None)
