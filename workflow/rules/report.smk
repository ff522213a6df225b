rule collect:
    input:
        all_final_files(),
    output:
        SUMMARY,
    log:
        RESULTS + "/logs/collect.log",
    shell:
        "fipa collect {input} -o {output} > {log} 2>&1"


rule figures:
    input:
        SUMMARY,
    output:
        touch(FIGURES_DONE),
    log:
        RESULTS + "/logs/figures.log",
    params:
        outdir=RESULTS + "/figures",
    shell:
        "fipa figures --summary {input} -o {params.outdir} > {log} 2>&1"
