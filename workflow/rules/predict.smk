# Stage "predict" (paper section 4.2): every test scan through one trained
# experiment; the network's maps go back onto each scan's native grid, where
# the label maps are written and clinical Agatston per artery is scored on the
# native HU (the ConvNet regresses its scores directly). Reads the native scans
# named in the crop index (source_image, source_labels). One job per experiment:
#   snakemake results/predictions/spss_ce/predictions.csv


rule predict_model:
    input:
        model=f"{MODELS}/{{experiment}}/model.pt",
        index=f"{CROPS}/index.csv",
    output:
        table=f"{PREDICTIONS}/{{experiment}}/predictions.csv",
        labels=directory(f"{PREDICTIONS}/{{experiment}}/labels"),
    log:
        f"{LOGS}/predict_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/predict_model/{{experiment}}.tsv"
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    conda:
        TORCH_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=gpu_resource(config["train"], cap=1),
    params:
        cacs=cacs_command,
        device=config["train"]["device"],
        require_gpu=require_gpu_flag(config["train"]),
        agatston=section_json(config, "agatston"),
    shell:
        "{params.cacs} predict --model {input.model} --index {input.index}"
        " --labels-dir {output.labels} --table {output.table}"
        " --device {params.device} {params.require_gpu} --threads {threads}"
        " --agatston-json {params.agatston:q}"
        " > {log} 2>&1"
