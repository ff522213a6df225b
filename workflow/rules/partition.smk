rule partition:
    # partitions and warm-ups first: every training job waits for them
    priority: 2
    output:
        expand(PART_FILE, seed=config["seeds"], allow_missing=True),
    log:
        "results/logs/partition/{task}/{partition}.log",
    params:
        spec=lambda w: spec_text(partition_spec(w)),
        seeds=" ".join(str(s) for s in config["seeds"]),
        pattern=partition_pattern,
    conda:
        CONDA_ENV
    shell:
        "fipa partition --spec {params.spec:q} --seeds {params.seeds} -o {params.pattern:q} > {log} 2>&1"
