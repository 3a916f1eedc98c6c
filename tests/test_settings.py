"""One home per setting (cacs.settings): dataclass defaults < config section JSON < explicit options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Literal

import pytest

from cacs.cli import build_parser, main
from cacs.settings import LazyParser, add_dataclass_options, settings_from

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Demo:
    margin_mm: float = 16.0
    size: tuple[int, int, int] = (128, 128, 48)
    widths: tuple[int, ...] = (8, 16)
    mode: Literal["grow", "flag"] = "grow"
    augment: bool = True
    count: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # no option can carry it


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--config-json")
    add_dataclass_options(p, Demo)
    return p.parse_args(argv)


def test_precedence_default_json_option():
    assert settings_from(parse(), Demo) == Demo()
    section = json.dumps({"margin_mm": 10, "size": [1, 2, 3], "augment": False})
    from_json = settings_from(parse(), Demo, section)
    assert (from_json.margin_mm, from_json.size, from_json.augment, from_json.mode) == (10, (1, 2, 3), False, "grow")
    assert isinstance(settings_from(parse(), Demo, '{"margin_mm": 10}').margin_mm, float)  # as the option parses it
    both = settings_from(parse("--margin-mm", "5", "--augment", "--widths", "4", "8", "16"), Demo, section)
    assert (both.margin_mm, both.size, both.augment, both.widths) == (5.0, (1, 2, 3), True, (4, 8, 16))


def test_booleans_both_ways():
    assert parse("--no-augment").augment is False
    assert parse("--augment").augment is True
    assert parse().augment is None  # not given: the JSON or the default decides
    assert settings_from(parse("--augment"), Demo, '{"augment": false}').augment is True


def test_unknown_key_refused_naming_it():
    with pytest.raises(ValueError, match=r"--config-json: unknown key\(s\) 'margin_xy'"):
        settings_from(parse(), Demo, '{"margin_xy": 3}')
    with pytest.raises(ValueError, match="--config-json: unknown key.*'extra'"):  # not a setting
        settings_from(parse(), Demo, '{"extra": {}}')
    with pytest.raises(ValueError, match="not valid JSON"):
        settings_from(parse(), Demo, "{margin_mm: 3}")
    with pytest.raises(ValueError, match="JSON object"):
        settings_from(parse(), Demo, "[1]")


def test_types_nargs_and_choices():
    p = argparse.ArgumentParser()
    add_dataclass_options(p, Demo)
    with pytest.raises(SystemExit):
        p.parse_args(["--size", "1", "2"])
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "other"])
    text = p.format_help()
    assert "--extra" not in text
    for option, default in (("--margin-mm", "16.0"), ("--size", "128 128 48"), ("--widths", "8 16"),
                            ("--mode", "grow"), ("--augment", "on"), ("--count", "none")):  # fmt: skip
        assert re.search(rf"{option}.*?default: {re.escape(default)}", text, re.S), option


STAGES = {
    "synth": ("cacs.synth.cohort", "SynthOptions", None),
    "ingest": ("cacs.ingest", "IngestOptions", None),
    "split": ("cacs.split", "SplitParams", None),
    "crop": ("cacs.crop", "CropParams", None),
    "predict-heart": ("cacs.heart_boxes", "Plausibility", None),
    "evaluate": ("cacs.evaluate", "EvaluateParams", ("n_bootstrap", "seed")),
    "figures": ("cacs.evaluate", "EvaluateParams", ("n_examples",)),
}


@pytest.mark.parametrize("command", sorted(STAGES))
def test_help_documents_every_setting_with_its_default(command, capsys):
    import importlib

    from cacs.settings import field_default, option_fields

    module, name, only = STAGES[command]
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--config-json" in text
    for f in option_fields(cls, only):
        option = "--" + f.name.replace("_", "-")
        assert option in text, option
        default = field_default(f)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        if isinstance(default, bool):
            shown = "on" if default else "off"
        assert f"default: {'none' if default is None else shown}" in text


def test_agatston_options_and_json_on_the_commands_that_score(capsys):
    from cacs.cli_common import agatston_params, given_agatston

    for command in ("score", "ingest", "crop", "train", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--agatston-json" in text and "--threshold-hu" in text and "--no-slice-correction" in text
    args = build_parser().parse_args(["score", "i", "l", "--agatston-json", '{"threshold_hu": 120, "lesion_dim": "3d"}',
                                      "--lesion-dim", "2d"])  # fmt: skip
    params = agatston_params(args)
    assert (params.threshold_hu, params.lesion_dim, params.connectivity) == (120, "2d", 8)
    given = {g.key: g.source for g in given_agatston(args)}
    assert given == {"threshold_hu": "--agatston-json agatston.threshold_hu", "lesion_dim": "--lesion-dim"}
    bad = build_parser().parse_args(["score", "i", "l", "--agatston-json", '{"weight_edges": [1, 2, 3, 4]}'])
    with pytest.raises(ValueError, match="unknown key.*'weight_edges'"):
        agatston_params(bad)


def test_parser_builds_without_importing_the_settings_modules():
    """`cacs --help` stays fast and works where torch is missing: options are registered per command."""
    import subprocess
    import sys

    code = "import sys; from cacs.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
    assert isinstance(build_parser(), LazyParser)


def test_split_command_takes_the_config_section(tmp_path):
    out = tmp_path / "x.csv"
    # Fractions not summing to 1: refused in one line (exit 2) whether from JSON or from options.
    assert main(["split", "--cases", str(tmp_path / "none.csv"), "--out", str(out),
                 "--config-json", '{"train": 0.9, "val": 0.2, "test": 0.1}']) == 2  # fmt: skip
    assert main(["split", "--cases", "c", "--out", str(out), "--config-json", '{"trian": 0.9}']) == 2


SMK = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def test_no_flag_builders_in_the_workflow():
    """Settings reach the commands as their config section's JSON, not through hand-written flag strings."""
    for path in SMK:
        text = path.read_text()
        assert not re.search(r"^def \w+_flags\(", text, re.M), path.name
        for option in ("--margin-xy-mm", "--spacing-mm", "--threshold-hu", "--n-bootstrap", "--min-heart-ml",
                       "--no-traps", "--paired-ids", "--strict", "--seed", "--epochs"):  # fmt: skip
            assert option not in text, (path.name, option)


def test_every_stage_rule_passes_its_section_json():
    text = "\n".join(p.read_text() for p in SMK)
    for command in ("synth", "ingest gated", "ingest nongated", "ingest segthor", "split", "train-localizer",
                    "predict-heart", "crop", "train", "evaluate", "figures"):  # fmt: skip
        shell = re.search(rf"\{{params\.(?:cacs|launcher)\}} {command} .*?> \{{log\}}", text, re.S)
        assert shell and "--config-json" in shell.group(0), command
    for command in ("ingest gated", "crop", "train", "predict"):
        shell = re.search(rf"\{{params\.(?:cacs|launcher)\}} {command} .*?> \{{log\}}", text, re.S)
        assert "--agatston-json" in shell.group(0), command
