"""ConvNeXtPose (IEEE Access 2023): ConvNeXt with BatchNorm + ReLU and a 3-DeConv head (helpers/README.md, "Models").

The whole family in one file: architecture, the XS/S/M/L keyword configs, the legacy-key filter and its
inverse, and the notebook text.

Module names reproduce the official state-dict keys (without `module.`): `backbone.downsample_layers.*`,
`backbone.stages.*`, `backbone.norm`, `head.deconv_layers_{1,2,3}.{dwconv,norm,pwconv}`, `head.final_layer`.
Some released files (and our M/L demo checkpoints) spell the head `head.deconv_layers_N.0/.1/.2`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_input, soft_argmax_3d
from .spec import CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText, PaperResult

BACKBONE_STRIDE = 32


class ConvNeXtBNBlock(nn.Module):
    """dwconv 7x7 -> BN -> 1x1 to 4*dim -> ReLU -> 1x1 back -> residual (no layer scale, no drop path)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Conv2d(dim, 4 * dim, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.pwconv2 = nn.Conv2d(4 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))


class ConvNeXtBNBackbone(nn.Module):
    """Stem conv 4x4/4 + BN, then per stage (BN + conv 2x2/2 for stages 1-3) and blocks; a final BN. Stride 32."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int]):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXt needs 4 stages, got depths={tuple(depths)} dims={tuple(dims)}")
        stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), nn.BatchNorm2d(dims[0]))
        downsamples = [nn.Sequential(nn.BatchNorm2d(dims[i - 1]),
                                     nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2))
                       for i in range(1, 4)]
        self.downsample_layers = nn.ModuleList([stem, *downsamples])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBNBlock(dims[i]) for _ in range(depths[i]))) for i in range(4))
        self.norm = nn.BatchNorm2d(dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x)


class DeConv(nn.Module):
    """dwconv 3x3 -> BN(in) -> 1x1 in->out -> ReLU -> optional bilinear x2 upsample.

    The official head uses `nn.UpsamplingBilinear2d`, i.e. align_corners=True; `align_corners` is an
    attribute so a test can show that the other choice breaks parity.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.dwconv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels)
        self.norm = nn.BatchNorm2d(in_channels)
        self.pwconv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.upsample = bool(upsample)
        self.align_corners = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.pwconv(self.norm(self.dwconv(x))))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        return x

    def extra_repr(self) -> str:
        return f"upsample={self.upsample}, align_corners={self.align_corners}"


class ConvNeXtPoseHead(nn.Module):
    def __init__(self, in_channels: int, width: int, upsample: Sequence[bool], out_channels: int):
        super().__init__()
        if len(upsample) != 3:
            raise ValueError(f"the ConvNeXtPose head has 3 DeConv layers; got upsample flags {tuple(upsample)}")
        self.deconv_layers_1 = DeConv(in_channels, width, upsample[0])
        self.deconv_layers_2 = DeConv(width, width, upsample[1])
        self.deconv_layers_3 = DeConv(width, width, upsample[2])
        self.final_layer = nn.Conv2d(width, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers_3(self.deconv_layers_2(self.deconv_layers_1(x))))


