"""JSON schema of `result.json` (schema_version 1, see helpers/README.md) and its validator.

Required keys and the metric blocks are strict; the optional blocks that inference notebooks add
(model, checkpoint, environment, timing, settings) only pin the keys other code reads, so they can grow.
"""
from __future__ import annotations

import math

import jsonschema

from .protocol import ACTION_NAMES, EVAL_JOINT_NAMES, HEADLINE_METRICS, POSE_METRICS

PRECISION_NAMES = ("fp32", "tf32", "fp16", "bf16")  # engine.PRECISIONS' names (the schema does not import torch)
_NUMBER = {"type": "number"}
_NONNEG = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}
_PER_ACTION = {"type": "object", "propertyNames": {"enum": list(ACTION_NAMES)},
               "additionalProperties": _NONNEG, "minProperties": 1}
_PER_SUBJECT = {"type": "object", "propertyNames": {"pattern": r"^S\d+$"},
                "additionalProperties": _NONNEG, "minProperties": 1}
_POSE_METRIC = {
    "type": "object",
    "required": ["total", "action_mean", "per_action", "per_joint", "per_subject"],
    "properties": {
        "total": _NONNEG,
        "action_mean": _NONNEG,
        "per_action": _PER_ACTION,
        "per_joint": {"type": "object", "required": list(EVAL_JOINT_NAMES),
                      "propertyNames": {"enum": list(EVAL_JOINT_NAMES)}, "additionalProperties": _NONNEG},
        "per_subject": _PER_SUBJECT,
    },
}
_ROOT_METRIC = {
    "type": "object",
    "required": ["total", "x", "y", "z", "per_action", "per_subject"],
    "properties": {"total": _NONNEG, "x": _NONNEG, "y": _NONNEG, "z": _NONNEG,
                   "per_action": _PER_ACTION, "per_subject": _PER_SUBJECT},
}

_INTERVAL = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}

