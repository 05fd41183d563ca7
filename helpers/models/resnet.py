"""The ResNet pieces shared by the ResNet-backbone families (PoseNet, RootNet, Integral; helpers/README.md, "Models").

torchvision's `Bottleneck` (stride on the 3x3 conv) and a head of three [ConvTranspose2d(k4, s2, p1, no bias)
-> BN -> ReLU] layers with 256 filters, so the heatmap is input/4. Module names reproduce the official
`backbone.*` state-dict keys.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .common import check_input, soft_argmax_3d

RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BACKBONE_STRIDE = 32
HEAD_STRIDE = 4  # three x2 transposed convolutions on the stride-32 feature
BACKBONE_CHANNELS = 2048
DECONV_FILTERS = 256


class ResNetBackbone(nn.Module):
    """torchvision ResNet v1.5 without the classifier: (N, 3, H, W) -> (N, 2048, H/32, W/32)."""

    def __init__(self, depth: int = 50):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYERS)}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, planes) in enumerate(zip(RESNET_LAYERS[depth], (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            layer, in_channels = self._make_layer(in_channels, planes, blocks, stride)
            setattr(self, f"layer{index}", layer)

    @staticmethod
    def _make_layer(in_channels: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
        out_channels = planes * Bottleneck.expansion
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(in_channels, planes, stride=stride, downsample=downsample)]
        layers += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers), out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def deconv_layers(in_channels: int = BACKBONE_CHANNELS, filters: int = DECONV_FILTERS,
                   count: int = 3) -> list[nn.Module]:
    """[ConvTranspose2d(k4, s2, p1, no bias), BN, ReLU] x count, as a flat list (indices 0..3*count-1)."""
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [nn.ConvTranspose2d(in_channels if i == 0 else filters, filters, kernel_size=4, stride=2,
                                      padding=1, output_padding=0, bias=False),
                   nn.BatchNorm2d(filters), nn.ReLU(inplace=True)]
    return layers


def output_shape_of(input_shape) -> tuple[int, int]:
    height, width = (int(v) for v in input_shape)
    if height <= 0 or width <= 0 or height % BACKBONE_STRIDE or width % BACKBONE_STRIDE:
        raise ValueError(f"input_shape {tuple(input_shape)} must be positive multiples of {BACKBONE_STRIDE} (H, W)")
    return height // HEAD_STRIDE, width // HEAD_STRIDE


class ResNetHeatmapPose(nn.Module):
    """`backbone` -> `head` (J*D heatmap logits) -> 3D soft-argmax; subclasses set the four attributes."""

    backbone: nn.Module
    head: nn.Module
    joint_num: int
    depth_dim: int

    def heatmap_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax heatmaps (N, J*D, H/4, W/4), channel index j*D + d."""
        check_input(x, BACKBONE_STRIDE, type(self).__name__)
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_argmax_3d(self.heatmap_logits(x), self.joint_num, self.depth_dim)
