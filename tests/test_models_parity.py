"""Architecture parity of ConvNeXtPose, PoseNet, RootNet and Integral against the golden fixtures.

Each model is built from the registry, filled by rule v1 (tests/golden.py), loaded strictly and run on
the fixture input; its coordinates must match the official code's within the fixture's atol. Negative
controls show that wrong architecture details break parity by far more than atol.
"""
from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch

import golden
from helpers.models import build_model
from helpers.models.common import soft_argmax_2d, soft_argmax_3d
from helpers.models.convnextpose import DeConv, build_convnextpose
from helpers.models.integral import build_integral
from helpers.models.rootnet import RootNetHead

FAMILY_PREFIXES = ("convnextpose_", "posenet", "rootnet", "integral_")
PARITY_IDS = ["convnextpose_XS", "convnextpose_S", "convnextpose_M", "convnextpose_L",
              "posenet", "rootnet", "integral_r50", "integral_r152"]


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _load(model_id: str):
    """(model with the fixture's weights, fixture, input, extra inputs)."""
    fixture = golden.load_fixture(golden.GOLDEN_MODELS / f"{model_id}.json")
    model = build_model(model_id)
    state = {_strip(k): v for k, v in golden.fill_state_dict(fixture).items()}
    model.load_state_dict(state, strict=True)
    return model.eval(), fixture, golden.fixture_input(fixture), golden.fixture_extra_inputs(fixture)


# The negative controls reuse these loaded models instead of building and filling them again.
CONTROL_IDS = ("convnextpose_XS", "rootnet")
_loaded = functools.lru_cache(maxsize=len(CONTROL_IDS))(_load)


def _run(model, x, extra) -> np.ndarray:
    with torch.no_grad():
        out = model(x, extra["k"]) if "k" in extra else model(x)
    return out.double().numpy()


def test_every_fixture_of_these_families_is_covered(golden_models_dir):
    canonical = {json.loads(p.read_text())["model_id"]: json.loads(p.read_text())["key_layout"]
                 for p in golden_models_dir.glob("*.json") if "_legacy_keys" not in p.name}
    ours = {m for m, layout in canonical.items() if m.startswith(FAMILY_PREFIXES) and layout == "canonical"}
    assert ours == set(PARITY_IDS)


def test_fill_rule_and_input_reproduce_fixture_checks(golden_models_dir):
    # The harness itself must reproduce the fixture's own check values, or parity would prove nothing.
    for model_id in ("convnextpose_XS", "rootnet"):
        fixture = golden.load_fixture(golden_models_dir / f"{model_id}.json")
        shapes = {k: s for k, s, _ in fixture["state_dict"]}
        mult_keys = set(fixture["fill"]["final_layer_multiplier"]["keys"])
        mult = fixture["fill"]["final_layer_multiplier"]["multiplier"]
        for check in fixture["fill"]["checks"]:
            value = golden.fill_value(check["key"], shapes[check["key"]], fixture["fill"]["seed"]).astype(np.float64)
            if check["key"] in mult_keys:
                value = value * mult
            np.testing.assert_allclose(value.ravel()[:4], check["first_values"], rtol=1e-6)
            assert value.sum() == pytest.approx(check["sum_float64"], rel=1e-9, abs=1e-9)
        x = golden.fixture_input(fixture).double().numpy()
        np.testing.assert_allclose(x.ravel()[:4], fixture["input"]["first_values"], rtol=1e-6)
        assert x.sum() == pytest.approx(fixture["input"]["sum_float64"], rel=1e-9)


@pytest.mark.parametrize("model_id", PARITY_IDS)
def test_golden_parity(model_id, golden_models_dir):
    model, fixture, x, extra = (_loaded if model_id in CONTROL_IDS else _load)(model_id)
    # loading never changes names, shapes or dtypes, so the loaded model shows the built layout
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    theirs = [(_strip(k), list(s), d) for k, s, d in fixture["state_dict"]]
    assert ours == theirs, "state-dict keys, order, shapes or dtypes differ from the official layout"
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == fixture["num_params_trainable"]
    assert sum(v.numel() for v in model.state_dict().values()) == fixture["num_tensors_incl_buffers_numel"]
    assert len(ours) == fixture["num_state_dict_entries"]

    coords = _run(model, x, extra)
    expected = golden.expected_coords(fixture)
    assert coords.shape == expected.shape == tuple(fixture["expected"]["shape"])
    tol = golden.atol(fixture)  # RootNet: per component [x, y, z]
    diff = np.abs(coords - expected)
    assert (diff <= tol).all(), f"max |diff| per component {diff.reshape(-1, 3).max(axis=0)} > atol {tol}"

    if "coords_normalized" in fixture["expected"]:
        with torch.no_grad():
            normalized = model.decode_normalized(torch.from_numpy(coords).float()).double().numpy()
        np.testing.assert_allclose(normalized, np.asarray(fixture["expected"]["coords_normalized"]),
                                   rtol=0, atol=fixture["tolerance"]["atol_normalized"])


