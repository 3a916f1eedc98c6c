# Stage "evaluate" (paper section 4.2): statistics, Table 1 and Figures 1, 3-7
# in results/paper/, each marked for `snakemake --report results/report.html`
# with a caption (workflow/report/) that says on which data it was made.
# Regenerating only the paper outputs: snakemake results/paper/metrics.json


rule evaluate:
    input:
        predictions=expand(f"{PREDICTIONS}/{{experiment}}/predictions.csv", experiment=EXPERIMENTS),
    output:
        # Not "Statistics": snakemake's report defines that link target itself (reST names ignore case).
        metrics=report(f"{PAPER}/metrics.json", caption="../report/metrics.rst", category="Metrics"),
        table1=report(
            multiext(f"{PAPER}/table1", ".csv", ".md", ".tex"),
            caption="../report/table1.rst",
            category="Tables",
        ),
        comparison=report(
            multiext(f"{PAPER}/comparison", ".csv", ".md", ".tex"),
            caption="../report/comparison.rst",
            category="Tables",
        ),
        kappa=report(
            multiext(f"{PAPER}/kappa", ".csv", ".md", ".tex"),
            caption="../report/kappa.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    conda:
        PLOT_ENV
    params:
        cacs=cacs_command,
        out_dir=lambda w, output: os.path.dirname(output.metrics),
        cfg=section_json(config, "evaluate", keep=("n_bootstrap", "seed")),  # cacs.evaluate.EvaluateParams
        source=config["data"]["source"],
    shell:
        "{params.cacs} evaluate --predictions {input.predictions} --out-dir {params.out_dir}"
        " --config-json {params.cfg:q} --data-source {params.source}"
        " > {log} 2>&1"


rule figures:
    input:
        predictions=expand(f"{PREDICTIONS}/{{experiment}}/predictions.csv", experiment=EXPERIMENTS),
        metrics=f"{PAPER}/metrics.json",
        curves=expand(f"{MODELS}/{{experiment}}/metrics.csv", experiment=CONVERGENCE_EXPERIMENTS),
    output:
        **{
            name: report(
                multiext(f"{PAPER}/{name}", *FIGURE_EXTENSIONS),
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
        },
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCH}/figures.tsv"
    conda:
        PLOT_ENV
    params:
        cacs=cacs_command,
        out_dir=lambda w, output: os.path.dirname(output[0]),
        curves=figure_curves(config),
        cfg=section_json(config, "evaluate", keep=("n_examples",)),
        source=config["data"]["source"],
    shell:
        "{params.cacs} figures --predictions {input.predictions} --metrics {input.metrics}"
        " --curves {params.curves} --out-dir {params.out_dir}"
        " --config-json {params.cfg:q} --data-source {params.source}"
        " > {log} 2>&1"
