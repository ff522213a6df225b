rule collect:
    input:
        # a function: whether short cells run in bundles depends on the executor, known at DAG time
        lambda w: grid_outputs(),
    output:
        paths.SUMMARY,
    log:
        paths.COLLECT_LOG,
    params:
        runs=all_run_dirs(),
    conda:
        CONDA_ENV
    shell:
        "fipa collect {params.runs} -o {output} > {log} 2>&1"


rule figures:
    input:
        paths.SUMMARY,
    output:
        report(
            directory(paths.FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        paths.FIGURES_LOG,
    params:
        outdir=first_output,
    conda:
        CONDA_ENV
    shell:
        "fipa figures --summary {input} -o {params.outdir} > {log} 2>&1"


rule report:
    input:
        summary=paths.SUMMARY,
        notebook=NOTEBOOK,
    output:
        notebook=paths.REPORT_NOTEBOOK,
        html=paths.REPORT_HTML,
    log:
        paths.REPORT_LOG,
    conda:
        CONDA_ENV
    shell:
        f"fipa report --notebook {{input.notebook}} --results {paths.RESULTS} -o {{output.notebook}}"
        " --html {output.html} > {log} 2>&1"
