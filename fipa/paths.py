"""Every path template of a results tree, in one place.

The library (cli defaults, grid, report) and the workflow (workflow/rules/*.smk) read their
paths here; nothing else writes a ``results/...`` literal. Paths are relative to the working
directory of the run: the repository root for ``make reproduce``, ``results/ablations`` for
``make ablations`` (``snakemake --directory``), so the same templates serve both trees.

Templates use ``str.format`` fields: ``{task}``, ``{partition}``, ``{method}``,
``{aggregator}``, ``{seed}``, ``{bundle}``, and ``{run_id}`` (:data:`RUN_ID`, the
``grid.GridCell.run_id`` of a cell). The same fields are the workflow's wildcards:
:func:`pattern` spells ``{run_id}`` out into them for a rule's output.
"""

from __future__ import annotations

RESULTS = "results"
RUNS = f"{RESULTS}/runs"
SUMMARY = f"{RESULTS}/summary.csv"
FIGURES = f"{RESULTS}/figures"
REPORT_NOTEBOOK = f"{RESULTS}/report.ipynb"
REPORT_HTML = f"{RESULTS}/report.html"
DATA_CACHE = f"{RESULTS}/data"
PDE_REFERENCE = f"{RESULTS}/reference"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
# the ablation study's own tree: ``make ablations`` runs the workflow with --directory here
ABLATIONS = f"{RESULTS}/ablations"

# one grid cell: task x partition x client method x aggregator x seed
RUN_ID = "{task}/{partition}/{method}/{aggregator}/seed{seed}"
RUN_DIR = f"{RUNS}/{{run_id}}"
RUN_FINAL = f"{RUN_DIR}/final.json"
RUN_METRICS = f"{RUN_DIR}/metrics.csv"
PART_FILE = f"{RESULTS}/partitions/{{task}}/{{partition}}/seed{{seed}}.json"
BATCH_FILE = f"{RESULTS}/batches/{{task}}/{{partition}}/{{method}}.json"
BUNDLE_FILE = f"{RESULTS}/bundles/{{task}}/{{bundle}}.json"
WARMUP_DIR = f"{RESULTS}/warmup/{{task}}/{{partition}}/seed{{seed}}"
WARMUP_STATE = f"{WARMUP_DIR}/state.pt"
WARMUP_RUN = f"{WARMUP_DIR}/run"

# each job's log and Snakemake benchmark record, by rule
TRAIN_LOG = f"{LOGS}/train/{{run_id}}.log"
TRAIN_BENCHMARK = f"{BENCHMARKS}/{{run_id}}.tsv"
BATCH_LOG = f"{LOGS}/train/{{task}}/{{partition}}/{{method}}.log"
BATCH_BENCHMARK = f"{BENCHMARKS}/batches/{{task}}/{{partition}}/{{method}}.tsv"
BUNDLE_LOG = f"{LOGS}/train/{{task}}/bundles/{{bundle}}.log"
BUNDLE_BENCHMARK = f"{BENCHMARKS}/bundles/{{task}}/{{bundle}}.tsv"
WARMUP_LOG = f"{LOGS}/warmup/{{task}}/{{partition}}/seed{{seed}}.log"
WARMUP_BENCHMARK = f"{BENCHMARKS}/warmup/{{task}}/{{partition}}/seed{{seed}}.tsv"
PARTITION_LOG = f"{LOGS}/partition/{{task}}/{{partition}}.log"
COLLECT_LOG = f"{LOGS}/collect.log"
FIGURES_LOG = f"{LOGS}/figures.log"
REPORT_LOG = f"{LOGS}/report.log"


def pattern(template: str) -> str:
    """``template`` with ``{run_id}`` spelled out as :data:`RUN_ID`'s fields (a rule's wildcards)."""
    return template.replace("{run_id}", RUN_ID)


def run_id(task: str, partition: str, method: str, aggregator: str, seed: int) -> str:
    """``task/partition/method/aggregator/seed<seed>``: a cell's name and its place under runs/."""
    return RUN_ID.format(task=task, partition=partition, method=method, aggregator=aggregator, seed=seed)


def run_dir(run_id: str) -> str:
    """The run directory of one grid cell (``GridCell.run_id``)."""
    return RUN_DIR.format(run_id=run_id)


def final_file(run_id: str) -> str:
    """The file that says a cell finished: its run directory's final.json."""
    return RUN_FINAL.format(run_id=run_id)


def warmup_state(task: str, partition: str, seed: int) -> str:
    """The warm-up state file shared by every cell of (task, partition, seed)."""
    return WARMUP_STATE.format(task=task, partition=partition, seed=seed)


def part_file(task: str, partition: str, seed: int) -> str:
    """The partition file of (task, partition, seed), written by ``fipa partition``."""
    return PART_FILE.format(task=task, partition=partition, seed=seed)
