"""The paper's tables from ``metrics.json``: Table 1, a comparison with the paper, and the kappas.

Every number comes from the metrics dictionary that ``cacs evaluate`` writes
(never from the predictions directly), so a table always equals the JSON
beside it.  Each table is written three ways:

* CSV: one row per (cohort, method); the formatted cells *and* the numbers at
  full precision (``LM_me``, ``LM_sd``, ...) for anyone re-analysing them;
* Markdown: a pipe table with a caption and notes (README, reports);
* LaTeX: a plain ``tabular`` with ``booktabs`` rules, for a paper.

The renderers are hand-written (a few lines each) rather than
``DataFrame.to_latex``/``to_markdown``, which need jinja2/tabulate: those are
not dependencies of the project, and the hand-written versions control the
escaping (``±`` -> ``$\\pm$``, ``%``, ``_``), the cohort grouping and the bold
cells.  SE-ResNeXt is not retrained (its non-gated masks are private): its
row shows the paper's values, marked "reported (paper)".
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cacs import SCORE_COLUMNS
from cacs.io.atomic import write_csv, write_text
from cacs.paper_reference import REPORTED_ONLY, experiment_order, method_name
from cacs.prediction_table import COHORTS

COHORT_NAMES: dict[str, str] = {"gated": "Gated CT", "nongated": "Non-gated CT"}
SCORE_HEADERS: dict[str, str] = {"LM": "LM", "LCX": "LCX", "LAD": "LAD", "RCA": "RCA", "total": "Total"}
THIS_RUN = "this run"
REPORTED = "reported (paper)"
MISSING = "/"  # the paper's mark for a value it does not give
NOT_IN_PAPER = "n/a"

DATA_WORDS: dict[str, str] = {
    "synthetic": "synthetic data (not COCA)",
    "local": "real COCA data",
    "download": "real COCA data",
}

LATEX_WRAP = 100
"""Characters per caption/note line in LaTeX (each line is a full-width ``\\multicolumn`` row)."""

TABLE_NAMES: tuple[str, ...] = ("table1", "comparison", "kappa")


@dataclass
class Table:
    """A rendered-to-be table: display cells plus what the renderers need to lay them out."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    align: str
    """One of l/r/c per column (LaTeX column spec; Markdown alignment)."""
    group_starts: set[int] = field(default_factory=set)
    """Row indices that open a new cohort group: a rule before them, the group name shown once."""
    bold: set[tuple[int, int]] = field(default_factory=set)
    """(row, column) cells whose leading number (before " ± ") is bold."""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ formatting


def data_words(data_source: str) -> str:
    """Caption words for the run's data, so a synthetic table never passes for COCA."""
    try:
        return DATA_WORDS[data_source]
    except KeyError:
        raise ValueError(f"data_source must be one of {sorted(DATA_WORDS)}, got {data_source!r}") from None


def fmt_num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return MISSING
    text = f"{float(value):.{digits}f}"
    return text[1:] if re.fullmatch(r"-0\.0*", text) else text  # no "-0.00"


def fmt_me_sd(me: float | None, sd: float | None) -> str:
    """The paper's "ME ± SD" cell; "/" for what is not given (SE-ResNeXt's SDs: "-3.10 ± /")."""
    if me is None:
        return MISSING
    return f"{fmt_num(me)} ± {fmt_num(sd)}"


def fmt_kappa(value: float | None, ci: Sequence[float] | None = None) -> str:
    if value is None:
        return "undefined"
    text = fmt_num(value, 3)
    return f"{text} [{fmt_num(ci[0], 3)}, {fmt_num(ci[1], 3)}]" if ci else text


def fmt_interval(interval: Sequence[float] | None) -> str:
    return MISSING if interval is None else f"[{fmt_num(interval[0])}, {fmt_num(interval[1])}]"


def _ci_part(ci: Sequence[float] | None, i: int) -> float | None:
    return None if ci is None else ci[i]


def _bootstrap_words(metrics: Mapping[str, Any]) -> str:
    n = int(metrics.get("n_bootstrap", 0))
    if n == 0:
        return "no bootstrap CIs (n_bootstrap = 0)"
    return f"95% CI: percentile bootstrap over patients, {n} resamples, seed {metrics.get('seed')}"


# ------------------------------------------------------------------------------------------- tables


def _methods(metrics: Mapping[str, Any], with_reported: bool) -> list[str]:
    names = list(metrics.get("experiments", {}))
    if with_reported:
        names += sorted(REPORTED_ONLY)
    return experiment_order(names)


