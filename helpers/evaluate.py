"""Evaluation: predictions (pose or root, one `predictions.npz` contract) against the ground truth.

`evaluate_predictions` reads or checks either kind and returns the result dict (helpers/README.md,
"result.json") and the per-sample errors; `helpers.results` validates and writes them, for the notebooks
and for `python -m helpers rescore` alike.
"""
from __future__ import annotations

import datetime as _dt
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd  # noqa: F401  (PerSample.frame)

from . import metrics
from .geometry import DEPTH_EXTENT_MM, heatmap_to_camera
from .box_sources import MODEL_OUTPUT, root_label
from .h36m import ImageCheck, TestSet, find_ids
from .protocol import (ACTION_NAMES, EVAL_JOINT_NAMES, EVAL_JOINTS, NUM_JOINTS,
                       ROOT_JOINT, THORAX, conventions_for, get_protocol)

SCHEMA_VERSION = 1
# The header upstream prints for each protocol's headline metric.
OFFICIAL_HEADERS = {"mpjpe": "Protocol 2 error (MPJPE)", "pa_mpjpe_rigid_fit18": "Protocol 1 error (PA MPJPE)"}
FIRST_IDS_RECORDED = 20


class PredictionError(ValueError):
    """A predictions file or array that cannot be evaluated. The message says what is wrong."""


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------

def _scalar(value):
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def _is_root(pred: dict) -> bool:
    kind = pred.get("kind")
    kind = _scalar(kind) if kind is not None else None
    return kind == "root" or ("root_cam" in pred and "coords" not in pred)


def _checked_ids(pred: dict, n: int, source: str) -> np.ndarray:
    image_id = np.asarray(pred["image_id"])
    if image_id.dtype.kind not in "iu":
        raise PredictionError(f"{source}: image_id has dtype {image_id.dtype}; expected integer image ids")
    if image_id.shape != (n,):
        raise PredictionError(f"{source}: image_id has shape {image_id.shape}; expected ({n},), "
                              "one id per coords row")
    image_id = image_id.astype(np.int64)
    uniq, counts = np.unique(image_id, return_counts=True)
    if (counts > 1).any():
        raise PredictionError(f"{source}: image ids appear more than once (first {uniq[counts > 1][:5].tolist()}); "
                              "each image must have one prediction")
    return image_id


def _checked_bbox(pred: dict, n: int, source: str) -> np.ndarray:
    bbox = np.asarray(pred["bbox"])
    if bbox.shape != (n, 4) or bbox.dtype.kind != "f":
        raise PredictionError(f"{source}: bbox must hold one [x, y, w, h] crop box per row, shape "
                              f"({n}, 4), got {bbox.dtype} {bbox.shape}")
    return bbox.astype(np.float64)


def validate_root_predictions(pred: dict, source: str = "root predictions") -> dict:
    """Check root predictions (`image_id` (N,), `root_cam` (N, 3) camera mm, optional `bbox`); a normalised copy
    with `kind` "root"."""
    missing = [k for k in ("image_id", "root_cam") if k not in pred]
    if missing:
        raise PredictionError(f"{source} lacks {', '.join(missing)}; root predictions hold image_id (N,) and "
                              "root_cam (N, 3) camera mm")
    root_cam = np.asarray(pred["root_cam"])
    image_id = np.asarray(pred["image_id"])
    if image_id.ndim != 1 or image_id.dtype.kind not in "iu":
        raise PredictionError(f"{source}: image_id must be a 1-D integer array, got {image_id.dtype} {image_id.shape}")
    if root_cam.dtype.kind not in "iuf" or root_cam.shape != (len(image_id), 3):
        raise PredictionError(f"{source}: root_cam has shape {root_cam.shape}; expected ({len(image_id)}, 3)")
    root_cam = root_cam.astype(np.float64)
    if not np.isfinite(root_cam).all():
        raise PredictionError(f"{source} contain NaN or infinite values; the inference run is broken")
    if len(np.unique(image_id)) != len(image_id):
        raise PredictionError(f"{source} list an image id more than once; each image needs one root")
    checked = ("image_id", "root_cam", "bbox", "kind")
    out = {k: _scalar(v) for k, v in pred.items() if k not in checked}
    out.update(kind="root", image_id=image_id.astype(np.int64), root_cam=root_cam)
    if "bbox" in pred:
        out["bbox"] = _checked_bbox(pred, len(image_id), source)
    return out


