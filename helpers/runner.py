"""The logic behind every model notebook: parameters in, checked inputs, inference, evaluation, files out.

A notebook is a thin narrative of calls:

    run = prepare(RunParams(model="convnextpose", variant="L", ...))   # fails fast, says what to fix
    run.environment(); run.data_summary(); run.checkpoint_summary()
    run.infer(); run.evaluate(); run.save()
    run.paper_comparison(); run.plots(); run.qualitative_samples(); run.files_table()

`prepare` checks everything before any inference: the model and variant, the data root (and what was
searched), the test images (count and first missing paths, and the skip option), the bbox_root file and the
checkpoint (strict load; real data never falls back to random weights).

Data and weights are two separate facts, and every output states both. Data: real Human3.6M, or generated
(synthetic data in the same format: `DEMO = True`, `DEMO = "auto"` with no real data found, or a DATA_ROOT that
holds generated data, recognised by its marker file or its annotation files' `info.generated_by`). Weights: the
CHECKPOINT given (on any data, so that your own weights can be smoke-tested without Human3.6M), else random demo
weights on generated data, else the released checkpoint. The demo data and random-initialised checkpoints are
written once into the cache folder; random weights stamp the result `weights.kind = "random_demo"` and generated
data `data.kind = "generated"`, so every table and report says what the numbers mean.

Outputs go to `<output_dir>/<model_id>/`: `result.json` (helpers/README.md schema), `predictions.npz`,
per-action/per-joint CSV and PNG, the paper comparison, qualitative samples, and for RootNet a RootNet-format
`bbox_root_human36m_output.json` that the other notebooks accept as BBOX_ROOT, with its sidecar
`bbox_root_human36m_output.sources.json` saying which boxes it used and which run made its roots.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import environment as env
from .display import show
from .errors import remedy
from .h36m import GENERATED_MARKER_FILE, DataError, find_ids, find_real_annotations, generated_marker
from .results import BBOX_ROOT_FILE, RESULT_FILE, generated_data_evidence

DEMO_FRAMES = 1  # sampled frames per demo sequence: 239 test samples, small enough for a CPU
RANDOM_WEIGHTS_BANNER = ("RANDOM DEMO WEIGHTS: every number this run produces is meaningless; it only shows that the "
                         "pipeline works.")
WEIGHTS_LABELS = {"random_demo": "RANDOM DEMO WEIGHTS", "released": "released checkpoint",
                  "given": "the checkpoint given as CHECKPOINT"}
GENERATED_DATA_BANNER = ("GENERATED DATA: this run evaluates on synthetic data in the Human3.6M format, not on "
                         "Human3.6M; its numbers cannot be compared with published results.")
QUALITATIVE_FILE_NAME = "qualitative_samples.png"
QUALITATIVE_COUNT = 4


# The remedies of helpers.errors.FixableError in notebook parameters.
NOTEBOOK_REMEDIES = {"skip_missing_images": "set SKIP_MISSING_IMAGES = True to do so"}


class ConfigError(ValueError):
    """A parameter that cannot work (unknown model, contradictory settings). The message says what to set."""


class CheckpointUnavailable(RuntimeError):
    """No checkpoint could be found or downloaded (real data never falls back to random weights)."""


# ------------------------------------------------------------------------------------------- parameters
def model_families() -> list[str]:
    from .models.registry import FAMILIES

    return list(FAMILIES)


def variants_of(family: str) -> list[str]:
    from .models.registry import get_family

    return get_family(family).variants()


def resolve_model_id(model: str, variant: str | None = None) -> str:
    """Registry model id for a family and variant (`registry.resolve_model_id`); a ConfigError when unknown."""
    from .models.registry import UnknownModelError
    from .models.registry import resolve_model_id as resolve

    try:
        return resolve(model, variant)
    except UnknownModelError as exc:
        raise ConfigError(str(exc)) from None


def _positive_int_or_none(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _bool(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r}")


def _demo_mode(value) -> str | bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise ConfigError(f"DEMO must be \"auto\", True or False, got {value!r}")


def _device_check_mode(value) -> str | bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("auto", "strict", "true", "false"):
        return {"auto": "auto", "strict": "strict", "true": True, "false": False}[text]
    raise ConfigError(f"DEVICE_CHECK must be \"auto\", True, False or \"strict\", got {value!r}")


def _optional_path(value) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value)


CPU_DEFAULT_BATCH_SIZE = 16  # used on CPU when BATCH_SIZE is None


def _param(default, help: str):
    """A RunParams field; `help` is its comment in the notebooks' parameters cell (where each family writes its
    own MODEL, VARIANT and FLIP_TEST defaults: helpers.notebook_template)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RunParams:
    """The notebook parameters. Each field is one UPPERCASE variable of the notebooks' parameters cell (papermill
    overrides them); `helpers.notebook_template` writes that cell and the `prepare` call from these fields."""

    model: str = field(metadata={"help": "model family of this notebook (or a registry model id)"})
    variant: str | None = _param(None, "{variants}")
    model_file: str | None = _param(None, "a family file of your own (README: \"Benchmark your own model\"); "
                                          "MODEL then names its family")
    checkpoint: str | None = _param(None, "path, URL or Google Drive id, or a folder or glob of snapshots (one "
                                          "result per epoch); None: search the inputs, then the registry's download")
    data_root: str | None = _param(None, "folder holding the Human3.6M annotations and images; None: search the "
                                         "input roots")
    protocol: int = _param(2, "2: train S1,5,6,7,8 / test S9,S11, MPJPE; 1: test S11, PA-MPJPE (rigid)")
    use_gt_info: bool = _param(True, "ground-truth box and root depth (the published setting); False: use BBOX_ROOT "
                                     "(RootNet: DETECTOR_BOXES)")
    bbox_root: str | None = _param(None, "RootNet-format bbox_root file (rootnet.ipynb writes one), used when "
                                         "USE_GT_INFO is False")
    detector_boxes: str | None = _param(None, "RootNet, when USE_GT_INFO is False: its boxes, from a person "
                                              "detector's file in the official format (bbox_human36m_output.json) "
                                              "or from a bbox_root file (its boxes; its roots are compared with "
                                              "RootNet's)")
    flip_test: bool = _param(True, "average with the horizontally flipped crop{flip_note}")
    batch_size: int | None = _param(None, "None: the model's default")
    precision: str = _param("fp32", "\"fp32\": the official setting, strict (TF32 off); \"tf32\"/\"fp16\"/\"bf16\": "
                                    "faster, checked against fp32 first (recorded)")
    device_check: str | bool = _param("auto", "\"auto\": compare the GPU with the CPU on 8 crops first (strict fp32, "
                                              "recorded); True: also on a CPU; False: off; \"strict\": stop if it fails")
    decode: str = _param("cpu", "\"cpu\": exact JPEG decoding; \"gpu\": nvjpeg on CUDA, compared with the CPU "
                                "decoder (recorded)")
    device: str = _param("auto", "\"auto\" | \"cpu\" | \"cuda\"")
    world_size: int | None = _param(None, "GPUs to use, one process each; None: every visible GPU")
    image_limit: int | None = _param(None, "run N test images spread evenly over the test set (a partial result); "
                                           "None: all")
    output_dir: str | None = _param(None, "None: /kaggle/working/outputs on Kaggle, else <repo>/outputs; files go "
                                          "to OUTPUT_DIR/<model_id>/")
    demo: str | bool = _param("auto", "\"auto\": the generated demo data when no real data is found; True: "
                                      "always; False: never. On generated data without CHECKPOINT: random weights")
    skip_missing_images: bool = _param(False, "True: run the images that exist and record the missing ones in "
                                              "result.json")
    seed: int = _param(0, "demo data and any randomness")
    cache_dir: str | None = _param(None, "demo data, demo checkpoints, downloads, crops; None: "
                                         "/kaggle/temp/h36m_cache or <repo>/.cache")

    def __post_init__(self):
        self.model_file = _optional_path(self.model_file)
        if self.model_file is not None:
            from .models.registry import UnknownModelError, load_family_file

            try:
                load_family_file(self.model_file)
            except UnknownModelError as exc:
                raise ConfigError(str(exc)) from None
        self.model_id = resolve_model_id(self.model, self.variant)
        if isinstance(self.protocol, bool) or self.protocol not in (1, 2):
            raise ConfigError(f"PROTOCOL must be 1 or 2, got {self.protocol!r}")
        self.protocol = int(self.protocol)
        for name in ("use_gt_info", "flip_test", "skip_missing_images"):
            setattr(self, name, _bool(name.upper(), getattr(self, name)))
        self.batch_size = _positive_int_or_none("BATCH_SIZE", self.batch_size)
        self.world_size = _positive_int_or_none("WORLD_SIZE", self.world_size)
        self.image_limit = _positive_int_or_none("IMAGE_LIMIT", self.image_limit)
        self.demo = _demo_mode(self.demo)
        self.device_check = _device_check_mode(self.device_check)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"SEED must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        from .crop_cache import DECODERS
        from .engine import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ConfigError(f"PRECISION must be one of {', '.join(repr(k) for k in PRECISIONS)}, got "
                              f"{self.precision!r} (\"fp32\" is the official setting)")
        if self.decode not in DECODERS:
            raise ConfigError(f"DECODE must be \"cpu\" (exact) or \"gpu\" (nvjpeg), got {self.decode!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"DEVICE must be \"auto\", \"cpu\" or \"cuda\", got {self.device!r} "
                              "(WORLD_SIZE chooses how many GPUs)")
        for name in ("checkpoint", "data_root", "bbox_root", "detector_boxes", "output_dir", "cache_dir"):
            setattr(self, name, _optional_path(getattr(self, name)))
        if self.use_gt_info and self.bbox_root is not None:
            raise ConfigError(f"BBOX_ROOT is set ({self.bbox_root}) but USE_GT_INFO is True, which uses the "
                              "ground-truth box and root; set USE_GT_INFO = False to use the boxes and roots of "
                              "BBOX_ROOT, or BBOX_ROOT = None")
        if self.use_gt_info and self.detector_boxes is not None:
            raise ConfigError(f"DETECTOR_BOXES is set ({self.detector_boxes}) but USE_GT_INFO is True, which uses the "
                              "ground-truth box; set USE_GT_INFO = False to run on the detector's boxes, or "
                              "DETECTOR_BOXES = None")
        self._check_box_parameters()
        if self.demo is True and self.data_root:
            raise ConfigError(f"DEMO = True runs on the generated demo data, but DATA_ROOT is set ({self.data_root}); "
                              "set DEMO = \"auto\" (or False) to use DATA_ROOT, or DATA_ROOT = None")

    def _check_box_parameters(self) -> None:
        """A root model predicts the root, so it takes boxes only (DETECTOR_BOXES); a pose model needs a root depth
        with every box, so it takes both from BBOX_ROOT."""
        from .models.registry import get_spec

        root_model = get_spec(self.model_id).kind == "root"
        if root_model and self.bbox_root is not None:
            raise ConfigError(f"{self.model_id} predicts the root itself, so BBOX_ROOT's roots would not be used; give "
                              "its boxes with DETECTOR_BOXES (a detector's bbox_human36m_output.json, or a bbox_root "
                              f"file whose boxes are then used): DETECTOR_BOXES = {self.bbox_root!r}")
        if not root_model and self.detector_boxes is not None:
            raise ConfigError(f"DETECTOR_BOXES gives boxes without roots, for RootNet; {self.model_id} needs a root "
                              "depth with every box: run rootnet.ipynb with DETECTOR_BOXES and give its "
                              "bbox_root file as BBOX_ROOT")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------- demo
