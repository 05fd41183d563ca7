"""One home for a run's result files: `result.json` is assembled here (the evaluation's metrics, the blocks
that describe the run, the timing) and validated once, and the per-sample errors are stored beside it, by the
same code for the notebooks and for `rescore`.

    python -m helpers rescore --annotations DIR --predictions predictions.npz --out result.json

re-evaluates a saved predictions file (pose or root) without rerunning a model, and writes
`result.json` and `per_sample_errors.npz` next to it. Every result.json gets its reproduction card
`REPRODUCE.md` beside it (helpers.reproduce), written by the same call.

Files of one model's output folder (`<output_dir>/<model_id>/`): `RESULT_FILE`, `PREDICTIONS_FILE`,
`PER_SAMPLE_FILE`, and for root models `BBOX_ROOT_FILE` (what the pose notebooks accept as BBOX_ROOT).
The per-sample file holds, in test-set order, `image_id`, `subject`, `action_index`, `subaction`, `camera`,
`metrics`, and per metric `error_<metric>` (N,) float64, the per-sample error in mm (pose metrics: the mean over
the 17 evaluated joints, what the official total averages), and for pose metrics `joint_error_<metric>`
(N, 17) float32, the per-joint errors.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from .atomic import save_npz, write_json
from .errors import remedy
from .evaluate import PerSample, PredictionError, evaluate_predictions, load_predictions
from .report import format_table
from .reproduce import render_card, write_card
from .h36m import DataError, load_test_set
from .result_schema import validate_result

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.npz"
PER_SAMPLE_FILE = "per_sample_errors.npz"
BBOX_ROOT_FILE = "bbox_root_human36m_output.json"
_PER_SAMPLE_KEYS = ("image_id", "subject", "action_index", "subaction", "camera")


def per_sample_path(result_path: str | Path) -> Path:
    """Where the per-sample errors of `result_path` go: `per_sample_errors.npz` beside a `result.json`,
    `<name>.per_sample_errors.npz` beside any other name."""
    result_path = Path(result_path)
    if result_path.name == RESULT_FILE:
        return result_path.with_name(PER_SAMPLE_FILE)
    return result_path.with_name(f"{result_path.stem}.{PER_SAMPLE_FILE}")


def save_per_sample(path: str | Path, per_sample: PerSample) -> Path:
    """Write the per-sample errors atomically (plain arrays, no pickles)."""
    errors = per_sample.sample_errors()
    arrays = {key: np.asarray(getattr(per_sample, key)) for key in _PER_SAMPLE_KEYS}
    arrays["image_id"] = arrays["image_id"].astype(np.int64)
    arrays.update({f"error_{name}": np.asarray(err, dtype=np.float64) for name, err in errors.items()})
    arrays.update({f"joint_error_{name}": np.asarray(err, dtype=np.float32)
                   for name, err in per_sample.errors.items() if np.ndim(err) == 2})
    arrays["metrics"] = np.array(list(errors))
    return save_npz(path, **arrays)


def load_per_sample(path: str | Path) -> dict:
    """Read a per-sample errors file: {image_id, subject, action_index, subaction, camera, errors: {metric: (N,)},
    joint_errors: {metric: (N, 17)}}."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise PredictionError(f"per-sample errors file {path} is not a readable .npz of plain arrays ({exc})") from None
    missing = [k for k in (*_PER_SAMPLE_KEYS, "metrics") if k not in raw]
    if missing:
        raise PredictionError(f"per-sample errors file {path} lacks {', '.join(missing)}")
    out = {k: raw[k] for k in _PER_SAMPLE_KEYS}
    out["errors"] = {str(m): raw[f"error_{m}"] for m in raw["metrics"]}
    out["joint_errors"] = {str(m): raw[f"joint_error_{m}"] for m in raw["metrics"] if f"joint_error_{m}" in raw}
    return out


WEIGHTS_NOTES = {
    "random_demo": "random-initialised demo weights: the numbers say nothing about the model",
    "released": "the released checkpoint the registry lists",
    "given": "a checkpoint given as CHECKPOINT that the registry does not list",
}
GENERATED_DATA_NOTE = "generated data in the Human3.6M format, not Human3.6M: not comparable with published results"