def validate_predictions(pred: dict, source: str = "predictions") -> dict:
    """Check an in-memory predictions dict (the `predictions.npz` contract) and return a normalised copy with
    `kind`. Pose: `image_id` int64 (N,), `coords` float64 (N, 18, 3), `output_shape` (H, W) ints, `depth_dim`
    int, and when present `depth_extent_mm` float, `input_shape` (H, W) ints and `bbox` (N, 4) float64 crop
    boxes. Root (a `root_cam` array, or `kind` "root"): see `validate_root_predictions`."""
    if _is_root(pred):
        return validate_root_predictions(pred, source)
    missing = [k for k in ("image_id", "coords", "output_shape", "depth_dim") if k not in pred]
    if missing:
        raise PredictionError(f"{source} lacks {', '.join(missing)}; a predictions file holds image_id (N,), "
                              "coords (N, 18, 3), output_shape (H, W) and depth_dim")
    coords = np.asarray(pred["coords"])
    if coords.dtype.kind != "f":
        raise PredictionError(f"{source}: coords has dtype {coords.dtype}; expected floats in heatmap units")
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise PredictionError(f"{source}: coords has shape {coords.shape}; expected (N, {NUM_JOINTS}, 3) "
                              "(x, y in heatmap pixels, z in depth bins)")
    if coords.shape[1] != NUM_JOINTS:
        raise PredictionError(f"{source}: coords has {coords.shape[1]} joints; expected {NUM_JOINTS} "
                              f"(joint {THORAX} = Thorax)")
    if coords.shape[0] == 0:
        raise PredictionError(f"{source}: coords holds no samples")
    bad = ~np.isfinite(coords).all(axis=(1, 2))
    if bad.any():
        raise PredictionError(f"{source}: coords has NaN or infinite values in {int(bad.sum())} rows "
                              f"(first rows {np.flatnonzero(bad)[:5].tolist()}); the inference run is broken")
    image_id = _checked_ids(pred, coords.shape[0], source)
    output_shape = np.asarray(pred["output_shape"])
    if output_shape.shape != (2,) or output_shape.dtype.kind not in "iu" or (output_shape <= 0).any():
        raise PredictionError(f"{source}: output_shape must be two positive integers (H, W), got {output_shape!r}")
    depth_dim = np.asarray(pred["depth_dim"])
    if depth_dim.ndim != 0 or depth_dim.dtype.kind not in "iu" or depth_dim <= 0:
        raise PredictionError(f"{source}: depth_dim must be one positive integer, got {depth_dim!r}")
    checked = ("image_id", "coords", "output_shape", "depth_dim", "depth_extent_mm", "input_shape", "bbox", "kind")
    out = {k: _scalar(v) for k, v in pred.items() if k not in checked}
    out.update(kind="pose", image_id=image_id, coords=coords.astype(np.float64),
               output_shape=(int(output_shape[0]), int(output_shape[1])), depth_dim=int(depth_dim))
    if "depth_extent_mm" in pred:
        extent = np.asarray(pred["depth_extent_mm"])
        if extent.ndim != 0 or extent.dtype.kind not in "iuf" or not np.isfinite(extent) or extent <= 0:
            raise PredictionError(f"{source}: depth_extent_mm must be one positive number (the mm the depth bins "
                                  f"span), got {extent!r}")
        out["depth_extent_mm"] = float(extent)
    if "input_shape" in pred:
        input_shape = np.asarray(pred["input_shape"])
        if input_shape.shape != (2,) or input_shape.dtype.kind not in "iu" or (input_shape <= 0).any():
            raise PredictionError(f"{source}: input_shape must be two positive integers (H, W), got {input_shape!r}")
        out["input_shape"] = (int(input_shape[0]), int(input_shape[1]))
    if "bbox" in pred:
        out["bbox"] = _checked_bbox(pred, coords.shape[0], source)
    return out


