"""Per-rule-group conda environments: every rule has one, pins equal pyproject.toml, imports fit.

No environment is created here (no conda in CI): the checks are on the files
and on what the code of each rule group imports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENVS = {"DATA_ENV": "data.yaml", "TORCH_ENV": "torch.yaml", "PLOT_ENV": "plot.yaml"}

# Modules each group's rules run (their `cacs` subcommand handlers import these).
GROUP_MODULES = {
    "data.yaml": ["cacs.cli", "cacs.synth.cohort", "cacs.ingest", "cacs.split", "cacs.acquire.coca",
                  "cacs.acquire.segthor", "cacs.acquire.layout", "cacs.agatston"],
    "torch.yaml": ["cacs.cli", "cacs.localizer", "cacs.heart_boxes", "cacs.crop", "cacs.train", "cacs.predict",
                   "cacs.infer", "cacs.devices"],
    "plot.yaml": ["cacs.cli", "cacs.evaluate", "cacs.tables", "cacs.figures"],
}  # fmt: skip
IMPORT_NAMES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "pyyaml": "yaml", "simpleitk": "SimpleITK"}


def _pins(requirements: list[str]) -> dict[str, str]:
    return {r.split("==")[0].lower(): r.split("==")[1] for r in requirements if "==" in r}


def _project_pins() -> dict[str, str]:
    return _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _env(name: str) -> dict:
    return yaml.safe_load((ROOT / "envs" / name).read_text())


def _env_pins(name: str) -> dict[str, str]:
    pip = next(d["pip"] for d in _env(name)["dependencies"] if isinstance(d, dict))
    return _pins(pip)


def _rule_blocks() -> dict[str, str]:
    """rule/checkpoint name -> its text, from every .smk file."""
    blocks = {}
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        parts = re.split(r"^\s*(?:rule|checkpoint)\s+(\w+):", smk.read_text(), flags=re.M)
        blocks.update(dict(zip(parts[1::2], parts[2::2], strict=True)))
    return blocks


def test_env_constants_point_at_existing_files():
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    for const, name in ENVS.items():
        assert re.search(rf'^{const} = "\.\./\.\./envs/{re.escape(name)}"', common, re.M), const
        assert (ROOT / "envs" / name).is_file()


def test_every_rule_that_runs_code_has_an_environment():
    blocks = _rule_blocks()
    assert {"ingest_gated", "train_model", "predict_model", "evaluate", "figures", "verify_layout"} <= set(blocks)
    for name, text in blocks.items():
        if name == "all":
            continue
        match = re.search(r"conda:\s*\n\s*(\w+)", text)
        assert match and match.group(1) in ENVS, f"rule {name} has no conda: DATA_ENV | TORCH_ENV | PLOT_ENV"


@pytest.mark.parametrize("name", sorted(ENVS.values()))
def test_env_pins_equal_pyproject(name):
    env = _env(name)
    assert "python=3.11" in env["dependencies"] and "conda-forge" in env["channels"]
    project = _project_pins()
    pins = _env_pins(name)
    assert pins, name
    for package, version in pins.items():
        assert project.get(package) == version, f"envs/{name}: {package}=={version} vs pyproject {project.get(package)}"


@pytest.mark.parametrize("name", sorted(GROUP_MODULES))
def test_each_group_imports_only_what_its_env_has(name):
    """Import the group's modules with every other pyproject dependency blocked (fails on a stray import)."""
    missing = sorted(set(_project_pins()) - set(_env_pins(name)) - {"snakemake"})
    blocked = [IMPORT_NAMES.get(p, p) for p in missing]
    code = (
        "import importlib, importlib.abc, sys\n"
        f"blocked = {blocked!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, fullname, path, target=None):\n"
        "        if fullname.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{fullname} is not in the environment')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for module in {GROUP_MODULES[name]!r}:\n"
        "    importlib.import_module(module)\n"
        "from cacs.cli import build_parser\n"
        "build_parser()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"envs/{name} lacks what its rules import:\n{done.stderr[-2000:]}"


def test_the_workflow_launcher_runs_this_checkout(tmp_path):
    """workflow/bin/cacs (what rules call) runs src/ with the python it finds, here the venv's."""
    done = subprocess.run([sys.executable, str(ROOT / "workflow" / "bin" / "cacs"), "--version"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("cacs "), done.stderr
