"""MobileHumanPose (Choi et al., CVPRW 2021): the four LpNet backbones with a soft-argmax decode.

The whole family in one file: architecture, the four variants' keyword configs and the notebook text.

Four architectures share one vocabulary of layers and the official state-dict key names
(without the DataParallel prefix `module.`), so official checkpoints load strictly:

| builder            | official class (file)                            | heatmap D x H x W |
|--------------------|--------------------------------------------------|-------------------|
| `build_lpski`      | LpNetSkiConcat, current `lpnet_ski_concat.py`    | 32 x 32 x 32      |
| `build_lpski_2021` | LpNetSkiConcat, paper-era version (Jan-Jul 2021) | 64 x 64 x 64      |
| `build_lpres`      | LpNetResConcat (`lpnet_res_concat.py`)           | 64 x 64 x 64      |
| `build_lpwo`       | LpNetWoConcat (`lpnet_wo_concat.py`)             | 64 x 64 x 64      |

Every model maps a normalised `(N, 3, H, W)` crop (H, W multiples of 32; 256 x 256 in the papers)
to `(N, J, 3)` coordinates in heatmap units: x, y in output pixels, z in depth bins, all 0-based.
"""
from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import torch
from torch import nn

from .common import check_input, soft_argmax_3d
from .spec import CheckpointRelease, Family, ModelSpec, NotebookText, PaperResult

STEM_CHANNELS = 48
EMBEDDING_CHANNELS = 2048
DECODER_CHANNELS = 256
# Every backbone halves the resolution five times between the input and its deepest feature map.
INPUT_MULTIPLE = 32

# Inverted-residual stages as (expand ratio t, output channels c, blocks n, first-block stride s).
STAGES_CURRENT = ((1, 64, 1, 2), (6, 48, 2, 2), (6, 48, 3, 2), (6, 64, 4, 2), (6, 96, 3, 2), (6, 160, 3, 1),
                  (6, 320, 1, 1))
# The paper-era LpNetSkiConcat, LpNetResConcat and LpNetWoConcat keep full resolution in the stem and
# the first stage, and downsample in the sixth stage instead.
STAGES_2021 = ((1, 64, 1, 1), (6, 48, 2, 2), (6, 48, 3, 2), (6, 64, 4, 2), (6, 96, 3, 2), (6, 160, 3, 2),
               (6, 320, 1, 1))


def _upsample_x2() -> nn.Module:
    # The official models use nn.UpsamplingBilinear2d, i.e. bilinear with align_corners=True.
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


class ConvBNPReLU(nn.Sequential):
    """Bias-free conv -> BatchNorm -> per-channel PReLU (keys `0.weight`, `1.*`, `2.weight`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block with PReLU: [1x1 expand] -> 3x3 depthwise -> linear 1x1 projection (+ identity)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_identity = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNPReLU(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNPReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_identity else self.conv(x)


class DecoderBlock(nn.Sequential):
    """1x1 conv -> BN -> PReLU -> 3x3 conv -> BN -> PReLU -> bilinear x2 (convs with bias).

    The official `DeConv` (mid < out) and `DoubleConv` (mid == out) are both this block.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int = DECODER_CHANNELS):
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1),
            nn.BatchNorm2d(mid_channels),
            nn.PReLU(mid_channels),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            _upsample_x2(),
        )


def _stage_blocks(stages: Sequence[Sequence[int]], stage_inputs: Sequence[int]) -> list[InvertedResidual]:
    """Blocks of all stages; stage k's first block reads `stage_inputs[k]` channels, the rest its own width."""
    blocks = []
    for (t, c, n, s), stage_in in zip(stages, stage_inputs):
        for i in range(n):
            blocks.append(InvertedResidual(stage_in if i == 0 else c, c, s if i == 0 else 1, t))
    return blocks