def read_predictions(predictions) -> dict:
    """Predictions of either kind, validated: read from a `.npz` path, or checked when given as a dict."""
    if isinstance(predictions, (str, os.PathLike)):
        return load_predictions(predictions)
    return validate_predictions(predictions)


def load_predictions(path: str | os.PathLike) -> dict:
    """Read and validate `predictions.npz` (schema in helpers/README.md); extra arrays become plain values.
    The returned dict also carries `file`, the path read."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"predictions file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise PredictionError(f"predictions file {path} is not a readable .npz of plain arrays ({exc}); "
                              "write it with numpy.savez / helpers.atomic.save_npz") from None
    pred = validate_predictions(raw, source=f"predictions file {path}")
    pred["file"] = str(path)
    return pred


# ---------------------------------------------------------------------------------------------
# matching and aggregation
# ---------------------------------------------------------------------------------------------

def _match(test_set: TestSet, image_id: np.ndarray, allow_partial: bool, excused_ids: np.ndarray,
           what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the test set that have a prediction (in test-set order), the matching prediction rows,
    and the test image ids without prediction that are neither excused (skipped images) nor allowed."""
    if len(test_set) == 0:
        raise ValueError("the test set is empty; nothing can be evaluated")
    rows, known = find_ids(test_set.image_id, image_id)
    if not known.all():
        unknown = image_id[~known]
        raise PredictionError(
            f"{what}: {len(unknown)} image ids are not protocol-{test_set.protocol} test samples of these "
            f"annotations (first {unknown[:5].tolist()}); were they made for another protocol, subject set "
            "or annotation folder?")
    pred_row_of_test = np.full(len(test_set), -1)
    pred_row_of_test[rows] = np.arange(len(image_id))
    test_rows = np.flatnonzero(pred_row_of_test >= 0)
    absent = test_set.image_id[pred_row_of_test < 0]
    unexcused = absent[~np.isin(absent, excused_ids)]
    if len(unexcused) and not allow_partial:
        raise PredictionError(
            f"{what} cover {len(test_rows)} of {len(test_set)} test samples: {len(unexcused)} are missing "
            f"(first image ids {unexcused[:5].tolist()}); finish or resume the inference run, or pass "
            "allow_partial=True (--allow-partial) to evaluate the covered samples only")
    return test_rows, pred_row_of_test[test_rows], unexcused


def _group_means(values: np.ndarray, labels: np.ndarray, names) -> dict:
    """Mean of `values` rows per label; labels without samples are left out."""
    out = {}
    for i, name in enumerate(names):
        sel = labels == i
        if sel.any():
            out[name] = float(values[sel].mean())
    return out


def _subject_means(values: np.ndarray, subject: np.ndarray) -> dict:
    return {f"S{s}": float(values[subject == s].mean()) for s in sorted(np.unique(subject).tolist())}


def _summarise_joint_errors(err: np.ndarray, action_index: np.ndarray, subject: np.ndarray) -> dict:
    """(N, 17) errors -> total (frame mean), per action, action mean, per joint, per subject."""
    per_action = _group_means(err, action_index, ACTION_NAMES)
    return {
        "total": float(err.mean()),
        "action_mean": float(np.mean(list(per_action.values()))),
        "per_action": per_action,
        "per_joint": {name: float(v) for name, v in zip(EVAL_JOINT_NAMES, err.mean(axis=0))},
        "per_subject": _subject_means(err, subject),
    }


def official_summary(metric_block: dict, metric: str = "mpjpe") -> str:
    """The text the official 3DMPPE evaluation prints for `metric` ("mpjpe": protocol 2,
    "pa_mpjpe_rigid_fit18": protocol 1): 2 decimals, each action followed by a space."""
    head = f"{OFFICIAL_HEADERS[metric]} >> tot: {metric_block['total']:.2f}\n"
    return head + "".join(f"{name}: {value:.2f} " for name, value in metric_block["per_action"].items())


def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _skipped_ids(test_set: TestSet, image_check: ImageCheck | None) -> np.ndarray:
    if image_check is None:
        return np.zeros(0, np.int64)
    if len(image_check.paths) != len(test_set):
        raise ValueError(f"image_check covers {len(image_check.paths)} samples but the test set has "
                         f"{len(test_set)}; pass the check made for this test set")
    skipped = np.ones(len(test_set), bool)
    skipped[image_check.kept_indices] = False
    return test_set.image_id[skipped]


