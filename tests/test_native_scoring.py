"""Native-resolution scoring: class probabilities, the way back to the native grid, and the oracle round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cacs.agatston import agatston_scores
from cacs.cvd import cvd_rank
from cacs.io.nifti import Geometry, index_to_physical, physical_to_index
from cacs.models.spss import SPSSNet, SPSSOutput
from cacs.native_scoring import (
    CALCIUM_THRESHOLD,
    class_probabilities,
    covered_index_box,
    decide_labels,
    resample_probabilities,
    roundtrip_labels,
    to_native,
)
from tests.native_phantoms import Phantom, make_cohort


def _rotation_z(degrees: float) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


def _random_output(shape_zyx=(4, 6, 6), seed: int = 0) -> SPSSOutput:
    gen = torch.Generator().manual_seed(seed)
    return SPSSOutput(torch.randn(1, 2, *shape_zyx, generator=gen) * 3, torch.randn(1, 4, *shape_zyx, generator=gen))


# ------------------------------------------------------------------ probabilities and the decision


def test_class_probabilities_sum_to_one_and_reproduce_the_network_rule():
    out = _random_output()
    probs = class_probabilities(out)
    assert probs.shape == (5, 4, 6, 6) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    assert np.allclose(1 - probs[0], torch.softmax(out.cac_logits, 1)[0, 1].numpy(), atol=1e-6)
    network = SPSSNet.predict_labels(out)[0].numpy()
    assert 0 < np.count_nonzero(network) < network.size  # both classes occur: the comparison means something
    assert np.array_equal(decide_labels(probs, calcium_threshold=0.5), network)


def test_split_artery_probabilities_do_not_drop_calcium():
    """p_cac = 0.6 shared by two arteries: a five-way argmax says background (0.4 > 0.3), the network says LAD."""
    probs = np.array([0.4, 0.0, 0.3, 0.3, 0.0], np.float32)[:, None]
    assert int(np.argmax(probs[:, 0])) == 0
    assert decide_labels(probs, calcium_threshold=0.5)[0] == 2  # LCX: the first of the tied arteries
    probs[3, 0] = 0.31
    probs[2, 0] = 0.29
    assert decide_labels(probs)[0] == 3


# ------------------------------------------------------------------ geometry


def test_same_grid_gives_the_model_grid_decision():
    """Native grid == model grid: no interpolation happens, so the decision must be the model grid's, voxel by voxel."""
    probs = class_probabilities(_random_output((6, 10, 12), seed=3))
    geometry = Geometry((0.8, 0.8, 3.0), (-31.7, 12.2, -205.5), _rotation_z(17))
    for threshold in (0.5, CALCIUM_THRESHOLD):
        native = to_native(probs, geometry, geometry, (6, 10, 12), calcium_threshold=threshold)
        assert np.array_equal(native, decide_labels(probs, threshold))


def test_resampling_only_near_calcium_changes_nothing():
    """to_native resamples only where calcium can be; all five channels over the whole scan decide the same."""
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(0, 1, (1, 2, 8, 20, 20)).astype(np.float32))
    logits[0, 1] -= 2.0  # sparse calcium
    arteries = torch.from_numpy(rng.normal(0, 2, (1, 4, 8, 20, 20)).astype(np.float32))
    probs = class_probabilities(SPSSOutput(logits, arteries))
    model = Geometry((1.5, 1.5, 3.0), (-14.2, 3.3, -40.9), _rotation_z(-12))
    native = Geometry((0.6, 0.6, 2.5), (-30.05, -12.8, -48.1))
    native_shape = (14, 70, 80)  # larger than the model grid on some sides, smaller on others
    for threshold in (0.5, CALCIUM_THRESHOLD):
        everywhere = resample_probabilities(probs, model, native, native_shape)
        expected = decide_labels(everywhere, threshold)
        assert 50 < np.count_nonzero(expected) < 0.2 * expected.size
        assert np.array_equal(to_native(probs, model, native, native_shape, threshold), expected)