def _cohort_block(metrics: Mapping[str, Any], experiment: str, cohort: str) -> Mapping[str, Any] | None:
    if experiment in REPORTED_ONLY:
        return None
    return metrics.get("experiments", {}).get(experiment, {}).get("cohorts", {}).get(cohort)


def _paper_me(metrics: Mapping[str, Any], experiment: str, cohort: str, score: str) -> tuple[Any, Any] | None:
    """The paper's (ME, SD) of a method, or None when the paper has no such method."""
    table1 = metrics.get("paper", {}).get("table1", {})
    if experiment not in table1:
        return None
    me, sd = table1[experiment].get(cohort, {}).get(score, (None, None))
    return me, sd


def _bold_best(rows: list[dict[str, Any]], group: list[int], bold: set[tuple[int, int]], first_col: int) -> None:
    """Bold the smallest |ME| per score column among this run's methods of one cohort (ties all bold).

    Compared at the printed precision so that equal-looking cells are treated
    alike; nothing is bolded with fewer than two measured methods.
    """
    for j, score in enumerate(SCORE_COLUMNS):
        measured = [(i, abs(round(rows[i][f"{score}_me"], 2))) for i in group
                    if rows[i]["source"] == THIS_RUN and rows[i][f"{score}_me"] is not None]
        if len(measured) < 2:
            continue
        best = min(v for _, v in measured)
        bold.update((i, first_col + j) for i, v in measured if v == best)


def table1(metrics: Mapping[str, Any]) -> tuple[pd.DataFrame, Table]:
    """Table 1: per-artery ME ± SD per cohort and method; SE-ResNeXt's row is the paper's (reported)."""
    words = data_words(metrics["data_source"])
    records: list[dict[str, Any]] = []
    group_starts: set[int] = set()
    groups: list[list[int]] = []
    for cohort in COHORTS:
        start = len(records)
        for name in _methods(metrics, with_reported=True):
            block = _cohort_block(metrics, name, cohort)
            if name in REPORTED_ONLY:
                values = {s: _paper_me(metrics, name, cohort, s) or (None, None) for s in SCORE_COLUMNS}
                source, n_scans = REPORTED, None
            elif block is not None:
                values = {s: (block["mean_error"][s]["mean"], block["mean_error"][s]["sd"]) for s in SCORE_COLUMNS}
                source, n_scans = THIS_RUN, block["n_scans"]
            else:
                continue  # experiment has no scans of this cohort
            record = {
                "cohort": cohort,
                "image_type": COHORT_NAMES[cohort],
                "experiment": name,
                "method": method_name(name),
                "source": source,
                "n_scans": n_scans,
                **{SCORE_HEADERS[s]: fmt_me_sd(*values[s]) for s in SCORE_COLUMNS},
            }
            for s in SCORE_COLUMNS:
                record[f"{s}_me"], record[f"{s}_sd"] = values[s]
            records.append(record)
        if len(records) > start:
            group_starts.add(start)
            groups.append(list(range(start, len(records))))
    header = ["Image type", "Method", "Source", *SCORE_HEADERS.values()]
    table = Table(
        caption=f"Table 1. Mean error (ME = predicted - reference) ± SD of per-artery CCS on the test set; "
        f"this run: {words}.",
        header=header,
        rows=[[r["image_type"], r["method"], r["source"], *(r[SCORE_HEADERS[s]] for s in SCORE_COLUMNS)]
              for r in records],
        align="lll" + "r" * len(SCORE_COLUMNS),
        group_starts=group_starts,
        notes=[
            "SE-ResNeXt: reported (paper) = values transcribed from the paper's Table 1 (real COCA), not "
            "recomputed: it is not retrained (its non-gated training masks are private); / = not given.",
            "SD: sample SD (ddof = 1) of the per-scan errors. Bold: smallest |ME| among the methods of this run.",
        ],
    )
    for group in groups:
        _bold_best(records, group, table.bold, first_col=3)
    frame = pd.DataFrame.from_records(records)
    frame["n_scans"] = frame["n_scans"].astype("Int64")  # empty for the reported rows, not 75.0
    return frame, table


