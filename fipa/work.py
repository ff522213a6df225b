"""Client work: one client's local training and curvature in one round, the unit every path stacks.

A round of one run is its chosen clients' work units; a round of several runs in lockstep (a
batch job's cells) is all their units. ``train_work`` is the one round path: it trains the
units one at a time or all in one vectorized call, then takes the curvature each run asks for.
A unit's result is its upload and the client's next state, which the round loop keeps.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fipa import buffers, stacked_curvature, vectorized
from fipa.aggregators import ClientUpdate
from fipa.curvature import client_curvature
from fipa.curvature_request import CurvatureRequest, CurvatureUpload
from fipa.round_context import ClientState, RoundContext
from fipa.simulation import Simulation, derive_seed
from fipa.tasks.base import Batch, num_samples

TRAIN_SALT, CURVATURE_SALT = 0xC1, 0xCF  # purposes of a work unit's generators (derive_seed)


@dataclass
class ClientWork:
    """One client's local work in one round of one run.

    ``theta`` [P] is the run's broadcast model theta^k; ``state`` the client's own state at
    the start of the round (its method's per-client tensors), ``server`` the run's client-method
    server state (SCAFFOLD's c); local training reads both and changes neither.
    """

    sim: Simulation
    theta: torch.Tensor
    rnd: int
    client: int
    state: ClientState
    server: ClientState

    @property
    def data(self) -> Batch:
        return self.sim.data[self.client]

    @property
    def context(self) -> RoundContext:
        """The round as the client method's hooks see it: its number and the run's server state."""
        return RoundContext(self.rnd, self.server)

    def generator(self, salt: int) -> torch.Generator:
        """A generator seeded by (seed, round, client, purpose): a unit draws the same numbers
        whichever units it trains with."""
        return torch.Generator().manual_seed(derive_seed(self.sim.cfg.seed, self.rnd, self.client, salt))


@dataclass
class WorkResult:
    """One unit's result: its upload, and the client's state for its next round (kept by the client)."""

    update: ClientUpdate
    state: ClientState


def round_work(sim: Simulation, theta: torch.Tensor, rnd: int, chosen: list[int],
               client_states: dict[str, ClientState], server: ClientState) -> list[ClientWork]:
    """Round ``rnd``'s local work of one run: one unit per chosen client, from theta^k [P] and the
    run's client-method server state ``server``."""
    return [ClientWork(sim, theta, rnd, m, client_states.setdefault(str(m), sim.method.init_state(theta)),
                       server) for m in chosen]


def round_updates(sim: Simulation, theta: torch.Tensor, rnd: int, chosen: list[int],
                  client_states: dict[str, ClientState], server: ClientState) -> list[ClientUpdate]:
    """The uploads of round ``rnd``'s clients of one run, on the run's own training path."""
    return [r.update for r in train_work(round_work(sim, theta, rnd, chosen, client_states, server),
                                         sim.vectorized)]


def train_work(work: list[ClientWork], vectorize: bool) -> list[WorkResult]:
    """Local training and curvature of ``work``: one unit at a time, or all in one vectorized call.

    A single client, a round's clients and the units of several runs (``Simulation.stack_key``:
    same task settings, client config and model) are lists of units of different lengths.
    Local training stacks the units' parameters [units, P], each from its own run's theta^k
    (``vectorize``, at least two units), or trains them one by one; curvature is then taken per
    request (rank, method, ...) over the units whose run asks for it, at the broadcast or the
    local model.
    """
    stacked = vectorize and len(work) >= 2
    local = _train_stacked(work) if stacked else [_train_one(w) for w in work]
    updates = [ClientUpdate(lt.theta - w.theta, num_samples(w.data), buffers=lt.buffers,
                            method_upload=lt.upload) for w, lt in zip(work, local, strict=True)]
    for request, idx in _by_request(work):
        at = [work[i].theta if request.curvature_at == "broadcast" else local[i].theta for i in idx]
        for i, curv in zip(idx, _curvature(request, [work[i] for i in idx], at, stacked), strict=True):
            updates[i].factor, updates[i].diag = curv.factor, curv.diag
    return [WorkResult(u, lt.state) for u, lt in zip(updates, local, strict=True)]


@dataclass
class _Local:
    """A unit's local training: theta_m [P], its BatchNorm statistics (or None), the client's next
    state and its upload to the method's server side."""

    theta: torch.Tensor
    buffers: dict[str, torch.Tensor] | None
    state: ClientState
    upload: ClientState


def _train_one(w: ClientWork) -> _Local:
    """One unit's local training, sequentially."""
    sim = w.sim
    local = buffers.local_training(sim.model) if buffers.has_buffers(sim.model) else nullcontext({})
    with local as upload:  # BatchNorm statistics: train mode from the global ones, then back
        result = sim.method.train(sim.client_model, w.theta, w.data, w.generator(TRAIN_SALT), w.state,
                                  w.context)
    return _Local(result.theta, upload.get("client"), result.state, result.upload)


def _train_stacked(work: list[ClientWork]) -> list[_Local]:
    """Every unit's local training in one vectorized call (fipa/vectorized.py)."""
    lead = work[0].sim
    one_run = all(w.theta is work[0].theta for w in work)
    theta0 = work[0].theta if one_run else torch.stack([w.theta for w in work])  # [P] or [units, P]
    # the server state likewise: one run's P-vectors, or each unit's own run's, stacked [units, P]
    server = (work[0].server if one_run
              else {k: torch.stack([w.server[k] for w in work]) for k in work[0].server})
    out = vectorized.local_train(lead.method, lead.client_model, theta0, [w.data for w in work],
                                 [w.generator(TRAIN_SALT) for w in work], [w.state for w in work],
                                 RoundContext(work[0].rnd, server))
    return [_Local(out.theta[i], None, out.states[i], out.uploads[i]) for i in range(len(work))]


def _curvature(request: CurvatureRequest, work: list[ClientWork], at: list[torch.Tensor], stacked: bool
               ) -> list[CurvatureUpload]:
    """Curvature uploads of ``work`` at their points ``at`` ([P] each): stacked over the units in
    one call where their training was, else unit by unit."""
    gens = [w.generator(CURVATURE_SALT) for w in work]
    if not stacked:
        return [client_curvature(request, w.sim.client_model, a, w.data, g)
                for w, a, g in zip(work, at, gens, strict=True)]
    lead = work[0].sim
    shared = all(a is at[0] for a in at)
    points = at[0] if shared else torch.stack(at)  # [P] or [units, P]
    return stacked_curvature.round_curvature(request, lead.client_model, points, [w.data for w in work], gens)


def _by_request(work: list[ClientWork]) -> list[tuple[CurvatureRequest, list[int]]]:
    """The units' curvature requests, each with the indices of the units that ask for it."""
    groups: list[tuple[CurvatureRequest, list[int]]] = []
    for i, w in enumerate(work):
        request = w.sim.aggregator.curvature_request()
        if request is None:
            continue
        for req, idx in groups:
            if req == request:
                idx.append(i)
                break
        else:
            groups.append((request, [i]))
    return groups
