"""The ServerApp: the run config's strategy (FIPAStrategy for `aggregator: fipa`) for its rounds,
the global model evaluated on the server after every round as `fipa train` evaluates it."""

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fipa.flower.pipeline import job_path, serve

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, job_path(context, Path(__file__).parent), str(context.run_config.get("out", "")))
