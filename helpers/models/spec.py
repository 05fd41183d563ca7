"""What a model family declares: `ModelSpec` per model id, and the `Family` that holds them.

Family files (`helpers/models/<family>.py`, or your own file) import these; `registry` collects the families.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..bibtex import parse_entry
from ..pipeline import MEAN_3DMPPE, STD_3DMPPE
from ..protocol import ACTION_NAMES, FLIP_PAIRS, JOINT_NAMES


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
    # The Drive folder holds one file of this name per protocol (PoseNet, RootNet): the folder path or the file
    # name must say which protocol a file is for (helpers.acquire chooses by PROTOCOL, or asks for CHECKPOINT).
    one_per_protocol: bool = False


@dataclass(frozen=True)
class CheckpointRelease:
    """How a family's official training code saves its checkpoints: `torch.save({'epoch', 'network':
    DataParallel(model).state_dict(), 'optimizer': optimizer.state_dict(), *extras}, path)`, in the release's
    serialisation. `helpers.demo_checkpoints` writes its random-weight files the same way."""

    optimizer: str = "Adam"  # the torch.optim class the training code uses
    serialization: str = "zip"  # "zip" (torch >= 1.6) or "legacy" (the pre-1.6 format)
    versioned: bool = True  # False: a PyTorch 0.4.0 state dict (no `_metadata`, no BatchNorm num_batches_tracked)
    extras: tuple[str, ...] = ()  # further entries: "scheduler" (its state_dict), "train_loss", "valid_loss"


@dataclass(frozen=True)
class PaperResult:
    p2_mpjpe: float | None = None  # Protocol 2 MPJPE, ground-truth box and root (mm)
    p1_pa_mpjpe: float | None = None  # Protocol 1 PA-MPJPE, rigid alignment (mm)
    p2_mpjpe_detected: float | None = None  # with RootNet box and root
    p1_pa_mpjpe_detected: float | None = None
    mrpe: dict | None = None  # root models only: {"total", "x", "y", "z"}
    source: str = ""
    # Published per-action values, keyed by the field above they break down, e.g. {"p2_mpjpe": {"Directions":
    # 50.1, ...}} (action names as protocol.ACTION_NAMES); the report's tables print them as "reported" rows.
    per_action: dict | None = None

    def __post_init__(self):
        totals = ("p2_mpjpe", "p1_pa_mpjpe", "p2_mpjpe_detected", "p1_pa_mpjpe_detected", "mrpe")
        for name, values in (self.per_action or {}).items():
            if name not in totals:
                raise ValueError(f"PaperResult.per_action key {name!r} is not one of {', '.join(totals)}")
            unknown = sorted(set(values) - set(ACTION_NAMES))
            if unknown:
                raise ValueError(f"PaperResult.per_action[{name!r}]: unknown action(s) {unknown}; use the names "
                                 "of protocol.ACTION_NAMES")


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    family: str  # the name of the Family that holds this spec
    variant: str
    # A callable returning a fresh nn.Module, called with builder_kwargs; or "module:function" inside helpers.models.
    builder: Callable | str
    builder_kwargs: dict = field(default_factory=dict)
    kind: str = "pose"  # "pose": model(x) -> (N,J,3) heatmap units; "root": model(x, k) -> (N,3)
    input_shape: tuple[int, int] = (256, 256)  # (H, W)
    output_shape: tuple[int, int] = (64, 64)  # (H, W) of the heatmap
    depth_dim: int = 64
    joint_num: int = 18
    joint_names: tuple[str, ...] = JOINT_NAMES
    flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS
    # (x - mean) / std per RGB channel, applied to the 0-255 crop as the official code applies it: the 3DMPPE
    # family uses ImageNet's statistics unscaled (pipeline.MEAN_3DMPPE / STD_3DMPPE, the quirk its weights were
    # trained with); a family trained on ImageNet-normalised 0-1 inputs declares mean*255 and std*255.
    mean: tuple[float, float, float] = MEAN_3DMPPE
    std: tuple[float, float, float] = STD_3DMPPE
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

    def __post_init__(self):
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                numbers = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                numbers = ()
            if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers) or (
                    name == "std" and min(numbers) <= 0):
                raise ValueError(f"{self.model_id}: {name} must be three finite numbers (R, G, B) in 0-255 units"
                                 + (", all positive" if name == "std" else "") + f"; got {value!r}")
            object.__setattr__(self, name, numbers)

    @property
    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std), applied to the 0-255 crop (pipeline.normalize)."""
        return self.mean, self.std

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
        fn = self.builder
        if isinstance(fn, str):
            module_name, fn_name = fn.split(":")
            fn = getattr(importlib.import_module(f"{__package__}.{module_name}"), fn_name)
        return fn(**{**self.builder_kwargs, **overrides}).eval()


@dataclass(frozen=True)
class NotebookText:
    """What a family's notebook says about it (helpers.notebook_template writes the rest)."""

    file: str  # notebook file name, e.g. "convnextpose.ipynb"
    title: str
    intro: str  # markdown: what the model is and what to know before running it
    default_variant: str


@dataclass(frozen=True)
class Family:
    """One model family: its specs and everything about it the rest of the package needs."""

    name: str  # the MODEL parameter, e.g. "convnextpose"
    display_name: str  # for tables and reports, e.g. "ConvNeXtPose"
    models: tuple[ModelSpec, ...]
    notebook: NotebookText
    # Official checkpoint keys -> ours, acting only on this family's sentinel keys (timm's
    # checkpoint_filter_fn); returns (state dict, notes on what was renamed). None: keys are already ours.
    key_filter: Callable[[Mapping], tuple[dict, list[str]]] | None = None
    # Ours -> the official on-disk layout, without the `module.` prefix; used to write demo checkpoints
    # (spec, state dict) -> state dict. None: the official keys are ours.
    official_keys: Callable[[ModelSpec, Mapping], dict] | None = None
    # How the official training code saves checkpoints (the default: Adam, zip format, as torch.save writes today).
    release: CheckpointRelease = CheckpointRelease()
    source: str = ""  # where the family was defined (module name or file path); set on registration
    # The family's paper as one BibTeX entry (author, title, venue, year); consolidation cites it in its
    # tables and writes it to references.bib. Empty: no citation.
    citation: str = ""

    def __post_init__(self):
        if self.citation:
            try:
                parse_entry(self.citation)
            except ValueError as exc:
                raise ValueError(f"family {self.name!r}: citation is not one usable BibTeX entry: {exc}") from None

    @property
    def citation_key(self) -> str | None:
        """The key to `\\cite` (None without a citation)."""
        return parse_entry(self.citation).key if self.citation else None

    def variants(self) -> list[str]:
        return [spec.variant for spec in self.models]
