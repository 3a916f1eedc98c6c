"""The report's reST (front page and captions) renders without docutils messages, as snakemake renders it.

``snakemake --report`` does not render ``workflow/report/*.rst`` as they are: it appends its own
hyperlink targets (``Workflow``, ``Statistics``, one per report category, one per result file),
renders the text with Jinja2 (the captions read ``snakemake.config``) and then with docutils.  A
problem there (e.g. a category named like one of snakemake's own targets: reST target names are
case-insensitive) shows up as a "System Message" box on every page of the report, so this test
renders each file the same way, with snakemake's own link template, and fails on any message.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment

from cacs.figure_names import FIGURE_EXTENSIONS, FIGURE_STEMS

REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "workflow" / "report"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
CONFIGS = ("config.yaml", "coca.yaml")  # both branches of the captions' synthetic / real-data text


def snakemake_rst_links() -> str:
    """The link targets snakemake's report appends to every caption and to the workflow description.

    Read from the installed snakemake (``rst_links = textwrap.dedent(...)`` in ``snakemake.report``),
    so the test follows the version the pipeline runs with.
    """
    import snakemake.report

    tree = ast.parse(inspect.getsource(snakemake.report))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "rst_links" for t in node.targets)
            and isinstance(node.value, ast.Call)
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
        ):
            return textwrap.dedent(node.value.args[0].value)
    pytest.fail("snakemake.report no longer defines rst_links = textwrap.dedent('...'): update this test")


def report_categories() -> dict:
    """Every ``category=`` of a ``report(...)`` output, as snakemake's Category objects."""
    from snakemake.report import Category

    text = "\n".join(p.read_text() for p in RULE_FILES)
    names = sorted(set(re.findall(r"""category\s*=\s*["']([^"']+)["']""", text)))
    assert names, "no report categories found in the rules"
    return {Category(name): {} for name in names}


def report_files() -> list[SimpleNamespace]:
    """The result files the report shows (snakemake's link target is the file name)."""
    paper = (REPO / "workflow" / "rules" / "paper.smk").read_text()
    names = re.findall(r"""report\(\s*f"\{PAPER\}/([^"{}]+)\"""", paper)
    for stem, exts in re.findall(r"""multiext\(\s*f"\{PAPER\}/(\w+)",\s*([^)]*)\)""", paper):
        names += [stem + ext for ext in ast.literal_eval(f"({exts},)")]
    names += [f + ext for f in FIGURE_STEMS for ext in FIGURE_EXTENSIONS]  # common.smk's FIGURES
    assert "metrics.json" in names and "table1.csv" in names and len(names) > 10, names
    return [SimpleNamespace(target=n, path=f"results/paper/{n}") for n in names]


def render_like_snakemake(text: str, config: dict) -> tuple[str, str]:
    """(HTML body, docutils warnings) of ``text`` rendered as ``snakemake --report`` renders it."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake.report's environment
    source = env.from_string(text + snakemake_rst_links()).render(
        snakemake=SimpleNamespace(config=config), categories=report_categories(), files=report_files()
    )
    messages = io.StringIO()
    with warnings.catch_warnings():  # snakemake's own call; docutils 0.22 deprecates writer_name
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        parts = publish_parts(source, writer_name="html", settings_overrides={"warning_stream": messages})
    return parts["html_body"], messages.getvalue()


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("rst", sorted(p.name for p in REPORT_DIR.glob("*.rst")))
def test_report_rst_renders_without_system_messages(rst: str, config_name: str) -> None:
    html, messages = render_like_snakemake((REPORT_DIR / rst).read_text(), _config(config_name))
    assert "System Message" not in html, re.sub(r"<[^>]+>", " ", html)[:2000]
    assert messages == "", messages


def test_every_caption_the_rules_name_exists() -> None:
    text = "\n".join(p.read_text() for p in RULE_FILES)
    captions = re.findall(r"""caption\s*=\s*f?["']\.\./report/([^"'{}]+\.rst)["']""", text)
    assert captions
    for name in captions:
        assert (REPORT_DIR / name).is_file(), name
    assert re.search(r'^report:\s*"workflow/report/workflow\.rst"', (REPO / "Snakefile").read_text(), re.M)


def test_check_catches_a_duplicate_target() -> None:
    """The rendering above does report a clash with snakemake's own targets."""
    html, _ = render_like_snakemake(".. _statistics: https://example.org\n", _config("config.yaml"))
    assert "Duplicate explicit target name" in html


def test_workflow_figures_come_from_the_package() -> None:
    """common.smk's FIGURES are the files ``cacs figures`` writes: it loads cacs/figure_names.py, no copy."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert not re.search(r"^FIGURES = \(", common, re.M), "common.smk spells out its own copy of the figure names"
    assert '_checkout_module("figure_names")' in common and "FIGURE_STEMS" in common, common[:2000]
