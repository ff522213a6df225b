# The rules' helpers: a job's cells, run configs and files, from fipa.grid and fipa.paths.

import json
import os

import fipa.grid as grid
from fipa import paths
from fipa.tasks import TASKS, Task

CELLS = grid.cells(config)  # grid.check (rules/preflight.smk) validated every one
CONDA_ENV = "../envs/fipa.yaml"
# relative to the working directory: an absolute path in a rule input would make a moved or
# re-cloned checkout rerun the report (the repository root, or results/ablations for --directory)
NOTEBOOK = os.path.relpath(os.path.join(workflow.basedir, "..", "notebooks", "report.ipynb"))


wildcard_constraints:
    task="[^/]+",
    partition="[^/]+",
    method="[^/]+",
    aggregator="[^/]+",
    seed="[0-9]+",
    bundle="b[0-9]+",


def grid_cell(w):
    """The grid cell of a job's wildcards (their names are GridCell's fields)."""
    return grid.GridCell(w.task, w.partition, w.method, w.aggregator, int(w.seed))


def cell_label(w):
    """A cell job's label in progress lines and the ledger: its run id."""
    return grid_cell(w).run_id


def with_plugins(spec):
    """A job's run config with the workflow's plugins, which register what it names (none: as is)."""
    if config["plugins"]:
        spec["plugins"] = list(config["plugins"])
    return spec


def partition_spec(w):
    """Task and partition of a partition job; `fipa partition --seeds` sets each seed."""
    return with_plugins(grid.partition_spec(config, w.task, w.partition, grid.task_seeds(config, w.task)[0]))


def partition_pattern(w):
    """The partition job's output files, with `fipa partition`'s {seed} placeholder."""
    return paths.PART_FILE.replace("{task}", w.task).replace("{partition}", w.partition)


def part_file(w):
    return paths.part_file(w.task, w.partition, w.seed)


def has_warmup(task):
    return "warmup" in config["tasks"][task]


def warmup_input(w):
    """The shared warm-up state a refinement starts from (none for from-scratch tasks)."""
    return [grid.warmup_file(w.task, w.partition, int(w.seed))] if has_warmup(w.task) else []


def cell_spec(cell):
    """The run config of one grid cell (a grid.GridCell; its fields double as wildcards)."""
    warm = warmup_input(cell)
    spec = grid.run_spec(config, cell, part_file(cell), warm[0] if warm else None)
    spec.setdefault("device", config["device"])
    return with_plugins(spec)


def train_spec(w):
    return cell_spec(grid_cell(w))


def warmup_job_spec(w):
    spec = grid.warmup_spec(config, w.task, w.partition, int(w.seed), part_file(w))
    spec.setdefault("device", config["device"])
    return with_plugins(spec)


def spec_text(spec):
    """A job's run config as one JSON line: passed to `fipa --spec` and tracked by Snakemake's
    params trigger, so a changed config entry reruns exactly the jobs it touches."""
    return json.dumps(spec, sort_keys=True)


def batched(task):
    return config["tasks"][task]["batch"]


# run id -> "<task>/b<k>" of the short cells of batch: false tasks (fipa.grid.bundles); defined
# in every Snakemake process (a cluster job's own resolves its train_bundle job's members) and
# used for the DAG only on a cluster's submitting host, where each job pays its own start-up
BUNDLES = grid.bundles(config, batched, config["bundle_s"])


def bundling():
    """Whether short batch: false cells run in bundles: a cluster executor, not local jobs."""
    return bool(BUNDLES) and not workflow.local_exec


def cell_output(c):
    """The file that says cell c finished: its batch's or bundle's record, else its final.json."""
    if batched(c.task):
        return paths.BATCH_FILE.format(task=c.task, partition=c.partition, method=c.method)
    if bundling() and c.run_id in BUNDLES:
        task, bundle = BUNDLES[c.run_id].split("/")
        return paths.BUNDLE_FILE.format(task=task, bundle=bundle)
    return paths.final_file(c.run_id)


def grid_outputs():
    """What collect waits for: the record of each batch or bundle job, the final.json of each other cell."""
    return list(dict.fromkeys(cell_output(c) for c in CELLS))


