"""Networks (cacs.models): shapes, heads, gradients, eq. 1 through SPSSNet.scores, config handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cacs.agatston import AgatstonParams, agatston_scores, lesion_weight_map, voxel_score_factor
from cacs.models import (
    ConvNetConfig,
    ConvNetRegressor,
    SPSSConfig,
    SPSSNet,
    SPSSOutput,
    build_model,
    count_parameters,
)

TINY_SPSS = {
    "channels": [4, 8, 16],
    "feature_width": 4,
    "small_width": 4,
    "large_width": 4,
    "small_dilations": [1, 2],
    "large_dilations": [2, 4],
}
TINY_CONVNET = {"channels": [4, 8, 16], "hidden": 8}
SHAPE = (2, 1, 8, 16, 16)  # multiples of 4 (two downsamplings); small keeps CPU backward fast


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def spss() -> SPSSNet:
    return build_model("spss", TINY_SPSS)


@pytest.fixture
def convnet() -> ConvNetRegressor:
    return build_model("convnet", TINY_CONVNET)


def _first_backbone_weight(model: SPSSNet) -> torch.nn.Parameter:
    return model.backbone.input_block.conv1.conv.weight


# ---------------------------------------------------------------------------
# Shapes and heads
# ---------------------------------------------------------------------------


def test_spss_output_shapes_and_softmax(spss):
    with torch.no_grad():
        out = spss(torch.randn(2, 1, 16, 32, 32))
    assert isinstance(out, SPSSOutput)
    assert out.cac_logits.shape == (2, 2, 16, 32, 32)
    assert out.artery_logits.shape == (2, 4, 16, 32, 32)
    assert out.cac_logits.dtype == out.artery_logits.dtype == torch.float32
    for logits in out:
        total = torch.softmax(logits, dim=1).sum(dim=1)
        torch.testing.assert_close(total, torch.ones_like(total))


def test_convnet_output_shape_and_scores(convnet):
    with torch.no_grad():
        out = convnet(torch.randn(2, 1, 16, 32, 32))
    assert out.shape == (2, 4) and out.dtype == torch.float32
    scores = ConvNetRegressor.scores(out)
    assert scores.shape == (2, 4) and bool((scores >= 0).all())
    logs = torch.log1p(torch.tensor([[-0.5, 0.0, 10.0, 1000.0]]))
    torch.testing.assert_close(ConvNetRegressor.scores(logs), torch.tensor([[0.0, 0.0, 10.0, 1000.0]]))


def test_cac_prior_sets_initial_probability():
    model = build_model("spss", {**TINY_SPSS, "cac_prior": 0.01})
    bias = model.cac_head.classifier.bias.detach()
    assert torch.softmax(bias, dim=0)[1].item() == pytest.approx(0.01)
    plain = build_model("spss", {**TINY_SPSS, "cac_prior": None})
    assert float(plain.cac_head.classifier.bias.detach().abs().max()) < 1.0  # default init, not the prior


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def _grad_norms(model: SPSSNet) -> dict[str, float]:
    def norm(p):
        return 0.0 if p.grad is None else float(p.grad.abs().sum())

    return {
        "backbone": norm(_first_backbone_weight(model)),
        "cac_head": norm(model.cac_head.classifier.weight),
        "artery_head": norm(model.artery_head.classifier.weight),
    }


def test_spss_gradients_reach_both_heads_and_backbone(spss):
    out = spss(torch.randn(SHAPE))
    cac_target = torch.zeros(SHAPE[0], *SHAPE[2:], dtype=torch.long)
    cac_target[:, 2:5, 5:9, 5:9] = 1
    art_target = torch.randint(0, 4, cac_target.shape)
    loss = torch.nn.functional.cross_entropy(out.cac_logits, cac_target) + torch.nn.functional.cross_entropy(
        out.artery_logits, art_target
    )
    loss.backward()
    assert all(v > 0 for v in _grad_norms(spss).values()), _grad_norms(spss)


def test_spss_gradients_from_the_score_alone(spss):
    """Non-gated training sees only eq. 5 on eq. 1: it must still train everything."""
    weight = torch.zeros(SHAPE[0], *SHAPE[2:])
    weight[:, 2:5, 5:9, 5:9] = 3.0
    scores = spss.scores(spss(torch.randn(SHAPE)), weight, torch.tensor([0.5, 0.8]))
    assert scores.shape == (2, 4)
    torch.abs(scores - 10.0).mean().backward()
    assert all(v > 0 for v in _grad_norms(spss).values()), _grad_norms(spss)


def test_convnet_gradients_reach_first_layer(convnet):
    out = convnet(torch.randn(SHAPE))
    torch.nn.functional.l1_loss(out, torch.log1p(torch.tensor([[0.0, 5.0, 50.0, 500.0]] * 2))).backward()
    assert float(convnet.features[0].conv.weight.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------
# Eq. 1 through SPSSNet.scores equals the hard 3D score on one-hot logits
# ---------------------------------------------------------------------------


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU volume whose >= 130 HU components are whole lesions, and a label map that
    covers each labelled lesion completely (plus some sub-130 HU wall around it)."""
    hu = rng.uniform(-100.0, 120.0, size=(16, 32, 32))
    labels = np.zeros(hu.shape, dtype=np.int16)
    # (z, y, x) box, peak HU, label (0: calcium not in any artery, e.g. bone)
    lesions = [
        ((slice(1, 3), slice(2, 5), slice(2, 6)), 160.0, 1),  # weight 1, LM
        ((slice(4, 7), slice(10, 12), slice(3, 5)), 250.0, 2),  # weight 2, LCX
        ((slice(9, 10), slice(20, 23), slice(20, 21)), 350.0, 3),  # weight 3, LAD
        ((slice(11, 15), slice(5, 9), slice(24, 29)), 800.0, 4),  # weight 4, RCA
        ((slice(2, 5), slice(24, 27), slice(8, 10)), 420.0, 3),  # second LAD lesion
        ((slice(8, 14), slice(26, 31), slice(2, 7)), 900.0, 0),  # bone: W > 0, unlabelled
    ]
    for box, peak, label in lesions:
        region = hu[box]
        region[...] = rng.uniform(130.0, peak, size=region.shape)
        region.flat[0] = peak
        if label:
            wall = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            labels[wall] = label  # one-voxel margin of sub-130 HU tissue: W = 0 there
    return hu, labels


