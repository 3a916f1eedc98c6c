"""kVp-dependent Agatston thresholds (opt-in): ``--kvp-thresholds 80=167,100=147,120=130``.

The Agatston convention (130 HU, weights from 200/300/400 HU) was defined at
120 kVp.  Calcium attenuates more at lower tube voltage, so low-kVp protocols
over-score with it, and several groups proposed kVp-specific thresholds.  The
published values differ between studies and scanners, so this project ships
*no* table: the user gives the one their protocol was validated with, and
the scan's KVP tag (0018,0060) picks the threshold.

The weight edges scale with the threshold (``edge * threshold / 130``), so a
lesion's weight class follows the same density relative to the threshold;
with 130 HU at 120 kVp everything equals the standard score.  A scan whose
kVp is not in the table, or that has no kVp (a NIfTI input), is refused:
scoring it at another kVp's threshold would be silently wrong.
"""

from __future__ import annotations

from dataclasses import replace

from cacs.agatston import AgatstonParams

KVP_TOLERANCE = 0.5
"""A scan's KVP matches a table entry within this many kV (KVP is a DS, often '120.0')."""


def parse_kvp_thresholds(text: str) -> tuple[tuple[float, float], ...]:
    """``'80=167,100=147'`` -> ((80.0, 167.0), (100.0, 147.0)); ``ValueError`` naming a bad entry."""
    pairs = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        kvp, sep, hu = entry.partition("=")
        try:
            pair = (float(kvp), float(hu))
        except ValueError:
            pair = None
        if not sep or pair is None or pair[0] <= 0 or pair[1] <= 0:
            raise ValueError(f"--kvp-thresholds: expected KVP=HU pairs like 100=147, got {entry!r}")
        pairs.append(pair)
    if not pairs:
        raise ValueError("--kvp-thresholds: empty table")
    kvps = [k for k, _ in pairs]
    if len(set(kvps)) != len(kvps):
        raise ValueError(f"--kvp-thresholds: a kVp appears twice in {text!r}")
    return tuple(sorted(pairs))


def params_for_kvp(base: AgatstonParams, kvp: float | None, table: tuple[tuple[float, float], ...]) -> AgatstonParams:
    """``base`` with the threshold of ``kvp`` from ``table`` and the weight edges scaled with it."""
    given = ", ".join(f"{k:g}" for k, _ in table)
    if kvp is None:
        raise ValueError(f"kVp unknown (no KVP tag, or a volume input): no threshold from --kvp-thresholds ({given})")
    match = [hu for k, hu in table if abs(k - kvp) <= KVP_TOLERANCE]
    if not match:
        raise ValueError(f"no threshold for {kvp:g} kVp in --kvp-thresholds (given: {given} kVp)")
    threshold = match[0]
    factor = threshold / base.weight_edges[0]
    edges = tuple(round(e * factor, 3) for e in base.weight_edges)
    return replace(base, threshold_hu=threshold, weight_edges=edges)
