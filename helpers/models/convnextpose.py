"""ConvNeXtPose (IEEE Access 2023): ConvNeXt with BatchNorm + ReLU and a 3-DeConv head (helpers/README.md, "Models").

Module names reproduce the official state-dict keys (without `module.`): `backbone.downsample_layers.*`,
`backbone.stages.*`, `backbone.norm`, `head.deconv_layers_{1,2,3}.{dwconv,norm,pwconv}`, `head.final_layer`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_input, soft_argmax_3d

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
    """A ConvNeXtPose variant; the registry's `convnextpose_{XS,S,M,L}` entries hold the official settings."""
    return ConvNeXtPose(tuple(depths), tuple(dims), int(head_width), tuple(bool(u) for u in upsample),
                        depth_dim, joint_num)
