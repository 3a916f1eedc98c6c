# Stage "ingest": raw DICOM / plist / score sheet / NIfTI -> NIfTI volumes,
# one table per cohort and one QC table per cohort; then cases.csv + qc.csv.


rule ingest_gated:
    input:
        # Requested once checkpoint verify_layout has passed (real data may not exist when the DAG is built).
        root=lambda wc: checkpoints.verify_layout.get() and COCA_ROOT,
        layout=ancient(LAYOUT_REPORT),
    output:
        table=f"{INGEST}/gated.csv",
        qc=f"{INGEST}/qc_gated.csv",
        volumes=directory(f"{INGEST}/gated"),
    log:
        f"{LOGS}/ingest_gated.log",
    benchmark:
        f"{BENCH}/ingest_gated.tsv"
    conda:
        DATA_ENV
    threads: config["ingest"]["workers"]
    params:
        cacs=cacs_command,
        cfg=ingest_json(config, "gated"),
        agatston=section_json(config, "agatston"),
    shell:
        "{params.cacs} ingest gated --root {input.root} --out-dir {output.volumes}"
        " --table {output.table} --qc {output.qc} --workers {threads}"
        " --config-json {params.cfg:q} --agatston-json {params.agatston:q}"
        " > {log} 2>&1"


rule ingest_nongated:
    input:
        # Requested once checkpoint verify_layout has passed (real data may not exist when the DAG is built).
        root=lambda wc: checkpoints.verify_layout.get() and COCA_ROOT,
        layout=ancient(LAYOUT_REPORT),
    output:
        table=f"{INGEST}/nongated.csv",
        qc=f"{INGEST}/qc_nongated.csv",
        volumes=directory(f"{INGEST}/nongated"),
    log:
        f"{LOGS}/ingest_nongated.log",
    benchmark:
        f"{BENCH}/ingest_nongated.tsv"
    conda:
        DATA_ENV
    threads: config["ingest"]["workers"]
    params:
        cacs=cacs_command,
        cfg=ingest_json(config, "nongated"),
    shell:
        "{params.cacs} ingest nongated --root {input.root} --out-dir {output.volumes}"
        " --table {output.table} --qc {output.qc} --workers {threads}"
        " --config-json {params.cfg:q}"
        " > {log} 2>&1"


rule ingest_segthor:
    input:
        # Requested once checkpoint verify_layout has passed (real data may not exist when the DAG is built).
        root=lambda wc: checkpoints.verify_layout.get() and SEGTHOR_ROOT,
        layout=ancient(LAYOUT_REPORT),
    output:
        table=f"{INGEST}/segthor.csv",
        qc=f"{INGEST}/qc_segthor.csv",
        volumes=directory(f"{INGEST}/segthor"),
    log:
        f"{LOGS}/ingest_segthor.log",
    benchmark:
        f"{BENCH}/ingest_segthor.tsv"
    conda:
        DATA_ENV
    threads: config["ingest"]["workers"]
    params:
        cacs=cacs_command,
        cfg=ingest_json(config, "segthor"),
    shell:
        "{params.cacs} ingest segthor --root {input.root} --out-dir {output.volumes}"
        " --table {output.table} --qc {output.qc} --workers {threads}"
        " --config-json {params.cfg:q}"
        " > {log} 2>&1"


rule collect_cases:
    input:
        gated=f"{INGEST}/gated.csv",
        nongated=f"{INGEST}/nongated.csv",
        qc_gated=f"{INGEST}/qc_gated.csv",
        qc_nongated=f"{INGEST}/qc_nongated.csv",
        qc_segthor=f"{INGEST}/qc_segthor.csv",
    output:
        cases=f"{INGEST}/cases.csv",
        qc=f"{INGEST}/qc.csv",
    log:
        f"{LOGS}/collect_cases.log",
    conda:
        DATA_ENV
    params:
        cacs=cacs_command,
    shell:
        "{params.cacs} collect --tables {input.gated} {input.nongated}"
        " --qc {input.qc_gated} {input.qc_nongated} {input.qc_segthor}"
        " --cases {output.cases} --qc-out {output.qc}"
        " > {log} 2>&1"
