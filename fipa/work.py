"""Client work: one client's local training and curvature in one round, the unit every path stacks.

A round of one run is its chosen clients' work units; a round of several runs in lockstep (a
batch job's cells) is all their units. ``train_work`` is the one round path: it trains the
units one at a time or all in one vectorized call, then takes the curvature each run asks for.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fipa import buffers, vectorized
from fipa.aggregators import ClientUpdate
from fipa.curvature import CurvatureRequest, client_curvature
from fipa.simulation import Simulation, derive_seed
from fipa.tasks.base import Batch, num_samples

TRAIN_SALT, CURVATURE_SALT = 0xC1, 0xCF  # purposes of a work unit's generators (derive_seed)


@dataclass
class ClientWork:
    """One client's local work in one round of one run.

    ``theta`` [P] is the run's broadcast model theta^k; ``state`` the client's own state
    (its method's per-client tensors), updated in place by local training.
    """

    sim: Simulation
    theta: torch.Tensor
    rnd: int
    client: int
    state: dict[str, torch.Tensor]

    @property
    def data(self) -> Batch:
        return self.sim.data[self.client]

    def generator(self, salt: int) -> torch.Generator:
        """A generator seeded by (seed, round, client, purpose): a unit draws the same numbers
        whichever units it trains with."""
        return torch.Generator().manual_seed(derive_seed(self.sim.cfg.seed, self.rnd, self.client, salt))


def round_work(sim: Simulation, theta: torch.Tensor, rnd: int, chosen: list[int],
               client_states: dict[str, dict[str, torch.Tensor]]) -> list[ClientWork]:
    """Round ``rnd``'s local work of one run: one unit per chosen client, from theta^k [P]."""
    return [ClientWork(sim, theta, rnd, m, client_states.setdefault(str(m), sim.method.init_state(theta)))
            for m in chosen]


def round_updates(sim: Simulation, theta: torch.Tensor, rnd: int, chosen: list[int],
                  client_states: dict[str, dict[str, torch.Tensor]]) -> list[ClientUpdate]:
    """The uploads of round ``rnd``'s clients of one run, on the run's own training path."""
    return train_work(round_work(sim, theta, rnd, chosen, client_states), sim.vectorized)


def train_work(work: list[ClientWork], vectorize: bool) -> list[ClientUpdate]:
    """Local training and curvature of ``work``: one unit at a time, or all in one vectorized call.

    A single client, a round's clients and the units of several runs (``Simulation.stack_key``:
    same task settings, client config and model) are lists of units of different lengths.
    Local training stacks the units' parameters [units, P], each from its own run's theta^k
    (``vectorize``, at least two units), or trains them one by one; curvature is then taken per
    request (rank, method, ...) over the units whose run asks for it, at the broadcast or the
    local model.
    """
    stacked = vectorize and len(work) >= 2
    local = _train_stacked(work) if stacked else [_train_one(w) for w in work]  # [units][P]
    updates = [ClientUpdate(theta - w.theta, num_samples(w.data), buffers=up)
               for w, (theta, up) in zip(work, local, strict=True)]
    for request, idx in _by_request(work):
        at = [work[i].theta if request.at == "broadcast" else local[i][0] for i in idx]
        for i, curv in zip(idx, _curvature(request, [work[i] for i in idx], at, stacked), strict=True):
            updates[i].factor = curv.get("factor")
            updates[i].diag = curv.get("diag")
    return updates


def _train_one(w: ClientWork) -> tuple[torch.Tensor, dict | None]:
    """(theta_m [P], the BatchNorm statistics it uploads or None) of one unit, sequentially."""
    sim = w.sim
    local = buffers.local_training(sim.model) if buffers.has_buffers(sim.model) else nullcontext({})
    with local as upload:  # BatchNorm statistics: train mode from the global ones, then back
        result = sim.method.train(sim.task, sim.model, sim.layout, w.theta, w.data, w.generator(TRAIN_SALT),
                                  w.state)
    return result.theta, upload.get("client")


def _train_stacked(work: list[ClientWork]) -> list[tuple[torch.Tensor, None]]:
    """Every unit's theta_m [P] from one vectorized call (fipa/vectorized.py)."""
    lead = work[0].sim
    one_run = all(w.theta is work[0].theta for w in work)
    theta0 = work[0].theta if one_run else torch.stack([w.theta for w in work])  # [P] or [units, P]
    thetas = vectorized.local_train(lead.method, lead.task, lead.model, lead.layout, theta0,
                                    [w.data for w in work], [w.generator(TRAIN_SALT) for w in work],
                                    [w.state for w in work])  # [units, P]
    return [(thetas[i], None) for i in range(len(work))]


def _curvature(request: CurvatureRequest, work: list[ClientWork], at: list[torch.Tensor], stacked: bool
               ) -> list[dict[str, torch.Tensor]]:
    """Curvature uploads of ``work`` at their points ``at`` ([P] each): stacked over the units in
    one call where their training was, else unit by unit."""
    gens = [w.generator(CURVATURE_SALT) for w in work]
    if not stacked:
        return [client_curvature(request, w.sim.task, w.sim.model, w.sim.layout, a, w.data, g)
                for w, a, g in zip(work, at, gens, strict=True)]
    lead = work[0].sim
    shared = all(a is at[0] for a in at)
    points = at[0] if shared else torch.stack(at)  # [P] or [units, P]
    return vectorized.round_curvature(request, lead.task, lead.model, lead.layout, points,
                                      [w.data for w in work], gens)


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
