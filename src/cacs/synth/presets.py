"""Size presets of the synthetic cohort.

``tiny`` keeps the test suite fast, ``small`` is the default pipeline run
(trains on CPU in minutes), ``realistic`` matches COCA's 512x512 matrices
for benchmarks.  Fields of view follow the real scans: gated scans are
reconstructed on a small cardiac FOV (~200 mm, so 0.39 mm pixels at 512),
non-gated chest scans on a ~350 mm body FOV.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScanGrid:
    matrix: int  # rows = columns
    fov_mm: float  # nominal in-plane field of view; varied +-8% per patient
    slice_mm: float  # thickness = increment (contiguous slices)
    extent_mm: float  # z coverage


@dataclass(frozen=True)
class Preset:
    name: str
    n_patients: int
    gated: ScanGrid
    nongated: ScanGrid
    segthor: ScanGrid
    n_segthor_train: int
    n_segthor_test: int
    supersample: int  # z sub-samples per slice (partial-volume averaging)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        n_patients=8,
        gated=ScanGrid(matrix=80, fov_mm=200.0, slice_mm=3.0, extent_mm=120.0),
        nongated=ScanGrid(matrix=96, fov_mm=350.0, slice_mm=5.0, extent_mm=150.0),
        segthor=ScanGrid(matrix=64, fov_mm=380.0, slice_mm=5.0, extent_mm=200.0),
        n_segthor_train=4,
        n_segthor_test=1,
        supersample=2,
    ),
    "small": Preset(
        name="small",
        n_patients=80,
        gated=ScanGrid(matrix=160, fov_mm=200.0, slice_mm=3.0, extent_mm=132.0),
        nongated=ScanGrid(matrix=512, fov_mm=350.0, slice_mm=5.0, extent_mm=160.0),
        segthor=ScanGrid(matrix=128, fov_mm=380.0, slice_mm=3.0, extent_mm=210.0),
        n_segthor_train=12,
        n_segthor_test=3,
        supersample=3,
    ),
    "realistic": Preset(
        name="realistic",
        n_patients=6,
        gated=ScanGrid(matrix=512, fov_mm=200.0, slice_mm=3.0, extent_mm=180.0),
        nongated=ScanGrid(matrix=512, fov_mm=350.0, slice_mm=5.0, extent_mm=200.0),
        segthor=ScanGrid(matrix=512, fov_mm=400.0, slice_mm=2.5, extent_mm=220.0),
        n_segthor_train=4,
        n_segthor_test=2,
        supersample=3,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}") from None