def _one_hot_logits(labels: np.ndarray, margin: float = 30.0) -> SPSSOutput:
    lab = torch.as_tensor(labels.astype(np.int64))
    is_cac = (lab > 0).double()
    cac = torch.stack([-margin * (2 * is_cac - 1), margin * (2 * is_cac - 1)], dim=0)
    art_idx = (lab - 1).clamp(min=0)
    artery = torch.nn.functional.one_hot(art_idx, 4).permute(3, 0, 1, 2).double() * 2 * margin - margin
    return SPSSOutput(cac_logits=cac[None], artery_logits=artery[None])


def test_eq1_through_spssnet_scores_matches_hard_3d_score():
    rng = np.random.default_rng(3)
    params = AgatstonParams(lesion_dim="3d", min_area_mm2=0)
    spacings = [(0.6, 0.8, 2.5), (1.5, 1.5, 3.0)]
    cases = [_phantom(rng) for _ in spacings]
    outs = [_one_hot_logits(labels) for _, labels in cases]
    batch = SPSSOutput(*(torch.cat(parts, dim=0) for parts in zip(*outs, strict=True)))
    weight = torch.as_tensor(np.stack([lesion_weight_map(hu, params) for hu, _ in cases]))
    factor = torch.tensor([voxel_score_factor(sp, params) for sp in spacings], dtype=torch.float64)
    got = SPSSNet.scores(batch, weight, factor)
    assert got.shape == (2, 4) and got.dtype == torch.float64
    for i, ((hu, labels), sp) in enumerate(zip(cases, spacings, strict=True)):
        ref = agatston_scores(hu, labels, sp, params)
        expected = np.array([ref["LM"], ref["LCX"], ref["LAD"], ref["RCA"]])
        assert (expected > 0).all()
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-4)
    # float32 logits (what the network outputs) give the same within tolerance
    got32 = SPSSNet.scores(SPSSOutput(*(t.float() for t in batch)), weight, factor.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), got.numpy(), rtol=1e-4)


