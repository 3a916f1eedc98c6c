"""Generate the synthetic cohort: COCA layout + SegTHOR layout + ground truth.

Layout written (identical in form to the real downloads, docs/data-formats.md)::

    <coca_root>/Gated_release_final/patient/<pid>/<series>/IM-<series#>-<nnnn>.dcm
    <coca_root>/Gated_release_final/calcium_xml/<pid>.xml        (patients with calcium)
    <coca_root>/deidentified_nongated/<pid>/<pid>/IM-0001-<nnnn>.dcm
    <coca_root>/deidentified_nongated/scores.xlsx
    <segthor_root>/train/Patient_XX/{Patient_XX,GT}.nii.gz
    <segthor_root>/test/Patient_XX.nii.gz

and, outside both trees, ``<truth_dir>`` with the generator's label maps, HU
volumes and exact per-artery scores, which the tests compare ingest against.

Every random draw comes from ``numpy.random.default_rng([seed, stream, id])``,
so a patient's data do not depend on how many patients are generated or on
the number of worker processes, and the output is byte-identical per seed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cacs import ARTERIES, __version__
from cacs.agatston import AgatstonParams, agatston_scores
from cacs.cvd import cvd_rank
from cacs.io.atomic import write_bytes, write_csv, write_json
from cacs.io.nifti import Geometry, write_volume
from cacs.synth.annotations import calcium_plist, footprint_rois, rasterise, roi_pixels
from cacs.synth.dicom_writer import write_ct_series
from cacs.synth.phantom import Grid, make_motion, make_patient, plan_plaques, render
from cacs.synth.presets import Preset, ScanGrid, get_preset
from cacs.synth.score_sheet import write_score_sheet

log = logging.getLogger(__name__)

MARKER = ".cacs-synthetic"
"""File marking a folder as generated; only such folders are ever replaced."""

# COCA's CVD-rank mix (non-gated sheet: 91/18/43/34/27 of 213 patients).
RANK_P = np.array([91, 18, 43, 34, 27], dtype=float) / 213.0
# Share of calcified patients with calcium in each artery (LM, LCX, LAD, RCA),
# from COCA's 17/29/53/37 % of all patients divided by the 57 % calcified.
ARTERY_P = {1: 0.30, 2: 0.50, 3: 0.92, 4: 0.65}
GATED_NOISE_SD = 14.0
NONGATED_NOISE_SD = 28.0
NONGATED_BLUR_MM = 0.9

STREAM_PATIENT, STREAM_GATED, STREAM_NONGATED, STREAM_SEGTHOR, STREAM_COHORT, STREAM_PLAQUES = range(6)


@dataclass(frozen=True)
class SynthOptions:
    preset: str = "small"
    seed: int = 42
    n_patients: int | None = None
    n_segthor_train: int | None = None
    n_segthor_test: int | None = None
    traps: bool = True
    workers: int = 1


def _grid(scan: ScanGrid, center_xy: tuple[float, float], z_center: float, rng: np.random.Generator) -> Grid:
    """A patient-specific grid; values rounded so DICOM DS strings round-trip exactly."""
    spacing_xy = round(scan.fov_mm * rng.uniform(0.92, 1.08) / scan.matrix, 4)
    nz = int(round(scan.extent_mm / scan.slice_mm))
    half = (scan.matrix - 1) / 2 * spacing_xy
    origin = (
        round(center_xy[0] - half + rng.uniform(-4, 4), 4),
        round(center_xy[1] - half + rng.uniform(-4, 4), 4),
        round(z_center - (nz - 1) / 2 * scan.slice_mm, 1),
    )
    return Grid(origin, (spacing_xy, spacing_xy, scan.slice_mm), (nz, scan.matrix, scan.matrix))


def _targets(rank: int, rng: np.random.Generator) -> dict[int, float]:
    """Per-artery target scores for a patient of CVD rank ``rank`` (1..5)."""
    if rank == 1:
        return {}
    lo, hi = {2: (2.0, 9.0), 3: (14.0, 90.0), 4: (115.0, 380.0), 5: (450.0, 3000.0)}[rank]
    total = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    chosen = [k for k, p in ARTERY_P.items() if rng.random() < p] or [3]
    if rank == 2:
        chosen = chosen[:1]  # a handful of pixels: one artery
    shares = rng.dirichlet(np.ones(len(chosen)))
    return {k: total * s for k, s in zip(chosen, shares, strict=True)}


def patient_ranks(n: int, seed: int) -> list[int]:
    """CVD rank targets in COCA's proportions (largest remainder), shuffled.

    Allocating counts instead of drawing them keeps small cohorts close to
    COCA's ~43 % calcium-free share, and every rank is present once n >= 5.
    """
    rng = np.random.default_rng([seed, STREAM_COHORT])
    exact = RANK_P * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    if n >= 5:
        for r in range(1, 5):
            if counts[r] == 0:
                counts[r] += 1
                counts[int(np.argmax(counts))] -= 1
    ranks = np.repeat(np.arange(1, 6), counts)
    return [int(r) for r in rng.permutation(ranks)]


def patient_ids(n: int, traps: bool) -> list[int]:
    """Folder ids 0..: with traps, gaps in the numbering like COCA's."""
    return [i + i // 4 for i in range(n)] if traps else list(range(n))


def _series_name(rng: np.random.Generator) -> tuple[str, int]:
    kernel = rng.choice(["I30f_3", "B35f", "Qr36d_3"])
    phase = int(rng.choice([70, 75, 40]))
    return f"Pro_Gated_CS_3.0_{kernel}_{phase}%", int(rng.integers(1000, 9999))


def _make_gated_patient(pid: int, preset: Preset, seed: int):
    """Anatomy and gated grid of one patient (shared by both of their scans)."""
    rng = np.random.default_rng([seed, STREAM_PATIENT, pid])
    z_heart = float(rng.uniform(-170, -90))
    patient = make_patient(pid, rng, z_heart)
    hx, hy, _ = patient.heart_center
    grid = _grid(preset.gated, (hx, hy), z_heart + 6.0, rng)
    return patient, grid, rng


MAX_PLAN_ATTEMPTS = 6


def _render_gated(patient, grid: Grid, rank: int, targets: dict[int, float], preset: Preset, seed: int):
    """Plan plaques, render, outline and score; re-plan until the rank is hit.

    Plaque sizes come from analytic estimates that ignore pixelation and
    partial volume, so the exact score (computed from the rendered image) can
    land in a neighbouring CVD rank; a few re-plans with a scaled target keep
    the cohort's rank mix as intended.  The accepted score is always the
    exact one.
    """
    z_lo = grid.origin[2]
    z_hi = z_lo + (grid.shape[0] - 1) * grid.spacing[2]
    scale = 1.0
    for attempt in range(MAX_PLAN_ATTEMPTS):
        patient.plaques.clear()
        plan_rng = np.random.default_rng([seed, STREAM_PLAQUES, patient.pid, attempt])
        plan_plaques(patient, {k: v * scale for k, v in targets.items()}, plan_rng, (z_lo, z_hi))
        g_rng = np.random.default_rng([seed, STREAM_GATED, patient.pid])
        hu = render(patient, grid, preset.supersample, g_rng, GATED_NOISE_SD)[0]
        rois = []
        for blob in patient.plaques:
            rois.extend(footprint_rois(blob, grid, preset.supersample, g_rng))
        # An annotator only keeps ROIs holding calcium (COCA: every ROI's Min >= 130 HU).
        rois = [r for r in rois if np.any(hu[r.slice_index][roi_pixels(r, hu.shape[1:])] >= 130)]
        labels = rasterise(rois, hu.shape)
        scores = agatston_scores(hu, labels, grid.spacing, AgatstonParams())
        got = cvd_rank(scores["total"])
        if got == rank:
            break
        scale *= 1.8 if got < rank else 0.55
    return hu, labels, rois, scores, g_rng


def synthesize_patient(
    pid: int, rank: int, preset: Preset, seed: int, coca: Path, truth: Path, trap_dup_series: bool
) -> dict:
    """Write one patient's gated + non-gated scans and XML; return its truth row."""
    patient, grid, rng = _make_gated_patient(pid, preset, seed)
    targets = _targets(rank, rng)
    hu, labels, rois, scores, g_rng = _render_gated(patient, grid, rank, targets, preset, seed)

    gated_dir = coca / "Gated_release_final"
    series, series_no = _series_name(rng)
    write_ct_series(
        gated_dir / "patient" / str(pid) / series,
        hu,
        grid,
        file_name=lambda n: f"IM-{series_no}-{n:04d}.dcm",
        uid_seed=f"{seed}-g-{pid}",
        patient_id=str(pid),
        series_description=series,
        series_number=series_no,
    )
    if trap_dup_series:
        # COCA trap: a second reconstruction at identical z positions; it sorts
        # after the first folder, which ingest keeps.
        dup = (hu.astype(np.int32) + g_rng.integers(-3, 4, hu.shape)).clip(-1024, 3071).astype(np.int16)
        write_ct_series(
            gated_dir / "patient" / str(pid) / (series + "_zz_dup"),
            dup,
            grid,
            file_name=lambda n: f"IM-{series_no + 1}-{n:04d}.dcm",
            uid_seed=f"{seed}-g-{pid}-dup",
            patient_id=str(pid),
            series_description=series + " dup",
            series_number=series_no + 1,
        )
    if rois:
        write_bytes(gated_dir / "calcium_xml" / f"{pid}.xml", calcium_plist(rois, hu, grid, g_rng))
    geom = Geometry(grid.spacing, grid.origin)
    write_volume(truth / "gated" / f"{pid}_image.nii.gz", hu, geom)
    write_volume(truth / "gated" / f"{pid}_labels.nii.gz", labels, geom)

    # Non-gated chest CT of the same patient: body FOV, 5 mm, cardiac motion.
    n_rng = np.random.default_rng([seed, STREAM_NONGATED, pid])
    ng_grid = _grid(preset.nongated, (0.0, 0.0), patient.heart_center[2] + n_rng.uniform(-12, 12), n_rng)
    motions = [make_motion(n_rng) for _ in patient.plaques]
    ng_hu = render(
        patient, ng_grid, preset.supersample, n_rng, NONGATED_NOISE_SD, motions=motions, blur_mm=NONGATED_BLUR_MM
    )[0]
    write_ct_series(
        coca / "deidentified_nongated" / str(pid) / str(pid),
        ng_hu,
        ng_grid,
        file_name=lambda n: f"IM-0001-{n:04d}.dcm",
        uid_seed=f"{seed}-ng-{pid}",
        patient_id=str(pid),
        series_description="CHEST W/O",
        series_number=2,
        with_uids=False,
    )
    return {
        "pid": pid,
        "target_rank": rank,
        **{a: scores[a] for a in ARTERIES},
        "total": scores["total"],
        "cvd_rank": cvd_rank(scores["total"]),
        "n_plaques": len(patient.plaques),
        "n_rois": len(rois),
        "n_gated_slices": grid.shape[0],
        "n_nongated_slices": ng_grid.shape[0],
        "gated_series": series,
    }


def synthesize_segthor(index: int, split: str, preset: Preset, seed: int, root: Path, lower_gt: bool) -> None:
    """One SegTHOR-style case: thorax CT + GT (1 oesophagus, 2 heart, 3 trachea, 4 aorta)."""
    rng = np.random.default_rng([seed, STREAM_SEGTHOR, index])
    patient = make_patient(10_000 + index, rng, float(rng.uniform(-200, -120)))
    scan = preset.segthor
    grid = _grid(scan, (0.0, 0.0), patient.heart_center[2] + rng.uniform(15, 35), rng)
    hu, organs = render(patient, grid, preset.supersample, rng, NONGATED_NOISE_SD, with_organs=True)
    name = f"Patient_{index:02d}"
    geom = Geometry(grid.spacing, grid.origin)
    if split == "train":
        write_volume(root / "train" / name / f"{name}.nii.gz", hu, geom)
        write_volume(root / "train" / name / ("gt.nii.gz" if lower_gt else "GT.nii.gz"), organs, geom)
    else:
        write_volume(root / "test" / f"{name}.nii.gz", hu, geom)


def _prepare(dest: Path) -> Path:
    """A fresh temporary folder beside ``dest``; refuse to replace real data."""
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).exists():
        raise ValueError(
            f"{dest}: exists, is not empty and was not made by the generator; refusing to overwrite it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))


def _commit(tmp: Path, dest: Path) -> None:
    (tmp / MARKER).write_text("generated by cacs synth; safe to delete\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def generate_cohort(opts: SynthOptions, coca_root: Path, segthor_root: Path, truth_dir: Path) -> pd.DataFrame:
    """Write the whole cohort; folders appear only once complete (atomic rename)."""
    preset = get_preset(opts.preset)
    n = opts.n_patients if opts.n_patients is not None else preset.n_patients
    n_st_train = opts.n_segthor_train if opts.n_segthor_train is not None else preset.n_segthor_train
    n_st_test = opts.n_segthor_test if opts.n_segthor_test is not None else preset.n_segthor_test
    if n < 1 or n_st_train < 1 or n_st_test < 0:
        raise ValueError("synthetic cohort needs >= 1 patient and >= 1 SegTHOR training case")
    tmps = [_prepare(d) for d in (coca_root, segthor_root, truth_dir)]
    coca, segthor, truth = tmps
    try:
        pids = patient_ids(n, opts.traps)
        ranks = patient_ranks(n, opts.seed)
        dup_pid = pids[1] if opts.traps and n > 1 else None
        jobs = []
        with ProcessPoolExecutor(max_workers=max(1, opts.workers)) as pool:
            for pid, rank in zip(pids, ranks, strict=True):
                jobs.append(
                    pool.submit(synthesize_patient, pid, rank, preset, opts.seed, coca, truth, pid == dup_pid)
                )
            for i in range(1, n_st_train + 1):
                lower_gt = opts.traps and i == 2  # some SegTHOR copies name the label file gt.nii.gz
                jobs.append(pool.submit(synthesize_segthor, i, "train", preset, opts.seed, segthor, lower_gt))
            for i in range(n_st_train + 1, n_st_train + n_st_test + 1):
                jobs.append(pool.submit(synthesize_segthor, i, "test", preset, opts.seed, segthor, False))
            results = [job.result() for job in tqdm(jobs, desc=f"synth {preset.name}", unit="case")]
        rows = [r for r in results if r is not None]
        truth_df = pd.DataFrame(rows).sort_values("pid").reset_index(drop=True)

        sheet = [
            (f"{r.pid}A", r.LM, r.LAD, r.LCX, r.RCA, int(round(r.total)))
            for r in truth_df.itertuples()
        ]
        traps: dict[str, object] = {"duplicate_series_pid": dup_pid}
        if opts.traps:
            calcified = truth_df.index[truth_df.total > 0].tolist()
            if calcified:  # COCA: some rows have total 0 while an artery is > 0
                i = calcified[-1]
                row = sheet[i]
                sheet[i] = (*row[:5], 0)
                traps["sheet_total_zero_pid"] = int(truth_df.pid[i])
            orphan = pids[-1] + 7  # COCA: a key with no images ("790A")
            sheet.append((f"{orphan}A", 0.0, 0.0, 0.0, 0.0, 0))
            traps["orphan_score_row"] = f"{orphan}A"
            # COCA: a few XMLs have no images.
            xml_only = pids[-1] + 3
            src = next(iter(sorted((coca / "Gated_release_final" / "calcium_xml").glob("*.xml"))), None)
            if src is not None:
                shutil.copyfile(src, coca / "Gated_release_final" / "calcium_xml" / f"{xml_only}.xml")
                traps["xml_without_images_pid"] = xml_only
        write_score_sheet(coca / "deidentified_nongated" / "scores.xlsx", sheet)
        write_csv(truth / "scores.csv", truth_df)
        write_json(
            truth / "manifest.json",
            {
                "generator": f"cacs {__version__}",
                # Worker count is left out: it does not change a byte of the output.
                "options": {k: v for k, v in asdict(opts).items() if k != "workers"}
                | {"n_patients": n, "n_segthor_train": n_st_train, "n_segthor_test": n_st_test},
                "agatston": asdict(AgatstonParams()),
                "traps": traps,
                "rank_counts": {str(k): int(v) for k, v in truth_df.cvd_rank.value_counts().sort_index().items()},
            },
        )
        for tmp, dest in zip(tmps, (coca_root, segthor_root, truth_dir), strict=True):
            _commit(tmp, dest)
    finally:
        for tmp in tmps:
            if tmp.exists():
                shutil.rmtree(tmp)
    log.info("synthetic cohort: %d patients, ranks %s", n, truth_df.cvd_rank.value_counts().sort_index().to_dict())
    return truth_df
