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
        train=config["split"]["train"],
        val=config["split"]["val"],
        test=config["split"]["test"],
        seed=config["split"]["seed"],
    shell:
        "{params.cacs} split --cases {input.cases} --out {output.cases}"
        " --train {params.train} --val {params.val} --test {params.test} --seed {params.seed}"
        " > {log} 2>&1"
