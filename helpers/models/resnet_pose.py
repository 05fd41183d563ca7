"""ResNet-backbone models: 3DMPPE PoseNet, 3DMPPE RootNet and Integral Human Pose (helpers/README.md, "Models").

All three use torchvision's `Bottleneck` (stride on the 3x3 conv) and a head of three
[ConvTranspose2d(k4, s2, p1, no bias) -> BN -> ReLU] layers with 256 filters, so the heatmap is
input/4. Module names reproduce the official state-dict keys without `module.`:
PoseNet `backbone.*`, `head.deconv_layers.*`, `head.final_layer`; RootNet `backbone.*`,
`root.deconv_layers.*`, `root.xy_layer`, `root.depth_layer`; Integral `backbone.*`, `head.features.{0..9}`.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .common import check_input, soft_argmax_2d, soft_argmax_3d

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


def _deconv_layers(in_channels: int = BACKBONE_CHANNELS, filters: int = DECONV_FILTERS,
                   count: int = 3) -> list[nn.Module]:
    """[ConvTranspose2d(k4, s2, p1, no bias), BN, ReLU] x count, as a flat list (indices 0..3*count-1)."""
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [nn.ConvTranspose2d(in_channels if i == 0 else filters, filters, kernel_size=4, stride=2,
                                      padding=1, output_padding=0, bias=False),
                   nn.BatchNorm2d(filters), nn.ReLU(inplace=True)]
    return layers


def _output_shape(input_shape) -> tuple[int, int]:
    height, width = (int(v) for v in input_shape)
    if height <= 0 or width <= 0 or height % BACKBONE_STRIDE or width % BACKBONE_STRIDE:
        raise ValueError(f"input_shape {tuple(input_shape)} must be positive multiples of {BACKBONE_STRIDE} (H, W)")
    return height // HEAD_STRIDE, width // HEAD_STRIDE


class PoseNetHead(nn.Module):
    def __init__(self, out_channels: int):
        super().__init__()
        self.deconv_layers = nn.Sequential(*_deconv_layers())
        self.final_layer = nn.Conv2d(DECONV_FILTERS, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class PoseNet(nn.Module):
    """3DMPPE PoseNet. `model(x)`: (N, 3, H, W) -> (N, J, 3) heatmap units (64x64x64 at 256x256)."""

    def __init__(self, joint_num: int = 18, depth_dim: int = 64, backbone_depth: int = 50):
        super().__init__()
        self.joint_num, self.depth_dim = int(joint_num), int(depth_dim)
        self.backbone = ResNetBackbone(backbone_depth)
        self.head = PoseNetHead(self.joint_num * self.depth_dim)

    def heatmap_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax heatmaps (N, J*D, H/4, W/4), channel index j*D + d."""
        check_input(x, BACKBONE_STRIDE, "PoseNet")
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_argmax_3d(self.heatmap_logits(x), self.joint_num, self.depth_dim)


class RootNetHead(nn.Module):
    """x, y: soft-argmax of `xy_layer` over the heatmap; z = gamma * k, gamma from the pooled C5 feature."""

    def __init__(self):
        super().__init__()
        self.deconv_layers = nn.Sequential(*_deconv_layers())
        self.xy_layer = nn.Conv2d(DECONV_FILTERS, 1, kernel_size=1)
        self.depth_layer = nn.Conv2d(BACKBONE_CHANNELS, 1, kernel_size=1)

    def forward(self, feature: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        xy = soft_argmax_2d(self.xy_layer(self.deconv_layers(feature)))[:, 0]  # (N, 2)
        # k is thousands of mm, so gamma is computed in (at least) float32 even under fp16 autocast.
        with torch.autocast(device_type=feature.device.type, enabled=False):
            wide = feature if feature.dtype == torch.float64 else feature.float()
            pooled = wide.mean(dim=(2, 3), keepdim=True)  # global average pool, (N, 2048, 1, 1)
            gamma = self.depth_layer(pooled.to(self.depth_layer.weight.dtype)).reshape(-1, 1)
        if k.numel() != gamma.shape[0]:
            raise ValueError(f"RootNet needs one k value per image: got {k.numel()} values for {gamma.shape[0]} images")
        depth = gamma * k.reshape(-1, 1).to(device=gamma.device, dtype=gamma.dtype)
        return torch.cat((xy, depth), dim=1)


class RootNet(nn.Module):
    """3DMPPE RootNet. `model(x, k)`: k has N elements (any shape) -> (N, 3): x, y heatmap pixels, z mm."""

    def __init__(self, backbone_depth: int = 50):
        super().__init__()
        self.backbone = ResNetBackbone(backbone_depth)
        self.root = RootNetHead()

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        check_input(x, BACKBONE_STRIDE, "RootNet")
        return self.root(self.backbone(x), torch.as_tensor(k))


class IntegralDeconvHead(nn.Module):
    """Official `DeconvHead`: a ModuleList `features` = 3 x [ConvTranspose, BN, ReLU] + a 1x1 conv with bias."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.features = nn.ModuleList([*_deconv_layers(), nn.Conv2d(DECONV_FILTERS, out_channels, kernel_size=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features:
            x = layer(x)
        return x


class IntegralPoseNet(nn.Module):
    """Integral Human Pose. `model(x)` -> (N, J, 3) heatmap units; `decode_normalized` gives the official
    [-0.5, 0.5] coordinates x/W - 0.5, y/H - 0.5, z/D - 0.5."""

    def __init__(self, depth: int = 50, input_shape=(256, 256), depth_dim: int = 64, joint_num: int = 18):
        super().__init__()
        self.joint_num, self.depth_dim = int(joint_num), int(depth_dim)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_shape = _output_shape(self.input_shape)
        self.backbone = ResNetBackbone(depth)
        self.head = IntegralDeconvHead(self.joint_num * self.depth_dim)

    def heatmap_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax heatmaps (N, J*D, H/4, W/4), channel index j*D + d."""
        check_input(x, BACKBONE_STRIDE, "IntegralPoseNet")
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_argmax_3d(self.heatmap_logits(x), self.joint_num, self.depth_dim)

    def decode_normalized(self, coords: torch.Tensor, heatmap_shape=None) -> torch.Tensor:
        """Heatmap units -> the official normalised decode. `heatmap_shape` (H, W) defaults to the
        model's output shape at its `input_shape`."""
        height, width = self.output_shape if heatmap_shape is None else (int(v) for v in heatmap_shape)
        size = torch.tensor((width, height, self.depth_dim), device=coords.device, dtype=coords.dtype)
        return coords / size - 0.5


def build_posenet(joint_num: int = 18, depth_dim: int = 64) -> PoseNet:
    return PoseNet(joint_num=joint_num, depth_dim=depth_dim)


def build_rootnet() -> RootNet:
    return RootNet()


def build_integral(depth: int = 50, input_shape=(256, 256), depth_dim: int = 64,
                   joint_num: int = 18) -> IntegralPoseNet:
    """Integral Human Pose with a ResNet-`depth` backbone.

    `input_shape` is (H, W): (256, 256) for the paper's models; the released ECCV'18 challenge
    ResNet-152 uses (384, 288) with depth_dim 72, giving a 72x96x72 (D x H x W) volume (registry
    entry `integral_r152_challenge`).
    """
    return IntegralPoseNet(depth=depth, input_shape=input_shape, depth_dim=depth_dim, joint_num=joint_num)