def run_blocks(spec, *, checkpoint_info: dict, checkpoint_path, checkpoint_source: str, weights_kind: str,
               data, inference: dict | None, params, environment: dict, snapshot: dict | None = None,
               declarations: dict | None = None) -> dict:
    """The blocks of result.json that describe a notebook run (model, data, weights, checkpoint, environment,
    settings, and what the engine measured), merged into the evaluation's result by `evaluate(extra=...)`.
    `data` is the run's `runner.DataSource`."""
    import dataclasses

    from .models.registry import get_family

    info = checkpoint_info
    model_block = {
        "model_id": spec.model_id, "family": spec.family, "variant": spec.variant,
        "family_display_name": get_family(spec.family).display_name,
        "num_params": info.get("num_params") or spec.num_params,
        "num_params_incl_buffers": spec.num_params_incl_buffers, "gmacs": spec.gmacs,
        "input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
        "depth_dim": spec.depth_dim, "mean": list(spec.mean), "std": list(spec.std),
        "paper": dataclasses.asdict(spec.paper),
        "citation": get_family(spec.family).citation or None,  # cited by the report even without the family file
    }
    if declarations:
        model_block["declarations_check"] = declarations
    weights = {"kind": weights_kind, "sha256": info.get("sha256"), "file": str(checkpoint_path)}
    if weights_kind in WEIGHTS_NOTES:
        weights["note"] = WEIGHTS_NOTES[weights_kind]
    data_block = data.to_dict()
    if data.generated:
        data_block["note"] = GENERATED_DATA_NOTE
    checkpoint = {"path": str(checkpoint_path), "sha256": info.get("sha256"), "format": info.get("format"),
                  "epoch": info.get("epoch"), "remaps": info.get("remaps") or [], "source": checkpoint_source,
                  "protocol": info.get("protocol")}  # the PROTOCOL the file was chosen for by its path; None: no choice
    inference = inference or {}
    settings = dict(inference.get("settings") or {})
    settings.update({"image_limit": params.image_limit, "skip_missing_images": params.skip_missing_images,
                     "demo_data": data.generated, "seed": params.seed})
    for key in ("batch_size", "precision", "device", "world_size", "flip_test", "channels_last"):
        settings.setdefault(key, getattr(params, key, None))
    blocks = {"model": model_block, "data": data_block, "weights": weights, "checkpoint": checkpoint,
              "environment": environment, "settings": settings}
    for key in ("precision_check", "crop_check", "crop_cache", "decode_check"):  # what the engine measured
        if inference.get(key) is not None:
            blocks[key] = inference[key]
    if "device_check" in inference:  # null: the check was off (a CPU run's "auto"); absent: an older result
        blocks["device_check"] = inference["device_check"]
    if snapshot is not None:
        blocks["snapshot"] = dict(snapshot)
    return blocks