def demo_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "demo"


def ensure_demo_data(cache_dir: Path, seed: int = 0, frames: int = DEMO_FRAMES) -> Path:
    """The generated demo dataset for (seed, frames) under the cache; generated once, then reused."""
    from . import demo_data

    target = demo_root(cache_dir) / f"data_seed{seed}_frames{frames}"
    if (target / GENERATED_MARKER_FILE).is_file() and (target / demo_data.DETECTOR_FILE).is_file():
        return target  # (a demo set written before it had a detector file is written again)
    print(f"generating the demo dataset (seed {seed}, {frames} frame(s) per sequence) into {target} ...")
    demo_data.generate(target, seed=seed, frames=frames, show_progress=False)
    return target


def ensure_demo_checkpoint(cache_dir: Path, model_id: str, seed: int = 0) -> Path:
    """A random-initialised checkpoint of `model_id` in its official layout; written once, then reused."""
    from . import demo_checkpoints

    # One folder per model: demo_checkpoints writes a README describing the files of each call.
    folder = demo_root(cache_dir) / f"checkpoints_v{demo_checkpoints.DEMO_VERSION}_seed{seed}" / model_id
    path = folder / model_id / demo_checkpoints.demo_file_name(model_id)
    if path.is_file():
        return path
    print(f"writing a random-initialised demo checkpoint for {model_id} into {folder} ...")
    return demo_checkpoints.write_demo_checkpoints(folder, model_ids=[model_id], seed=seed)[model_id]


