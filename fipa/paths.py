"""Every path template of a results tree, in one place.

The library (cli defaults, grid, report) and the workflow (workflow/rules/*.smk) read their
paths here; nothing else writes a ``results/...`` literal. Paths are relative to the working
directory of the run: the repository root for ``make reproduce``, ``results/ablations`` for
``make ablations`` (``snakemake --directory``), so the same templates serve both trees.

Templates use ``str.format`` fields: ``{task}``, ``{partition}``, ``{method}``,
``{aggregator}``, ``{seed}``, ``{bundle}``, and ``{run_id}`` (``grid.GridCell.run_id``,
``task/partition/method/aggregator/seed<seed>``).
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
# the ablation study's own tree: ``make ablations`` runs the workflow with --directory here
ABLATIONS = f"{RESULTS}/ablations"

RUN_DIR = f"{RUNS}/{{run_id}}"
PART_FILE = f"{RESULTS}/partitions/{{task}}/{{partition}}/seed{{seed}}.json"
BATCH_FILE = f"{RESULTS}/batches/{{task}}/{{partition}}/{{method}}.json"
BUNDLE_FILE = f"{RESULTS}/bundles/{{task}}/{{bundle}}.json"
WARMUP_STATE = f"{RESULTS}/warmup/{{task}}/{{partition}}/seed{{seed}}/state.pt"
WARMUP_RUN = f"{RESULTS}/warmup/{{task}}/{{partition}}/seed{{seed}}/run"
TRAIN_LOG = f"{RESULTS}/logs/train/{{run_id}}.log"
TRAIN_BENCHMARK = f"{RESULTS}/benchmarks/{{run_id}}.tsv"


def run_dir(run_id: str) -> str:
    """The run directory of one grid cell (``GridCell.run_id``)."""
    return RUN_DIR.format(run_id=run_id)


def warmup_state(task: str, partition: str, seed: int) -> str:
    """The warm-up state file shared by every cell of (task, partition, seed)."""
    return WARMUP_STATE.format(task=task, partition=partition, seed=seed)