def test_predict_labels_maps_channels_to_labels():
    rng = np.random.default_rng(0)
    _, labels = _phantom(rng)
    out = _one_hot_logits(labels)
    pred = SPSSNet.predict_labels(out)
    assert pred.dtype == torch.int64 and pred.shape == (1, *labels.shape)
    np.testing.assert_array_equal(pred[0].numpy(), labels)
    # background CAC voxel: label 0 whatever the artery head says
    cac = torch.tensor([5.0, -5.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 4)
    art = torch.eye(4).T.reshape(1, 4, 1, 1, 4) * 9
    assert SPSSNet.predict_labels(SPSSOutput(cac, art)).tolist() == [[[[0, 0, 0, 0]]]]
    # CAC voxel x with artery channel x -> label x + 1
    assert SPSSNet.predict_labels(SPSSOutput(-cac, art)).tolist() == [[[[1, 2, 3, 4]]]]


# ---------------------------------------------------------------------------
# Config, input validation, memory format, autocast, siamese weights
# ---------------------------------------------------------------------------


def test_build_model_kinds_and_configs():
    assert isinstance(build_model("spss", TINY_SPSS), SPSSNet)
    assert isinstance(build_model("convnet", TINY_CONVNET), ConvNetRegressor)
    cfg = build_model("spss", TINY_SPSS).config
    assert isinstance(cfg, SPSSConfig) and cfg.channels == (4, 8, 16) and cfg.large_dilations == (2, 4)
    assert isinstance(build_model("convnet", TINY_CONVNET).config, ConvNetConfig)
    with pytest.raises(ValueError, match="unknown model kind 'unet'"):
        build_model("unet", {})
    with pytest.raises(ValueError, match=r"bogus.*widht"):
        build_model("spss", {"widht": 3, "bogus": 1, "channels": [4, 8, 16]})
    with pytest.raises(ValueError, match="hidden"):
        build_model("spss", {"hidden": 8})  # a convnet key is unknown to spss
    with pytest.raises(ValueError, match="norm"):
        build_model("convnet", {"norm": "layer"})
    with pytest.raises(ValueError, match="channels"):
        build_model("spss", {"channels": [8, 16]})
    with pytest.raises(ValueError, match="cac_prior"):
        build_model("spss", {"cac_prior": 1.0})


def test_count_parameters(spss):
    n = count_parameters(spss)
    assert n == sum(p.numel() for p in spss.parameters()) > 0
    spss.cac_head.requires_grad_(False)
    assert count_parameters(spss) < n == count_parameters(spss, trainable_only=False)


@pytest.mark.parametrize(
    "shape", [(1, 1, 15, 32, 32), (1, 1, 16, 30, 32), (1, 1, 0, 32, 32), (1, 2, 16, 32, 32), (1, 16, 32, 32)]
)
def test_spss_rejects_bad_input(spss, shape):
    with pytest.raises(ValueError, match="SPSSNet"):
        spss(torch.randn(shape))


def test_convnet_rejects_bad_input(convnet):
    convnet(torch.randn(1, 1, 9, 10, 11))  # any size >= 4 works (global pooling)
    with pytest.raises(ValueError, match=r"at least \(4, 4, 4\)"):
        convnet(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="ConvNetRegressor"):
        convnet(torch.randn(1, 16, 32, 32))


def test_channels_last_3d(spss, convnet):
    x = torch.randn(SHAPE)
    for model in (spss, convnet):
        model.eval()
        with torch.no_grad():
            ref = model(x)
        model.to(memory_format=torch.channels_last_3d)
        out = model(x.to(memory_format=torch.channels_last_3d))
        for a, b in zip(
            out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        (out[0] if isinstance(out, tuple) else out).sum().backward()


def test_autocast_bfloat16(spss, convnet):
    x = torch.randn(SHAPE)
    weight = torch.rand(SHAPE[0], *SHAPE[2:]) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = spss(x)
        scores = spss.scores(out, weight, 0.5)
        reg = convnet(x)
    assert out.cac_logits.dtype == out.artery_logits.dtype == torch.float32
    assert scores.dtype == reg.dtype == torch.float32
    assert torch.isfinite(scores).all() and torch.isfinite(reg).all()
    (scores.sum() + reg.sum()).backward()
    assert float(_first_backbone_weight(spss).grad.abs().sum()) > 0


def test_both_cohorts_share_one_module(spss):
    """Siamese: gated and non-gated crops run through the same parameters, no branch."""
    spss.eval()
    gated, nongated = torch.randn(1, *SHAPE[1:]), torch.randn(1, *SHAPE[1:])
    params = {id(p) for p in spss.parameters()}
    grads = []
    for x in (gated, nongated):
        spss.zero_grad(set_to_none=True)
        out = spss(x)
        (out.cac_logits.mean() + out.artery_logits.mean()).backward()
        grads.append({id(p) for p in spss.parameters() if p.grad is not None})
    assert grads[0] == grads[1] == params
    # one batch holding both cohorts = two separate calls (instance norm: no batch coupling)
    with torch.no_grad():
        both = spss(torch.cat([gated, nongated]))
        torch.testing.assert_close(both.cac_logits[1:], spss(nongated).cac_logits, rtol=1e-4, atol=1e-5)


def test_artery_head_at_half_resolution_gives_full_size_maps():
    """artery_level 1: the large atrous block reads the half-resolution decoder level; its logits are upsampled."""
    net = build_model("spss", {**TINY_SPSS, "artery_level": 1})
    out = net(torch.randn(SHAPE))
    assert out.cac_logits.shape == (2, 2, *SHAPE[2:]) and out.artery_logits.shape == (2, 4, *SHAPE[2:])
    assert net.artery_head.proj.conv.in_channels == TINY_SPSS["channels"][1]  # the decoder level's width
    assert net._decoder_features is None  # the hooked activation is not kept past the call
    full = build_model("spss", TINY_SPSS)
    assert sum(p.numel() for p in net.parameters()) != sum(p.numel() for p in full.parameters())
    net.artery_head.classifier.bias.data = torch.tensor([5.0, 0.0, 0.0, 0.0])  # LM everywhere ...
    net.artery_head.classifier.weight.data.zero_()
    assert bool((net.predict_labels(net(torch.randn(SHAPE))) != 2).all())  # ... whatever the upsampling


@pytest.mark.parametrize("level", [2, -1, True])
def test_artery_level_must_be_a_decoder_level(level):
    with pytest.raises(ValueError, match="artery_level"):
        build_model("spss", {**TINY_SPSS, "artery_level": level})


def test_convnet_input_pool_keeps_a_one_voxel_calcification():
    """input_pool (2, 2, 1) max-pools x and y: a single bright voxel survives, the minimum size doubles in-plane."""
    net = build_model("convnet", {**TINY_CONVNET, "input_pool": [2, 2, 1]})
    assert net.config.input_pool == (2, 2, 1) and net.config.min_size_zyx == (4, 8, 8)
    pool = net.features[0]
    x = torch.zeros(1, 1, 4, 8, 8)
    x[0, 0, 1, 3, 5] = 0.6
    assert float(pool(x).max()) == pytest.approx(0.6) and pool(x).shape == (1, 1, 4, 4, 4)
    assert net(torch.randn(2, 1, 4, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"at least \(4, 8, 8\)"):
        net(torch.randn(1, 1, 4, 4, 8))
    with pytest.raises(ValueError, match="input_pool"):
        build_model("convnet", {**TINY_CONVNET, "input_pool": [2, 2]})
