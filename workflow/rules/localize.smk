# Stage "localize" (paper section 3.2): a 3D UNet heart localizer trained on
# SegTHOR, a heart box per COCA scan, and the crops (box + 16 mm axial) on the
# model grid that training reads.  One GPU at most: localizer.gpus > 1 is not used.


rule train_localizer:
    input:
        segthor=f"{INGEST}/segthor.csv",
    output:
        model=f"{LOCALIZER}/model.pt",
        metrics=f"{LOCALIZER}/metrics.csv",
        dice=f"{LOCALIZER}/dice.csv",
    log:
        f"{LOGS}/train_localizer.log",
    benchmark:
        f"{BENCH}/train_localizer.tsv"
    conda:
        TORCH_ENV
    resources:
        gpu=gpu_resource(config["localizer"]),
    params:
        cacs=cacs_command,
        # cacs.localizer.LocalizerParams; gpus and require_gpu are job settings, the heart volumes predict_heart's.
        cfg=section_json(config, "localizer", drop=("gpus", "require_gpu", "min_heart_ml", "max_heart_ml")),
        require_gpu=require_gpu_flag(config["localizer"]),
        data_source=config["data"]["source"],
        out_dir=lambda w, output: os.path.dirname(output.model),
    shell:
        "{params.cacs} train-localizer --segthor-table {input.segthor} --out-dir {params.out_dir}"
        " --config-json {params.cfg:q} {params.require_gpu} --data-source {params.data_source}"
        " > {log} 2>&1"


rule predict_heart:
    input:
        cases=f"{SPLIT}/cases.csv",
        model=f"{LOCALIZER}/model.pt",
    output:
        table=f"{LOCALIZER}/boxes.csv",
        meta=f"{LOCALIZER}/boxes.json",
        boxes=directory(f"{LOCALIZER}/boxes"),
    log:
        f"{LOGS}/predict_heart.log",
    benchmark:
        f"{BENCH}/predict_heart.tsv"
    conda:
        TORCH_ENV
    resources:
        gpu=gpu_resource(config["localizer"]),
    params:
        cacs=cacs_command,
        cfg=section_json(config, "localizer", keep=("min_heart_ml", "max_heart_ml")),  # cacs.heart_boxes.Plausibility
        device=config["localizer"]["device"],
        require_gpu=require_gpu_flag(config["localizer"]),
    shell:
        "{params.cacs} predict-heart --cases {input.cases} --model {input.model}"
        " --out-dir {output.boxes} --table {output.table}"
        " --config-json {params.cfg:q} --device {params.device} {params.require_gpu}"
        " > {log} 2>&1"


rule crop:
    input:
        cases=f"{SPLIT}/cases.csv",
        boxes=f"{LOCALIZER}/boxes.csv",
        boxes_meta=f"{LOCALIZER}/boxes.json",
    output:
        index=f"{CROPS}/index.csv",
        meta=f"{CROPS}/index.json",
        qc=f"{CROPS}/qc.csv",
        containment=f"{LOCALIZER}/containment.csv",
        volumes=directory(f"{CROPS}/volumes"),
    log:
        f"{LOGS}/crop.log",
    benchmark:
        f"{BENCH}/crop.tsv"
    conda:
        TORCH_ENV
    threads: config["crop"]["workers"]
    params:
        cacs=cacs_command,
        cfg=section_json(config, "crop", drop=("workers",)),  # cacs.crop.CropParams; workers: the rule's threads
        agatston=section_json(config, "agatston"),
    shell:
        "{params.cacs} crop --cases {input.cases} --boxes {input.boxes} --out-dir {output.volumes}"
        " --index {output.index} --qc {output.qc} --containment {output.containment}"
        " --workers {threads} --config-json {params.cfg:q} --agatston-json {params.agatston:q}"
        " > {log} 2>&1"
