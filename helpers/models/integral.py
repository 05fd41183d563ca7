"""Integral Human Pose (Sun et al., ECCV 2018): ResNet + deconvolution head + soft-argmax (helpers/README.md, "Models").

Module names reproduce the official keys: `backbone.*`, `head.features.{0..9}`. Its input is normalised with
its own statistics (`MEAN`, `STD` below). The R-50/101/152 paper configs, the released ECCV'18
challenge checkpoint and the notebook text all live here.
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import DECONV_FILTERS, ResNetBackbone, ResNetHeatmapPose, deconv_layers, output_shape_of
from .spec import CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText, PaperResult


class IntegralDeconvHead(nn.Module):
    """Official `DeconvHead`: a ModuleList `features` = 3 x [ConvTranspose, BN, ReLU] + a 1x1 conv with bias."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.features = nn.ModuleList([*deconv_layers(), nn.Conv2d(DECONV_FILTERS, out_channels, kernel_size=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features:
            x = layer(x)
        return x


class IntegralPoseNet(ResNetHeatmapPose):
    """Integral Human Pose. `model(x)` -> (N, J, 3) heatmap units; `decode_normalized` gives the official
    [-0.5, 0.5] coordinates x/W - 0.5, y/H - 0.5, z/D - 0.5."""

    def __init__(self, depth: int = 50, input_shape=(256, 256), depth_dim: int = 64, joint_num: int = 18):
        super().__init__()
        self.joint_num, self.depth_dim = int(joint_num), int(depth_dim)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_shape = output_shape_of(self.input_shape)
        self.backbone = ResNetBackbone(depth)
        self.head = IntegralDeconvHead(self.joint_num * self.depth_dim)

    def decode_normalized(self, coords: torch.Tensor, heatmap_shape=None) -> torch.Tensor:
        """Heatmap units -> the official normalised decode. `heatmap_shape` (H, W) defaults to the
        model's output shape at its `input_shape`."""
        height, width = self.output_shape if heatmap_shape is None else (int(v) for v in heatmap_shape)
        size = torch.tensor((width, height, self.depth_dim), device=coords.device, dtype=coords.dtype)
        return coords / size - 0.5


def build_integral(depth: int = 50, input_shape=(256, 256), depth_dim: int = 64,
                   joint_num: int = 18) -> IntegralPoseNet:
    """Integral Human Pose with a ResNet-`depth` backbone.

    `input_shape` is (H, W): (256, 256) for the paper's models; the released ECCV'18 challenge
    ResNet-152 uses (384, 288) with depth_dim 72, giving a 72x96x72 (D x H x W) volume (registry
    entry `integral_r152_challenge` below).
    """
    return IntegralPoseNet(depth=depth, input_shape=input_shape, depth_dim=depth_dim, joint_num=joint_num)


# Integral Human Pose normalises with ImageNet's statistics in 0-255 units (its own, unlike the 3DMPPE family).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# As published (ECCV 2018, with Fangyin Wei); the official README still cites the arXiv preprint.
CITATION = """@inproceedings{sun2018integral,
  title     = {Integral Human Pose Regression},
  author    = {Sun, Xiao and Xiao, Bin and Wei, Fangyin and Liang, Shuang and Wei, Yichen},
  booktitle = {Proceedings of the European Conference on Computer Vision (ECCV)},
  pages     = {529--545},
  year      = {2018}
}"""


def _paper_variant(depth: int, **kw) -> ModelSpec:
    return ModelSpec(model_id=f"integral_r{depth}", family="integral", variant=f"R{depth}", builder=build_integral,
                     builder_kwargs=dict(depth=depth), mean=MEAN, std=STD, **kw)


