"""Registry metadata against fresh models: parameter counts, GMACs, input/output shapes.

The registry's numbers come from the papers, the official code and the golden fixtures; here they are checked against models
built now, against the fixtures' own counts, and (where no fixture exists) against an independent
analytic count.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers.models import MODEL_REGISTRY, get_spec, list_models

GMACS_RTOL = 0.01
ALL_IDS = list_models()


@functools.lru_cache(maxsize=None)
def _measure(model_id: str) -> dict:
    """Build once; count parameters; one batch-1 forward on zeros at input_shape under FlopCounterMode."""
    spec = get_spec(model_id)
    model = spec.build()
    shapes: dict[str, tuple] = {}

    def remember(name):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                shapes["last"] = tuple(output.shape)
                shapes[name] = tuple(output.shape)
        return hook

    handles = [m.register_forward_hook(remember(n)) for n, m in model.named_modules() if not list(m.children())]
    x = torch.zeros(1, 3, *spec.input_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x, torch.full((1, 1), 3000.0)) if spec.kind == "root" else model(x)
    for h in handles:
        h.remove()
    result = dict(
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        num_params_incl_buffers=sum(v.numel() for v in model.state_dict().values()),
        gmacs=counter.get_total_flops() / 2 / 1e9,  # flop_counter counts 2 FLOPs per multiply-accumulate
        out_shape=tuple(out.shape), out_dtype=out.dtype,
        heatmap_shape=shapes["root.xy_layer"] if spec.kind == "root" else shapes["last"],
    )
    del model
    return result


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_param_counts_match_registry(model_id):
    spec, measured = get_spec(model_id), _measure(model_id)
    assert spec.num_params is not None and spec.num_params_incl_buffers is not None, f"{model_id}: counts not filled"
    assert measured["num_params"] == spec.num_params
    assert measured["num_params_incl_buffers"] == spec.num_params_incl_buffers


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_gmacs_match_a_fresh_count(model_id):
    spec, measured = get_spec(model_id), _measure(model_id)
    assert spec.gmacs is not None, f"{model_id}: gmacs not filled in the registry"
    assert measured["gmacs"] == pytest.approx(spec.gmacs, rel=GMACS_RTOL)


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_input_and_output_shapes(model_id):
    spec, measured = get_spec(model_id), _measure(model_id)
    assert measured["out_dtype"] == torch.float32
    if spec.kind == "root":
        assert measured["out_shape"] == (1, 3)
        assert measured["heatmap_shape"] == (1, 1, *spec.output_shape)
    else:
        assert measured["out_shape"] == (1, spec.joint_num, 3)
        # the last 4-D layer output is the logit volume: J*D channels on the declared heatmap
        assert measured["heatmap_shape"] == (1, spec.joint_num * spec.depth_dim, *spec.output_shape)
    assert len(spec.joint_names) == spec.joint_num
    assert all(max(pair) < spec.joint_num for pair in spec.flip_pairs)


def test_registry_counts_equal_golden_fixtures(golden_models_dir):
    fixtures = [json.loads(p.read_text()) for p in sorted(golden_models_dir.glob("*.json"))]
    canonical = [f for f in fixtures if f["key_layout"] == "canonical"]
    assert canonical
    for fixture in canonical:
        model_id = fixture["model_id"]
        assert model_id in MODEL_REGISTRY, f"fixture {model_id} has no registry entry"
        spec = MODEL_REGISTRY[model_id]
        assert spec.num_params == fixture["num_params_trainable"], model_id
        assert spec.num_params_incl_buffers == fixture["num_tensors_incl_buffers_numel"], model_id
        assert spec.output_shape == tuple(fixture["config"].get("output_shape", spec.output_shape)), model_id
        if "depth_dim" in fixture["config"]:
            assert spec.depth_dim == fixture["config"]["depth_dim"], model_id


def _resnet_pose_counts(blocks: tuple[int, ...], out_channels: int) -> tuple[int, int]:
    """(trainable, state-dict numel) of a Bottleneck ResNet + 3x256 deconv head + 1x1 conv, by arithmetic."""
    params, bn_channels = 3 * 64 * 49, [64]  # conv1 7x7 and bn1
    in_ch = 64
    for planes, count in zip((64, 128, 256, 512), blocks):
        for b in range(count):
            params += in_ch * planes + planes * planes * 9 + planes * 4 * planes
            bn_channels += [planes, planes, 4 * planes]
            if b == 0:
                params += in_ch * 4 * planes
                bn_channels.append(4 * planes)
            in_ch = 4 * planes
    params += 2048 * 256 * 16 + 2 * 256 * 256 * 16 + 256 * out_channels + out_channels
    bn_channels += [256, 256, 256]
    params += 2 * sum(bn_channels)  # BN weight and bias
    buffers = 2 * sum(bn_channels) + len(bn_channels)  # running mean/var + num_batches_tracked
    return params, params + buffers


def test_counts_without_fixture_follow_from_independent_arithmetic(golden_models_dir):
    # the arithmetic is anchored on the fixtures first
    for fixture_id, blocks in (("integral_r50", (3, 4, 6, 3)), ("integral_r152", (3, 8, 36, 3))):
        fixture = json.loads((golden_models_dir / f"{fixture_id}.json").read_text())
        assert _resnet_pose_counts(blocks, 18 * 64) == (fixture["num_params_trainable"],
                                                        fixture["num_tensors_incl_buffers_numel"])
    r101 = get_spec("integral_r101")
    assert (r101.num_params, r101.num_params_incl_buffers) == _resnet_pose_counts((3, 4, 23, 3), 18 * 64)
    challenge = get_spec("integral_r152_challenge")
    assert (challenge.num_params, challenge.num_params_incl_buffers) == _resnet_pose_counts((3, 8, 36, 3), 18 * 72)


def test_integral_challenge_entry_matches_the_official_config():
    # hm36_challenge yaml d-mch_384x288: patch_height 384, patch_width 288, depth_dim 72, 18 joints
    spec = get_spec("integral_r152_challenge")
    assert spec.input_shape == (384, 288) and spec.output_shape == (96, 72) and spec.depth_dim == 72
    assert spec.builder_kwargs["input_shape"] == spec.input_shape
    assert spec.mean == (123.675, 116.28, 103.53) and spec.std == (58.395, 57.12, 57.375)


# ConvNeXtPose paper GFLOPs (really MACs, thop-style), from the paper's variant table
PAPER_GMACS = {"convnextpose_XS": 0.82, "convnextpose_S": 1.76, "convnextpose_M": 2.82, "convnextpose_L": 4.30}


@pytest.mark.parametrize("model_id", sorted(PAPER_GMACS))
def test_convnextpose_gmacs_close_to_paper(model_id):
    # flop_counter counts convolutions only; the paper's counter also counts BN, ReLU and upsampling,
    # so ours is slightly lower. 2 % covers that; a wrong head width or upsampling flag moves it far more.
    measured = _measure(model_id)["gmacs"]
    assert 0.98 * PAPER_GMACS[model_id] <= measured <= PAPER_GMACS[model_id]


def test_every_spec_declares_what_its_model_produces():
    """The declared heatmap size, depth bins and joints equal what each model's soft-argmax sees."""
    from helpers.models.common import check_declarations

    from helpers.models.registry import own_model_ids

    for model_id, spec in MODEL_REGISTRY.items():
        if model_id in own_model_ids():  # family files other tests loaded (one of them mis-declared on purpose)
            continue
        model = spec.build() if spec.kind == "root" else None  # RootNet's forward does not run on "meta"
        checked = check_declarations(spec, model)
        assert checked["verified"] and checked["method"] == "soft-argmax", model_id
        assert checked["found"]["output_shape"] == list(spec.output_shape), model_id


def test_declarations_of_a_model_without_our_soft_argmax_are_probed():
    """A model that decodes its own way is checked by the last 4-D tensor of its forward, and its output shape."""
    import dataclasses

    import pytest
    import torch
    from torch import nn

    from helpers.models.common import DeclarationError, check_declarations

    class OwnDecode(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 18 * 4, kernel_size=8, stride=8)  # 32x32 heatmaps, 4 depth bins

        def forward(self, x):
            logits = self.head(x)
            n, _, h, w = logits.shape
            flat = logits.reshape(n, 18, -1).argmax(-1)  # a hard argmax, not ours
            return torch.stack([flat % w, (flat // w) % h, flat // (h * w)], dim=2).float()

    spec = dataclasses.replace(MODEL_REGISTRY["convnextpose_XS"], builder=OwnDecode, builder_kwargs={},
                               output_shape=(32, 32), depth_dim=4)
    checked = check_declarations(spec)
    assert checked["verified"] and checked["method"] == "last 4-D tensor"
    with pytest.raises(DeclarationError, match=r"output_shape \[32, 32\] \(declared \[64, 64\]\).*depth_dim 4"):
        check_declarations(dataclasses.replace(spec, output_shape=(64, 64), depth_dim=8))
