"""The paper's tables (cacs.tables) written by run_evaluate: numbers, order, marking, LaTeX/Markdown structure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cacs import SCORE_COLUMNS
from cacs.evaluate import run_evaluate
from cacs.paper_reference import TABLE1
from cacs.tables import fmt_me_sd, latex_escape, render_latex, render_markdown, table1
from tests.test_evaluate import fabricate, write_prediction_csvs

EXPERIMENTS = {"spss_ce": "spss", "spss": "spss", "convnet": "convnet", "spss_wo_ssl": "spss"}
HEADERS = {"LM": "LM", "LCX": "LCX", "LAD": "LAD", "RCA": "RCA", "total": "Total"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[Path], dict]:
    root = tmp_path_factory.mktemp("evaluate")
    paths = write_prediction_csvs(fabricate(EXPERIMENTS, n_patients=30, seed=8), root)
    metrics = run_evaluate(paths, root / "paper", n_bootstrap=200, seed=42, data_source="synthetic")
    return root / "paper", paths, metrics


def _independent_me_sd(paths: list[Path]) -> pd.DataFrame:
    """ME and SD straight from the prediction CSVs with pandas (no cacs code)."""
    frame = pd.concat([pd.read_csv(p) for p in paths])
    out = []
    for (experiment, cohort), rows in frame.groupby(["experiment", "cohort"]):
        record = {"experiment": experiment, "cohort": cohort}
        for s in SCORE_COLUMNS:
            diff = rows[f"pred_{s}"] - rows[f"ref_{s}"]
            record[f"{s}_me"], record[f"{s}_sd"] = diff.mean(), diff.std()  # pandas std: ddof = 1
        out.append(record)
    return pd.DataFrame(out)


def test_all_files_written(run):
    out, _, metrics = run
    names = {p.name for p in out.iterdir()}
    expected = {f"{t}.{ext}" for t in ("table1", "comparison", "kappa") for ext in ("csv", "md", "tex")}
    assert names == expected | {"metrics.json"}  # no temporary files left behind
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_table1_numbers_equal_independent_recomputation(run):
    out, paths, _ = run
    table = pd.read_csv(out / "table1.csv")
    measured = table[table["source"] == "this run"]
    expected = _independent_me_sd(paths)
    merged = measured.merge(expected, on=["experiment", "cohort"], suffixes=("", "_expected"))
    assert len(merged) == len(measured) == 8  # 4 experiments x 2 cohorts
    for s in SCORE_COLUMNS:
        np.testing.assert_allclose(merged[f"{s}_me"], merged[f"{s}_me_expected"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(merged[f"{s}_sd"], merged[f"{s}_sd_expected"], rtol=1e-9)
        cells = [f"{m:.2f} ± {d:.2f}".replace("-0.00 ", "0.00 ")
                 for m, d in zip(merged[f"{s}_me_expected"], merged[f"{s}_sd_expected"], strict=True)]
        assert merged[HEADERS[s]].tolist() == cells
    md = (out / "table1.md").read_text()
    for cell in measured["Total"]:
        assert cell in md.replace("**", "")


def test_table1_order_and_reported_row(run):
    out, _, _ = run
    table = pd.read_csv(out / "table1.csv", keep_default_na=False)
    order = ["ConvNet", "SE-ResNeXt", "SPSS w/o SSL", "SPSS", "SPSS (L_ce)"]
    for cohort in ("gated", "nongated"):
        assert table.loc[table["cohort"] == cohort, "method"].tolist() == order
    assert table["cohort"].tolist() == ["gated"] * 5 + ["nongated"] * 5  # grouped by cohort, gated first
    se = table[table["experiment"] == "se_resnext"]
    assert (se["source"] == "reported (paper)").all()
    assert (table.loc[table["experiment"] != "se_resnext", "source"] == "this run").all()
    gated = se[se["cohort"] == "gated"].iloc[0]
    assert gated["LM"] == "-3.10 ± /" and float(gated["total_me"]) == TABLE1["se_resnext"]["gated"]["total"][0]
    nongated = se[se["cohort"] == "nongated"].iloc[0]
    assert [nongated[h] for h in HEADERS.values()] == ["/"] * 5
    for ext in ("md", "tex"):
        text = (out / f"table1.{ext}").read_text()
        assert "reported (paper)" in text and "not retrained" in text  # the row marking and its footnote


def test_table1_without_some_experiments(tmp_path):
    paths = write_prediction_csvs(fabricate({"spss": "spss"}, n_patients=6), tmp_path)
    run_evaluate(paths, tmp_path / "paper", n_bootstrap=0, seed=1, data_source="local")
    table = pd.read_csv(tmp_path / "paper" / "table1.csv")
    assert table["method"].tolist() == ["SE-ResNeXt", "SPSS"] * 2  # absent experiments absent, SE-ResNeXt kept
    md = (tmp_path / "paper" / "table1.md").read_text()
    assert "real COCA data" in md and "synthetic" not in md
    assert "**" not in md.split("\n\n")[1]  # one measured method: nothing to bold


def test_bold_marks_smallest_abs_me_per_column(run):
    out, paths, _ = run
    expected = _independent_me_sd(paths)
    md_rows = [line for line in (out / "table1.md").read_text().splitlines() if line.startswith("| ")][1:]
    names = {"convnet": "ConvNet", "spss": "SPSS", "spss_wo_ssl": "SPSS w/o SSL", "spss_ce": "SPSS (L_ce)"}
    current = None
    bolded: dict[tuple[str, str], set[str]] = {}
    for line in md_rows:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        current = cells[0] or current
        for s, cell in zip(SCORE_COLUMNS, cells[3:], strict=True):
            if cell.startswith("**"):
                bolded.setdefault((current, s), set()).add(cells[1])
    for cohort, words in (("gated", "Gated CT"), ("nongated", "Non-gated CT")):
        rows = expected[expected["cohort"] == cohort]
        for s in SCORE_COLUMNS:
            best = rows.loc[rows[f"{s}_me"].abs().round(2).idxmin(), "experiment"]
            assert names[best] in bolded[(words, s)]
            assert "SE-ResNeXt" not in bolded[(words, s)]  # reported values never compete


def test_comparison_table(run):
    out, _, metrics = run
    table = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    assert (table["data_source"] == "this run: synthetic data (not COCA); paper: real COCA").all()
    row = table[(table["experiment"] == "spss") & (table["cohort"] == "gated")].iloc[0]
    assert row["Kappa (paper)"] == "0.924" and row["LM (paper)"] == "-2.62 ± 9.21"
    kappa = metrics["experiments"]["spss"]["cohorts"]["gated"]["kappa"]["unweighted"]
    assert float(row["kappa"]) == pytest.approx(kappa["value"])
    assert row["Kappa (this run) [95% CI]"].startswith(f"{kappa['value']:.3f} [")
    ng = table[(table["experiment"] == "spss") & (table["cohort"] == "nongated")].iloc[0]
    assert ng["Kappa (paper)"] == "0.852" and ng["BA limits (paper)"] == "[-122.34, 90.67]"
    se = table[(table["experiment"] == "se_resnext") & (table["cohort"] == "nongated")].iloc[0]
    assert se["Kappa (paper)"] == "0.836" and se["Kappa (this run) [95% CI]"] == "not retrained"
    assert (table.loc[table["experiment"].isin(["convnet", "spss_wo_ssl", "spss_ce"]), "Kappa (paper)"] == "n/a").all()
    assert (table.loc[table["experiment"] == "spss_ce", "LM (paper)"] == "n/a").all()  # not in the paper
    for ext in ("md", "tex"):
        text = (out / f"comparison.{ext}").read_text()
        assert "synthetic data (not COCA)" in text and "real COCA" in text


def test_kappa_table_equals_sklearn(run):
    out, paths, _ = run
    frame = pd.concat([pd.read_csv(p) for p in paths])
    table = pd.read_csv(out / "kappa.csv")
    assert len(table) == 8
    for _, row in table.iterrows():
        rows = frame[(frame["experiment"] == row["experiment"]) & (frame["cohort"] == row["cohort"])]
        assert row["n_scans"] == len(rows)
        for kind, weights in (("unweighted", None), ("linear", "linear")):
            k = cohen_kappa_score(rows["ref_rank"], rows["pred_rank"], labels=[1, 2, 3, 4, 5], weights=weights)
            assert row[f"kappa_{kind}"] == pytest.approx(k)
            assert row[f"kappa_{kind}_ci_lo"] <= row[f"kappa_{kind}_ci_hi"]


def _latex_rows(tex: str) -> list[str]:
    body = tex.split("\\begin{tabular}", 1)[1].rsplit("\\end{tabular}", 1)[0]
    return [line for line in body.splitlines() if line.rstrip().endswith("\\\\")]


@pytest.mark.parametrize("name", ["table1", "comparison", "kappa"])
def test_latex_structure(run, name):
    out, _, _ = run
    tex = (out / f"{name}.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    n = len(spec)
    data_rows = 0
    for line in _latex_rows(tex):
        if line.startswith("\\multicolumn"):
            assert line.startswith(f"\\multicolumn{{{n}}}")  # captions and notes span the whole table
            assert len(re.findall(r"(?<!\\)&", line)) == 0
        else:
            assert len(re.findall(r"(?<!\\)&", line)) == n - 1, line
            data_rows += 1
    assert data_rows == len(pd.read_csv(out / f"{name}.csv")) + 1  # + header
    assert tex.isascii()  # ± etc. spelled in LaTeX
    assert len(re.findall(r"(?<!\\)\{", tex)) == len(re.findall(r"(?<!\\)\}", tex))  # braces balance
    assert "95\\%" in tex or name == "table1"
    if name != "kappa":
        assert "$\\pm$" in tex and "SPSS (L\\_ce)" in tex


@pytest.mark.parametrize("name", ["table1", "comparison", "kappa"])
def test_markdown_columns(run, name):
    out, _, _ = run
    lines = [line for line in (out / f"{name}.md").read_text().splitlines() if line.startswith("|")]
    n = len(pd.read_csv(out / f"{name}.csv").columns)
    width = len(re.split(r"(?<!\\)\|", lines[0])) - 2
    assert width < n  # the display columns, not the CSV's numeric ones
    assert len(lines) == len(pd.read_csv(out / f"{name}.csv")) + 2  # header, alignment row, one line per row
    for line in lines:
        assert len(re.split(r"(?<!\\)\|", line)) - 2 == width, line


def test_latex_escape():
    assert latex_escape("SPSS (L_ce) 95% ± 1 & $x# {a}") == r"SPSS (L\_ce) 95\% $\pm$ 1 \& \$x\# \{a\}"
    assert latex_escape("a\\b") == r"a\textbackslash{}b"
    assert latex_escape("|ME|") == r"\textbar{}ME\textbar{}"


def test_formatting_and_render_of_a_tiny_metrics_dict():
    block = {
        "n_scans": 2, "n_patients": 2,
        "mean_error": {s: {"mean": -0.001, "sd": None, "ci95": None} for s in SCORE_COLUMNS},
    }
    metrics = {"data_source": "synthetic", "n_bootstrap": 0, "seed": 1,
               "experiments": {"x|y": {"method": "x|y", "model": "spss", "cohorts": {"gated": block}}},
               "paper": {"table1": {"se_resnext": {"gated": {s: [1.0, None] for s in SCORE_COLUMNS}}}}}
    frame, table = table1(metrics)
    assert frame["method"].tolist() == ["SE-ResNeXt", "x|y", "SE-ResNeXt"]  # SE-ResNeXt in both cohorts
    assert frame.loc[1, "LM"] == "0.00 ± /"  # no "-0.00"; SD of one scan: "/"
    assert fmt_me_sd(None, 3.0) == "/"
    md = render_markdown(table)
    assert "x\\|y" in md  # a pipe in a name does not break the table
    assert "x\\textbar{}y" in render_latex(table)