def comparison(metrics: Mapping[str, Any]) -> tuple[pd.DataFrame, Table]:
    """This run next to the paper: ME ± SD per artery, unweighted kappa and Bland-Altman limits."""
    words = data_words(metrics["data_source"])
    paper_kappa = metrics.get("paper", {}).get("kappa", {})
    paper_ba = metrics.get("paper", {}).get("bland_altman_limits", {})
    records: list[dict[str, Any]] = []
    group_starts: set[int] = set()
    for cohort in COHORTS:
        start = len(records)
        for name in _methods(metrics, with_reported=True):
            block = _cohort_block(metrics, name, cohort)
            if block is None and name not in REPORTED_ONLY:
                continue
            record: dict[str, Any] = {
                "cohort": cohort,
                "image_type": COHORT_NAMES[cohort],
                "experiment": name,
                "method": method_name(name),
                "data_source": f"this run: {words}; paper: real COCA",
            }
            for s in SCORE_COLUMNS:
                me = block["mean_error"][s] if block else None
                paper = _paper_me(metrics, name, cohort, s)
                record[f"{SCORE_HEADERS[s]} (this run)"] = fmt_me_sd(me["mean"], me["sd"]) if me else "not retrained"
                record[f"{SCORE_HEADERS[s]} (paper)"] = NOT_IN_PAPER if paper is None else fmt_me_sd(*paper)
                record[f"{s}_me"], record[f"{s}_sd"] = (me["mean"], me["sd"]) if me else (None, None)
                record[f"{s}_paper_me"], record[f"{s}_paper_sd"] = paper if paper else (None, None)
            kappa = block["kappa"]["unweighted"] if block else None
            k_paper = (paper_kappa.get(name) or {}).get(cohort)
            record["Kappa (this run) [95% CI]"] = fmt_kappa(kappa["value"], kappa["ci95"]) if kappa else "not retrained"
            record["Kappa (paper)"] = NOT_IN_PAPER if k_paper is None else fmt_num(k_paper, 3)
            record["kappa"] = kappa["value"] if kappa else None
            record["kappa_ci_lo"] = _ci_part(kappa["ci95"], 0) if kappa else None
            record["kappa_ci_hi"] = _ci_part(kappa["ci95"], 1) if kappa else None
            record["kappa_paper"] = k_paper
            ba = block["bland_altman"] if block else None
            ba_paper = paper_ba.get(name) if cohort == "nongated" else None  # the paper's Figure 6 is non-gated
            record["BA limits (this run)"] = fmt_interval([ba["loa_lower"], ba["loa_upper"]]) if ba else "not retrained"
            record["BA limits (paper)"] = NOT_IN_PAPER if ba_paper is None else fmt_interval(ba_paper)
            record["ba_loa_lower"], record["ba_loa_upper"] = (ba["loa_lower"], ba["loa_upper"]) if ba else (None, None)
            record["ba_paper_lower"], record["ba_paper_upper"] = ba_paper if ba_paper else (None, None)
            records.append(record)
        if len(records) > start:
            group_starts.add(start)
    display = [
        *(f"{SCORE_HEADERS[s]} ({who})" for s in SCORE_COLUMNS for who in ("this run", "paper")),
        "Kappa (this run) [95% CI]",
        "Kappa (paper)",
        "BA limits (this run)",
        "BA limits (paper)",
    ]
    table = Table(
        caption=f"Comparison with the paper. This run: {words}; paper: reported values on the real COCA test set. "
        "ME ± SD per artery, Cohen's kappa (unweighted) of the CVD ranks, Bland-Altman 95% limits of the total.",
        header=["Image type", "Method", *display],
        rows=[[r["image_type"], r["method"], *(str(r[c]) for c in display)] for r in records],
        align="ll" + "r" * len(display),
        group_starts=group_starts,
        notes=[
            f"Data: this run on {words}; the paper's values are on real COCA, so they agree only "
            "if this run used COCA.",
            f"{_bootstrap_words(metrics)}. n/a: the paper gives no such value (kappas other than SPSS and the "
            "non-gated SE-ResNeXt appear only as bars in its Figure 4); / : the paper prints none.",
            "SE-ResNeXt is not retrained (private masks): only its reported values are shown.",
        ],
    )
    return pd.DataFrame.from_records(records), table