def _base_result(kind: str, test_set: TestSet, num_samples: int, unexcused: np.ndarray, conventions,
                 image_check: ImageCheck | None) -> dict:
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created_utc": _now_utc(),
        "num_samples": int(num_samples),
        "num_expected": len(test_set),
        "partial": bool(len(unexcused)),
    }
    if len(unexcused):
        result["missing"] = {"count": int(len(unexcused)),
                             "first_image_ids": [int(i) for i in unexcused[:FIRST_IDS_RECORDED]]}
    if image_check is not None and image_check.num_missing:
        result["skipped_images"] = image_check.skipped_block(FIRST_IDS_RECORDED)
    result["conventions"] = conventions.to_dict()
    result["conventions"]["crop_aspect_ratio"] = float(test_set.aspect_ratio)
    result["annotations"] = {"dir": str(test_set.annotation_dir), "subjects": [int(s) for s in test_set.subjects],
                             "bbox_root_file": None if test_set.bbox_root_file is None else str(test_set.bbox_root_file)}
    return result


def _finish(result: dict, extra: dict | None) -> dict:
    if extra:
        clash = sorted(set(extra) & set(result))
        if clash:
            raise ValueError(f"extra must not replace computed result keys: {clash}")
        result.update(extra)
    return result  # validated once, where it is written (helpers.results)


# ---------------------------------------------------------------------------------------------
# pose evaluation
# ---------------------------------------------------------------------------------------------

@dataclass
class PerSample:
    """Per-sample errors of one evaluation, in test-set order (error analysis, confidence intervals, plots).

    `errors` maps a metric to per-sample errors in mm: (N, 17) per joint for pose metrics, (N,) for "mrpe".
    A pose evaluation also keeps the back-projected predictions; a root evaluation its predicted roots."""

    image_id: np.ndarray  # (N,) int64
    subject: np.ndarray  # (N,)
    action_index: np.ndarray  # (N,) index into ACTION_NAMES
    subaction: np.ndarray  # (N,) the recording within (subject, action)
    camera: np.ndarray  # (N,) camera index
    errors: dict
    pred_cam: np.ndarray | None = None  # pose: (N, 18, 3) camera mm; root: (N, 3) predicted root, camera mm
    pred_rel: np.ndarray | None = None  # pose: (N, 17, 3) root-relative prediction
    gt_rel: np.ndarray | None = None  # pose: (N, 17, 3) root-relative ground truth

    def sample_errors(self) -> dict[str, np.ndarray]:
        """metric -> (N,) per-sample error in mm (pose metrics: the mean over the 17 joints)."""
        return {name: err.mean(axis=1) if err.ndim == 2 else err for name, err in self.errors.items()}

    def frame(self) -> pd.DataFrame:
        """One row per sample: ids, action and the error of each metric (mm)."""
        df = pd.DataFrame({"image_id": self.image_id, "subject": self.subject,
                           "action": [ACTION_NAMES[i] for i in self.action_index], "subaction": self.subaction,
                           "camera": self.camera})
        for name, err in self.sample_errors().items():
            df[name] = err
        return df


def _per_sample(ts: TestSet, errors: dict, **arrays) -> PerSample:
    return PerSample(ts.image_id.astype(np.int64), ts.subject, ts.action_index, ts.subaction_idx, ts.cam_idx, errors,
                     **arrays)


def _depth_extent(pred: dict, depth_extent_mm: float | None) -> float:
    """The depth range the bins span: the argument, else the predictions' own, else 3DMPPE's 2000 mm."""
    recorded = pred.get("depth_extent_mm")
    if depth_extent_mm is None:
        return DEPTH_EXTENT_MM if recorded is None else float(recorded)
    depth_extent_mm = float(depth_extent_mm)
    if not (np.isfinite(depth_extent_mm) and depth_extent_mm > 0):
        raise ValueError(f"depth_extent_mm must be a positive number, got {depth_extent_mm}")
    if recorded is not None and not np.isclose(recorded, depth_extent_mm):
        raise PredictionError(f"the predictions record depth_extent_mm {recorded:g} but {depth_extent_mm:g} was "
                              "asked for; decode them with the extent of the model that made them")
    return depth_extent_mm