def test_negative_controls_break_convnextpose_parity():
    model, fixture, x, extra = _loaded("convnextpose_XS")
    expected = golden.expected_coords(fixture)
    tol = golden.atol(fixture)

    wrong_upsample = copy.deepcopy(model)
    for layer in wrong_upsample.modules():
        if isinstance(layer, DeConv):
            layer.align_corners = False
    assert np.abs(_run(wrong_upsample, x, extra) - expected).max() > 100 * tol

    wrong_eps = copy.deepcopy(model)
    for layer in wrong_eps.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.eps = 1e-3
    assert np.abs(_run(wrong_eps, x, extra) - expected).max() > 10 * tol

    with torch.no_grad():
        logits = model.heatmap_logits(x)
    n, _, h, w = logits.shape
    joints, depth = model.joint_num, model.depth_dim
    # read the channels as (D, J) instead of (J, D)
    swapped = logits.reshape(n, depth, joints, h, w).transpose(1, 2).reshape(n, joints * depth, h, w)
    assert np.abs(soft_argmax_3d(swapped, joints, depth).double().numpy() - expected).max() > 1000 * tol


def test_negative_control_stride_on_first_1x1_breaks_rootnet_depth():
    model, fixture, x, extra = _loaded("rootnet")
    wrong = copy.deepcopy(model)
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(wrong.backbone, name)[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)  # ResNet v1 instead of torchvision's v1.5
    diff = np.abs(_run(wrong, x, extra) - golden.expected_coords(fixture))
    assert diff[:, 2].max() > 100 * golden.atol(fixture)[2]


def _numpy_soft_argmax_3d(logits: np.ndarray, joints: int, depth: int) -> np.ndarray:
    n, _, h, w = logits.shape
    out = np.zeros((n, joints, 3))
    for i in range(n):
        for j in range(joints):
            vol = logits[i, j * depth:(j + 1) * depth].astype(np.float64)  # (D, H, W)
            p = np.exp(vol - vol.max())
            p /= p.sum()
            d_idx, h_idx, w_idx = np.meshgrid(np.arange(depth), np.arange(h), np.arange(w), indexing="ij")
            out[i, j] = [(p * w_idx).sum(), (p * h_idx).sum(), (p * d_idx).sum()]
    return out


def test_soft_argmax_3d_matches_independent_numpy():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3 * 4, 5, 7, generator=gen)  # J=3, D=4, H=5, W=7: every axis distinct
    ours = soft_argmax_3d(logits, 3, 4)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 3)
    np.testing.assert_allclose(ours.double().numpy(), _numpy_soft_argmax_3d(logits.numpy(), 3, 4), atol=1e-5)

    half = soft_argmax_3d(logits.bfloat16(), 3, 4)  # reduced precision in, float32 softmax and result out
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, soft_argmax_3d(logits.bfloat16().float(), 3, 4), rtol=0, atol=0)

    with pytest.raises(ValueError, match="joint_num\\*depth_dim"):
        soft_argmax_3d(logits, 3, 5)


def test_soft_argmax_2d_matches_independent_numpy():
    gen = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(2, 1, 6, 9, generator=gen)
    ours = soft_argmax_2d(logits)
    assert ours.shape == (2, 1, 2)
    for i in range(2):
        p = np.exp(logits[i, 0].double().numpy())
        p /= p.sum()
        expected = [(p * np.arange(9)[None, :]).sum(), (p * np.arange(6)[:, None]).sum()]
        np.testing.assert_allclose(ours[i, 0].double().numpy(), expected, atol=1e-6)


def test_convnextpose_under_autocast_returns_float32_coords():
    model = build_convnextpose((1, 1, 1, 1), (8, 16, 32, 64), 16, (True, True, True), depth_dim=4, joint_num=2).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        coords = model(x)
    assert coords.dtype == torch.float32 and coords.shape == (1, 2, 3)
    upper = torch.tensor([15.0, 15.0, 3.0])  # heatmap 16x16 (64/32 * 8), depth 4, all 0-based
    assert torch.isfinite(coords).all() and (coords >= 0).all() and (coords <= upper).all()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 60, 64))


def test_rootnet_accepts_k_of_any_shape_with_n_elements():
    head = RootNetHead().eval()
    feature = torch.randn(2, 2048, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = head(feature, torch.tensor([[3000.0], [4500.0]]))
        assert reference.shape == (2, 3)
        for k in (torch.tensor([3000.0, 4500.0]), torch.tensor([[3000.0, 4500.0]])):
            torch.testing.assert_close(head(feature, k), reference, rtol=0, atol=0)
        gamma = head.depth_layer(feature.mean(dim=(2, 3), keepdim=True)).reshape(-1)
        torch.testing.assert_close(reference[:, 2], gamma * torch.tensor([3000.0, 4500.0]))
        with pytest.raises(ValueError, match="one k value per image"):
            head(feature, torch.tensor([3000.0]))


def test_integral_normalized_decode_uses_width_height_depth_order():
    model = build_integral(depth=50, input_shape=(384, 288), depth_dim=72)
    assert model.output_shape == (96, 72)  # (H, W) = input / 4
    coords = torch.tensor([[[71.0, 95.0, 71.0], [0.0, 0.0, 0.0]]])
    expected = torch.tensor([[[71 / 72 - 0.5, 95 / 96 - 0.5, 71 / 72 - 0.5], [-0.5, -0.5, -0.5]]])
    torch.testing.assert_close(model.decode_normalized(coords), expected)
    with pytest.raises(ValueError, match="multiples of 32"):
        build_integral(depth=50, input_shape=(384, 290))
