# Grid expansion and path helpers shared by the rules (logic lives in fipa.grid).

import os

import fipa.grid as grid

CELLS = grid.cells(config)
SUMMARY = "results/summary.csv"
FIGURES = "results/figures"
RUN_DIR = "results/runs/{task}/{partition}/{method}/{aggregator}/seed{seed}"
PART_FILE = "results/partitions/{task}/{partition}/seed{seed}.json"
CONDA_ENV = "../envs/fipa.yaml"
NOTEBOOK = os.path.join(workflow.basedir, "..", "notebooks", "report.ipynb")


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


def part_file(w):
    return PART_FILE.format(task=w.task, partition=w.partition, seed=w.seed)


def has_warmup(task):
    return "warmup" in config["tasks"][task]


def warmup_input(w):
    """The shared warm-up state a refinement starts from (none for from-scratch tasks)."""
    return [grid.warmup_file(w.task, w.partition, int(w.seed))] if has_warmup(w.task) else []


def run_spec(w):
    warm = warmup_input(w)
    spec = grid.run_spec(config, cell_of(w), part_file(w), warm[0] if warm else None)
    spec.setdefault("device", config["device"])
    return spec


def warmup_spec(w):
    spec = grid.warmup_spec(config, w.task, w.partition, int(w.seed), part_file(w))
    spec.setdefault("device", config["device"])
    return spec


def all_final_files():
    return [f"results/runs/{c.run_id}/final.json" for c in CELLS]


def output_dir(wildcards, output):
    """Directory of a rule's first output (Snakemake params function)."""
    return os.path.dirname(output[0])


def first_output(wildcards, output):
    """A rule's first output itself, e.g. a directory() output (Snakemake params function)."""
    return output[0]


def train_resources():
    return {"gpu": 1} if config["device"].startswith("cuda") else {}