def kappa_table(metrics: Mapping[str, Any]) -> tuple[pd.DataFrame, Table]:
    """Cohen's kappa of the CVD ranks per method and cohort: unweighted and linear, with CIs."""
    words = data_words(metrics["data_source"])
    records: list[dict[str, Any]] = []
    group_starts: set[int] = set()
    for cohort in COHORTS:
        start = len(records)
        for name in _methods(metrics, with_reported=False):
            block = _cohort_block(metrics, name, cohort)
            if block is None:
                continue
            record: dict[str, Any] = {
                "cohort": cohort,
                "image_type": COHORT_NAMES[cohort],
                "experiment": name,
                "method": method_name(name),
                "n_scans": block["n_scans"],
                "n_patients": block["n_patients"],
            }
            for kind in ("unweighted", "linear"):
                k = block["kappa"][kind]
                record[f"kappa_{kind}"] = k["value"]
                record[f"kappa_{kind}_ci_lo"] = _ci_part(k["ci95"], 0)
                record[f"kappa_{kind}_ci_hi"] = _ci_part(k["ci95"], 1)
                record[f"Kappa {kind} [95% CI]"] = fmt_kappa(k["value"], k["ci95"])
            records.append(record)
        if len(records) > start:
            group_starts.add(start)
    table = Table(
        caption=f"Cohen's kappa of the CVD ranks I-V (reference vs predicted) on the test set; this run: {words}.",
        header=["Image type", "Method", "n scans", "n patients", "Kappa unweighted [95% CI]",
                "Kappa linear [95% CI]"],
        rows=[[r["image_type"], r["method"], str(r["n_scans"]), str(r["n_patients"]),
               r["Kappa unweighted [95% CI]"], r["Kappa linear [95% CI]"]] for r in records],
        align="llrrrr",
        group_starts=group_starts,
        notes=[f"{_bootstrap_words(metrics)}. undefined: a single rank in both reference and prediction."],
    )
    columns = ["cohort", "image_type", "experiment", "method", "n_scans", "n_patients"]
    for kind in ("unweighted", "linear"):
        columns += [f"kappa_{kind}", f"kappa_{kind}_ci_lo", f"kappa_{kind}_ci_hi", f"Kappa {kind} [95% CI]"]
    return pd.DataFrame.from_records(records, columns=columns), table  # columns: a header even with no rows


# ---------------------------------------------------------------------------------------- renderers


def _group_cells(table: Table) -> list[list[str]]:
    """Rows with the group name (first column) shown only on a group's first row, as in the paper."""
    return [[row[0] if i in table.group_starts else "", *row[1:]] for i, row in enumerate(table.rows)]


def _split_bold(cell: str) -> tuple[str, str]:
    head, sep, tail = cell.partition(" ± ")
    return head, sep + tail


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("*", r"\*")


def _render_cells(table, i: int, row, escape, embolden) -> list[str]:
    """Escaped cells of row ``i``; a bold cell has only its number (``_split_bold``'s head) emboldened."""
    cells = []
    for j, cell in enumerate(row):
        if (i, j) in table.bold:
            head, tail = _split_bold(cell)
            cells.append(embolden(escape(head)) + escape(tail))
        else:
            cells.append(escape(cell))
    return cells


def render_markdown(table: Table) -> str:
    """A GitHub pipe table with the caption above and the notes below."""
    align = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [f"**{_md_escape(table.caption)}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in table.header) + " |")
    lines.append("|" + "|".join(align[a] for a in table.align) + "|")
    for i, row in enumerate(_group_cells(table)):
        cells = _render_cells(table, i, row, _md_escape, lambda bold: f"**{bold}**")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{_md_escape(note)}  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL: dict[str, str] = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",  # OT1 text fonts would print | < > as other glyphs
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "−": "-",
    "–": "--",
    "—": "---",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and spell ``±`` as ``$\\pm$`` (one pass, so no double escaping)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs ``tabular``: caption row on top, a rule between cohorts, notes below the bottom rule."""
    n = len(table.header)
    span = f"\\multicolumn{{{n}}}{{l}}"
    lines = [
        f"% {latex_escape(table.caption)}",
        "% Generated by `cacs evaluate` from metrics.json; needs \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{{table.align}}}",
        *(f"{span}{{{latex_escape(part)}}} \\\\" for part in textwrap.wrap(table.caption, LATEX_WRAP)),
        "\\toprule",
        " & ".join(latex_escape(h) for h in table.header) + " \\\\",
    ]
    for i, row in enumerate(_group_cells(table)):
        if i in table.group_starts:
            lines.append("\\midrule")
        cells = _render_cells(table, i, row, latex_escape, lambda bold: f"\\textbf{{{bold}}}")
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    for note in table.notes:  # wrapped: one long \multicolumn{l} line would widen the whole table
        lines += [f"{span}{{\\footnotesize {latex_escape(part)}}} \\\\" for part in textwrap.wrap(note, LATEX_WRAP)]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- writer

BUILDERS = {"table1": table1, "comparison": comparison, "kappa": kappa_table}


def write_tables(metrics: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write table1, comparison and kappa as .csv, .md and .tex into ``out_dir`` (atomically); return the paths."""
    out = Path(out_dir)
    written: list[Path] = []
    for name in TABLE_NAMES:
        frame, table = BUILDERS[name](metrics)
        paths = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}.tex"]
        write_csv(paths[0], frame)
        write_text(paths[1], render_markdown(table))
        write_text(paths[2], render_latex(table))
        written += paths
    return written
