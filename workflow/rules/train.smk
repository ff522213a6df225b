rule run_spec:
    output:
        RUN_DIR + "/run.yaml",
    params:
        spec=run_spec,
    localrule: True
    run:
        grid.write_spec(output[0], params.spec)


rule train:
    input:
        spec=RUN_DIR + "/run.yaml",
        partition=PART_FILE,
    output:
        final=RUN_DIR + "/final.json",
        metrics=RUN_DIR + "/metrics.csv",
    log:
        RESULTS + "/logs/train/{task}/{partition}/{method}/{aggregator}/seed{seed}.log",
    benchmark:
        RESULTS + "/benchmarks/{task}/{partition}/{method}/{aggregator}/seed{seed}.tsv"
    threads: config["threads_per_job"]
    resources:
        **train_resources(),
    params:
        outdir=RUN_DIR,
    shell:
        "fipa train -c {input.spec} -o {params.outdir} --threads {threads} > {log} 2>&1"
