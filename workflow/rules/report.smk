rule collect:
    input:
        all_final_files(),
    output:
        SUMMARY,
    log:
        "results/logs/collect.log",
    conda:
        CONDA_ENV
    shell:
        "fipa collect {input} -o {output} > {log} 2>&1"


rule figures:
    input:
        SUMMARY,
    output:
        touch(FIGURES_DONE),
    log:
        "results/logs/figures.log",
    params:
        outdir=output_dir,
    conda:
        CONDA_ENV
    shell:
        "fipa figures --summary {input} -o {params.outdir} > {log} 2>&1"