def _final_layer(joint_num: int, depth_dim: int) -> nn.Conv2d:
    # Channel index = joint * depth_dim + depth bin.
    return nn.Conv2d(DECODER_CHANNELS, joint_num * depth_dim, kernel_size=1)


class LpNetSkiConcat(nn.Module):
    """Encoder-decoder with U-Net style skips: each decoder block reads cat([skip, decoder])."""

    def __init__(self, joint_num: int, depth_dim: int, stages: Sequence[Sequence[int]], stem_stride: int,
                 skip_block_ends: tuple[int, int, int]):
        super().__init__()
        stage_widths = [c for _t, c, _n, _s in stages]
        block_widths = [c for _t, c, n, _s in stages for _ in range(n)]
        if not 0 < skip_block_ends[0] < skip_block_ends[1] < skip_block_ends[2] < len(block_widths):
            raise ValueError(f"skip_block_ends must rise inside 1..{len(block_widths) - 1}, got {skip_block_ends}")
        # Skips are read after these many blocks, deepest first, so skip i feeds decoder block i.
        self.skip_block_ends = tuple(reversed(skip_block_ends))
        skip_channels = [block_widths[end - 1] for end in self.skip_block_ends]

        self.first_conv = ConvBNPReLU(3, STEM_CHANNELS, stride=stem_stride)
        self.inv_residual = nn.Sequential(*_stage_blocks(stages, [STEM_CHANNELS] + stage_widths))
        self.last_conv = ConvBNPReLU(stage_widths[-1], EMBEDDING_CHANNELS, kernel_size=1)
        decoder_inputs = [EMBEDDING_CHANNELS, DECODER_CHANNELS, DECODER_CHANNELS]
        self.deconv0 = DecoderBlock(skip_channels[0] + decoder_inputs[0], skip_channels[0])
        self.deconv1 = DecoderBlock(skip_channels[1] + decoder_inputs[1], skip_channels[1])
        self.deconv2 = DecoderBlock(skip_channels[2] + decoder_inputs[2], skip_channels[2])
        self.final_layer = _final_layer(joint_num, depth_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        skips = {}
        for index, block in enumerate(self.inv_residual):
            x = block(x)
            if index + 1 in self.skip_block_ends:
                skips[index + 1] = x
        z = self.last_conv(x)
        for decoder, end in zip((self.deconv0, self.deconv1, self.deconv2), self.skip_block_ends):
            z = decoder(torch.cat([skips[end], z], dim=1))
        return self.final_layer(z)


class LpNetResConcat(nn.Module):
    """Dense cross-stage concats: every stage reads cat([two-back resized, one-back]).

    In the encoder the two-back map is average-pooled when the stage between them downsampled;
    in the decoder it is bilinearly upsampled to the one-back map. Decoder attributes keep the
    official spelling `deonv0..2`, which is what checkpoints contain.
    """

    def __init__(self, joint_num: int, depth_dim: int, stages: Sequence[Sequence[int]] = STAGES_2021):
        super().__init__()
        widths = [STEM_CHANNELS] + [c for _t, c, _n, _s in stages]  # stem, then each stage's output
        stage_inputs = [STEM_CHANNELS] + [widths[k - 1] + widths[k] for k in range(1, len(stages))]
        self.stage_ends = tuple(accumulate(n for _t, _c, n, _s in stages))
        # Stage k (and, as k = len(stages), last_conv) pools its two-back input when stage k-1 halved
        # the resolution; the stem and stage 0 share one resolution.
        self.pool_two_back = tuple(k >= 1 and stages[k - 1][3] == 2 for k in range(len(stages) + 1))

        self.first_conv = ConvBNPReLU(3, STEM_CHANNELS, stride=1)
        self.inv_residual = nn.Sequential(*_stage_blocks(stages, stage_inputs))
        self.last_conv = ConvBNPReLU(widths[-2] + widths[-1], EMBEDDING_CHANNELS, kernel_size=1)
        self.deonv0 = DecoderBlock(widths[-1] + EMBEDDING_CHANNELS, DECODER_CHANNELS)
        self.deonv1 = DecoderBlock(EMBEDDING_CHANNELS + DECODER_CHANNELS, DECODER_CHANNELS)
        self.deonv2 = DecoderBlock(2 * DECODER_CHANNELS, DECODER_CHANNELS)
        self.final_layer = _final_layer(joint_num, depth_dim)
        self.avgpool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.upsample = _upsample_x2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        two_back = self.first_conv(x)
        one_back = self.inv_residual[0:self.stage_ends[0]](two_back)
        for k in range(1, len(self.stage_ends)):
            older = self.avgpool(two_back) if self.pool_two_back[k] else two_back
            stage = self.inv_residual[self.stage_ends[k - 1]:self.stage_ends[k]]
            two_back, one_back = one_back, stage(torch.cat([older, one_back], dim=1))
        older = self.avgpool(two_back) if self.pool_two_back[-1] else two_back
        embedding = self.last_conv(torch.cat([older, one_back], dim=1))
        up0 = self.deonv0(torch.cat([one_back, embedding], dim=1))
        up1 = self.deonv1(torch.cat([self.upsample(embedding), up0], dim=1))
        up2 = self.deonv2(torch.cat([self.upsample(up0), up1], dim=1))
        return self.final_layer(up2)


class LpNetWoConcat(nn.Module):
    """Plain encoder-decoder without skips; decoder mid widths follow the encoder widths in reverse."""

    def __init__(self, joint_num: int, depth_dim: int, stages: Sequence[Sequence[int]] = STAGES_2021):
        super().__init__()
        widths = [c for _t, c, _n, _s in stages]
        self.first_conv = ConvBNPReLU(3, STEM_CHANNELS, stride=1)
        self.inv_residual = nn.Sequential(*_stage_blocks(stages, [STEM_CHANNELS] + widths))
        self.last_conv = ConvBNPReLU(widths[-1], EMBEDDING_CHANNELS, kernel_size=1)
        self.deconv0 = DecoderBlock(EMBEDDING_CHANNELS, widths[-2])
        self.deconv1 = DecoderBlock(DECODER_CHANNELS, widths[-3])
        self.deconv2 = DecoderBlock(DECODER_CHANNELS, widths[-4])
        self.final_layer = _final_layer(joint_num, depth_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last_conv(self.inv_residual(self.first_conv(x)))
        return self.final_layer(self.deconv2(self.deconv1(self.deconv0(x))))


class MobileHumanPose(nn.Module):
    """The official pose-net wrapper (`main/model.py`): `backbone` gives J*D heatmap logits, then a 3D soft-argmax."""

    def __init__(self, backbone: nn.Module, joint_num: int, depth_dim: int):
        super().__init__()
        self.backbone = backbone
        self.joint_num = joint_num
        self.depth_dim = depth_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, INPUT_MULTIPLE, "MobileHumanPose")
        return soft_argmax_3d(self.backbone(x), self.joint_num, self.depth_dim)


def _check_joint_num(joint_num: int) -> int:
    if isinstance(joint_num, bool) or not isinstance(joint_num, int) or joint_num < 1:
        raise ValueError(f"joint_num must be a positive int (18 for Human3.6M), got {joint_num!r}")
    return joint_num


def build_lpski(joint_num: int = 18) -> MobileHumanPose:
    """Current LpNetSkiConcat: stem stride 2, skips after blocks 6/10/13, 32x32 output, 32 depth bins."""
    depth_dim = 32
    backbone = LpNetSkiConcat(_check_joint_num(joint_num), depth_dim, STAGES_CURRENT, stem_stride=2,
                              skip_block_ends=(6, 10, 13))
    return MobileHumanPose(backbone, joint_num, depth_dim)


def build_lpski_2021(joint_num: int = 18) -> MobileHumanPose:
    """Paper-era LpNetSkiConcat (model L, 4.07M): stem stride 1, skips after blocks 10/13/16, 64x64x64."""
    depth_dim = 64
    backbone = LpNetSkiConcat(_check_joint_num(joint_num), depth_dim, STAGES_2021, stem_stride=1,
                              skip_block_ends=(10, 13, 16))
    return MobileHumanPose(backbone, joint_num, depth_dim)


def build_lpres(joint_num: int = 18) -> MobileHumanPose:
    """LpNetResConcat: dense cross-stage concats, decoder keys `deonv0..2`, 64x64x64."""
    depth_dim = 64
    return MobileHumanPose(LpNetResConcat(_check_joint_num(joint_num), depth_dim), joint_num, depth_dim)


def build_lpwo(joint_num: int = 18) -> MobileHumanPose:
    """LpNetWoConcat: no skip connections, 64x64x64."""
    depth_dim = 64
    return MobileHumanPose(LpNetWoConcat(_check_joint_num(joint_num), depth_dim), joint_num, depth_dim)


# As published (CVPR 2021 Workshops); the official README's entry.
CITATION = """@inproceedings{Choi_2021_CVPR,
  title     = {{MobileHumanPose}: Toward Real-Time {3D} Human Pose Estimation in Mobile Devices},
  author    = {Choi, Sangbum and Choi, Seokeon and Kim, Changick},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR) Workshops},
  month     = {June},
  year      = {2021},
  pages     = {2328--2338}
}"""

FAMILY = Family(
    name="mobilehumanpose", display_name="MobileHumanPose",
    models=(
        ModelSpec(model_id="mobilehumanpose_lpski", family="mobilehumanpose", variant="lpski", builder=build_lpski,
                  output_shape=(32, 32), depth_dim=32,
                  num_params=3_500_064, num_params_incl_buffers=3_541_530, gmacs=0.476,
                  notes="current LpNetSkiConcat (32x32x32); no official weights exist"),
        ModelSpec(model_id="mobilehumanpose_lpski_2021", family="mobilehumanpose", variant="lpski_2021",
                  builder=build_lpski_2021, num_params=4_073_248, num_params_incl_buffers=4_114_938, gmacs=5.279,
                  paper=PaperResult(p2_mpjpe=51.4, p1_pa_mpjpe=35.2,
                                    source="MobileHumanPose (CVPRW 2021), model L, 4.07M"),
                  notes="paper-era LpNetSkiConcat (64x64x64); no official weights exist"),
        ModelSpec(model_id="mobilehumanpose_lpres", family="mobilehumanpose", variant="lpres", builder=build_lpres,
                  num_params=7_253_888, num_params_incl_buffers=7_305_306, gmacs=11.129,
                  notes="LpNetResConcat; official keys spell the decoder 'deonv0..2'"),
        ModelSpec(model_id="mobilehumanpose_lpwo", family="mobilehumanpose", variant="lpwo", builder=build_lpwo,
                  num_params=4_034_336, num_params_incl_buffers=4_076_026, gmacs=5.271),
    ),
    notebook=NotebookText(
        file="mobilehumanpose.ipynb", title="MobileHumanPose (CVPRW 2021) on Human3.6M", default_variant="lpski",
        intro=("MobileHumanPose: MobileNetV2-style inverted residuals with PReLU and a skip-concat decoder. "
               "**No official weights exist**: on real data, set `CHECKPOINT` to a file you trust (a run without one "
               "stops and says so); the embedded demo uses random-initialised weights and says so in every table. "
               "`lpski` is the current repository version (32x32x32 output); `lpski_2021` is the paper-era version "
               "(64x64x64) the published numbers describe.")),
    citation=CITATION,
    # no official release; its training code is 3DMPPE's (Adam, DataParallel), run with torch >= 1.6: zip format
    release=CheckpointRelease(optimizer="Adam", serialization="zip"),
)