class ConvNeXtPose(nn.Module):
    """`model(x)`: (N, 3, H, W) normalised image -> (N, J, 3) heatmap units (x, y pixels, z depth bin)."""

    def __init__(self, depths, dims, head_width, upsample, depth_dim, joint_num=18):
        super().__init__()
        self.joint_num = int(joint_num)
        self.depth_dim = int(depth_dim)
        self.backbone = ConvNeXtBNBackbone(depths, dims)
        self.head = ConvNeXtPoseHead(dims[-1], head_width, upsample, self.joint_num * self.depth_dim)

    def heatmap_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax heatmaps (N, J*D, H_out, W_out), channel index j*D + d."""
        check_input(x, BACKBONE_STRIDE, "ConvNeXtPose")
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_argmax_3d(self.heatmap_logits(x), self.joint_num, self.depth_dim)


def build_convnextpose(depths: Sequence[int], dims: Sequence[int], head_width: int, upsample: Sequence[bool],
                       depth_dim: int, joint_num: int = 18) -> ConvNeXtPose:
    """A ConvNeXtPose variant; `FAMILY` below holds the official settings of XS, S, M and L."""
    return ConvNeXtPose(tuple(depths), tuple(dims), int(head_width), tuple(bool(u) for u in upsample),
                        depth_dim, joint_num)


# ------------------------------------------------------------------------------------------ checkpoint keys
_LEGACY_HEAD = re.compile(r"^(head\.deconv_layers_\d+)\.([012])\.(.+)$")
_CANONICAL_HEAD = re.compile(r"^(head\.deconv_layers_\d+)\.(dwconv|norm|pwconv)\.(.+)$")
_LEGACY_NAMES = {"0": "dwconv", "1": "norm", "2": "pwconv"}
_LEGACY_INDEX = {name: index for index, name in _LEGACY_NAMES.items()}
LEGACY_HEAD_VARIANTS = ("M", "L")  # demo checkpoints of these variants use the legacy head keys


def filter_keys(state_dict: Mapping) -> tuple[dict, list[str]]:
    """Legacy head keys `head.deconv_layers_N.0/.1/.2` -> `.dwconv/.norm/.pwconv` (ConvNeXtPose files only)."""
    is_convnextpose = any(k.startswith("backbone.downsample_layers.") for k in state_dict)
    if not is_convnextpose or not any(_LEGACY_HEAD.match(k) for k in state_dict):
        return dict(state_dict), []
    out, renamed = {}, 0
    for key, value in state_dict.items():
        m = _LEGACY_HEAD.match(key)
        if m:
            key = f"{m.group(1)}.{_LEGACY_NAMES[m.group(2)]}.{m.group(3)}"
            renamed += 1
        out[key] = value
    return out, [f"ConvNeXtPose legacy head keys deconv_layers_N.0/.1/.2 -> dwconv/norm/pwconv ({renamed} keys)"]


def official_keys(spec: ModelSpec, state_dict: Mapping) -> dict:
    """The inverse of `filter_keys` for the variants whose released files use the legacy head keys."""
    if spec.variant not in LEGACY_HEAD_VARIANTS:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        m = _CANONICAL_HEAD.match(key)
        out[f"{m.group(1)}.{_LEGACY_INDEX[m.group(2)]}.{m.group(3)}" if m else key] = value
    return out


# ------------------------------------------------------------------------------------------------ variants
_DRIVE_FOLDER = "12H7zkLvmJtrkCmAUAPkQ6788WAnO60gI"
_PAPER_SOURCE = "ConvNeXtPose paper variant table (XS, S); official README (M, L)"


def _variant(variant: str, *, depths, dims, head_width, upsample, heatmap, num_params, num_params_incl_buffers,
             gmacs, p2_mpjpe, p1_pa_mpjpe, drive_id, size_mb) -> ModelSpec:
    return ModelSpec(
        model_id=f"convnextpose_{variant}", family="convnextpose", variant=variant, builder=build_convnextpose,
        builder_kwargs=dict(depths=depths, dims=dims, head_width=head_width, upsample=upsample, depth_dim=heatmap),
        output_shape=(heatmap, heatmap), depth_dim=heatmap, num_params=num_params,
        num_params_incl_buffers=num_params_incl_buffers, gmacs=gmacs,
        paper=PaperResult(p2_mpjpe=p2_mpjpe, p1_pa_mpjpe=p1_pa_mpjpe, source=_PAPER_SOURCE),
        checkpoints=(CheckpointSource(f"ConvNeXtPose_{variant}.tar", drive_id=drive_id, drive_folder=_DRIVE_FOLDER,
                                      approx_size_mb=size_mb, note="PyTorch zip checkpoint despite the .tar name"),),
        default_batch_size=128 if variant in ("XS", "S") else 64,
    )


# As published (IEEE Access 11, 2023; DOI record); key of the official README's entry.
CITATION = """@article{nguyen2023convnextpose,
  title   = {{ConvNeXtPose}: A Fast Accurate Method for {3D} Human Pose Estimation and Its {AR} Fitness
             Application in Mobile Devices},
  author  = {Nguyen, Hong Son and Kim, Myounggon and Im, Changbin and Han, Sanghoon and Han, JungHyun},
  journal = {IEEE Access},
  volume  = {11},
  pages   = {117393--117402},
  year    = {2023},
  doi     = {10.1109/ACCESS.2023.3326343}
}"""

_SMALL = dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 384))

FAMILY = Family(
    name="convnextpose", display_name="ConvNeXtPose",
    models=(
        _variant("XS", depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), head_width=128, upsample=(True, True, False),
                 heatmap=32, num_params=3_528_008, num_params_incl_buffers=3_534_140, gmacs=0.815, p2_mpjpe=56.61,
                 p1_pa_mpjpe=None, drive_id="165D0rU2GImmRe7u7DNe6eKJG8voBIcGh", size_mb=42.5),
        _variant("S", **_SMALL, head_width=256, upsample=(True, True, False), heatmap=32, num_params=7_438_976,
                 num_params_incl_buffers=7_448_954, gmacs=1.738, p2_mpjpe=51.80, p1_pa_mpjpe=None,
                 drive_id="1OriQPQ3uRY8MWPHP9KnwPaKawzrontqH", size_mb=89.6),
        _variant("M", **_SMALL, head_width=256, upsample=(True, True, True), heatmap=64, num_params=7_587_008,
                 num_params_incl_buffers=7_596_986, gmacs=2.795, p2_mpjpe=51.05, p1_pa_mpjpe=34.5,
                 drive_id="1X_H-6S4xrQjW9GhJ3yWB-AXqUHddvkOI", size_mb=91.3),
        _variant("L", **_SMALL, head_width=512, upsample=(True, True, True), heatmap=64, num_params=8_380_352,
                 num_params_incl_buffers=8_391_354, gmacs=4.264, p2_mpjpe=49.75, p1_pa_mpjpe=32.8,
                 drive_id="1eIaMqTYG-30CuPULs9LzSfeouAzYYHQW", size_mb=101.0),
    ),
    notebook=NotebookText(
        file="convnextpose.ipynb", title="ConvNeXtPose (IEEE Access 2023) on Human3.6M", default_variant="L",
        intro=("ConvNeXtPose: a ConvNeXt backbone with BatchNorm and ReLU and a light three-layer head, predicting "
               "18 joints as a soft-argmax over a heatmap volume. Four released variants; the checkpoint files are "
               "PyTorch zip archives despite their `.tar` name, and some use legacy head key names (the loader "
               "accepts both).")),
    key_filter=filter_keys, official_keys=official_keys, citation=CITATION,
    # main/train.py with common/base.py: AdamW, DataParallel; the released files are torch zips named .tar
    release=CheckpointRelease(optimizer="AdamW", serialization="zip"),
)