RESULT_SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Human3.6M benchmark result (schema_version 1)",
    "type": "object",
    "required": ["schema_version", "kind", "created_utc", "num_samples", "num_expected", "partial",
                 "conventions", "metrics", "headline"],
    "properties": {
        "schema_version": {"const": 1},
        "kind": {"enum": ["pose", "root"]},
        "created_utc": {"type": "string", "format": "date-time", "minLength": 10},
        "num_samples": {"type": "integer", "minimum": 1},
        "num_expected": {"type": "integer", "minimum": 1},
        "partial": {"type": "boolean"},
        "missing": {"type": "object", "required": ["count", "first_image_ids"],
                    "properties": {"count": {"type": "integer", "minimum": 1},
                                   "first_image_ids": {"type": "array", "items": {"type": "integer"}}}},
        "skipped_images": {"type": "object", "required": ["count", "first_paths"],
                           "properties": {"count": _COUNT,
                                          "first_paths": {"type": "array", "items": {"type": "string"}}}},
        "conventions": {
            "type": "object",
            "required": ["protocol", "test_subjects", "frame_stride", "joints_evaluated", "root_joint",
                         "alignment", "averaging", "bbox_source", "root_source", "flip_test", "units"],
            "properties": {
                "protocol": {"enum": [1, 2]},
                "test_subjects": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                "frame_stride": {"type": "integer", "minimum": 1},
                "joints_evaluated": {"type": "array", "items": {"type": "string"}},
                "root_joint": {"type": "string"},
                "alignment": {"type": "object"},
                "averaging": {"type": "object"},
                "bbox_source": {"type": "string"},
                "root_source": {"type": "string"},
                "flip_test": {"type": ["boolean", "null"]},
                "units": {"const": "mm"},
                # optional: absent in results written before non-square models (then 1 and 2000)
                "crop_aspect_ratio": {"type": "number", "exclusiveMinimum": 0},
                "depth_extent_mm": {"type": "number", "exclusiveMinimum": 0},
                "protocol_note": {"type": "string", "minLength": 1},
                # optional: absent in results written before box and root sources were told apart
                "sources": {"type": "object",
                            "properties": {"boxes": {"type": "object", "required": ["source"]},
                                           "roots": {"type": "object", "required": ["source"]},
                                           "protocol_check": {"type": "object", "required": ["status", "message"]}}},
            },
        },
        "metrics": {"type": "object"},
        "headline": {"type": "object", "required": ["metric", "value"],
                     "properties": {"metric": {"enum": list(HEADLINE_METRICS)},
                                    "value": _NONNEG}},
        "predictions": {"type": "object",
                        "properties": {"file": {"type": ["string", "null"]},
                                       "output_shape": {"type": "array", "items": {"type": "integer"},
                                                        "minItems": 2, "maxItems": 2},
                                       "depth_dim": {"type": "integer", "minimum": 1},
                                       "depth_extent_mm": {"type": "number", "exclusiveMinimum": 0}}},
        "annotations": {"type": "object", "required": ["dir", "subjects"],
                        "properties": {"dir": {"type": "string"},
                                       "subjects": {"type": "array", "items": {"type": "integer"}}}},
        "official_summary": {"type": "string"},
        "model": {"type": "object", "required": ["model_id"], "properties": {"model_id": {"type": "string"}}},
        "weights": {"type": "object", "required": ["kind"],
                    "properties": {"kind": {"enum": ["released", "random_demo", "unknown"]},
                                   "note": {"type": "string"}}},
        "checkpoint": {"type": "object"},
        "environment": {"type": "object"},
        "timing": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        "settings": {"type": "object",
                     "properties": {"precision": {"enum": list(PRECISION_NAMES)},
                                    "batch_size": {"type": "integer", "minimum": 1},
                                    "batch_size_used": {"type": "integer", "minimum": 1},
                                    # optional: absent in results written before strict fp32 was recorded
                                    "tf32": {"type": "boolean"}, "cudnn_benchmark": {"type": "boolean"},
                                    "cudnn_deterministic": {"type": "boolean"},
                                    "device_check": {"enum": ["auto", "strict", True, False]}}},
        "precision_check": {
            "type": "object",
            "required": ["requested", "used", "samples", "max_abs_diff_heatmap", "max_abs_diff_mm", "mean_abs_diff_mm",
                         "nonfinite_batches", "fell_back"],
            "properties": {"requested": {"enum": list(PRECISION_NAMES)}, "used": {"enum": list(PRECISION_NAMES)},
                           "samples": {"type": "integer", "minimum": 0},
                           "max_abs_diff_heatmap": {"type": ["number", "null"], "minimum": 0},
                           "max_abs_diff_mm": {"type": ["number", "null"], "minimum": 0},
                           "mean_abs_diff_mm": {"type": ["number", "null"], "minimum": 0},
                           "nonfinite_batches": {"type": "integer", "minimum": 0},
                           "fell_back": {"type": "boolean"}}},
        "device_check": {
            "type": ["object", "null"],
            "required": ["device", "reference", "samples", "max_abs_diff_mm", "mean_abs_diff_mm", "tolerance_mm",
                         "passed"],
            "properties": {"device": {"type": "string"}, "reference": {"const": "cpu"},
                           "samples": {"type": "integer", "minimum": 1},
                           "max_abs_diff_mm": {"type": ["number", "null"], "minimum": 0},
                           "mean_abs_diff_mm": {"type": ["number", "null"], "minimum": 0},
                           "tolerance_mm": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.1},
                           "passed": {"type": "boolean"}}},
        "crop_check": {
            "type": "object",
            "required": ["opencv", "images", "decode_identical", "crop_identical", "max_abs_diff", "skipped"],
            "properties": {"opencv": {"type": ["string", "null"]}, "images": {"type": "integer", "minimum": 0},
                           "decode_identical": {"type": ["boolean", "null"]},
                           "crop_identical": {"type": ["boolean", "null"]},
                           "max_abs_diff": {"type": ["integer", "null"], "minimum": 0},
                           "skipped": {"type": ["string", "null"]}}},
        "crop_cache": {"type": "object", "required": ["key", "hits", "misses"],
                       "properties": {"key": {"type": "string"}, "hits": {"type": "integer", "minimum": 0},
                                      "misses": {"type": "integer", "minimum": 0}}},
        "decode_check": {"type": ["object", "null"]},
        "ci95": {"type": "object", "required": ["level", "method", "resamples", "seed", "metrics", "headline"],
                 "properties": {"level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                "resamples": {"type": "integer", "minimum": 1}, "seed": {"type": "integer"},
                                "headline": _INTERVAL, "metrics": {"type": "object"}}},
        "snapshot": {"type": "object", "required": ["run", "epoch", "file"],
                     "properties": {"run": {"type": "string"}, "epoch": {"type": ["integer", "null"]},
                                    "file": {"type": "string"}}},
        "parameters": {"type": "object", "required": ["notebook", "values"],
                       "properties": {"notebook": {"type": "string"}, "values": {"type": "object"}}},
        "root_reproduction": {"type": "object",
                              "required": ["reference", "released", "samples", "mean_mm", "median_mm", "p95_mm",
                                           "max_mm", "mean_abs_xyz_mm", "worst"],
                              "properties": {"samples": {"type": "integer", "minimum": 1},
                                             "released": {"type": "boolean"},
                                             "mean_mm": _NONNEG, "median_mm": _NONNEG, "p95_mm": _NONNEG,
                                             "max_mm": _NONNEG}},
        "per_sample_errors": {"type": "object", "required": ["file", "metrics"],
                              "properties": {"file": {"type": "string"},
                                             "metrics": {"type": "array", "items": {"type": "string"}}}},
    },
    "allOf": [
        {"if": {"properties": {"kind": {"const": "pose"}}},
         "then": {"properties": {
             "metrics": {"required": list(POSE_METRICS), "properties": {m: _POSE_METRIC for m in POSE_METRICS}},
             "headline": {"properties": {"metric": {"enum": ["mpjpe", "pa_mpjpe_rigid_fit18"]}}}}}},
        {"if": {"properties": {"kind": {"const": "root"}}},
         "then": {"properties": {
             "metrics": {"required": ["mrpe"], "properties": {"mrpe": _ROOT_METRIC}},
             "headline": {"properties": {"metric": {"const": "mrpe"}}}}}},
        {"if": {"properties": {"partial": {"const": True}}, "required": ["partial"]},
         "then": {"required": ["missing"]}},
    ],
}


def _non_finite(obj, path: str = "") -> list[str]:
    """JSON-schema 'number' accepts NaN and inf from Python; a result must not contain them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"at {path or '<root>'}: {obj} is not a finite number"]
    if isinstance(obj, dict):
        return [m for k, v in obj.items() for m in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [m for i, v in enumerate(obj) for m in _non_finite(v, f"{path}[{i}]")]
    return []


def validate_result(obj) -> None:
    """Raise ValueError listing every way `obj` breaks the result.json schema; return None if it conforms."""
    validator = jsonschema.Draft7Validator(RESULT_SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        problems.append(f"at {where}: {err.message}")
    problems += _non_finite(obj)
    if isinstance(obj, dict) and isinstance(obj.get("num_samples"), int) and isinstance(obj.get("num_expected"), int):
        if obj["num_samples"] > obj["num_expected"]:
            problems.append(f"at num_samples: {obj['num_samples']} exceeds num_expected {obj['num_expected']}")
        if obj.get("partial") is False and obj["num_samples"] < obj["num_expected"] and "skipped_images" not in obj:
            problems.append("at partial: fewer samples than expected, but the result is neither partial "
                            "nor records skipped_images")
    if problems:
        raise ValueError(f"result does not match result.json schema_version 1 ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems))
