rule run_spec:
    output:
        f"{RUN_DIR}/run.yaml",
    log:
        "results/logs/run_spec/{task}/{partition}/{method}/{aggregator}/seed{seed}.log",
    params:
        spec=run_spec,
    localrule: True
    conda:
        CONDA_ENV
    run:
        grid.write_spec(output[0], params.spec)


rule warmup_spec:
    output:
        "results/warmup/{task}/{partition}/seed{seed}/run/run.yaml",
    log:
        "results/logs/warmup_spec/{task}/{partition}/seed{seed}.log",
    params:
        spec=warmup_spec,
    localrule: True
    conda:
        CONDA_ENV
    run:
        grid.write_spec(output[0], params.spec)


rule warmup:
    input:
        spec="results/warmup/{task}/{partition}/seed{seed}/run/run.yaml",
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
        rundir=lambda w, input: os.path.dirname(input.spec),
    conda:
        CONDA_ENV
    shell:
        "fipa train -c {input.spec} -o {params.rundir} --threads {threads} --log {log} -q 2>> {log}"
        " && fipa export-warmup {params.rundir} -o {output} >> {log} 2>&1"


rule train:
    input:
        spec=f"{RUN_DIR}/run.yaml",
        partition=PART_FILE,
        warmup=warmup_input,
    output:
        final=f"{RUN_DIR}/final.json",
        metrics=f"{RUN_DIR}/metrics.csv",
    log:
        "results/logs/train/{task}/{partition}/{method}/{aggregator}/seed{seed}.log",
    benchmark:
        "results/benchmarks/{task}/{partition}/{method}/{aggregator}/seed{seed}.tsv"
    group:
        train_group
    threads: config["threads_per_job"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        **train_resources(),
    params:
        outdir=output_dir,
        total=len(CELLS),
        label=lambda w: f"{w.task}/{w.partition}/{w.method}/{w.aggregator}/seed{w.seed}",
    conda:
        CONDA_ENV
    shell:
        "fipa train -c {input.spec} -o {params.outdir} --threads {threads} --log {log}"
        " --label {params.label} --grid-total {params.total} --grid-root results/runs 2>> {log}"