def all_run_dirs():
    return [paths.run_dir(c.run_id) for c in CELLS]


def batch_members(w):
    """The cells of one batch job: every aggregator and seed of the task for this partition and method."""
    return [c for c in CELLS if (c.task, c.partition, c.method) == (w.task, w.partition, w.method)]


def batch_inputs(w):
    """The partition file and warm-up state (if any) of every seed of a batch."""
    seeds = sorted({c.seed for c in batch_members(w)})
    cells = [grid.GridCell(w.task, w.partition, w.method, "", s) for s in seeds]
    return [part_file(c) for c in cells] + [f for c in cells for f in warmup_input(c)]


def batch_manifest(w, members=batch_members):
    """The batch's cells for `fipa train-batch --cells`, each with the run config, run directory,
    log and benchmark record that a `train` job of that cell would have."""
    return [
        {
            "spec": cell_spec(c),
            "output": paths.run_dir(c.run_id),
            "log": paths.TRAIN_LOG.format(run_id=c.run_id),
            "benchmark": paths.TRAIN_BENCHMARK.format(run_id=c.run_id),
            "label": c.run_id,
        }
        for c in members(w)
    ]


def bundle_members(w):
    """The cells of one bundle job (fipa.grid.bundles), in grid order."""
    return [c for c in CELLS if BUNDLES.get(c.run_id) == f"{w.task}/{w.bundle}"]


def bundle_inputs(w):
    """The partition files and warm-up states of a bundle's cells."""
    cells = bundle_members(w)
    return list(dict.fromkeys([part_file(c) for c in cells] + [f for c in cells for f in warmup_input(c)]))


def bundle_manifest(w):
    return batch_manifest(w, bundle_members)


def output_dir(wildcards, output):
    """Directory of a rule's first output (Snakemake params function)."""
    return os.path.dirname(output[0])


def first_output(wildcards, output):
    """A rule's first output itself, e.g. a directory() output (Snakemake params function)."""
    return output[0]


def workflow_has_gpus():
    """Whether this run has GPUs to give (device: auto's rule): `--resources gpu=N` with N >= 1,
    which profiles/local sets to the machine's GPU count and profiles/slurm to $FIPA_SLURM_GPUS.

    A cluster job's own Snakemake gets no --resources; there the question is whether the job
    was submitted with GPUs, which its SLURM environment says."""
    if not workflow.is_main_process:
        return any(os.environ.get(v) for v in ("SLURM_GPUS", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"))
    given = workflow.global_resources.get("gpu").value
    return isinstance(given, int) and given >= 1


def train_resources():
    """gpu=1 per training job for device cuda/cuda:N, and for auto when the run has GPUs to give."""
    device = config["device"]
    wants_gpu = device.startswith("cuda") or (device == "auto" and workflow_has_gpus())
    return {"gpu": 1} if wants_gpu else {}


def family_resources(task):
    """Cluster sizing of one training (or warm-up) job of a named task: its family's declared
    `Task.resources` (fipa/tasks/base.py; a plugin task without its own gets the base's), memory in
    MB and wall time in minutes, both multiplied by the attempt number under --retries. Override
    per run with e.g. --set-resources train_batch:mem_mb=8000 train_batch:runtime=240 (train for
    the per-cell jobs of batch: false tasks). grid.check has imported each family's module already."""
    family = TASKS.get(config["tasks"][task]["task"]["name"], key=f"tasks.{task}.task.name")
    return {**Task.resources, **family.resources}


def train_mem_mb(wildcards, attempt):
    return family_resources(wildcards.task)["mem_mb"] * attempt


def train_runtime(wildcards, attempt):
    return family_resources(wildcards.task)["runtime"] * attempt


def batch_runtime(wildcards, attempt):
    """A batch runs its cells one after another: the sum of their wall times."""
    return train_runtime(wildcards, attempt) * len(batch_members(wildcards))


def bundle_runtime(wildcards, attempt):
    """A bundle runs its cells one after another: the sum of their wall times."""
    return train_runtime(wildcards, attempt) * len(bundle_members(wildcards))