def _timing_value(value) -> int | float | None:
    """Counts (images, images decoded) stay JSON integers; durations and rates are floats."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def write_result(result_path: str | Path, result: dict, per_sample: PerSample | None = None,
                 timing: dict | None = None) -> dict[str, Path]:
    """Validate `result` (with `timing` added) once and write it, the per-sample errors and the reproduction card
    (`REPRODUCE.md`, helpers.reproduce) beside it, atomically.

    Returns {"result": path, "per_sample_errors": path, "reproduce": path}. Nothing is written when the result
    is invalid."""
    result_path = Path(result_path)
    if timing is not None:
        result["timing"] = {k: _timing_value(v) for k, v in timing.items()}
    files = {}
    if per_sample is not None:
        sample_path = per_sample_path(result_path)
        result["per_sample_errors"] = {"file": sample_path.name, "metrics": list(per_sample.errors)}
    validate_result(result)
    card = render_card(result, result_path)  # before anything is written: a card that cannot be made stops here
    if per_sample is not None:
        files["per_sample_errors"] = save_per_sample(sample_path, per_sample)
    files["result"] = write_json(result_path, result)
    files["reproduce"] = write_card(result, result_path, card)
    return files


# ------------------------------------------------------------------------------------------- rescore CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers rescore",
                                description="Evaluate a predictions.npz (pose or root) against Human3.6M "
                                            "annotations; writes result.json and the per-sample errors beside it.")
    p.add_argument("--annotations", required=True,
                   help="the annotation folder, or any folder above it (searched)")
    p.add_argument("--predictions", required=True,
                   help="predictions.npz: pose (image_id, coords, output_shape, depth_dim) or root (image_id, root_cam)")
    p.add_argument("--bbox-root", default=None,
                   help="RootNet-format file whose boxes and roots the pose predictions used (default: ground-truth "
                        "box and root); where it comes from is read from its sidecar or recognised by its hash")
    p.add_argument("--detector-boxes", default=None,
                   help="root predictions made on a detector's boxes: the detector file (bbox_human36m_output.json) "
                        "or the bbox_root file whose boxes were used (then its roots are compared with the predictions)")
    p.add_argument("--protocol", type=int, choices=(1, 2), default=2)
    p.add_argument("--aspect-ratio", type=float, default=None,
                   help="the model's input width / height the crop boxes were padded to (default: from the "
                        "predictions' input_shape or model_id, else 1)")
    p.add_argument("--depth-extent-mm", type=float, default=None,
                   help="mm the depth bins span (default: from the predictions' depth_extent_mm or model_id, else 2000)")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate even if some test samples have no prediction (recorded as partial)")
    p.add_argument("--model-file", action="append", default=[], metavar="FILE",
                   help="a family file of your own, so its model ids are known (repeatable)")
    p.add_argument("--out", required=True, help="result.json to write (atomically)")
    return p


def model_decode_settings(pred: dict) -> tuple[float | None, float | None, str | None]:
    """(aspect ratio, depth extent mm, protocol note) the predictions' own fields or their registry model
    imply; None where neither says."""
    from .models.registry import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(pred.get("model_id")) if isinstance(pred.get("model_id"), str) else None
    aspect = extent = None
    if "input_shape" in pred:
        aspect = pred["input_shape"][1] / pred["input_shape"][0]
    elif spec is not None:
        aspect = spec.aspect_ratio
    if "depth_extent_mm" in pred:
        extent = pred["depth_extent_mm"]
    elif spec is not None:
        extent = spec.depth_extent_mm
    return aspect, extent, (spec.protocol_note or None) if spec is not None else None


def generated_data_evidence(test_set) -> str | None:
    """What says a test set's annotations are generated: their files' info entry, or a marker file above them."""
    from .h36m import generated_marker

    if test_set.generated:
        return f"the annotation files' info.generated_by = {test_set.generated_by!r}"
    marker = generated_marker(test_set.annotation_dir.parent, test_set.annotation_dir)
    return f"marked by {marker}" if marker else None


RESCORE_REMEDIES = {"allow_partial": "pass --allow-partial to do so",
                    "aspect_ratio": "pass --aspect-ratio {value}",
                    "annotation_dir": "pass it as --annotations"}


def rescore_main(argv: list[str] | None = None) -> int:
    from .models.registry import load_family_file

    args = _parser().parse_args(argv)
    try:
        for model_file in args.model_file:
            load_family_file(model_file)
        pred = load_predictions(args.predictions)
        aspect, extent, note = model_decode_settings(pred)
        aspect = args.aspect_ratio if args.aspect_ratio is not None else (aspect or 1.0)
        extent = args.depth_extent_mm if args.depth_extent_mm is not None else extent
        test_set = load_test_set(args.annotations, protocol=args.protocol, bbox_root=args.bbox_root,
                                 detector_boxes=args.detector_boxes, aspect_ratio=aspect)
        result, per_sample = evaluate_predictions(test_set, pred, allow_partial=args.allow_partial,
                                                  depth_extent_mm=extent, protocol_note=note)
        evidence = generated_data_evidence(test_set)
        if evidence:  # annotations the demo generator wrote: never reported as real, whoever evaluates them
            result["data"] = {"kind": "generated", "annotation_dir": str(test_set.annotation_dir),
                              "evidence": evidence, "note": GENERATED_DATA_NOTE}
        print(format_table(result))
        files = write_result(args.out, result, per_sample)
    except (DataError, PredictionError, OSError, ValueError) as exc:
        print(f"rescore failed: {remedy(exc, RESCORE_REMEDIES)}", file=sys.stderr)
        return 1
    print(f"wrote {files['result']} and {files['per_sample_errors']}")
    return 0