# ------------------------------------------------------------------------------------------------ the run
def _source_text(block: dict) -> str:
    """One line for a `sources` entry: its label, then the file and origin it came from."""
    details = [block.get(key) for key in ("file", "from", "detail", "format") if block.get(key)]
    if block.get("source") == "rootnet_run":
        details.append(f"RootNet result {block.get('result_id')}, checkpoint sha256 "
                       f"{str(block.get('checkpoint_sha256'))[:12]}..., {block.get('weights')} weights")
    return block["label"] + (f" ({'; '.join(str(d) for d in details)})" if details else "")


def _spread(indices: np.ndarray, limit: int | None) -> np.ndarray:
    """`limit` entries of `indices` spread evenly from first to last (all of them when limit is None)."""
    if limit is None or limit >= len(indices):
        return np.asarray(indices)
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, limit)).astype(np.int64))
    return np.asarray(indices)[picks]


@dataclass(frozen=True)
class DataSource:
    """Where a run's data comes from and what it is: real Human3.6M, or generated (synthetic, same format)."""

    root: Path
    annotation_dir: Path
    generated: bool
    chosen_by: str  # how this data was chosen, in the notebook's parameters
    evidence: str | None = None  # what says the data is generated (marker file, the files' info entry)

    @property
    def kind(self) -> str:
        return "generated" if self.generated else "real"

    def describe(self) -> str:
        if self.generated:
            return f"GENERATED data (synthetic, Human3.6M format; {self.evidence})"
        return "real Human3.6M data"

    def to_dict(self) -> dict:
        block = {"kind": self.kind, "root": str(self.root), "annotation_dir": str(self.annotation_dir),
                 "chosen_by": self.chosen_by}
        if self.evidence:
            block["evidence"] = self.evidence
        return block