@pytest.mark.parametrize(
    "direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), _rotation_z(30)]
)
def test_calcium_comes_back_at_its_physical_place(direction):
    """A calcified block on an axis-aligned model grid lands where it is in mm, on a scan with an off-grid origin."""
    native = Geometry((0.7, 0.7, 3.0), (-123.37, 57.91, -311.26), tuple(float(v) for v in direction))
    native_shape = (30, 160, 160)
    centre = index_to_physical(native, np.array([80.3, 71.6, 14.2]))[0]
    model_shape = (8, 24, 24)
    spacing = np.array([1.5, 1.5, 3.0])
    origin = centre - (np.array(model_shape[::-1]) - 1) / 2 * spacing
    model = Geometry(tuple(spacing), tuple(origin))
    probs = np.zeros((5, *model_shape), np.float32)
    probs[0] = 1.0
    block = (slice(3, 5), slice(10, 14), slice(11, 13))  # z 2, y 4, x 2 model voxels, LAD
    probs[0][block], probs[3][block] = 0.0, 1.0
    labels = to_native(probs, model, native, native_shape)
    assert set(np.unique(labels)) == {0, 3}
    kji = np.argwhere(labels > 0)
    got = index_to_physical(native, kji[:, ::-1].astype(float))
    block_lo = np.array([11, 10, 3]) - 0.5
    block_hi = np.array([12, 13, 4]) + 0.5
    expected_centre = index_to_physical(model, (block_lo + block_hi) / 2)[0]
    # within half a native voxel per axis (0.35, 0.35, 1.5 mm): where a thresholded mask's centroid can land
    assert np.all(np.abs(got.mean(axis=0) - expected_centre) <= np.array(native.spacing) / 2 + 1e-6)
    # No further than the block's own footprint plus interpolation's reach (a model voxel).
    in_model = physical_to_index(model, got)
    assert np.all(in_model >= block_lo - 1.0) and np.all(in_model <= block_hi + 1.0)
    # About the block's volume: neither eroded away nor grown into its neighbours.
    volume = len(kji) * np.prod(native.spacing)
    assert 0.7 < volume / (2 * 4 * 2 * np.prod(spacing)) < 1.6


def test_outside_the_model_grid_is_background():
    """Calcium everywhere on the model grid: exactly the native voxels whose centres it covers are labelled."""
    native = Geometry((1.0, 1.0, 2.0), (10.3, -4.1, 7.7))
    native_shape = (20, 50, 60)
    model_shape = (4, 10, 12)
    model = Geometry((2.0, 2.0, 4.0), (25.0, 8.0, 20.0))
    probs = np.zeros((5, *model_shape), np.float32)
    probs[4] = 1.0  # RCA everywhere
    labels = to_native(probs, model, native, native_shape)
    start, stop = covered_index_box(model, model_shape, native, native_shape)
    inside = np.zeros(native_shape, bool)
    inside[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]] = True
    assert np.array_equal(labels == 4, inside) and set(np.unique(labels)) == {0, 4}
    # Native voxel centres inside the model grid's voxel edges, x 24..48, y 7..27, z 18..34 mm:
    # x 24.3..47.3 (24), y 7.9..26.9 (20), z 19.7..33.7 (8).
    assert tuple(stop - start) == (24, 20, 8)
    far = Geometry((2.0, 2.0, 4.0), (500.0, 500.0, 500.0))
    assert covered_index_box(far, model_shape, native, native_shape) is None
    assert not to_native(probs, far, native, native_shape).any()


# ------------------------------------------------------------------ the oracle: reference -> model grid -> native


def _model_grid(p: Phantom, spacing_mm: tuple[float, float, float], offset_vox: np.ndarray) -> tuple[Geometry, tuple]:
    """A model grid covering the phantom, its first voxel ``offset_vox`` native voxels from the scan's (x, y, z)."""
    extent = np.array(p.hu.shape[::-1]) * np.array(p.geometry.spacing)
    size = np.ceil(extent / np.array(spacing_mm)).astype(int) + 2
    origin = index_to_physical(p.geometry, np.asarray(offset_vox, float) - 1.0)[0]
    return Geometry(tuple(spacing_mm), tuple(float(v) for v in origin), p.geometry.direction), tuple(size[::-1])


