# Checks before any job runs, and the progress plan and ledger of a run (fipa/progress.py).
# Included first: the grid is validated before common.smk expands it.

import os

import fipa.grid as grid
from fipa import paths

# the config's plugins were imported by the Snakefile, before the schema saw their names
grid.check(config)  # every cell validated as `fipa train` would, before any job runs


def start_run():
    """onstart, on the submitting host: the data and SLURM preflights, then the progress plan
    and (on a cluster) the ledger follower. Dry runs (-n) call no onstart: they read no data."""
    data_preflight()
    slurm_preflight()
    print(f"FIPA pipeline: {len(CELLS)} training jobs over {len(config['tasks'])} task(s) "
          f"into {paths.RESULTS}/")
    write_progress_plan()
    follow_progress()


def data_preflight():
    """Stop a run before its first job when a task that has jobs to run lacks its data on disk
    (a vision data set not downloaded yet), naming the command that fetches it."""
    from snakemake.exceptions import WorkflowError

    jobs = workflow.dag.needrun_jobs()
    tasks = sorted({job.wildcards_dict["task"] for job in jobs if "task" in job.wildcards_dict})
    problems = grid.missing_data(config, tasks)
    if problems:
        raise WorkflowError("Data sets missing; nothing was run:\n  " + "\n  ".join(problems))


def plan_job(job):
    """A training job's name in the progress plan (fipa.grid.plan_cells); None: not a training job."""
    w = job.wildcards
    names = {
        "train_batch": lambda: grid.batch_job(w.task, w.partition, w.method),
        "train_bundle": lambda: grid.bundle_job(f"{w.task}/{w.bundle}"),
        "train": lambda: grid_cell(w).run_id,
    }
    return names[job.rule.name]() if job.rule.name in names else None


def write_progress_plan():
    """What the status lines' time-left estimate needs (fipa/progress.py), written at start:
    the cost prior of every cell this invocation trains, and how many jobs run at once
    (cores / threads per job here, --jobs on a cluster). Cells finished earlier count as
    done; cells outside the requested targets are left out."""
    import fipa.progress as progress

    jobs = {plan_job(job) for job in workflow.dag.needrun_jobs()} - {None}
    bundled = {c.run_id: BUNDLES[c.run_id] for c in CELLS if c.run_id in BUNDLES and bundling()}
    cells = [c for c in grid.plan_cells(config, batched, bundled)
             if c[1] in jobs or os.path.isfile(paths.final_file(c[0]))]
    # a ceiling: the estimate uses what the ledger shows running at once (fipa/progress.py)
    slots = workflow.cores // max(1, config["threads_per_job"]) if workflow.local_exec else workflow.nodes
    progress.write_plan(paths.RUNS, cells, max(1, slots))


FOLLOWER = []  # the ledger follower of a cluster run's submitting host, while it runs


def follow_progress():
    """On a cluster's submitting host, print each cell's status line as its end line reaches
    the ledger (fipa.grid_status.Follower): the jobs print theirs into SLURM logs, which this
    terminal never shows. A local run's jobs print to this terminal themselves: no follower."""
    from fipa.grid_status import Follower

    if not workflow.local_exec:
        FOLLOWER.append(Follower(paths.RUNS).start())


def end_progress(status):
    """Stop the follower (printing what it has not yet) and close the ledger's session."""
    import fipa.progress as progress

    for follower in FOLLOWER:
        follower.stop()
    if os.path.isfile(os.path.join(paths.RUNS, progress.PLAN)):
        progress.record_session_end(paths.RUNS, status)


def slurm_partitions():
    """(partitions, default partition or None) of this cluster, from `sinfo`."""
    import subprocess

    from snakemake.exceptions import WorkflowError

    try:
        listing = subprocess.run(
            ["sinfo", "--all", "--noheader", "--format=%P"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        raise WorkflowError(f"--executor slurm needs a working SLURM client here, but `sinfo` failed: {detail}")
    default = next((p.rstrip("*") for p in listing if p.endswith("*")), None)
    return sorted({p.rstrip("*") for p in listing}), default


def wanted_partitions():
    """{partition or None (the default): names of the rules whose jobs go there} of the jobs to run."""
    wanted = {}
    for job in workflow.dag.needrun_jobs():
        if job.is_local or any(job.resources.get(k) for k in ("slurm_cluster", "cluster", "clusters")):
            continue
        wanted.setdefault(job.resources.get("slurm_partition") or None, set()).add(job.rule.name)
    return wanted


def slurm_preflight():
    """Stop a SLURM run before its first sbatch when the jobs' partition cannot work.

    Called from onstart, on the submitting host only. Without it a missing or misspelt
    partition surfaces as one sbatch error per job once the DAG runs. Partitions come
    from `slurm_partition` (profiles/slurm reads $SBATCH_PARTITION); none given means
    the cluster's default partition, which must then exist.
    """
    from snakemake.exceptions import WorkflowError

    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    if getattr(workflow.executor_settings, "partition_config", None) or os.environ.get(
        "SNAKEMAKE_SLURM_PARTITIONS"
    ):
        return  # the executor picks partitions from its own partition file
    known, default = slurm_partitions()
    fix = (
        "Set it with `export SBATCH_PARTITION=<partition>` (read by profiles/slurm) or "
        "`--set-resources <rule>:slurm_partition=<partition>`; partitions of this cluster: "
        f"{', '.join(known) or 'none'} (see `sinfo -s`)."
    )
    wanted = wanted_partitions()
    for partition, rules in sorted(wanted.items(), key=lambda kv: str(kv[0])):
        names = ", ".join(sorted(rules))
        if partition is None and default is None:
            raise WorkflowError(
                f"No SLURM partition given for rule(s) {names} and this cluster has no default partition. {fix}"
            )
        if partition is not None and str(partition) not in known:
            raise WorkflowError(
                f"SLURM partition {str(partition)!r} of rule(s) {names} does not exist on this cluster. {fix}"
            )
    if None in wanted:
        print(f"SLURM: no partition given; jobs go to the cluster's default partition {default!r}.")
