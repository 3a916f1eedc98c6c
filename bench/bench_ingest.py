"""Benchmark: DICOM series ingest speed on realistic 512x512 gated series.

Reports slices/s for reading + assembling the series alone, and for the
whole per-case gated ingest (XML, label map, reference score, NIfTI writing).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import pin_one_core, realistic_cohort


def main() -> None:
    pinned = pin_one_core()
    from cacs.ingest import IngestOptions, ingest_gated_case
    from cacs.io.dicom_series import assemble, group_series, read_slices
    from cacs.qc import QCLog

    root = realistic_cohort()
    patients = sorted((root / "coca" / "Gated_release_final" / "patient").iterdir())
    read_rates, case_rates, n_slices = [], [], 0
    for _ in range(2):
        for pdir in patients:
            files = sorted(pdir.glob("*/*.dcm"))
            qc = QCLog(pdir.name, "gated")
            t0 = time.perf_counter()
            groups = group_series(read_slices(files, qc))
            volume = assemble(max(groups.values(), key=len), qc)
            dt = time.perf_counter() - t0
            n_slices = volume.hu.shape[0]
            read_rates.append(len(files) / dt)
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                row, _ = ingest_gated_case(pdir.name, root / "coca", Path(out), IngestOptions())
                case_rates.append(len(files) / (time.perf_counter() - t0))
    print(
        json.dumps(
            {
                "benchmark": "dicom_ingest",
                "matrix": "512x512",
                "slices_per_series": n_slices,
                "one_core": pinned,
                "read_assemble_slices_per_s_median": round(statistics.median(read_rates), 1),
                "full_gated_case_slices_per_s_median": round(statistics.median(case_rates), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
