"""Quality-control log: every problem found in the input, with the action taken.

Nothing is dropped silently: each skipped file, ignored ROI or excluded case
becomes one row of ``qc.csv`` (case, file, problem, action).  Severities:

* ``info``    an expected quirk of the data handled by a documented convention
               (e.g. identical duplicate slices de-duplicated);
* ``warning`` part of a case was ignored but the case is used;
* ``error``   the case cannot be used and is excluded.

With ``strict`` any warning or error stops the run instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import pandas as pd

QC_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "file", "problem", "action", "severity")


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class QCIssue:
    case_id: str
    cohort: str
    file: str
    problem: str
    action: str
    severity: Severity = Severity.WARNING


class CaseExcluded(Exception):
    """Raised inside a case's ingest when the case cannot be used.

    Carries the problem, so the caller records one ``error`` row and goes on
    with the next case.
    """

    def __init__(self, problem: str, file: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.file = file


@dataclass
class QCLog:
    """Collects issues for one case (or one cohort) in the order found."""

    case_id: str
    cohort: str
    issues: list[QCIssue] = field(default_factory=list)

    def add(
        self,
        problem: str,
        action: str,
        *,
        file: str = "",
        severity: Severity = Severity.WARNING,
        case_id: str | None = None,
    ) -> None:
        self.issues.append(
            QCIssue(case_id or self.case_id, self.cohort, str(file), problem, action, severity)
        )

    def exclude(self, problem: str, file: str = "") -> None:
        self.add(problem, "case excluded", file=file, severity=Severity.ERROR)


def issues_frame(issues: list[QCIssue]) -> pd.DataFrame:
    rows = [{k: (str(v) if k == "severity" else v) for k, v in asdict(i).items()} for i in issues]
    return pd.DataFrame(rows, columns=list(QC_COLUMNS))


class StrictModeError(RuntimeError):
    """Raised when ``strict`` is on and QC found warnings or errors."""


def enforce_strict(issues: list[QCIssue], strict: bool) -> None:
    if not strict:
        return
    bad = [i for i in issues if i.severity != Severity.INFO]
    if bad:
        lines = "\n".join(f"  {i.case_id}: {i.file}: {i.problem} ({i.action})" for i in bad)
        raise StrictModeError(
            f"strict mode: {len(bad)} QC problem(s); fix the input or set strict: false\n{lines}"
        )
