rule partition:
    output:
        PART_FILE,
    log:
        "results/logs/partition/{task}/{partition}/seed{seed}.log",
    params:
        spec=lambda w: spec_text(partition_spec(w)),
    conda:
        CONDA_ENV
    shell:
        "fipa partition --spec {params.spec:q} -o {output} > {log} 2>&1"
