"""The ClientApp: node `partition-id` m is client m of the run config; it trains locally and
replies with its model (Flower's strategies) or delta, factor and eigenvalues (FIPAStrategy)."""

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fipa.flower.pipeline import client_reply, job_path

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    return client_reply(msg, job_path(context, Path(__file__).parent), partition)
