# Grid expansion and path helpers shared by the rules (logic lives in fipa.grid).

import fipa.grid as grid

RESULTS = config["results"]
CELLS = grid.cells(config)
SUMMARY = f"{RESULTS}/summary.csv"
FIGURES_DONE = f"{RESULTS}/figures/.done"
RUN_DIR = RESULTS + "/runs/{task}/{partition}/{method}/{aggregator}/seed{seed}"
PART_FILE = RESULTS + "/partitions/{task}/{partition}/seed{seed}.json"


wildcard_constraints:
    task="[^/]+",
    partition="[^/]+",
    method="[^/]+",
    aggregator="[^/]+",
    seed="[0-9]+",


def cell_of(w):
    return grid.Cell(w.task, w.partition, w.method, w.aggregator, int(w.seed))


def partition_spec(w):
    return grid.partition_spec(config, w.task, w.partition, int(w.seed))


def run_spec(w):
    part = PART_FILE.format(task=w.task, partition=w.partition, seed=w.seed)
    spec = grid.run_spec(config, cell_of(w), part)
    spec.setdefault("device", config["device"])
    return spec


def all_final_files():
    return [f"{RESULTS}/runs/{c.run_id}/final.json" for c in CELLS]


def train_resources():
    return {"gpu": 1} if config["device"].startswith("cuda") else {}
