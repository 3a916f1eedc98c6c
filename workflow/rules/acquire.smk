# Stage "acquire": a COCA-layout tree and a SegTHOR-layout tree, then a check
# of both (verify_layout) that every ingest rule waits for.
#   data.source synthetic: rule synthesize_cohort generates both trees.
#   data.source download:  download_coca (azcopy) and, when download.segthor_archive
#                          is set, download_segthor create them; else the SegTHOR
#                          tree is expected on disk.
#   data.source local:     both trees already exist; no rule makes them.
# The data trees are never rule outputs in download/local mode: snakemake deletes
# a job's outputs before rerunning it, which must never happen to real data, and
# an interrupted download must stay on disk to be resumed. The download rules
# output stamps under results/acquire/ instead (records without secrets).

DOWNLOAD = config["data"]["source"] == "download"
ACQUIRE = "results/acquire"
LAYOUT_REPORT = f"{ACQUIRE}/layout.json"
COCA_STAMP = f"{ACQUIRE}/download_coca.json"
SEGTHOR_STAMP = f"{ACQUIRE}/download_segthor.json"
_dl = config["download"]
SEGTHOR_ARCHIVES = (
    [_dl["segthor_archive"]] if isinstance(_dl["segthor_archive"], str) else _dl["segthor_archive"]
) or []
SEGTHOR_SHA256 = ([_dl["segthor_sha256"]] if isinstance(_dl["segthor_sha256"], str) else _dl["segthor_sha256"]) or []
DOWNLOAD_SEGTHOR = DOWNLOAD and bool(SEGTHOR_ARCHIVES)
# verify_layout's inputs: whatever rule makes the trees; in local mode nothing
# (the roots are params and the check itself reports a missing root by name).
VERIFY_INPUTS = (
    {"coca": COCA_ROOT, "segthor": SEGTHOR_ROOT}
    if SYNTHETIC
    else ({"coca": COCA_STAMP} | ({"segthor": SEGTHOR_STAMP} if DOWNLOAD_SEGTHOR else {})) if DOWNLOAD else {}
)
VERIFY_FLAGS = " ".join(
    [f"--expect-{k.replace('_', '-')} {int(v)}" for k, v in _dl["expect"].items() if v is not None]
    + (["--warn-only"] if _dl["verify"] == "warn" else [])
)

if SYNTHETIC:

    rule synthesize_cohort:
        output:
            coca=directory(COCA_ROOT),
            segthor=directory(SEGTHOR_ROOT),
            truth=directory(TRUTH_DIR),
        log:
            f"{LOGS}/synthesize_cohort.log",
        benchmark:
            f"{BENCH}/synthesize_cohort.tsv"
        conda:
            DATA_ENV
        threads: config["synthetic"]["workers"]
        params:
            cacs=cacs_command,
            # truth_dir is an output, workers the rule's threads: the rest is cacs.synth.cohort.SynthOptions.
            cfg=section_json(config, "synthetic", drop=("truth_dir", "workers")),
        shell:
            "{params.cacs} synth --config-json {params.cfg:q} --workers {threads}"
            " --coca-root {output.coca} --segthor-root {output.segthor} --truth-dir {output.truth}"
            " > {log} 2>&1"


if DOWNLOAD:

    # The shared-access URL stays in the environment variable named by
    # download.coca_sas_env: only the variable's NAME is on this command line.
    rule download_coca:
        output:
            stamp=COCA_STAMP,
        log:
            f"{LOGS}/download_coca.log",
        # Network and the user's credentials: run where snakemake runs, never on a cluster node.
        localrule: True
        conda:
            DATA_ENV
        params:
            cacs=cacs_command,
            dest=COCA_ROOT,
            sas_env=_dl["coca_sas_env"],
            azcopy=_dl["azcopy"],
        shell:
            "{params.cacs} download-coca --dest {params.dest:q} --sas-env {params.sas_env}"
            " --azcopy {params.azcopy:q} --stamp {output.stamp} > {log} 2>&1"


if DOWNLOAD_SEGTHOR:

    rule download_segthor:
        output:
            stamp=SEGTHOR_STAMP,
        log:
            f"{LOGS}/download_segthor.log",
        localrule: True
        conda:
            DATA_ENV
        params:
            cacs=cacs_command,
            dest=SEGTHOR_ROOT,
            archives=SEGTHOR_ARCHIVES,
            sha256=f"--sha256 {' '.join(SEGTHOR_SHA256)}" if SEGTHOR_SHA256 else "",
        shell:
            "{params.cacs} download-segthor --dest {params.dest:q} --archive {params.archives:q} {params.sha256}"
            " --stamp {output.stamp} > {log} 2>&1"


# A checkpoint: the ingest rules ask for the data roots only once it has run,
# so the DAG can be built (and a dry run printed) before the data exist.
checkpoint verify_layout:
    input:
        **VERIFY_INPUTS,
    output:
        report=LAYOUT_REPORT,
    log:
        f"{LOGS}/verify_layout.log",
    conda:
        DATA_ENV
    params:
        cacs=cacs_command,
        # The generated trees when synthetic (they are the inputs), else the configured roots.
        coca=lambda wc, input: input.coca if SYNTHETIC else COCA_ROOT,
        segthor=lambda wc, input: input.segthor if SYNTHETIC else SEGTHOR_ROOT,
        flags=VERIFY_FLAGS,
    shell:
        "{params.cacs} verify-layout --coca-root {params.coca:q} --segthor-root {params.segthor:q}"
        " --report {output.report} {params.flags} > {log} 2>&1"
