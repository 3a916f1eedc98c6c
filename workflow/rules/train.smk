# Stage "train" (paper sections 3.3-3.5, 4.1): one job per experiment of the
# config (SPSS, its ablations, the ConvNet baseline), each rerunnable alone:
#   snakemake results/models/spss_ce/model.pt
# train.gpus > 1 starts one DDP process per GPU through torchrun (train_launcher in common.smk).

# A batch the GPUs cannot share stops the planning here, before any job waits for its GPUs.
train_launcher(config)


rule train_model:
    input:
        index=f"{CROPS}/index.csv",
        crop_meta=f"{CROPS}/index.json",
    output:
        model=f"{MODELS}/{{experiment}}/model.pt",
        metrics=f"{MODELS}/{{experiment}}/metrics.csv",
    log:
        f"{LOGS}/train_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/train_model/{{experiment}}.tsv"
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    conda:
        TORCH_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=gpu_resource(config["train"]),
    params:
        cfg=lambda w: experiment_json(config, w.experiment),
        out_dir=lambda w, output: os.path.dirname(output.model),
        agatston=section_json(config, "agatston"),
        launcher=train_command,
        require_gpu=require_gpu_flag(config["train"]),
        data_source=config["data"]["source"],
    shell:
        "{params.launcher} train --experiment {wildcards.experiment} --index {input.index} --out-dir {params.out_dir}"
        " --config-json '{params.cfg}' --threads {threads} --agatston-json {params.agatston:q}"
        " {params.require_gpu}"
        " --data-source {params.data_source}"
        " > {log} 2>&1"
