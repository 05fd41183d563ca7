"""3DMPPE PoseNet (Moon et al., ICCV 2019), the protocol's reference (helpers/README.md, "Models").

ResNet-50, three deconvolutions (`head.deconv_layers.*`), a 1x1 `head.final_layer` to J*D channels and a 3D
soft-argmax: a 64x64x64 volume per joint at 256x256 input. Architecture, spec and notebook text in one file.
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import DECONV_FILTERS, ResNetBackbone, ResNetHeatmapPose, deconv_layers
from .spec import CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText, PaperResult

class PoseNetHead(nn.Module):
    def __init__(self, out_channels: int):
        super().__init__()
        self.deconv_layers = nn.Sequential(*deconv_layers())
        self.final_layer = nn.Conv2d(DECONV_FILTERS, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class PoseNet(ResNetHeatmapPose):
    """3DMPPE PoseNet. `model(x)`: (N, 3, H, W) -> (N, J, 3) heatmap units (64x64x64 at 256x256)."""

    def __init__(self, joint_num: int = 18, depth_dim: int = 64, backbone_depth: int = 50):
        super().__init__()
        self.joint_num, self.depth_dim = int(joint_num), int(depth_dim)
        self.backbone = ResNetBackbone(backbone_depth)
        self.head = PoseNetHead(self.joint_num * self.depth_dim)


# As published (ICCV 2019); key and fields of the official READMEs' entry (3DMPPE_POSENET/ROOTNET_RELEASE).
CITATION = """@inproceedings{Moon_2019_ICCV_3DMPPE,
  title     = {Camera Distance-aware Top-down Approach for {3D} Multi-person Pose Estimation from a Single
               {RGB} Image},
  author    = {Moon, Gyeongsik and Chang, Ju Yong and Lee, Kyoung Mu},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2019}
}"""


def build_posenet(joint_num: int = 18, depth_dim: int = 64) -> PoseNet:
    return PoseNet(joint_num=joint_num, depth_dim=depth_dim)




FAMILY = Family(
    name="posenet", display_name="PoseNet",
    models=(ModelSpec(
        model_id="posenet", family="posenet", variant="R50", builder=build_posenet,
        num_params=34_291_392, num_params_incl_buffers=34_346_104, gmacs=8.425,
        paper=PaperResult(p2_mpjpe=53.3, p1_pa_mpjpe=34.0, p2_mpjpe_detected=54.4, p1_pa_mpjpe_detected=35.2,
                          source="3DMPPE PoseNet (Moon et al., ICCV 2019), official README"),
        checkpoints=(CheckpointSource("snapshot_24.pth.tar", drive_folder="1El3qfdtgttO90X25k_680V2UCDv_TPoJ",
                                      note="one file per protocol inside the Drive folder", one_per_protocol=True),),
    ),),
    notebook=NotebookText(
        file="posenet.ipynb", title="PoseNet (3DMPPE, ICCV 2019) on Human3.6M", default_variant="R50",
        intro=("3DMPPE PoseNet: ResNet-50 with three deconvolution layers, a 64x64x64 heatmap volume per joint and a "
               "soft-argmax. The paper reports Protocol 2 MPJPE with the ground-truth box and root and with "
               "detector boxes and RootNet roots (set `USE_GT_INFO = False` and `BBOX_ROOT` to the released RootNet "
               "output, or to the file rootnet.ipynb writes when run on detector boxes).")),
    citation=CITATION,
    # the 2019 release (PyTorch 1.1): Adam, DataParallel, the legacy (pre-1.6) serialisation
    release=CheckpointRelease(optimizer="Adam", serialization="legacy"),
)
