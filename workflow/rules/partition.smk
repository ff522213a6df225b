rule partition:
    # partitions and warm-ups first: every training job waits for them
    priority: 2
    output:
        # every seed of any task: an output list cannot depend on the task wildcard, and a
        # partition file costs milliseconds
        expand(paths.PART_FILE, seed=grid.all_seeds(config), allow_missing=True),
    log:
        paths.PARTITION_LOG,
    params:
        spec=lambda w: spec_text(partition_spec(w)),
        seeds=" ".join(str(s) for s in grid.all_seeds(config)),
        pattern=partition_pattern,
    conda:
        CONDA_ENV
    shell:
        "fipa partition --spec {params.spec:q} --seeds {params.seeds} -o {params.pattern:q} > {log} 2>&1"
