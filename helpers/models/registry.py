"""Model registry: one `ModelSpec` per model id (the fixture ids), timm-style.

The spec alone decides input size, normalisation, decode and flip pairs, so the inference
engine never needs to know which model it runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..protocol import FLIP_PAIRS, JOINT_NAMES


@dataclass(frozen=True)
class CheckpointSource:
    """Where released weights can be found. `drive_id` is a Google Drive file id."""

    file_name: str
    drive_id: str | None = None
    drive_folder: str | None = None
    url: str | None = None
    approx_size_mb: float | None = None
    sha256: str | None = None
    note: str = ""


@dataclass(frozen=True)
class PaperResult:
    p2_mpjpe: float | None = None  # Protocol 2 MPJPE, ground-truth box and root (mm)
    p1_pa_mpjpe: float | None = None  # Protocol 1 PA-MPJPE, rigid alignment (mm)
    p2_mpjpe_detected: float | None = None  # with RootNet box and root
    p1_pa_mpjpe_detected: float | None = None
    mrpe: dict | None = None  # RootNet only: {"total", "x", "y", "z"}
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    family: str  # "convnextpose" | "posenet" | "rootnet" | "mobilehumanpose" | "integral"
    variant: str
    builder: str  # "module:function" inside helpers.models, resolved lazily
    builder_kwargs: dict = field(default_factory=dict)
    kind: str = "pose"  # "pose": model(x) -> (N,J,3) heatmap units; "root": model(x, k) -> (N,3)
    input_shape: tuple[int, int] = (256, 256)  # (H, W)
    output_shape: tuple[int, int] = (64, 64)  # (H, W) of the heatmap
    depth_dim: int = 64
    joint_num: int = 18
    joint_names: tuple[str, ...] = JOINT_NAMES
    flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS
    normalization: str = "3dmppe"  # "3dmppe" (ImageNet mean/std on 0-255) or "integral"
    num_params: int | None = None  # trainable parameters, exact
    num_params_incl_buffers: int | None = None  # every state-dict entry's numel, exact
    gmacs: float | None = None  # multiply-accumulates / 1e9 at input_shape, batch 1 (torch.utils.flop_counter / 2)
    paper: PaperResult = PaperResult()
    checkpoints: tuple[CheckpointSource, ...] = ()
    default_batch_size: int = 64
    notes: str = ""
    # (W, H, D) mm of the 3D box around the root. D is the depth range the depth bins span (+-D/2 around
    # the root); W:H is what the crop's aspect ratio stands for. 3DMPPE: 2000 mm cube.
    bbox_3d_mm: tuple[float, float, float] = (2000.0, 2000.0, 2000.0)
    # Non-empty when the model was trained and scored under another protocol (crop, split): its numbers
    # are then not comparable to the Protocol 1/2 papers, and results and reports say so.
    protocol_note: str = ""

    @property
    def aspect_ratio(self) -> float:
        """Input width / height: the aspect ratio every crop box is padded to."""
        return self.input_shape[1] / self.input_shape[0]

    @property
    def depth_extent_mm(self) -> float:
        """Depth range (mm) the depth bins span, centred on the root."""
        return float(self.bbox_3d_mm[2])

    def build(self, **overrides):
        """A fresh model in eval mode, on CPU, randomly initialised."""
        module_name, fn_name = self.builder.split(":")
        fn: Callable = getattr(importlib.import_module(f"{__package__}.{module_name}"), fn_name)
        model = fn(**{**self.builder_kwargs, **overrides})
        return model.eval()


_CNP_FOLDER = "12H7zkLvmJtrkCmAUAPkQ6788WAnO60gI"
_CNP_SRC = "ConvNeXtPose paper variant table (XS, S); official README (M, L)"


def _cnp(variant, depths, dims, width, ups, out, ddim, params, params_buf, gmacs, p2, p1, drive_id, size_mb):
    return ModelSpec(
        model_id=f"convnextpose_{variant}", family="convnextpose", variant=variant,
        builder="convnextpose:build_convnextpose",
        builder_kwargs=dict(depths=depths, dims=dims, head_width=width, upsample=ups, depth_dim=ddim),
        output_shape=(out, out), depth_dim=ddim, num_params=params, num_params_incl_buffers=params_buf,
        gmacs=gmacs,
        paper=PaperResult(p2_mpjpe=p2, p1_pa_mpjpe=p1, source=_CNP_SRC),
        checkpoints=(CheckpointSource(f"ConvNeXtPose_{variant}.tar", drive_id=drive_id, drive_folder=_CNP_FOLDER,
                                      approx_size_mb=size_mb,
                                      note="PyTorch zip checkpoint despite the .tar name"),),
        default_batch_size=128 if variant in ("XS", "S") else 64,
    )


_MODELS: tuple[ModelSpec, ...] = (
    _cnp("XS", (2, 2, 6, 2), (40, 80, 160, 320), 128, (True, True, False), 32, 32, 3_528_008, 3_534_140, 0.815,
         56.61, None, "165D0rU2GImmRe7u7DNe6eKJG8voBIcGh", 42.5),
    _cnp("S", (3, 3, 9, 3), (48, 96, 192, 384), 256, (True, True, False), 32, 32, 7_438_976, 7_448_954, 1.738,
         51.80, None, "1OriQPQ3uRY8MWPHP9KnwPaKawzrontqH", 89.6),
    _cnp("M", (3, 3, 9, 3), (48, 96, 192, 384), 256, (True, True, True), 64, 64, 7_587_008, 7_596_986, 2.795,
         51.05, 34.5, "1X_H-6S4xrQjW9GhJ3yWB-AXqUHddvkOI", 91.3),
    _cnp("L", (3, 3, 9, 3), (48, 96, 192, 384), 512, (True, True, True), 64, 64, 8_380_352, 8_391_354, 4.264,
         49.75, 32.8, "1eIaMqTYG-30CuPULs9LzSfeouAzYYHQW", 101.0),
    ModelSpec(
        model_id="posenet", family="posenet", variant="R50", builder="resnet_pose:build_posenet",
        num_params=34_291_392, num_params_incl_buffers=34_346_104, gmacs=8.425,
        paper=PaperResult(p2_mpjpe=53.3, p1_pa_mpjpe=34.0, p2_mpjpe_detected=54.4, p1_pa_mpjpe_detected=35.2,
                          source="3DMPPE PoseNet (Moon et al., ICCV 2019), official README"),
        checkpoints=(CheckpointSource("snapshot_24.pth.tar", drive_folder="1El3qfdtgttO90X25k_680V2UCDv_TPoJ",
                                      note="one file per protocol inside the Drive folder"),),
    ),
    ModelSpec(
        model_id="rootnet", family="rootnet", variant="R50", builder="resnet_pose:build_rootnet", kind="root",
        depth_dim=1, joint_num=1, joint_names=("Pelvis",), flip_pairs=(),
        num_params=33_997_634, num_params_incl_buffers=34_052_346, gmacs=7.218,
        paper=PaperResult(mrpe={"total": 120.0, "x": 23.3, "y": 23.0, "z": 108.1},
                          source="3DMPPE RootNet (Moon et al., ICCV 2019), Human3.6M Protocol 2"),
        checkpoints=(CheckpointSource("snapshot_19.pth.tar", drive_folder="1oGXqscxZpakld6j4Lj4hEDy8DCnh9cAs",
                                      note="one file per protocol inside the Drive folder"),),
    ),
    ModelSpec(
        model_id="mobilehumanpose_lpski", family="mobilehumanpose", variant="lpski",
        builder="mobilehumanpose:build_lpski", output_shape=(32, 32), depth_dim=32,
        num_params=3_500_064, num_params_incl_buffers=3_541_530, gmacs=0.476,
        notes="current LpNetSkiConcat (32x32x32); no official weights exist",
    ),
    ModelSpec(
        model_id="mobilehumanpose_lpski_2021", family="mobilehumanpose", variant="lpski_2021",
        builder="mobilehumanpose:build_lpski_2021", num_params=4_073_248, num_params_incl_buffers=4_114_938,
        gmacs=5.279,
        paper=PaperResult(p2_mpjpe=51.4, p1_pa_mpjpe=35.2, source="MobileHumanPose (CVPRW 2021), model L, 4.07M"),
        notes="paper-era LpNetSkiConcat (64x64x64); no official weights exist",
    ),
    ModelSpec(
        model_id="mobilehumanpose_lpres", family="mobilehumanpose", variant="lpres",
        builder="mobilehumanpose:build_lpres", num_params=7_253_888, num_params_incl_buffers=7_305_306,
        gmacs=11.129,
        notes="LpNetResConcat; official keys spell the decoder 'deonv0..2'",
    ),
    ModelSpec(
        model_id="mobilehumanpose_lpwo", family="mobilehumanpose", variant="lpwo",
        builder="mobilehumanpose:build_lpwo", num_params=4_034_336, num_params_incl_buffers=4_076_026,
        gmacs=5.271,
    ),
    ModelSpec(
        model_id="integral_r50", family="integral", variant="R50", builder="resnet_pose:build_integral",
        builder_kwargs=dict(depth=50), normalization="integral",
        num_params=34_291_392, num_params_incl_buffers=34_346_104, gmacs=8.425,
        paper=PaperResult(p2_mpjpe=49.6, p1_pa_mpjpe=40.6, source="Integral Human Pose (Sun et al., ECCV 2018), R-50"),
    ),
    ModelSpec(
        model_id="integral_r101", family="integral", variant="R101", builder="resnet_pose:build_integral",
        builder_kwargs=dict(depth=101), normalization="integral",
        num_params=53_283_520, num_params_incl_buffers=53_390_507, gmacs=13.274,
        notes="no fixture or released weights; counts = the R-50 fixture's head + torchvision ResNet-101 "
              "(44,549,160 params with its 2,049,000-param classifier) and its 104 BatchNorms",
    ),
    ModelSpec(
        model_id="integral_r152", family="integral", variant="R152", builder="resnet_pose:build_integral",
        builder_kwargs=dict(depth=152), normalization="integral",
        num_params=68_927_168, num_params_incl_buffers=69_080_286, gmacs=18.123,
        notes="paper-style R-152 at 256x256; the released ECCV'18 challenge checkpoint is integral_r152_challenge",
    ),
    ModelSpec(
        model_id="integral_r152_challenge", family="integral", variant="R152_challenge",
        builder="resnet_pose:build_integral",
        builder_kwargs=dict(depth=152, input_shape=(384, 288), depth_dim=72), normalization="integral",
        input_shape=(384, 288), output_shape=(96, 72), depth_dim=72,
        num_params=68_964_176, num_params_incl_buffers=69_117_294, gmacs=30.837, default_batch_size=32,
        checkpoints=(
            CheckpointSource("model_chall_train_152ft_384x288.pth.tar",
                             url="https://www.dropbox.com/s/hfz5nkd39uisvbr/"
                                 "model_chall_train_152ft_384x288.pth.tar?dl=1",
                             note="trained on CHALL_H80K train (official README: 56.9 mm on its val split with flip)"),
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
        protocol_note="ECCV'18 challenge checkpoint: trained and scored on the challenge split (CHALL_H80K) with "
                      "its own 288x384 crops; run here on the Protocol 1/2 test frames with boxes padded to 3:4, "
                      "so its numbers are not comparable to Protocol 1/2 paper numbers",
    ),
)

MODEL_REGISTRY: dict[str, ModelSpec] = {m.model_id: m for m in _MODELS}


def list_models(family: str | None = None) -> list[str]:
    return [k for k, v in MODEL_REGISTRY.items() if family is None or v.family == family]


def get_spec(model_id: str) -> ModelSpec:
    try:
        return MODEL_REGISTRY[model_id]
    except KeyError:
        raise KeyError(f"unknown model id {model_id!r}; known: {', '.join(MODEL_REGISTRY)}") from None


def build_model(model_id: str, **overrides):
    """Build `model_id` randomly initialised, in eval mode, on CPU."""
    return get_spec(model_id).build(**overrides)
