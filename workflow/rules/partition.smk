rule partition_spec:
    output:
        RESULTS + "/partitions/{task}/{partition}/seed{seed}.yaml",
    params:
        spec=partition_spec,
    localrule: True
    run:
        grid.write_spec(output[0], params.spec)


rule partition:
    input:
        RESULTS + "/partitions/{task}/{partition}/seed{seed}.yaml",
    output:
        PART_FILE,
    log:
        RESULTS + "/logs/partition/{task}/{partition}/seed{seed}.log",
    shell:
        "fipa partition -c {input} -o {output} > {log} 2>&1"
