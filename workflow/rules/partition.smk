rule partition_spec:
    output:
        "results/partitions/{task}/{partition}/seed{seed}.yaml",
    log:
        "results/logs/partition_spec/{task}/{partition}/seed{seed}.log",
    params:
        spec=partition_spec,
    localrule: True
    conda:
        CONDA_ENV
    run:
        grid.write_spec(output[0], params.spec)


rule partition:
    input:
        "results/partitions/{task}/{partition}/seed{seed}.yaml",
    output:
        PART_FILE,
    log:
        "results/logs/partition/{task}/{partition}/seed{seed}.log",
    conda:
        CONDA_ENV
    shell:
        "fipa partition -c {input} -o {output} > {log} 2>&1"
