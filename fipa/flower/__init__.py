"""Flower (flwr) both ways: FIPA as a Flower strategy, Flower's strategies as aggregators here.

The optional extra ``pip install .[flower]`` installs Flower; nothing else in the package needs it.

- ``fipa.flower.strategy``: :class:`FIPAStrategy`, a Flower ``Strategy`` whose server step is the
  registered ``fipa`` aggregator (imports flwr);
- ``fipa.flower.client``: the client side: the curvature factor of a PyTorch model and the
  reply a client sends (imports flwr);
- ``fipa.flower.pipeline``: a run config's clients and evaluation inside a Flower app (the
  example in examples/flower/; imports flwr);
- ``fipa.flower.aggregator``: the aggregator ``flower`` (``aggregator: {name: flower, strategy:
  FedMedian}``), which imports flwr only when it is built;
- ``fipa.flower.records``, ``fipa.flower.state``: flat parameter vectors as Flower records, and a
  strategy's state as a checkpointable dict of tensors.
"""

from __future__ import annotations

INSTALL_HINT = "install Flower with `pip install .[flower]` (or `pip install 'flwr[simulation]==1.42.0'`)"

__all__ = ["INSTALL_HINT"]
