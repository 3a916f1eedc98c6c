# cacs: coronary artery calcium scoring on non-gated chest CT (SPSS paper).
# Thin wiring only: every step is a `cacs <subcommand>` (src/cacs/cli.py).
# Stages, one file each, in workflow/rules/: acquire -> ingest -> split -> localize -> train
# -> predict -> paper (evaluate + figures); `snakemake --report results/report.html` collects
# every table and figure with its caption (workflow/report/).
# Every config key: config/README.md.
#
# The default config file and the schema are found next to this Snakefile, so
#   snakemake -s /path/to/Snakefile --directory RUN --configfile /path/to/config/tiny.yaml
# works from anywhere; relative data and result paths resolve against the
# working directory (--directory).

from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


check_config(config)


include: "workflow/rules/acquire.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/localize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        f"{SPLIT}/cases.csv",
        f"{INGEST}/qc.csv",
        f"{INGEST}/segthor.csv",
        f"{CROPS}/index.csv",
        f"{LOCALIZER}/containment.csv",
        f"{LOCALIZER}/dice.csv",
        expand(f"{MODELS}/{{experiment}}/model.pt", experiment=EXPERIMENTS),
        f"{PAPER}/metrics.json",
        expand(f"{PAPER}/{{figure}}.png", figure=FIGURES),


onsuccess:
    write_report(config)
