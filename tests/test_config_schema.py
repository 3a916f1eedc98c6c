"""Configs against the schema, the Snakefile's config checks, and snakemake --lint.

The snakemake runs here are dry runs or lints in a temporary working
directory: they must work on a fresh clone, before any data exists.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SNAKEFILE = ROOT / "Snakefile"
CONFIGS = ("config.yaml", "tiny.yaml", "coca.yaml")
SNAKEMAKE = Path(sys.executable).parent / "snakemake"  # the venv's, next to this python


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the workflow from another working directory, as a user would."""
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    cfg = load(name)
    validate(cfg, str(SCHEMA))
    split = cfg["split"]
    assert split["train"] + split["val"] + split["test"] == pytest.approx(1.0)


def test_defaults_fill_a_minimal_config():
    """The schema fills in the workflow's own keys; a command's settings are left to its dataclass."""
    cfg = {"data": {"source": "local", "coca_root": "/c", "segthor_root": "/s"}}
    validate(cfg, str(SCHEMA))
    assert cfg["agatston"] == {} and cfg["split"] == {}  # AgatstonParams, SplitParams fill them in
    assert cfg["ingest"]["workers"] >= 1 and cfg["train"]["gpus"] == 1


# Config section -> (dataclass that owns its settings, the fields it reads from the section).
# Every other key of the section is the workflow's own (a job setting or path) and keeps its schema default.
OWNERS = {
    "synthetic": ("cacs.synth.cohort:SynthOptions", {"truth_dir", "workers"}),
    "agatston": ("cacs.agatston.params:AgatstonParams", set()),
    "split": ("cacs.split:SplitParams", set()),
    "localizer": ("cacs.localizer:LocalizerParams", {"gpus", "require_gpu", "min_heart_ml", "max_heart_ml"}),
    "crop": ("cacs.crop:CropParams", {"workers"}),
    "train": ("cacs.train:TrainConfig", {"gpus", "threads", "require_gpu"}),
    "evaluate": ("cacs.evaluate:EvaluateParams", {"report"}),
}


def _owner(path):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("section", sorted(OWNERS))
def test_schema_repeats_no_dataclass_default(section):
    """Defaults live once: in the dataclass. The schema types a setting but gives it no default."""
    import dataclasses

    from cacs.heart_boxes import Plausibility

    schema = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    path, workflow_keys = OWNERS[section]
    owned = {f.name for f in dataclasses.fields(_owner(path))}
    if section == "localizer":
        owned |= {f.name for f in dataclasses.fields(Plausibility)}
        workflow_keys = workflow_keys - owned
    for key, spec in schema.items():
        assert key in owned or key in workflow_keys, f"{section}.{key}: no dataclass field and no workflow key"
        if key in workflow_keys:  # read by the workflow itself (threads, resources, paths)
            assert "default" in spec, f"{section}.{key}: a workflow key needs its default here"
        else:
            assert "default" not in spec, f"{section}.{key}: its default lives in {path}"
    top = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert "default" not in top["strict"] and "default" not in top["data"]["properties"]["paired_ids"]  # IngestOptions


def test_default_config_spells_every_setting():
    """config.yaml is merged under every --configfile and spells every setting that has no schema default,
    so the rules may read such keys directly (the device of predict_heart, predict_model; the report captions)."""
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    cfg = load("config.yaml")
    for section in OWNERS:
        props = schema[section]["properties"]
        assert {k for k, spec in props.items() if "default" not in spec} <= set(cfg[section]), section


def test_coca_config_follows_the_paper():
    cfg = load("coca.yaml")
    assert cfg["data"]["source"] == "local"
    assert cfg["data"]["paired_ids"] is False
    assert cfg["split"]["test"] == pytest.approx(152 / 659, abs=0.005)