PLACEMENTS = {
    "aligned": lambda rng: np.zeros(3),
    # Model slices halfway between native ones: what the pipeline's grid does to every gated scan
    # (3 mm slices, 3 mm model slices) whose crop has an odd number of slices.
    "halfway": lambda rng: np.array([0.0, 0.0, 0.5]),
    "random": lambda rng: rng.uniform(0.0, 1.0, 3),
}


def _oracle(phantoms: list[Phantom], spacing_mm, placement: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    ref, back = [], []
    for p in phantoms:
        model, model_shape = _model_grid(p, spacing_mm, PLACEMENTS[placement](rng))
        labels = roundtrip_labels(p.labels, p.geometry, model, model_shape, **kwargs)
        ref.append(agatston_scores(p.hu, p.labels, p.geometry.spacing)["total"])
        back.append(agatston_scores(p.hu, labels, p.geometry.spacing)["total"])
    return np.array(ref), np.array(back)


@pytest.fixture(scope="module")
def gated_125() -> list[Phantom]:
    """40 gated scans at 1.25 x 1.25 x 3 mm with reader-like reference masks."""
    return make_cohort(40, seed=1)


@pytest.fixture(scope="module")
def gated_04() -> list[Phantom]:
    """16 gated scans at COCA's resolution, 0.4 x 0.4 x 3 mm (90 mm wide)."""
    return make_cohort(16, seed=2, pixel_mm=0.4, shape_zyx=(20, 225, 225))


def _assert_oracle_keeps_the_score(ref: np.ndarray, back: np.ndarray) -> None:
    assert ref.sum() > 1000 and len(set(cvd_rank(ref).tolist())) >= 4  # a cohort that spans the ranks
    assert back.sum() / ref.sum() == pytest.approx(1.0, abs=0.02)  # pooled total within 2 %
    assert np.mean(cvd_rank(back) == cvd_rank(ref)) >= 0.95
    # Nothing unlabelled is scored: next to half of the lesions lies a bright structure outside the ROI.
    assert np.all(back <= ref + np.maximum(1.0, 0.02 * ref))


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_oracle_round_trip_keeps_the_reference_score(gated_125, placement):
    """The issue's oracle: reference -> 1.25 x 1.25 x 3 mm model grid (linear) -> native, scored on the native HU."""
    ref, back = _oracle(gated_125, (1.25, 1.25, 3.0), placement)
    _assert_oracle_keeps_the_score(ref, back)


@pytest.mark.parametrize("placement", ["halfway", "random"])
def test_oracle_round_trip_at_coca_resolution_on_the_default_grid(gated_04, placement):
    ref, back = _oracle(gated_04, (1.5, 1.5, 3.0), placement)
    _assert_oracle_keeps_the_score(ref, back)


def test_oracle_detects_rules_that_erode_or_grow(gated_04, gated_125):
    """The oracle's checks can fail: deciding at the network's 1/2 erodes small calcium away, and a
    near-zero threshold grows the masks into the bright structures next to the lesions."""
    ref, back = _oracle(gated_04, (1.5, 1.5, 3.0), "halfway", calcium_threshold=0.5)
    assert back.sum() / ref.sum() < 0.98
    ref, back = _oracle(gated_125, (2.5, 2.5, 3.0), "random", calcium_threshold=0.01)
    assert np.any(back > ref + np.maximum(1.0, 0.02 * ref))
    ref, back = _oracle(gated_125, (2.5, 2.5, 3.0), "random")  # the default on that grid: neither
    _assert_oracle_keeps_the_score(ref, back)


def test_oracle_of_an_empty_reference_is_empty(gated_125):
    p = gated_125[0]
    model, model_shape = _model_grid(p, (1.25, 1.25, 3.0), np.zeros(3))
    assert not roundtrip_labels(np.zeros_like(p.labels), p.geometry, model, model_shape).any()