def _check_crops(test_set: TestSet, pred: dict, test_rows: np.ndarray, pred_rows: np.ndarray) -> None:
    """Heatmap coordinates only mean something in the crop they were made in: the test set's boxes must be
    the boxes the predictions were made on (box source and aspect ratio)."""
    if "input_shape" in pred:
        in_h, in_w = pred["input_shape"]
        if not np.isclose(in_w / in_h, test_set.aspect_ratio, rtol=1e-6):
            raise PredictionError(
                f"the predictions come from a {in_h}x{in_w} (H x W) input, aspect ratio {in_w / in_h:.4g}, but the "
                f"test set's boxes have aspect ratio {test_set.aspect_ratio:.4g}; load the test set with "
                f"load_test_set(..., aspect_ratio={in_w / in_h:.6g}) (rescore: --aspect-ratio)")
    if "bbox" in pred:
        made_on = pred["bbox"][pred_rows]
        here = test_set.bbox[test_rows]
        differs = ~np.isclose(made_on, here, rtol=1e-6, atol=1e-3).all(axis=1)
        if differs.any():
            first = int(test_set.image_id[test_rows][differs][0])
            raise PredictionError(
                f"{int(differs.sum())} predictions were made on other crop boxes than this test set's (first image "
                f"id {first}); the box source (ground truth or a bbox_root file) or the aspect ratio differs from "
                "the inference run: load the test set as that run did")


def evaluate(test_set: TestSet, predictions: dict | str | os.PathLike, *, allow_partial: bool = False,
             flip_test: bool | None = None, extra: dict | None = None, image_check: ImageCheck | None = None,
             return_per_sample: bool = False, depth_extent_mm: float | None = None,
             protocol_note: str | None = None):
    """Evaluate heatmap predictions on `test_set` and return the result dict (helpers/README.md, kind "pose").

    Rows are matched by image_id. Every test sample needs a prediction unless `allow_partial`
    (then `partial` and `missing` record the gap) or its image was skipped by `image_check`
    (`check_images(..., skip_missing=True)`, recorded as `skipped_images`). `extra` adds the optional
    blocks (model, weights, timing, ...). With `return_per_sample`, returns (result, PerSample).
    Depth bins span `depth_extent_mm` (`ModelSpec.depth_extent_mm`), else the predictions'
    `depth_extent_mm`, else 2000 mm. Predictions that record their crop boxes (`bbox`) or `input_shape`
    must match the test set's boxes. `protocol_note` (`ModelSpec.protocol_note`) is stored in the
    conventions: the model's own protocol differs, so its numbers are not Protocol 1/2 paper numbers.
    """
    pred = read_predictions(predictions)
    if pred["kind"] == "root":
        raise PredictionError("these are root predictions (root_cam); evaluate them with evaluate_roots()")
    return _evaluate_pose(test_set, pred, allow_partial=allow_partial, flip_test=flip_test, extra=extra,
                          image_check=image_check, return_per_sample=return_per_sample,
                          depth_extent_mm=depth_extent_mm, protocol_note=protocol_note)