FAMILY = Family(
    name="integral", display_name="Integral Human Pose",
    models=(
        _paper_variant(50, num_params=34_291_392, num_params_incl_buffers=34_346_104, gmacs=8.425,
                       paper=PaperResult(p2_mpjpe=49.6, p1_pa_mpjpe=40.6,
                                         source="Integral Human Pose (Sun et al., ECCV 2018), R-50")),
        _paper_variant(101, num_params=53_283_520, num_params_incl_buffers=53_390_507, gmacs=13.274,
                       notes="no fixture or released weights; counts = the R-50 fixture's head + torchvision "
                             "ResNet-101 (44,549,160 params with its 2,049,000-param classifier) and its 104 "
                             "BatchNorms"),
        _paper_variant(152, num_params=68_927_168, num_params_incl_buffers=69_080_286, gmacs=18.123,
                       notes="paper-style R-152 at 256x256; the released ECCV'18 challenge checkpoint is "
                             "integral_r152_challenge"),
        ModelSpec(
            model_id="integral_r152_challenge", family="integral", variant="R152_challenge", builder=build_integral,
            builder_kwargs=dict(depth=152, input_shape=(384, 288), depth_dim=72), mean=MEAN, std=STD,
            input_shape=(384, 288), output_shape=(96, 72), depth_dim=72,
            num_params=68_964_176, num_params_incl_buffers=69_117_294, gmacs=30.837, default_batch_size=32,
            checkpoints=(
                CheckpointSource("model_chall_train_152ft_384x288.pth.tar",
                                 url="https://www.dropbox.com/s/hfz5nkd39uisvbr/"
                                     "model_chall_train_152ft_384x288.pth.tar?dl=1",
                                 note="trained on CHALL_H80K train (official README: 56.9 mm on its val split with "
                                      "flip)"),
                CheckpointSource("model_chall_trainval_152ft_384x288.pth.tar",
                                 url="https://www.dropbox.com/s/o1xhp3vocnvtgu3/"
                                     "model_chall_trainval_152ft_384x288.pth.tar?dl=1",
                                 note="trained on CHALL_H80K train+val"),
            ),
            notes="ECCV'18 challenge config (hm36_challenge d-mch_384x288 yaml): patch_height 384, patch_width 288, "
                  "depth_dim 72, so the volume is 72x96x72 (D x H x W); its 3D box is rect_3d 1485x1980 mm (W x H), "
                  "its normalisation its own, and its numbers are on the challenge split, not Protocol 1/2",
            # Integral decodes depth as z_patch / patch_width * rect_3d_width (trans_coords_from_patch_to_org_3d),
            # so the depth bins span rect_3d_width = 1485 mm, not the height.
            bbox_3d_mm=(1485.0, 1980.0, 1485.0),
            protocol_note="ECCV'18 challenge checkpoint: trained and scored on the challenge split (CHALL_H80K) "
                          "with its own 288x384 crops; run here on the Protocol 1/2 test frames with boxes padded "
                          "to 3:4, so its numbers are not comparable to Protocol 1/2 paper numbers",
        ),
    ),
    notebook=NotebookText(
        file="integral_pose.ipynb", title="Integral Human Pose (ECCV 2018) on Human3.6M", default_variant="R50",
        intro=("Integral Human Pose: a ResNet backbone with a deconvolution head, decoded by a soft-argmax (integral "
               "regression). It normalises its input with its own statistics (mean "
               f"{'/'.join(f'{v:g}' for v in MEAN)}, std {'/'.join(f'{v:g}' for v in STD)} on 0-255), "
               "which its specs declare. "
               "The only released checkpoint is the "
               "ECCV'18 challenge ResNet-152 at 384x288 input, trained on a different split, so its numbers are not "
               "comparable with the paper's Protocol 1/2 figures.")),
    citation=CITATION,
    # train.py: Adam, MultiStepLR, DataParallelModel; saved with PyTorch 0.4.0 (its README): legacy format, a
    # state dict without _metadata or BatchNorm num_batches_tracked, plus scheduler state and loss lists
    release=CheckpointRelease(optimizer="Adam", serialization="legacy", versioned=False,
                              extras=("scheduler", "train_loss", "valid_loss")),
)
