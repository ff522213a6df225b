rule collect:
    input:
        # a function: whether short cells run in bundles depends on the executor, known at DAG time
        lambda w: grid_outputs(),
    output:
        SUMMARY,
    log:
        "results/logs/collect.log",
    params:
        runs=all_run_dirs(),
    conda:
        CONDA_ENV
    shell:
        "fipa collect {params.runs} -o {output} > {log} 2>&1"


rule figures:
    input:
        SUMMARY,
    output:
        report(
            directory(FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "results/logs/figures.log",
    params:
        outdir=first_output,
    conda:
        CONDA_ENV
    shell:
        "fipa figures --summary {input} -o {params.outdir} > {log} 2>&1"


rule report:
    input:
        summary=SUMMARY,
        notebook=NOTEBOOK,
    output:
        notebook="results/report.ipynb",
        html="results/report.html",
    log:
        "results/logs/report.log",
    conda:
        CONDA_ENV
    shell:
        "fipa report --notebook {input.notebook} --results results -o {output.notebook}"
        " --html {output.html} > {log} 2>&1"
