"""MobileHumanPose parity with the official code, through the golden fixtures in tests/data/golden/models.

Each fixture pins the official state-dict layout, a deterministic weight fill and input, and the
coordinates the official code produced; see tests/data/golden/README.md.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import golden
from helpers.models import build_model, get_spec
from helpers.models.mobilehumanpose import build_lpski

MODEL_IDS = ("mobilehumanpose_lpski", "mobilehumanpose_lpski_2021", "mobilehumanpose_lpres",
             "mobilehumanpose_lpwo")
PREFIX = "module."


def _strip(key: str) -> str:
    assert key.startswith(PREFIX), f"fixture key without the DataParallel prefix: {key}"
    return key[len(PREFIX):]


@lru_cache(maxsize=None)
def _loaded(fixture_path: str):
    """(fixture, model with the rule-v1 weights loaded strictly, official-order state-dict check list)."""
    fixture = json.loads(open(fixture_path).read())
    model = build_model(fixture["model_id"])
    filled = golden.fill_state_dict(fixture)
    model.load_state_dict({_strip(k): v for k, v in filled.items()}, strict=True)
    return fixture, model.eval()


@lru_cache(maxsize=None)
def _run(fixture_path: str):
    """Coords of model(x) and the backbone logits averaged over H, W (captured on the same pass)."""
    fixture, model = _loaded(fixture_path)
    captured = {}
    hook = model.backbone.register_forward_hook(lambda _m, _i, out: captured.setdefault("logits", out))
    try:
        with torch.no_grad():
            coords = model(golden.fixture_input(fixture))
    finally:
        hook.remove()
    return coords.numpy(), captured["logits"].mean(dim=(2, 3)).numpy()


@pytest.fixture(params=MODEL_IDS)
def fixture_path(request, golden_models_dir):
    path = golden_models_dir / f"{request.param}.json"
    assert path.is_file(), f"golden fixture missing: {path}"
    return str(path)


@pytest.fixture(autouse=True)
def _two_threads():
    # The fixtures were produced with 2 threads; keep the run comparable and CI-friendly.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_state_dict_matches_official_layout(fixture_path):
    fixture = json.loads(open(fixture_path).read())
    model = build_model(fixture["model_id"])
    state = model.state_dict()
    expected = [(_strip(k), tuple(shape), dtype) for k, shape, dtype in fixture["state_dict"]]
    actual = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert actual == expected  # names, shapes, dtypes and the official order
    assert len(state) == fixture["num_state_dict_entries"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == fixture["num_params_trainable"]
    assert sum(v.numel() for v in state.values()) == fixture["num_tensors_incl_buffers_numel"]
    spec = get_spec(fixture["model_id"])
    assert (spec.num_params, spec.num_params_incl_buffers) == (
        fixture["num_params_trainable"], fixture["num_tensors_incl_buffers_numel"])
    assert spec.output_shape == tuple(fixture["config"]["output_shape"])
    assert spec.depth_dim == fixture["config"]["depth_dim"]


def test_fill_matches_fixture_checks(fixture_path):
    # Guards the test's own fill (rule v1 + final-layer multiplier) before it is used as a judge.
    fixture = json.loads(open(fixture_path).read())
    filled = golden.fill_state_dict(fixture)
    for check in fixture["fill"]["checks"]:
        value = filled[check["key"]].numpy().ravel()
        np.testing.assert_array_equal(value[:4], np.float32(check["first_values"]))
        assert value.astype(np.float64).sum() == pytest.approx(check["sum_float64"], rel=1e-9, abs=1e-9)
    x = golden.fixture_input(fixture).numpy()
    np.testing.assert_array_equal(x.ravel()[:4], np.float32(fixture["input"]["first_values"]))


def test_coords_match_official(fixture_path):
    fixture, _ = _loaded(fixture_path)
    coords, _ = _run(fixture_path)
    expected = golden.expected_coords(fixture)
    assert coords.shape == tuple(fixture["expected"]["shape"]) and coords.dtype == np.float32
    diff = np.abs(coords.astype(np.float64) - expected)
    assert diff.max() <= golden.atol(fixture), f"max |coords - official| = {diff.max():.3g}"


def test_logits_match_official_channel_means(fixture_path, golden_models_dir):
    # Layer-level evidence: the pre-softmax logits averaged over H, W equal the official ones.
    fixture, _ = _loaded(fixture_path)
    _, channel_mean = _run(fixture_path)
    reference = np.load(golden_models_dir / fixture["npz"]["file"])["head_out_channel_mean"]
    assert channel_mean.shape == reference.shape
    logit_std = fixture["diagnostics"]["head_out_std"]
    assert np.abs(channel_mean - reference).max() <= 1e-4 * logit_std


def test_align_corners_false_breaks_parity(fixture_path):
    """Negative control: the official bilinear x2 uses align_corners=True; False must move coords far."""
    fixture, model = _loaded(fixture_path)
    wrong = copy.deepcopy(model)
    upsamplers = [m for m in wrong.modules() if isinstance(m, nn.Upsample)]
    assert upsamplers and all(m.align_corners is True for m in upsamplers)
    for m in upsamplers:
        m.align_corners = False
    with torch.no_grad():
        coords = wrong(golden.fixture_input(fixture)).numpy().astype(np.float64)
    moved = np.abs(coords - golden.expected_coords(fixture)).max()
    tol = golden.atol(fixture)
    assert moved > 100 * tol
    # The official code under the same wrong setting moved by this much; ours must agree.
    official_moved = fixture["negative_controls_max_abs_coord_diff"]["bilinear_align_corners_False"]
    assert moved == pytest.approx(official_moved, abs=2 * tol)


def test_swapped_skip_concat_order_breaks_parity(golden_models_dir):
    """Negative control: cat([decoder, skip]) instead of cat([skip, decoder]) loads the same weights
    but must not reproduce the official coords."""
    fixture_path = str(golden_models_dir / "mobilehumanpose_lpski.json")
    fixture, model = _loaded(fixture_path)
    wrong = copy.deepcopy(model)
    for name in ("deconv0", "deconv1", "deconv2"):
        block = getattr(wrong.backbone, name)
        skip_channels = block[0].out_channels  # the skip is as wide as the block's mid layer
        block.register_forward_pre_hook(
            lambda _m, args, c=skip_channels: (torch.cat([args[0][:, c:], args[0][:, :c]], dim=1),))
    with torch.no_grad():
        coords = wrong(golden.fixture_input(fixture)).numpy().astype(np.float64)
    assert np.abs(coords - golden.expected_coords(fixture)).max() > 100 * golden.atol(fixture)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_registry_gmacs_match_flop_counter(model_id):
    spec = get_spec(model_id)
    model = build_model(model_id).to("meta")  # shapes only: counting needs no real arithmetic
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(torch.empty(1, 3, *spec.input_shape, device="meta"))
    assert out.shape == (1, spec.joint_num, 3)
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert spec.gmacs == pytest.approx(gmacs, abs=5e-4)


def test_other_joint_numbers_and_output_range():
    model = build_lpski(joint_num=21).eval()  # MuCo-3DHP uses 21 joints
    assert model.backbone.final_layer.out_channels == 21 * 32
    with torch.no_grad():
        coords = model(torch.randn(2, 3, 64, 64))
    assert coords.shape == (2, 21, 3)
    # 64 / 8 = 8 output pixels; soft-argmax expectations lie inside the heatmap volume.
    assert torch.all(coords[..., :2] >= 0) and torch.all(coords[..., :2] <= 7)
    assert torch.all(coords[..., 2] >= 0) and torch.all(coords[..., 2] <= 31)


@pytest.mark.parametrize("shape", [(1, 3, 250, 256), (1, 1, 256, 256), (3, 256, 256)])
def test_bad_input_shape_is_rejected(shape):
    with pytest.raises(ValueError, match="MobileHumanPose"):
        build_lpski()(torch.zeros(shape))


@pytest.mark.parametrize("joint_num", [0, -3, 2.5, True])
def test_bad_joint_num_is_rejected(joint_num):
    with pytest.raises(ValueError, match="joint_num"):
        build_lpski(joint_num=joint_num)
