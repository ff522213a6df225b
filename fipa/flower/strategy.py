"""FIPA as a Flower strategy: Flower's FedAvg hooks, the project's FIPA server step.

Clients reply with one ArrayRecord holding their update and curvature as named arrays
(fipa/flower/records.py): ``delta`` = theta_m - theta^k [P], ``factor`` = A_m [r, P] with
H_m ~= A_m^T A_m, ``eigvals`` = sigma_m [r]; a MetricRecord with ``num-examples`` N_m; and a
ConfigRecord ``client`` with ``client-id`` m (the key of FIPA's curvature memory and of the
fixed order in which the server sums the clients; without it, the Flower node id).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fipa.aggregators import AGGREGATORS, ClientUpdate
from fipa.config import parse_params
from fipa.errors import ConfigError
from fipa.flower.records import flat_record, flatten_record, read_upload, record_shapes
from fipa.round_context import RoundContext

CLIENT_RECORD, CLIENT_ID = "client", "client-id"  # the reply's ConfigRecord naming its client
# what a client must compute, sent in every training instruction's ConfigRecord
RANK, CURVATURE_AT = "fipa-rank", "fipa-curvature-at"


class FIPAStrategy(FedAvg):
    """Fisher-Informed Parameterwise Aggregation (docs/method.md, "Update rule") as a Flower strategy.

        theta^{k+1} = theta^k + eta_s (H + lambda I)^-1 (sum_m w_m H_m delta_m + lambda dbar),
        H = sum_m w_m A_m^T A_m,  w_m = N_m / sum_j N_j,  lambda = rho lambda_max(H)

    solved in range(H) from the clients' low-rank factors, never forming P x P. The server
    step is the registered ``fipa`` aggregator of fipa/aggregators/fipa.py built from its own
    Params, so damping, complement and curvature memory are the pipeline's, option for option.

    Parameters
    ----------
    fipa : dict, optional
        The ``fipa`` aggregator's keys as a run config's ``aggregator`` section writes them
        (``rho``, ``rank``, ``complement``, ``damping``, ``memory``, ``server_lr``, ...; see
        config/README.md), validated with the pipeline's bounds. ``damping: trust_region`` is
        refused: its loss probes need a second message exchange per candidate step.
    **fedavg_kwargs
        Flower's FedAvg arguments (sampling, record keys, metric aggregation).
    """

    def __init__(self, fipa: dict[str, Any] | None = None, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        cls = AGGREGATORS.get("fipa")
        params = parse_params(cls.Params, dict(fipa or {}), "fipa")
        if params.damping == "trust_region":
            raise ConfigError("fipa.damping: trust_region is not available in Flower (its loss probe needs "
                              "a second round trip per candidate step); use fixed or adaptive")
        self.aggregator = cls(params)
        self.server_state: dict[str, torch.Tensor] | None = None  # FIPA's state (memory, damping stats)
        self.theta: torch.Tensor | None = None  # theta^k [P] of the round being trained
        self.shapes: dict[str, tuple[int, ...]] = {}  # the global ArrayRecord's layout

    def summary(self) -> None:
        """Log FIPA's settings, then FedAvg's."""
        from logging import INFO

        from flwr.common import log

        log(INFO, "\t├──> FIPA settings: %s", self.aggregator.params)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's instructions, plus the curvature a client must return (rank, where)."""
        self.shapes, self.theta = record_shapes(arrays), flatten_record(arrays)
        request = self.aggregator.curvature_request()
        config[RANK], config[CURVATURE_AT] = request.rank, request.curvature_at
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """theta^{k+1} from the valid replies, summed in client-id order; FedAvg's metrics."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self.theta is None:
            raise ConfigError("FIPAStrategy.aggregate_train before configure_train: theta^k is unknown")
        updates = sorted((self._update(msg) for msg in valid), key=lambda u: u.client)
        if self.server_state is None:
            self.server_state = self.aggregator.init_state(self.theta)
        theta_new = self.aggregator.step(self.theta, updates, self.server_state, RoundContext(server_round))
        metrics = self.train_metrics_aggr_fn([msg.content for msg in valid], self.weighted_by_key)
        return flat_record(theta_new, self.shapes), metrics

    def _update(self, msg: Message) -> ClientUpdate:
        """A reply as the aggregator's ClientUpdate: delta [P], factor [r, P], N_m, client id."""
        content = msg.content
        delta, factor = read_upload(content[self.arrayrecord_key] if self.arrayrecord_key in content
                                    else next(iter(content.array_records.values())))
        if factor is None:
            raise ConfigError(f"node {msg.metadata.src_node_id}: its reply has no 'factor' array; FIPA "
                              "clients upload delta, factor and eigvals (fipa.flower.client.fipa_reply)")
        weight = next(iter(content.metric_records.values()))[self.weighted_by_key]
        ids = content.config_records.get(CLIENT_RECORD)
        client = int(ids[CLIENT_ID]) if ids is not None and CLIENT_ID in ids else msg.metadata.src_node_id
        return ClientUpdate(delta=delta.to(self.theta), num_samples=int(weight),
                            factor=factor.to(self.theta), client=client)