def _evaluate_pose(test_set: TestSet, pred: dict, *, allow_partial: bool = False, flip_test: bool | None = None,
                   extra: dict | None = None, image_check: ImageCheck | None = None, return_per_sample: bool = False,
                   depth_extent_mm: float | None = None, protocol_note: str | None = None):
    """`evaluate` on validated pose predictions."""
    excused = _skipped_ids(test_set, image_check)
    test_rows, pred_rows, unexcused = _match(test_set, pred["image_id"], allow_partial, excused, "predictions")
    _check_crops(test_set, pred, test_rows, pred_rows)
    extent = _depth_extent(pred, depth_extent_mm)
    ts = test_set.subset(test_rows)
    coords = pred["coords"][pred_rows]

    pred_cam = heatmap_to_camera(coords, ts.bbox, ts.root_cam[:, 2], ts.f, ts.c,
                                 pred["output_shape"], pred["depth_dim"], extent)
    pred_rel18 = pred_cam - pred_cam[:, ROOT_JOINT:ROOT_JOINT + 1]
    gt_rel18 = ts.joint_cam - ts.joint_cam[:, ROOT_JOINT:ROOT_JOINT + 1]
    pred_rel, gt_rel = pred_rel18[:, :EVAL_JOINTS], gt_rel18[:, :EVAL_JOINTS]
    rigid, similarity = metrics.rigid_and_similarity_align(pred_rel, gt_rel)
    errors = {
        "mpjpe": metrics.mpjpe_per_joint(pred_rel, gt_rel),
        "pa_mpjpe_rigid": metrics.mpjpe_per_joint(rigid, gt_rel),
        "pa_mpjpe_similarity": metrics.mpjpe_per_joint(similarity, gt_rel),
        # The official protocol-1 print fits on all 18 joints (Thorax included), then drops Thorax.
        "pa_mpjpe_rigid_fit18": metrics.mpjpe_per_joint(
            metrics.rigid_align(pred_rel18, gt_rel18)[:, :EVAL_JOINTS], gt_rel),
    }

    spec = get_protocol(test_set.protocol)
    if flip_test is None and isinstance(pred.get("flip_test"), bool):
        flip_test = pred["flip_test"]
    conventions = conventions_for(spec.number, bbox_source=test_set.bbox_source, root_source=test_set.root_source,
                                  flip_test=flip_test, sources=test_set.sources)
    result = _base_result("pose", test_set, len(ts), unexcused, conventions, image_check)
    result["conventions"]["depth_extent_mm"] = extent
    if protocol_note:
        result["conventions"]["protocol_note"] = str(protocol_note)
    result["metrics"] = {name: _summarise_joint_errors(err, ts.action_index, ts.subject)
                         for name, err in errors.items()}
    headline = spec.headline_metric
    result["headline"] = {"metric": headline, "value": result["metrics"][headline]["total"]}
    result["predictions"] = {"file": pred.get("file"), "output_shape": list(pred["output_shape"]),
                             "depth_dim": pred["depth_dim"], "depth_extent_mm": extent}
    result["official_summary"] = official_summary(result["metrics"][headline], headline)
    result = _finish(result, extra)
    if not return_per_sample:
        return result
    return result, _per_sample(ts, errors, pred_cam=pred_cam, pred_rel=pred_rel, gt_rel=gt_rel)


def evaluate_roots(test_set: TestSet, image_id, root_cam_pred=None, *, allow_partial: bool = False,
                   flip_test: bool | None = None, extra: dict | None = None,
                   image_check: ImageCheck | None = None, return_per_sample: bool = False):
    """MRPE of predicted roots (N, 3) camera mm against the ground-truth Pelvis (kind "root").

    `image_id` may also be a root predictions dict or file (`root_cam`, the `predictions.npz` contract)."""
    if root_cam_pred is None:
        pred = read_predictions(image_id)
        if pred["kind"] != "root":
            raise PredictionError("these are pose predictions (coords); evaluate them with evaluate()")
    else:
        pred = validate_root_predictions({"image_id": image_id, "root_cam": root_cam_pred})
    return _evaluate_root(test_set, pred, allow_partial=allow_partial, flip_test=flip_test, extra=extra,
                          image_check=image_check, return_per_sample=return_per_sample)


