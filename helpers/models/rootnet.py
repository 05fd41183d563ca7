"""3DMPPE RootNet (Moon et al., ICCV 2019): the absolute root position (helpers/README.md, "Models").

ResNet-50; x, y from a soft-argmax over a heatmap (`root.deconv_layers.*`, `root.xy_layer`), z = gamma * k with
gamma from the pooled C5 feature (`root.depth_layer`). Architecture, spec and notebook text in one file.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import check_input, soft_argmax_2d
from .posenet import CITATION as CITATION_3DMPPE  # RootNet and PoseNet are one paper
from .resnet import BACKBONE_CHANNELS, BACKBONE_STRIDE, DECONV_FILTERS, ResNetBackbone, deconv_layers
from .spec import CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText, PaperResult

class RootNetHead(nn.Module):
    """x, y: soft-argmax of `xy_layer` over the heatmap; z = gamma * k, gamma from the pooled C5 feature."""

    def __init__(self):
        super().__init__()
        self.deconv_layers = nn.Sequential(*deconv_layers())
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


def build_rootnet() -> RootNet:
    return RootNet()




FAMILY = Family(
    name="rootnet", display_name="RootNet",
    models=(ModelSpec(
        model_id="rootnet", family="rootnet", variant="R50", builder=build_rootnet, kind="root",
        depth_dim=1, joint_num=1, joint_names=("Pelvis",), flip_pairs=(),
        num_params=33_997_634, num_params_incl_buffers=34_052_346, gmacs=7.218,
        paper=PaperResult(mrpe={"total": 120.0, "x": 23.3, "y": 23.0, "z": 108.1},
                          source="3DMPPE RootNet (Moon et al., ICCV 2019), Human3.6M Protocol 2"),
        checkpoints=(CheckpointSource("snapshot_19.pth.tar", drive_folder="1oGXqscxZpakld6j4Lj4hEDy8DCnh9cAs",
                                      note="one file per protocol inside the Drive folder", one_per_protocol=True),),
    ),),
    notebook=NotebookText(
        file="rootnet.ipynb", title="RootNet (3DMPPE, ICCV 2019): root localisation on Human3.6M",
        default_variant="R50",
        intro=("RootNet predicts the absolute camera-space position of the root joint (Pelvis) from a person crop "
               "and the depth prior k = sqrt(2000 mm x 2000 mm x fx x fy / box area). It is scored with MRPE (mean "
               "root position error; x, y, z mean absolute errors alongside). Its output, written here as a "
               "RootNet-format `bbox_root_human36m_output.json` (with a sidecar saying which boxes it used), is what "
               "the pose notebooks accept as `BBOX_ROOT` (with `USE_GT_INFO = False`). With `USE_GT_INFO = False` "
               "RootNet runs on a person detector's boxes (`DETECTOR_BOXES`: the official `bbox_human36m_output.json`, "
               "or the boxes of a bbox_root file such as the released one), as the papers' detected setting does.")),
    citation=CITATION_3DMPPE,
    # the 2019 release (PyTorch 1.1): Adam, DataParallel, the legacy (pre-1.6) serialisation
    release=CheckpointRelease(optimizer="Adam", serialization="legacy"),
)