@dataclass
class Run:
    """A checked run: built by `prepare`, then driven cell by cell."""

    params: RunParams
    spec: object  # models.registry.ModelSpec
    data: DataSource
    annotation_dir: Path
    test_set: object  # h36m.TestSet: every test sample of the protocol
    image_check: object  # h36m.ImageCheck on the full test set
    selected: np.ndarray  # positions in test_set that are run
    image_paths: list[Path]  # of the selected samples
    checkpoint_path: Path
    checkpoint_source: str
    weights_kind: str
    model: object
    checkpoint_info: dict
    output_dir: Path
    cache_dir: Path | None = None  # demo data, downloads and the crop cache
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    environment_info: dict | None = None
    inference: dict | None = None
    result: dict | None = None
    per_sample: object | None = None
    evaluation_s: float | None = None
    files: dict[str, Path] = field(default_factory=dict)
    declarations: dict = field(default_factory=dict)  # models.common.check_declarations: the spec against the model
    snapshot: dict | None = None  # {run, epoch, file} when this run is one snapshot of a sweep (helpers.sweep)

    # -------------------------------------------------------------------------------- facts
    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def data_root(self) -> Path:
        return self.data.root

    @property
    def generated_data(self) -> bool:
        return self.data.generated

    @property
    def is_root_model(self) -> bool:
        return self.spec.kind == "root"

    @property
    def eval_set(self):
        return self.test_set.subset(self.selected)

    @property
    def partial(self) -> bool:
        return self.params.image_limit is not None and len(self.selected) < len(self.image_check.kept_indices)

    # -------------------------------------------------------------------------------- cells
    def environment(self) -> pd.DataFrame:
        """Software, GPUs and warnings (e.g. a GPU this torch build cannot use)."""
        if self.environment_info is None:
            self.environment_info = env.environment_report()
        for warning in self.environment_info["warnings"]:
            print(f"WARNING: {warning}")
        return env.environment_frame(self.environment_info)

    def data_summary(self) -> pd.DataFrame:
        ts = self.test_set
        rows = [
            ("data", self.data.describe()),
            ("chosen by", self.data.chosen_by),
            ("data root", str(self.data_root)),
            ("annotation folder", str(self.annotation_dir)),
            ("image roots", ", ".join(str(p) for p in self.image_check.image_roots)),
            ("protocol", f"{ts.protocol} (subjects {', '.join(f'S{s}' for s in ts.subjects)})"),
            ("test samples", len(ts)),
            ("boxes", _source_text(ts.sources["boxes"])),
            ("roots", "predicted by the model" if self.is_root_model else _source_text(ts.sources["roots"])),
            ("missing images", self.image_check.num_missing),
            ("samples run", len(self.selected)),
        ]
        if self.params.image_limit is not None:
            rows.append(("image limit", f"{self.params.image_limit} (spread evenly over the test set"
                                        + ("; a PARTIAL result)" if self.partial else ")")))
        check = ts.sources.get("protocol_check")
        if check:
            rows.append(("protocol check", f"{check['status']}: {check['message']}"))
        if ts.dropped_empty_boxes:
            rows.append(("dropped (empty box)", len(ts.dropped_empty_boxes)))
        for note in self.notes:
            rows.append(("note", note))
        frame = pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
        if self.generated_data:
            print(GENERATED_DATA_BANNER)
        per_action = pd.Series(self.eval_set.action_names()).value_counts()
        print(f"{len(self.selected)} samples over {len(per_action)} actions will be run")
        return frame

    def checkpoint_summary(self) -> pd.DataFrame:
        info = self.checkpoint_info
        spec = self.spec
        rows = [
            ("weights", WEIGHTS_LABELS.get(self.weights_kind, self.weights_kind)),
            ("path", str(self.checkpoint_path)),
            ("source", self.checkpoint_source),
            ("format", info.get("format")),
            ("sha256", info.get("sha256")),
            ("epoch", info.get("epoch")),
            ("model id", info.get("model_id")),
            ("key remaps", ", ".join(str(r) for r in info.get("remaps") or []) or "none"),
            ("chosen for protocol", info.get("protocol") if info.get("protocol") is not None else "(no choice made)"),
            ("parameters (loaded)", info.get("num_params")),
            ("parameters (registry)", spec.num_params),
            ("input (H, W)", tuple(spec.input_shape)),
            ("heatmap (H, W) x depth", f"{tuple(spec.output_shape)} x {spec.depth_dim}"),
            ("declarations checked", "yes, " + self.declarations["method"] if self.declarations.get("verified")
             else f"no: {self.declarations.get('reason')}"),
            ("normalisation (0-255)", f"mean {spec.mean}, std {spec.std}"),
            ("crop aspect (W/H)", round(spec.aspect_ratio, 6)),
            ("depth extent (mm)", spec.depth_extent_mm),
        ]
        if self.weights_kind == "random_demo":
            print(RANDOM_WEIGHTS_BANNER)
        return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")

    def inference_config(self):
        import torch

        from .engine import InferenceConfig

        p = self.params
        batch_size = p.batch_size or self.spec.default_batch_size
        if p.device == "cpu" or (p.device == "auto" and not torch.cuda.is_available()):
            # The GPU defaults hold 2x64 flipped crops and their 64^3 heatmaps: gigabytes on a CPU.
            batch_size = p.batch_size or min(batch_size, CPU_DEFAULT_BATCH_SIZE)
        return InferenceConfig(
            batch_size=batch_size, precision=p.precision, device_check=p.device_check, decode=p.decode, device=p.device,
            world_size=p.world_size, flip_test=p.flip_test, out_dir=self.output_dir, seed=p.seed,
            cache_dir=self.cache_dir, crop_rule=self.crop_rule())

    def crop_rule(self) -> dict:
        """The descriptive part of the crop-cache key: where the boxes come from and how they are shaped."""
        boxes = self.test_set.sources["boxes"]
        return {"protocol": self.params.protocol, "bbox_source": self.test_set.bbox_source,
                "box_file": boxes.get("file"), "aspect_ratio": round(float(self.spec.aspect_ratio), 9),
                "box_rule": boxes.get("rule")}

    def ensure_model(self) -> None:
        """Load this run's checkpoint strictly if it is not loaded yet (a sweep loads its snapshots in turn)."""
        if self.model is not None:
            return
        from .models import load_checkpoint

        self.model, info = load_checkpoint(self.checkpoint_path, model_id=self.spec.model_id)
        self.checkpoint_info = info.to_dict()
        if info.is_random_demo:
            self.weights_kind = "random_demo"
        self.note_stored_epoch()

    def note_stored_epoch(self) -> None:
        """A snapshot records the epoch its checkpoint stores; it names the epoch when the file name does not."""
        if self.snapshot is not None:
            self.snapshot["stored_epoch"] = self.checkpoint_info.get("epoch")
            if self.snapshot.get("epoch") is None:
                self.snapshot["epoch"] = self.snapshot["stored_epoch"]

    def infer(self) -> pd.DataFrame:
        """Run the model on the selected samples; writes `<output_dir>/predictions.npz`."""
        from .engine import run_inference

        self.ensure_model()
        self.inference = run_inference(self.spec, self.model, self.eval_set, self.image_paths,
                                       self.inference_config())
        inference = self.inference
        check = inference["precision_check"]
        settings = inference["settings"]
        precision = settings["precision"]
        from .report import verification_problems

        for problem in verification_problems(inference):
            print(f"WARNING: {problem}")
        rows = {"precision": precision if precision == "fp32" else f"{precision} (not the official fp32)",
                **{f"precision check: {k}": v for k, v in check.items() if k != "used" and check["requested"] != "fp32"},
                "TF32 / cudnn.benchmark / cudnn.deterministic": (settings.get("tf32"), settings.get("cudnn_benchmark"),
                                                                 settings.get("cudnn_deterministic")),
                **{f"device check: {k}": v for k, v in (inference.get("device_check") or {"run": False}).items()},
                **{f"crop check: {k}": v for k, v in (inference.get("crop_check") or {}).items()},
                **inference["timing"], **{f"crop cache {k}": v for k, v in inference["crop_cache"].items()},
                "batch size (requested, used)": (inference["settings"]["batch_size"],
                                                 inference["settings"]["batch_size_used"]),
                **inference["shards"], "peak_memory_mb": inference.get("peak_memory_mb"),
                "memory_kind": inference.get("memory_kind"), "predictions": inference["predictions_path"]}
        return pd.DataFrame(list(rows.items()), columns=["item", "value"]).set_index("item")

    def _extra_blocks(self) -> dict:
        from .results import run_blocks

        blocks = run_blocks(self.spec, checkpoint_info=self.checkpoint_info, checkpoint_path=self.checkpoint_path,
                            checkpoint_source=self.checkpoint_source, weights_kind=self.weights_kind, data=self.data,
                            inference=self.inference, params=self.params, declarations=self.declarations,
                            environment=self.environment_info or env.environment_report(), snapshot=self.snapshot)
        blocks["parameters"] = self.repeat_parameters()
        return blocks

    def repeat_parameters(self) -> dict:
        """result.json's `parameters` block: the notebook and the parameters that repeat this run exactly
        (helpers.reproduce writes them as a papermill command). Every RunParams field, with what this run
        resolved where the default depends on the machine or its inputs: device, batch size and number of GPUs
        as run, the data root and checkpoint file found, the box files, output and cache folders (absolute: the
        command may run from another folder than the batch's notebooks/), the demo mode. A
        parameter left None whose default is None is omitted (the parameters cell has None)."""
        from .reproduce import family_notebook

        p = self.params
        settings = (self.inference or {}).get("settings") or {}
        output_root = _output_root(p)
        demo_set = self.generated_data and p.data_root is None  # the demo set, made again from SEED under CACHE_DIR
        if self.weights_kind == "random_demo" and p.checkpoint is None:
            checkpoint = None  # random demo weights, made again from SEED under CACHE_DIR
        elif self.snapshot is not None:
            checkpoint = str(Path(self.snapshot["pattern"]).expanduser().absolute())  # the whole sweep
        else:
            checkpoint = str(Path(self.checkpoint_path).resolve())
        resolved = {
            "model": self.spec.family, "variant": self.spec.variant,
            "model_file": str(Path(p.model_file).expanduser().resolve()) if p.model_file else None,
            "checkpoint": checkpoint, "data_root": None if demo_set else str(Path(self.data_root).resolve()),
            "bbox_root": str(Path(p.bbox_root).expanduser().resolve()) if p.bbox_root else None,
            "detector_boxes": str(Path(p.detector_boxes).expanduser().resolve()) if p.detector_boxes else None,
            "batch_size": settings.get("batch_size", p.batch_size), "device": settings.get("device", p.device),
            "world_size": settings.get("world_size", p.world_size), "output_dir": str(output_root.resolve()),
            "demo": demo_set,
            "cache_dir": str(Path(self.cache_dir).resolve()) if self.cache_dir is not None else p.cache_dir,
        }
        values = {}
        for f in dataclasses.fields(RunParams):
            value = resolved[f.name] if f.name in resolved else getattr(p, f.name)
            if value is None and f.default is None:
                continue
            values[f.name.upper()] = value
        return {"notebook": family_notebook(self.spec.family, output_root), "values": values}

    def evaluate(self) -> pd.DataFrame:
        """Evaluate the predictions against the ground truth; returns the per-action table (mm)."""
        from . import evaluate as evaluation
        from . import report

        if self.inference is None:
            raise RuntimeError("run.infer() must run before run.evaluate()")
        start = time.perf_counter()
        check = self.image_check if self.params.skip_missing_images else None
        # The flip test is read from what the engine ran (root models never run one).
        self.result, self.per_sample = evaluation.evaluate_predictions(
            self.test_set, self.inference["predictions_path"], allow_partial=self.partial,
            flip_test=bool(self.inference["settings"]["flip_test"]), extra=self._extra_blocks(), image_check=check,
            depth_extent_mm=self.spec.depth_extent_mm, protocol_note=self.spec.protocol_note or None)
        self.evaluation_s = time.perf_counter() - start
        print(report.format_table(self.result).split("\n", 1)[0])
        if self.result.get("official_summary"):
            print(self.result["official_summary"])
        return report.per_action_frame(self.result)

    def per_joint_table(self) -> pd.DataFrame:
        from . import report

        return report.per_joint_frame(self._need_result())

    def _need_result(self) -> dict:
        if self.result is None:
            raise RuntimeError("run.evaluate() must run first")
        return self.result

    def save(self) -> Path:
        """Write result.json (validated), the per-action/per-joint tables and plots, and for RootNet the
        bbox_root file that the other notebooks accept as BBOX_ROOT."""
        from . import report
        from .results import write_result

        result = self._need_result()
        timing = dict((self.inference or {}).get("timing") or {})
        timing["evaluation_s"] = round(float(self.evaluation_s or 0.0), 4)
        timing["total_s"] = round(time.perf_counter() - self.started, 4)
        self.files.update(write_result(self.output_dir / RESULT_FILE, result, self.per_sample, timing))
        self.files["predictions"] = Path(self.inference["predictions_path"])
        self.files.update(report.write_model_files(result, self.output_dir, spec=self.spec))
        if self.is_root_model:
            self.files["bbox_root"] = self._write_bbox_root()
        print(f"result: {self.files['result']}")
        return self.files["result"]

    def _write_bbox_root(self) -> Path:
        """The RootNet-format file (the released structure) with the boxes this run cropped and its roots, and its
        sidecar: which boxes (ground truth or a detector's, and from which file) and which run made the roots."""
        from . import box_sources
        from .engine import write_bbox_root_file
        from .h36m import load_bbox_root

        path = self.output_dir / BBOX_ROOT_FILE
        pred = self.inference["predictions"]
        written = Path(write_bbox_root_file(path, pred["image_id"], pred["bbox"], pred["root_cam"]))
        table = load_bbox_root(written)
        result_file = self.files["result"]
        boxes = {k: v for k, v in self.test_set.sources["boxes"].items() if k not in ("label", "rule")}
        roots = {"source": "rootnet_run", "result_id": box_sources.bytes_sha256(Path(result_file).read_bytes())[:16],
                 "result_file": str(result_file), "created_utc": self.result["created_utc"], "model_id": self.model_id,
                 "checkpoint_sha256": self.checkpoint_info.get("sha256"), "checkpoint": str(self.checkpoint_path),
                 "weights": self.weights_kind, "protocol": self.params.protocol,
                 "precision": self.inference["settings"]["precision"], "samples": len(table),
                 "test_samples": len(self.test_set)}
        box_sources.write_sidecar(written, content_hash=box_sources.content_sha256(table.image_id, table.bbox,
                                                                                   table.root_cam),
                                  entries=len(table), boxes=boxes, roots=roots, protocol=self.params.protocol)
        self.files["bbox_root_sources"] = box_sources.sidecar_path(written)
        label = box_sources.sources_label(boxes["source"], "rootnet_run")
        if len(self.selected) < len(self.test_set):
            print(f"note: {path} covers {len(self.selected)} of {len(self.test_set)} test images; other notebooks "
                  "accept it as BBOX_ROOT only when it covers the whole test set (run RootNet without IMAGE_LIMIT)")
        else:
            print(f"bbox_root for the other notebooks (USE_GT_INFO = False, BBOX_ROOT = this path): {path}\n"
                  f"runs on it are labelled \"{label}\"")
        return written

    def root_reproduction(self) -> pd.DataFrame | None:
        """RootNet on a bbox_root file's boxes: its roots against the file's roots, sample by sample (mm). On the
        released file's boxes this is the reproduction check of RootNet itself."""
        from . import report

        table = report.root_reproduction_frame(self._need_result())
        if table is None:
            print("no reproduction check: the boxes did not come from a bbox_root file (set USE_GT_INFO = False and "
                  "DETECTOR_BOXES to the released RootNet output to compare with the released roots)")
        return table

    def paper_comparison(self) -> pd.DataFrame:
        from . import report

        return report.paper_comparison(self._need_result(), self.spec)

    def plots(self) -> None:
        """Show the per-action (and per-joint) error plots: the files `save()` wrote, else drawn afresh."""
        import matplotlib.pyplot as plt

        from . import report

        result = self._need_result()
        saved = [self.files[k] for k in ("per_action_png", "per_joint_png") if k in self.files]
        if saved:
            try:
                from IPython.display import Image
            except ImportError:
                Image = None  # noqa: N806
            for path in saved:
                show(Image(filename=str(path)) if Image is not None else path)
            return
        figures = [report.plot_per_action(result)]
        if result["kind"] == "pose":
            figures.append(report.plot_per_joint(result))
        for fig in figures:
            show(fig)
            plt.close(fig)

    def _sample_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Evaluated positions (in eval_set) picked from best to worst error, spread over the ranking, and the
        headline error of every evaluated position."""
        errors = self.per_sample.sample_errors()["mrpe" if self.is_root_model else "mpjpe"]
        rows, _ = find_ids(self.per_sample.image_id, self.eval_set.image_id)
        errors = errors[rows]
        ranking = np.argsort(errors, kind="stable")
        return _spread(ranking, QUALITATIVE_COUNT), errors

    def qualitative_samples(self, count: int = QUALITATIVE_COUNT):
        """Best-to-worst samples: the crop with the predicted 2D skeleton (RootNet: the root) and the 3D
        prediction next to the ground truth. Saved as qualitative_samples.png."""
        import matplotlib.pyplot as plt

        from . import report
        from .images import read_image
        from .pipeline import crop_images

        result = self._need_result()
        picks, errors = self._sample_order()
        picks = picks[:count]
        es = self.eval_set
        sample_rows, _ = find_ids(self.per_sample.image_id, es.image_id)
        in_h, in_w = self.spec.input_shape
        crops, coords_2d, pred_cam, gt_cam, titles = [], [], [], [], []
        if not self.is_root_model:
            pred = self.inference["predictions"]
            pred_rows, _ = find_ids(pred["image_id"], es.image_id)
        for k in picks:
            crops.append(crop_images([read_image(self.image_paths[k])], es.bbox[k:k + 1], (in_h, in_w))[0])
            box = es.bbox[k]
            if self.is_root_model:
                root = self.per_sample.pred_cam[sample_rows[k]]
                coords_2d.append(report.camera_to_crop_pixels(root[None], es.f[k], es.c[k], box, (in_h, in_w)))
                metric = "root error"
            else:
                coords_2d.append(report.heatmap_to_crop_pixels(pred["coords"][pred_rows[k]], self.spec.output_shape,
                                                               self.spec.input_shape))
                pred_cam.append(self.per_sample.pred_cam[sample_rows[k]])
                gt_cam.append(es.joint_cam[k])
                metric = "MPJPE"
            titles.append(f"image {es.image_id[k]} ({es.action_names()[k]}): {metric} {errors[k]:.1f} mm")
        fig = report.plot_qualitative_samples(
            crops, coords_2d, pred_cam=None if self.is_root_model else pred_cam,
            gt_cam=None if self.is_root_model else gt_cam, titles=titles, result=result)
        self.files["qualitative_png"] = report.save_figure(fig, self.output_dir / QUALITATIVE_FILE_NAME)
        show(fig)
        plt.close(fig)

    def files_table(self) -> pd.DataFrame:
        rows = []
        for name, path in self.files.items():
            path = Path(path)
            rows.append((name, str(path), round(path.stat().st_size / 1024, 1) if path.exists() else None))
        print(f"outputs of {self.model_id}: {self.output_dir}")
        return pd.DataFrame(rows, columns=["file", "path", "KiB"]).set_index("file")

    def run_all(self) -> dict:
        """Every step after `prepare`, displaying each table (used by the widgets' Run button)."""
        for step in (self.environment, self.data_summary, self.checkpoint_summary, self.infer, self.evaluate):
            show(step())
        self.save()
        show(self.paper_comparison())
        reproduction = self.root_reproduction() if self.is_root_model else None
        if reproduction is not None:
            show(reproduction)
        self.plots()
        self.qualitative_samples()
        show(self.files_table())
        return self.result


def environment_table() -> pd.DataFrame:
    """The environment report before a run exists (first cells of a notebook)."""
    report = env.environment_report()
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    return env.environment_frame(report)


# ----------------------------------------------------------------------------------------------- prepare
def _resolve_data(params: RunParams, cache_dir: Path) -> DataSource:
    """The data of this run: DEMO = True: the generated demo data; DATA_ROOT; else real data under the input roots;
    else (DEMO "auto") the generated demo data. Generated data is recognised by its marker file wherever it is."""
    from .h36m import find_annotation_dir

    def demo_data(chosen_by: str) -> DataSource:
        root = ensure_demo_data(cache_dir, seed=params.seed)
        return DataSource(root, find_annotation_dir(root), True, chosen_by,
                          f"the demo set generated by helpers.demo_data, seed {params.seed}")

    if params.demo is True:
        return demo_data("DEMO = True")
    if params.data_root is not None:
        root = Path(params.data_root).expanduser()
        if not root.is_dir():
            raise DataError(f"DATA_ROOT {root} does not exist or is not a folder; set DATA_ROOT to the folder "
                            "holding the Human3.6M annotations and images (or a folder above them), or None to "
                            "search the input roots")
        try:
            annotation_dir = find_annotation_dir(root)
        except DataError as exc:
            raise DataError(f"DATA_ROOT {root}: {exc}") from None
        marker = generated_marker(root, annotation_dir)
        return DataSource(root, annotation_dir, marker is not None, "DATA_ROOT",
                          f"marked by {marker}" if marker else None)
    roots = env.default_input_roots()
    found = find_real_annotations(roots)
    if found is not None:
        return DataSource(found[0], found[1], False, f"found under the input roots ({', '.join(map(str, roots))})")
    if params.demo == "auto":
        return demo_data("DEMO = \"auto\" and no real Human3.6M data under the input roots")
    searched = ", ".join(str(r) for r in roots) or "none exists (no /kaggle/input, no <repo>/data)"
    raise DataError(f"no Human3.6M annotations (Human36M_subject*_data.json) under the input roots: {searched}; "
                    "set DATA_ROOT, attach the dataset, or set DEMO = \"auto\" to run on the generated demo data")


def _data_files(data: DataSource) -> dict[str, str]:
    """The box files generated data brings along ({"bbox_root", "detector_boxes"}, where present); real data: none."""
    from .demo_data import DETECTOR_FILE

    if not data.generated:
        return {}
    files = {"bbox_root": data.root / BBOX_ROOT_FILE, "detector_boxes": data.root / DETECTOR_FILE}
    return {key: str(path) for key, path in files.items() if path.is_file()}


def _box_files(params: RunParams, spec, data_files: dict[str, str]) -> dict:
    """load_test_set's box arguments: {} (ground truth), {"bbox_root": ...} (pose) or {"detector_boxes": ...} (root)."""
    if params.use_gt_info:
        return {}
    if spec.kind == "root":
        path = params.detector_boxes or data_files.get("detector_boxes")
        if path is None:
            raise ConfigError(f"USE_GT_INFO = False for {spec.model_id} needs DETECTOR_BOXES: a person detector's "
                              "boxes in the official format (bbox_human36m_output.json: image_id and an unprocessed "
                              "bbox per image), or a bbox_root file whose boxes are used (e.g. the released RootNet "
                              "output)")
        if not Path(path).is_file():
            raise DataError(f"DETECTOR_BOXES {path} does not exist; point it at the detector's "
                            "bbox_human36m_output.json or at a bbox_root file")
        return {"detector_boxes": path}
    path = params.bbox_root or data_files.get("bbox_root")
    if path is None:
        raise ConfigError("USE_GT_INFO = False needs BBOX_ROOT: a RootNet-format bbox_root file (rootnet.ipynb "
                          "writes one) with a box and root for every test image")
    if not Path(path).is_file():
        raise DataError(f"BBOX_ROOT {path} does not exist; run rootnet.ipynb first (it writes "
                        f"<OUTPUT_DIR>/rootnet/{BBOX_ROOT_FILE}) or point BBOX_ROOT at a RootNet output file")
    return {"bbox_root": path}


def _registry_file_names(spec) -> set[str]:
    return {source.file_name for source in spec.checkpoints}


def _weights_kind(given: str | None, path: Path, spec) -> str:
    """"released" for the registry's files (found by name, or its Drive ids), "given" for any other CHECKPOINT."""
    if given is None or path.name in _registry_file_names(spec):
        return "released"
    drive_ids = {i for s in spec.checkpoints for i in (s.drive_id, s.drive_folder) if i}
    return "released" if any(i in given for i in drive_ids) else "given"


def _registry_download_source(spec) -> str | None:
    """The registry's download for a model: a Drive file, else its Drive folder, else a URL."""
    for source in spec.checkpoints:
        if source.drive_id:
            return f"drive:{source.drive_id}"
        if source.drive_folder:
            return f"drive-folder:{source.drive_folder}"
        if source.url:
            return source.url
    return None


def _acquire(params: RunParams, spec, cache_dir: Path, search_roots: list[Path]) -> tuple[Path, str, int | None]:
    """A checkpoint from CHECKPOINT, else found under the search roots, else the registry's download; the last
    item is the protocol it was chosen for (None where no choice by PROTOCOL was made)."""
    from .acquire import AcquireError, CheckpointNotFound, acquire

    downloads = cache_dir / "checkpoints"
    protocol = params.protocol
    if params.checkpoint is not None:
        got = acquire(params.checkpoint, model_id=spec.model_id, cache_dir=downloads, search_roots=search_roots,
                      protocol=protocol)
        return Path(got.path), params.checkpoint, got.protocol
    try:
        got = acquire(None, model_id=spec.model_id, search_roots=search_roots, protocol=protocol)
        return Path(got.path), f"found under {', '.join(str(r) for r in search_roots)}", got.protocol
    except CheckpointNotFound as not_found:  # candidates it could not choose among are reported as they are
        download = _registry_download_source(spec)
        if download is None:
            raise AcquireError(f"{not_found}; the registry lists no download for {spec.model_id}"
                               + (f" ({spec.notes})" if spec.notes else "")) from None
        print(f"{spec.model_id}: no checkpoint under the inputs; downloading {download} ...")
        got = acquire(download, model_id=spec.model_id, cache_dir=downloads, protocol=protocol)
        return Path(got.path), download, got.protocol


def _resolve_checkpoint(params: RunParams, spec, cache_dir: Path, data: DataSource,
                        notes: list[str]) -> tuple[Path, str, str, int | None]:
    """(checkpoint path, where it came from, weights kind, the protocol it was chosen for or None): CHECKPOINT when
    set, on any data; else random demo weights on generated data; else the released checkpoint (real data never
    falls back to random weights)."""
    data_root = data.root
    if params.checkpoint is None and data.generated:
        return (ensure_demo_checkpoint(cache_dir, spec.model_id, params.seed), "demo (random-initialised)",
                "random_demo", None)
    from .acquire import AcquireError
    from .models.checkpoint import CheckpointError

    search_roots = list(dict.fromkeys([*env.default_input_roots(), data_root]))
    try:
        path, source, protocol = _acquire(params, spec, cache_dir, search_roots)
    except (AcquireError, CheckpointError) as exc:
        # Real data never silently falls back to random weights: that would print numbers that mean nothing.
        advice = "" if params.checkpoint is not None else (
            "; set CHECKPOINT to a path, URL or Google Drive id (or attach the file under /kaggle/input), "
            "or DEMO = True to run on the generated demo data instead")
        raise CheckpointUnavailable(f"no checkpoint for {spec.model_id}: {exc}{advice}") from None
    if protocol is not None:
        notes.append(f"checkpoint chosen for protocol {protocol}: its folder path or file name says so ({path})")
    return path, source, _weights_kind(params.checkpoint, path, spec), protocol


def _output_root(params: RunParams) -> Path:
    """OUTPUT_DIR, or the environment's default output folder; each model writes into `<it>/<model_id>/`."""
    return Path(params.output_dir).expanduser() if params.output_dir else env.default_output_dir()


def prepare(params: RunParams):
    """Check everything a run needs, before any inference; raise a clear error on the first problem.

    Returns a `Run`; when CHECKPOINT names several snapshots (a folder or a glob), a `sweep.Sweep` of them."""
    from .h36m import check_images, load_test_set
    from .models import get_spec, load_checkpoint
    from .models.common import DeclarationError, check_declarations
    from .sweep import prepare_sweep, snapshot_files

    snapshots = snapshot_files(params.checkpoint)
    if snapshots is not None:
        if not snapshots:
            raise ConfigError(f"CHECKPOINT {params.checkpoint} names no checkpoint file (no match for the pattern, "
                              "or an empty folder)")
        return prepare_sweep(params, snapshots, prepare)

    started = time.perf_counter()
    spec = get_spec(params.model_id)
    cache_dir = Path(params.cache_dir).expanduser() if params.cache_dir else env.default_cache_dir()
    notes: list[str] = []
    data = _resolve_data(params, cache_dir)
    data_root, annotation_dir, data_files = data.root, data.annotation_dir, _data_files(data)
    # Boxes padded to the model's input aspect ratio (3:4 for a 384x288 input), so crops are not distorted.
    test_set = load_test_set(annotation_dir, protocol=params.protocol, aspect_ratio=spec.aspect_ratio,
                             **_box_files(params, spec, data_files))
    if spec.protocol_note:
        notes.append(spec.protocol_note)
    if test_set.generated and not data.generated:  # the annotation files say so, wherever they were copied to
        data = dataclasses.replace(data, generated=True, evidence=generated_data_evidence(test_set))
    if data.generated:
        notes.append(f"{data.describe()}: the numbers are not Human3.6M results")
    check = test_set.sources.get("protocol_check") or {}
    if check.get("status") == "mismatch" or (check.get("status") == "unknown" and check.get("extra_entries")):
        notes.append(f"WARNING, box/root file: {check['message']}")
    for key in ("bbox_root_file", "detector_file"):
        if (test_set.sources.get(key) or {}).get("note"):
            notes.append(f"{key.replace('_', ' ')}: {test_set.sources[key]['note']}")

    if params.image_limit is None:
        try:
            image_check = check_images(test_set, [data_root], skip_missing=params.skip_missing_images)
        except DataError as exc:
            raise DataError(remedy(exc, NOTEBOOK_REMEDIES)) from None
        selected = image_check.kept_indices
    else:
        image_check = check_images(test_set, [data_root], skip_missing=True)
        candidates = image_check.kept_indices if params.skip_missing_images else np.arange(len(test_set))
        selected = _spread(candidates, params.image_limit)
        missing = [image_check.paths[i] for i in selected if i not in set(image_check.kept_indices.tolist())]
        if missing:
            raise DataError(f"{len(missing)} of the {len(selected)} selected test images are missing (first: "
                            f"{', '.join(str(p) for p in missing[:3])}); complete the image folders or set "
                            "SKIP_MISSING_IMAGES = True to run the images that exist and record the others")
    image_paths = [image_check.paths[i] for i in selected]

    checkpoint_path, source, weights_kind, chosen_protocol = _resolve_checkpoint(params, spec, cache_dir, data, notes)
    model, info = load_checkpoint(checkpoint_path, model_id=spec.model_id)
    try:  # the declared heatmap size, depth and joints against the model, before any number is computed
        declarations = check_declarations(spec, model)
    except DeclarationError as exc:
        raise ConfigError(str(exc)) from None
    info = {**info.to_dict(), "protocol": chosen_protocol}
    if info.get("is_random_demo") and weights_kind != "random_demo":
        notes.append(f"{checkpoint_path} is a random-initialised demo checkpoint: RANDOM DEMO WEIGHTS")
        weights_kind = "random_demo"
    output_dir = _output_root(params) / spec.model_id
    run = Run(params=params, spec=spec, data=data, annotation_dir=annotation_dir,
              test_set=test_set, image_check=image_check, selected=np.asarray(selected), image_paths=image_paths,
              checkpoint_path=checkpoint_path, checkpoint_source=source, weights_kind=weights_kind, model=model,
              checkpoint_info=info, output_dir=output_dir, cache_dir=cache_dir, notes=notes, started=started,
              declarations=declarations)
    for note in notes:
        print(f"NOTE: {note}")
    print(f"{spec.model_id}: {len(selected)} of {len(test_set)} protocol-{params.protocol} test samples of "
          f"{data.describe()}; weights: {WEIGHTS_LABELS.get(weights_kind, weights_kind)} ({checkpoint_path.name}); "
          f"outputs -> {output_dir}")
    return run


def run_notebook(params: RunParams) -> Run:
    """`prepare` plus every step, as the notebooks do it; for the widgets and scripts."""
    run = prepare(params)
    run.run_all()
    return run