def _evaluate_root(test_set: TestSet, pred: dict, *, allow_partial: bool = False, flip_test: bool | None = None,
                   extra: dict | None = None, image_check: ImageCheck | None = None, return_per_sample: bool = False):
    """`evaluate_roots` on validated root predictions."""
    excused = _skipped_ids(test_set, image_check)
    test_rows, pred_rows, unexcused = _match(test_set, pred["image_id"], allow_partial, excused, "root predictions")
    ts = test_set.subset(test_rows)
    roots = pred["root_cam"][pred_rows]
    errs = metrics.root_errors(roots, ts.gt_root_cam)
    if flip_test is None and isinstance(pred.get("flip_test"), bool):
        flip_test = pred["flip_test"]
    # The roots are the model's own; the test set's (ground truth, or a bbox_root file's) are not used.
    sources = {**test_set.sources, "roots": {"source": MODEL_OUTPUT, "label": root_label(MODEL_OUTPUT)}}
    conventions = conventions_for(test_set.protocol, bbox_source=test_set.bbox_source, root_source=MODEL_OUTPUT,
                                  flip_test=flip_test, sources=sources)
    result = _base_result("root", test_set, len(ts), unexcused, conventions, image_check)
    block = metrics.mrpe(roots, ts.gt_root_cam)
    block["per_action"] = _group_means(errs[:, 0], ts.action_index, ACTION_NAMES)
    block["per_subject"] = _subject_means(errs[:, 0], ts.subject)
    result["metrics"] = {"mrpe": block}
    result["headline"] = {"metric": "mrpe", "value": block["total"]}
    if ts.file_root_cam is not None:
        result["root_reproduction"] = root_reproduction(roots, ts.file_root_cam, ts.image_id, test_set.sources)
    if pred.get("file") is not None:
        result["predictions"] = {"file": pred["file"]}
    result = _finish(result, extra)
    if not return_per_sample:
        return result
    return result, _per_sample(ts, {"mrpe": errs[:, 0]}, pred_cam=roots)


REPRODUCTION_WORST = 5  # samples listed by image id in a root_reproduction block


def root_reproduction(roots, file_roots, image_id, sources: dict) -> dict:
    """Predicted roots against the roots of the bbox_root file whose boxes the run used, sample by sample (mm).

    On a released RootNet file's boxes with the released checkpoint of the same protocol this reproduces the
    authors' RootNet run: the differences are what separates the two runs (hardware, software, float order)."""
    diff = np.asarray(roots, np.float64) - np.asarray(file_roots, np.float64)
    distance = np.linalg.norm(diff, axis=1)
    file_block = (sources or {}).get("bbox_root_file") or {}
    released = file_block.get("origin") == "released"
    worst = np.argsort(-distance, kind="stable")[:REPRODUCTION_WORST]
    reference = (f"the released RootNet output (protocol {file_block.get('protocol')})" if released
                 else f"the roots of the bbox_root file {file_block.get('file')} ({file_block.get('origin', 'unknown')} "
                      "origin)")
    return {
        "reference": reference, "released": released, "reference_protocol": file_block.get("protocol"),
        "file": file_block.get("file"), "file_sha256": file_block.get("file_sha256"), "samples": int(len(distance)),
        "mean_mm": float(distance.mean()), "median_mm": float(np.median(distance)),
        "p95_mm": float(np.percentile(distance, 95)), "max_mm": float(distance.max()),
        "mean_abs_xyz_mm": [float(v) for v in np.abs(diff).mean(axis=0)],
        "worst": [{"image_id": int(image_id[i]), "distance_mm": float(distance[i])} for i in worst],
    }


def evaluate_predictions(test_set: TestSet, predictions, **kwargs):
    """Evaluate pose or root predictions (a dict or a `predictions.npz`, told apart by their arrays):
    returns (result with its `ci95` block, PerSample). Pose keywords (`depth_extent_mm`, `protocol_note`) are
    ignored for roots."""
    pred = read_predictions(predictions)  # validated once, for either kind
    if pred["kind"] == "root":
        kwargs = {k: v for k, v in kwargs.items() if k not in ("depth_extent_mm", "protocol_note")}
        result, per_sample = _evaluate_root(test_set, pred, return_per_sample=True, **kwargs)
    else:
        result, per_sample = _evaluate_pose(test_set, pred, return_per_sample=True, **kwargs)
    result["ci95"] = confidence_block(result, per_sample)
    return result, per_sample


def confidence_block(result: dict, per_sample: PerSample) -> dict:
    """The `ci95` block: the recording-bootstrap interval of every metric's total and per-action mean
    (helpers.stats), and the headline's."""
    from .stats import result_intervals

    block = result_intervals(per_sample)
    block["headline"] = block["metrics"][result["headline"]["metric"]]["total"]
    return block


# ---------------------------------------------------------------------------------------------
# CLI alias
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python -m helpers.evaluate` is an alias of `python -m helpers rescore` (helpers.results)."""
    from .results import rescore_main

    return rescore_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
