# Stage "acquire": a COCA-layout tree and a SegTHOR-layout tree.
# Synthetic (default): generated here. Local (real data): they already exist
# under data.coca_root / data.segthor_root, so no rule makes them.
# Download rules for real data come in a later issue.

if SYNTHETIC:

    rule synthesize_cohort:
        output:
            coca=directory(COCA_ROOT),
            segthor=directory(SEGTHOR_ROOT),
            truth=directory(TRUTH_DIR),
        params:
            preset=config["synthetic"]["preset"],
            seed=config["synthetic"]["seed"],
            extra=synth_flags(config),
        threads: config["synthetic"]["workers"]
        log:
            f"{LOGS}/synthesize_cohort.log",
        benchmark:
            f"{BENCH}/synthesize_cohort.tsv"
        conda:
            DATA_ENV
        shell:
            "cacs synth --preset {params.preset} --seed {params.seed} {params.extra}"
            " --workers {threads}"
            " --coca-root {output.coca} --segthor-root {output.segthor} --truth-dir {output.truth}"
            " > {log} 2>&1"