def test_tiny_config_is_tiny_and_separate():
    tiny, default = load("tiny.yaml"), load("config.yaml")
    assert tiny["synthetic"]["preset"] == "tiny"
    for key in ("coca_root", "segthor_root"):
        assert tiny["data"][key] != default["data"][key]
    assert tiny["synthetic"]["truth_dir"] != default["synthetic"]["truth_dir"]


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("agatston",), "treshold_hu"),
        (("data",), "coca_rot"),
        (("split",), "tset"),
        ((), "strikt"),
    ],
)
def test_misspelt_key_rejected(path, key):
    cfg = load("config.yaml")
    section = cfg
    for p in path:
        section = section[p]
    section[key] = 1
    with pytest.raises(WorkflowError, match=key):
        validate(cfg, str(SCHEMA))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "source", "remote"),
        ("synthetic", "preset", "huge"),
        ("agatston", "lesion_dim", "4d"),
        ("agatston", "connectivity", 6),
        ("split", "val", 1.5),
        ("split", "train", -0.1),
        ("ingest", "workers", 0),
        ("synthetic", "n_patients", 0),
        ("agatston", "threshold_hu", "high"),
        ("strict", None, "yes"),
    ],
)
def test_bad_value_rejected_naming_the_key(section, key, value):
    cfg = copy.deepcopy(load("config.yaml"))
    if key is None:
        cfg[section] = value
    else:
        cfg[section][key] = value
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(SCHEMA))
    named = f"['{section}']" + (f"['{key}']" if key else "")
    assert named in str(err.value)


def test_lint_is_clean(tmp_path):
    """Every rule has log: and conda: (and nothing else to lint), without any data."""
    result = snakemake(tmp_path, "--lint", "--configfile", str(ROOT / "config" / "tiny.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output


@pytest.mark.parametrize("name", ["config.yaml", "tiny.yaml"])
def test_dry_run_plans_the_pipeline(tmp_path, name):
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / name))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ("synthesize_cohort", "ingest_gated", "ingest_nongated", "ingest_segthor", "collect_cases", "split"):
        assert f"rule {rule}:" in output, rule
    assert "results/split/cases.csv" in output
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_snakefile_rejects_fractions_not_summing_to_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: {train: 0.6, val: 0.2, test: 0.25, seed: 1}\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'split'" in output and "sum to 1" in output, output


def test_snakefile_rejects_misspelt_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("agatston: {treshold_hu: 100}\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "treshold_hu" in output, output


@pytest.mark.parametrize("profile_flag", ["--profile", "--workflow-profile"])
def test_slurm_plan_for_real_data_without_data_or_network(tmp_path, profile_flag):
    """The cluster dry run on coca.yaml (placeholder data paths) prints the whole plan."""
    result = snakemake(tmp_path, "-n", profile_flag, str(ROOT / "profiles" / "slurm"),
                       "--configfile", str(ROOT / "config" / "coca.yaml"))  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for rule in ("verify_layout", "ingest_gated", "train_localizer", "train_model", "predict_model", "figures"):
        assert re.search(rf"^{rule}\s+\d+$", output, re.M), rule


def test_coca_config_keeps_the_papers_recipe_over_the_default():
    """A --configfile is merged key by key into config.yaml: coca.yaml must undo every CPU-run departure."""
    import yaml
    from snakemake.utils import update_config

    root = Path(__file__).resolve().parents[1]
    merged = yaml.safe_load((root / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((root / "config" / "coca.yaml").read_text()))
    train = merged["train"]
    assert (train["optimizer"], train["schedule"], train["patch_size"], train["steps_per_epoch"]) == (
        "sgd", "sgdr", None, None)  # fmt: skip
    assert (train["momentum"], train["lr"], train["lr_restart"], train["epochs"]) == (0.8, 0.002, 0.001, 200)
    assert train["noise_hu"] == train["blur_z_vox"] == train["foreground_fraction"] == 0
    assert merged["models"]["spss"]["channels"] == [16, 32, 64, 128]
    assert all(e.get("loss", {}).get("nongated_background", 0) == 0 for e in merged["experiments"].values())
