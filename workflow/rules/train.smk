rule warmup:
    priority: 1
    input:
        partition=PART_FILE,
    output:
        "results/warmup/{task}/{partition}/seed{seed}/state.pt",
    log:
        "results/logs/warmup/{task}/{partition}/seed{seed}.log",
    benchmark:
        "results/benchmarks/warmup/{task}/{partition}/seed{seed}.tsv"
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        **train_resources(),
    params:
        spec=lambda w: spec_text(warmup_job_spec(w)),
        rundir="results/warmup/{task}/{partition}/seed{seed}/run",
    conda:
        CONDA_ENV
    shell:
        "fipa train --spec {params.spec:q} -o {params.rundir:q} --supersede --threads {threads} --log {log:q} -q"
        " 2>> {log:q}"
        " && fipa export-warmup {params.rundir:q} -o {output:q} >> {log:q} 2>&1"


rule train:
    input:
        partition=PART_FILE,
        warmup=warmup_input,
    output:
        final=f"{RUN_DIR}/final.json",
        metrics=f"{RUN_DIR}/metrics.csv",
    log:
        "results/logs/train/{task}/{partition}/{method}/{aggregator}/seed{seed}.log",
    benchmark:
        "results/benchmarks/{task}/{partition}/{method}/{aggregator}/seed{seed}.tsv"
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        **train_resources(),
    params:
        spec=lambda w: spec_text(train_spec(w)),
        outdir=output_dir,
        total=len(CELLS),
        label=lambda w: f"{w.task}/{w.partition}/{w.method}/{w.aggregator}/seed{w.seed}",
    conda:
        CONDA_ENV
    shell:
        "fipa train --spec {params.spec:q} -o {params.outdir:q} --supersede --threads {threads} --log {log:q}"
        " --label {params.label:q} --grid-total {params.total} --grid-root results/runs 2>> {log:q}"


rule train_batch:
    input:
        batch_inputs,
    output:
        BATCH_FILE,
    log:
        "results/logs/train/{task}/{partition}/{method}.log",
    benchmark:
        "results/benchmarks/batches/{task}/{partition}/{method}.tsv"
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=batch_runtime,
        **train_resources(),
    params:
        cells=lambda w: spec_text(batch_manifest(w)),
        total=len(CELLS),
        mode="",
    conda:
        CONDA_ENV
    shell:
        "fipa train-batch --cells {params.cells:q} --summary {output:q} --supersede --threads {threads}"
        " --grid-total {params.total} --grid-root results/runs {params.mode} 2>> {log:q}"


# Short cells of batch: false tasks under a cluster executor (bundle_s, fipa.grid.bundles): one
# job trains them one after another, each alone (--one-by-one: the numbers of `fipa train`),
# paying the job's start-up once; each keeps its run directory, log, benchmark and resume point.
use rule train_batch as train_bundle with:
    input:
        bundle_inputs,
    output:
        BUNDLE_FILE,
    log:
        "results/logs/train/{task}/bundles/{bundle}.log",
    benchmark:
        "results/benchmarks/bundles/{task}/{bundle}.tsv"
    resources:
        mem_mb=train_mem_mb,
        runtime=bundle_runtime,
        **train_resources(),
    params:
        cells=lambda w: spec_text(bundle_manifest(w)),
        total=len(CELLS),
        mode="--one-by-one",
