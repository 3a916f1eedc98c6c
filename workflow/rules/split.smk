# Stage "split": patient-level, stratified, seeded train/val/test split
# (paired scans of one patient never cross splits; see cacs.split).


rule split:
    input:
        cases=f"{INGEST}/cases.csv",
    output:
        cases=f"{SPLIT}/cases.csv",
    log:
        f"{LOGS}/split.log",
    conda:
        DATA_ENV
    params:
        cacs=cacs_command,
        cfg=section_json(config, "split"),
    shell:
        "{params.cacs} split --cases {input.cases} --out {output.cases} --config-json {params.cfg:q} > {log} 2>&1"
