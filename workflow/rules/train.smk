rule warmup:
    priority: 1
    input:
        partition=paths.PART_FILE,
    output:
        paths.WARMUP_STATE,
    log:
        paths.WARMUP_LOG,
    benchmark:
        paths.WARMUP_BENCHMARK
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        **train_resources(),
    params:
        spec=lambda w: spec_text(warmup_job_spec(w)),
        rundir=paths.WARMUP_RUN,
    conda:
        CONDA_ENV
    shell:
        "fipa train --spec {params.spec:q} -o {params.rundir:q} --supersede --threads {threads} --log {log:q} -q"
        " 2>> {log:q}"
        " && fipa export-warmup {params.rundir:q} -o {output:q} >> {log:q} 2>&1"


rule train:
    input:
        partition=paths.PART_FILE,
        warmup=warmup_input,
    output:
        final=paths.pattern(paths.RUN_FINAL),
        metrics=paths.pattern(paths.RUN_METRICS),
    log:
        paths.pattern(paths.TRAIN_LOG),
    benchmark:
        paths.pattern(paths.TRAIN_BENCHMARK)
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        **train_resources(),
    params:
        spec=lambda w: spec_text(train_spec(w)),
        outdir=output_dir,
        total=len(CELLS),
        label=cell_label,
    conda:
        CONDA_ENV
    shell:
        "fipa train --spec {params.spec:q} -o {params.outdir:q} --supersede --threads {threads} --log {log:q}"
        f" --label {{params.label:q}} --grid-total {{params.total}} --grid-root {paths.RUNS} 2>> {{log:q}}"


rule train_batch:
    input:
        batch_inputs,
    output:
        paths.BATCH_FILE,
    log:
        paths.BATCH_LOG,
    benchmark:
        paths.BATCH_BENCHMARK
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
        f" --grid-total {{params.total}} --grid-root {paths.RUNS} {{params.mode}} 2>> {{log:q}}"


# Short cells of batch: false tasks under a cluster executor (bundle_s, fipa.grid.bundles): one
# job trains them one after another, each alone (--one-by-one: the numbers of `fipa train`),
# paying the job's start-up once; each keeps its run directory, log, benchmark and resume point.
use rule train_batch as train_bundle with:
    input:
        bundle_inputs,
    output:
        paths.BUNDLE_FILE,
    log:
        paths.BUNDLE_LOG,
    benchmark:
        paths.BUNDLE_BENCHMARK
    resources:
        mem_mb=train_mem_mb,
        runtime=bundle_runtime,
        **train_resources(),
    params:
        cells=lambda w: spec_text(bundle_manifest(w)),
        total=len(CELLS),
        mode="--one-by-one",
