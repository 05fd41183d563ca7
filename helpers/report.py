"""Per-model tables and plots: paper comparison and grading, per-action and per-joint errors, qualitative samples.

Every helper takes a `result.json` dict (schema in helpers/README.md). A result made with random demo weights
is marked loudly in every table (column header) and figure (red banner and title suffix).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .box_sources import box_label, sources_label
from .protocol import (ACTION_NAMES, EVAL_JOINT_NAMES, HEADLINE_METRICS, JOINT_NAMES, METRIC_LABELS, POSE_METRICS,
                       SKELETON)
from .result_schema import validate_result

DEMO_MARKER = "RANDOM DEMO WEIGHTS — numbers are meaningless"

POSE_METRIC_LABELS: dict[str, str] = {k: METRIC_LABELS[k] for k in POSE_METRICS}
HEADLINE_LABELS: dict[str, str] = {k: METRIC_LABELS[k] for k in HEADLINE_METRICS}
PER_ACTION_PNG, PER_JOINT_PNG = "per_action.png", "per_joint.png"
MODEL_PLOT_FILE_NAMES = (PER_ACTION_PNG, PER_JOINT_PNG)  # numbers only: safe to publish
ACTION_MEAN_ROW = "action mean"
TOTAL_ROW = "total"

LEFT_COLOR, RIGHT_COLOR, CENTER_COLOR = "tab:blue", "tab:red", "tab:gray"

# |delta| upper bounds (mm, exclusive) and their grade; anything larger is "investigate"
_GRADES: tuple[tuple[float, str], ...] = ((1.0, "excellent"), (2.0, "very good"), (5.0, "acceptable"))


# The PaperResult field that holds a pose model's published headline, by protocol and published setting
# (`published_setting`: ground-truth boxes and roots, or detector boxes with RootNet roots).
PUBLISHED_POSE_FIELDS = {2: {"ground_truth": "p2_mpjpe", "detected": "p2_mpjpe_detected"},
                         1: {"ground_truth": "p1_pa_mpjpe", "detected": "p1_pa_mpjpe_detected"}}


# ----------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Provenance:
    """What a result's numbers rest on: the weights, the data, how much of the test set, which boxes and roots."""

    weights: str  # "released" | "random_demo" | "unknown"
    random_weights: bool
    generated_data: bool | None  # None: the result does not say (e.g. `rescore` of a predictions file)
    partial: bool
    samples: int
    expected: int
    bbox_source: str
    root_source: str
    flip_test: bool | None


def provenance(result: dict) -> Provenance:
    """The one place that reads these facts from result.json (weights.kind, settings.demo_data, partial,
    conventions), so that a change in how result.json records them is made here only."""
    weights = (result.get("weights") or {}).get("kind", "unknown")
    conv = result["conventions"]
    demo_data = (result.get("settings") or {}).get("demo_data")
    return Provenance(weights=weights, random_weights=is_random_demo(result),
                      generated_data=None if demo_data is None else bool(demo_data),
                      partial=bool(result.get("partial")), samples=int(result["num_samples"]),
                      expected=int(result["num_expected"]), bbox_source=conv["bbox_source"],
                      root_source=conv["root_source"], flip_test=conv.get("flip_test"))


def is_random_demo(result: dict) -> bool:
    return (result.get("weights") or {}).get("kind") == "random_demo"


def model_label(result: dict, fallback: str = "model") -> str:
    return (result.get("model") or {}).get("model_id") or fallback


def source_label(result: dict) -> str:
    """Where boxes and roots came from, two facts ("detector boxes, released RootNet roots"). A root result's roots
    are the model's own, so only its box source counts."""
    conv = result["conventions"]
    if result["kind"] == "root":
        return box_label(conv["bbox_source"])
    return sources_label(conv["bbox_source"], conv["root_source"])


def protocol_mismatch(result: dict) -> str | None:
    """The protocol check's message when the result's bbox_root file was made for another protocol, else None."""
    check = (result["conventions"].get("sources") or {}).get("protocol_check") or {}
    return check.get("message") if check.get("status") == "mismatch" else None


def setting_label(result: dict) -> str:
    """One line that says which numbers these are: protocol, box/root source, flip test, partial."""
    conv = result["conventions"]
    flip = {True: "flip test", False: "no flip test", None: "flip test unknown"}[conv.get("flip_test")]
    text = f"Protocol {conv['protocol']}, {source_label(result)}, {flip}"
    if result.get("partial"):
        text += f", PARTIAL {result['num_samples']}/{result['num_expected']} samples"
    return text


def _mark_table(frame: pd.DataFrame, result: dict) -> pd.DataFrame:
    """The column-axis name is printed above the index in every DataFrame display: a visible marker (before any
    caption the table already has there)."""
    if is_random_demo(result):
        frame.columns.name = DEMO_MARKER + (f" | {frame.columns.name}" if frame.columns.name else "")
    return frame


def mark_figure(fig, demo: bool) -> None:
    """A red banner across the top of `fig` when its numbers come from random demo weights."""
    if demo:
        # above everything already drawn (titles may reach past the top edge); call after any layout change
        top = max(1.0, fig.get_tightbbox().y1 / fig.get_figheight())
        fig.text(0.5, top + 0.01, DEMO_MARKER, ha="center", va="bottom", color="white", fontsize=11, weight="bold",
                 bbox=dict(facecolor="red", edgecolor="red", boxstyle="round,pad=0.3"))


def _title(result: dict, what: str) -> str:
    title = f"{model_label(result)}: {what}\n{setting_label(result)}"
    if is_random_demo(result):
        title += f"\n[{DEMO_MARKER}]"
    return title


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` as PNG atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.4f") -> Path:
    return write_text(path, frame.to_csv(float_format=float_format))


# ---------------------------------------------------------------------------------------------- verification
VERIFICATION_EXPLAINED = {
    "precision": "the arithmetic of the forward passes. fp32 is the official setting; \"TF32 off\" means strict fp32 "
                 "(PyTorch otherwise rounds convolution inputs to a 10-bit mantissa on Ampere and newer GPUs), "
                 "\"TF32 on\" that `PRECISION = \"tf32\"` was asked for; tf32/fp16/bf16 were first compared with "
                 "fp32 on the run's own crops.",
    "device": "before the run, 8 of its crops went through the model on its device and on the CPU, both in strict "
              "fp32: ✓ means the joints agreed on average within a tolerance derived from float32 arithmetic (at most "
              "0.1 mm), so that GPU reproduces the CPU's arithmetic; – means the check did not run (CPU runs by "
              "default).",
    "crop": "8 of its images were decoded and cropped by OpenCV 4.x exactly as the official code does: ✓ means "
            "identical pixels, – that OpenCV 4.x was not available.",
    "decode": "the JPEG decoder: cpu is identical to `cv2.imread` on Human3.6M; nvjpeg was compared with the CPU "
              "decoder on the run's own images.",
}
VERIFICATION_MARKS = "✗ marks a failed check; ? a result written before the check existed."


def _device_word(check) -> str:
    if check is None:
        return "device –"
    if check.get("passed"):
        return "device ✓"
    found = "NaN" if check.get("mean_abs_diff_mm") is None else f"{check['mean_abs_diff_mm']:.3g} mm"
    return f"device ✗ ({found} > {check.get('tolerance_mm', float('nan')):.3g} mm)"


def _crop_word(check) -> str:
    if check is None:
        return "crop ?"
    if check.get("skipped"):
        return "crop –"
    if check.get("decode_identical") and check.get("crop_identical"):
        return "crop ✓"
    return f"crop ✗ (max {check.get('max_abs_diff')})"


def _decode_word(settings: dict, check) -> str:
    decoder = settings.get("decode")
    if decoder != "gpu":
        return f"decode {decoder or '?'}"
    if check is None:
        return "decode nvjpeg"
    return "decode nvjpeg ✓" if check.get("identical") else f"decode nvjpeg ✗ (max {check.get('max_abs_diff_crop')})"


def verification_label(result: dict) -> str:
    """One short cell: precision, TF32, device check, crop check and decoder of a result (VERIFICATION_EXPLAINED)."""
    settings = result.get("settings") or {}
    precision = settings.get("precision") or ("fp16" if settings.get("amp") else "?")
    tf32 = {True: "TF32 on", False: "TF32 off"}.get(settings.get("tf32"), "TF32 ?")
    device = _device_word(result.get("device_check")) if "device_check" in result else "device ?"
    return " · ".join([precision, tf32, device, _crop_word(result.get("crop_check")),
                       _decode_word(settings, result.get("decode_check"))])


def verification_problems(result: dict) -> list[str]:
    """Sentences on the checks a result (or `engine.run_inference`'s dict) failed: device, crop, decoder."""
    problems = []
    device = result.get("device_check")
    if device and not device.get("passed"):
        found = ("non-finite outputs" if device.get("mean_abs_diff_mm") is None else
                 f"{device['mean_abs_diff_mm']:.4f} mm on average (max {device['max_abs_diff_mm']:.4f} mm; tolerance "
                 f"{device['tolerance_mm']:.4f} mm)")
        problems.append(f"device check FAILED: {device.get('device')} and the CPU, both in strict fp32, differ by "
                        f"{found} on {device.get('samples')} crops; this GPU's numbers may not be the official ones")
    crop = result.get("crop_check")
    if crop and not crop.get("skipped") and not (crop.get("decode_identical") and crop.get("crop_identical")):
        problems.append(f"crop check FAILED: the crops differ from OpenCV {crop.get('opencv')}'s official crop (max "
                        f"{crop.get('max_abs_diff')} grey levels; decoding identical to cv2.imread: "
                        f"{crop.get('decode_identical')})")
    decode = result.get("decode_check")
    if decode and not decode.get("identical"):
        problems.append(f"JPEGs were decoded with {decode.get('decoder')}, which differs from the CPU decoder (max "
                        f"{decode.get('max_abs_diff_crop')} grey levels in the crops)")
    return problems


# ---------------------------------------------------------------------------------------- paper comparison
def grade_delta(delta_mm: float) -> str:
    """|measured − paper| < 1 mm excellent, < 2 very good, < 5 acceptable, else investigate."""
    if delta_mm is None or not math.isfinite(float(delta_mm)):
        raise ValueError(f"grade_delta needs a finite difference in mm, got {delta_mm!r}")
    magnitude = abs(float(delta_mm))
    for bound, grade in _GRADES:
        if magnitude < bound:
            return grade
    return "investigate"


def published_setting(result: dict) -> tuple[str | None, str]:
    """Which published setting a pose result was run in: ("ground_truth" | "detected", "") or (None, why none).

    The papers publish two: ground-truth boxes and roots, and detector boxes with RootNet roots (the authors'
    RootNet output). A run of ours reproduces the second when a RootNet run with the released weights made its
    roots; ground-truth boxes with RootNet roots, or files of unknown origin, have no published number."""
    conv = result["conventions"]
    box, root = conv["bbox_source"], conv["root_source"]
    mismatch = protocol_mismatch(result)
    if mismatch:
        return None, f"n/a: {mismatch}"
    if box == "ground_truth" and root == "ground_truth":
        return "ground_truth", ""
    if box == "detector" and root == "rootnet_released":
        return "detected", ""
    if box == "detector" and root == "rootnet_run":
        weights = ((conv.get("sources") or {}).get("roots") or {}).get("weights")
        if weights == "released":
            return "detected", ""
        return None, (f"n/a: the roots come from a RootNet run with {str(weights or 'unrecorded').replace('_', ' ')} "
                      "weights, not the released checkpoint")
    if box == "ground_truth" and root in ("rootnet_released", "rootnet_run"):
        return None, "n/a: no published number for ground-truth boxes with RootNet roots"
    if "detected" in (box, root):
        return None, ("n/a: written before box and root sources were recorded separately, so the bbox_root file's "
                      "origin is unknown; rescore it with --bbox-root")
    return None, f"n/a: no published number for {sources_label(box, root)}"


def paper_comparison(result: dict, spec) -> pd.DataFrame:
    """Measured vs published numbers, only like for like, with Δ = measured − paper and a grade.

    Pose, protocol 2: MPJPE total vs `p2_mpjpe` (ground-truth boxes and roots) or `p2_mpjpe_detected` (detector boxes,
    RootNet roots: `published_setting`). Pose, protocol 1: PA-MPJPE rigid fit18 total vs `p1_pa_mpjpe` or
    `p1_pa_mpjpe_detected`.
    Root (RootNet): MRPE total, x, y, z vs `paper.mrpe`, published for protocol 2 with ground-truth boxes
    (RootNet's Human3.6M test crops the annotation boxes by default, `use_gt_bbox = True`).
    A setting the paper did not publish gets no paper value and the grade says why.
    """
    kind = result["kind"]
    if kind != spec.kind:
        raise ValueError(f"result kind {kind!r} does not match model {spec.model_id!r} (kind {spec.kind!r})")
    result_model = (result.get("model") or {}).get("model_id")
    if result_model is not None and result_model != spec.model_id:
        raise ValueError(f"result is for model {result_model!r} but the spec is {spec.model_id!r}")
    conv = result["conventions"]
    protocol = int(conv["protocol"])
    paper = spec.paper
    rows: list[tuple[str, float, float | None]] = []  # (metric, measured, paper)
    no_paper_reason = "n/a: no published value"
    if kind == "root":
        mrpe = result["metrics"]["mrpe"]
        published = paper.mrpe if (protocol == 2 and conv["bbox_source"] == "ground_truth") else None
        if paper.mrpe and published is None:
            no_paper_reason = "n/a: MRPE is published for protocol 2 with ground-truth boxes only"
        for part in ("total", "x", "y", "z"):
            rows.append((f"MRPE {part}" if part != "total" else "MRPE", mrpe[part],
                         None if published is None else published.get(part)))
    else:
        if protocol == 2:
            metric, label = "mpjpe", "MPJPE"
        else:
            metric, label = "pa_mpjpe_rigid_fit18", "PA-MPJPE rigid fit18"
        by_setting = {setting: getattr(paper, name) for setting, name in PUBLISHED_POSE_FIELDS[protocol].items()}
        value = None
        if conv.get("protocol_note"):
            no_paper_reason = f"n/a: another protocol ({conv['protocol_note']})"
        else:
            setting, reason = published_setting(result)
            value = by_setting.get(setting)
            if reason:
                no_paper_reason = reason
        rows.append((label, result["metrics"][metric]["total"], value))

    demo = is_random_demo(result)
    partial_note = (f" (partial run: {result['num_samples']} of {result['num_expected']} samples)"
                    if result.get("partial") else "")
    records = []
    for metric_label, measured, published in rows:
        delta = None if published is None else float(measured) - float(published)
        if demo:
            grade = "n/a: random demo weights" + ("; another protocol" if conv.get("protocol_note") else "")
        elif delta is None:
            grade = no_paper_reason
        else:
            grade = grade_delta(delta) + partial_note
        records.append({
            "metric": metric_label,
            "setting": setting_label(result),
            "measured (mm)": float(measured),
            "paper (mm)": np.nan if published is None else float(published),
            "Δ (mm)": np.nan if delta is None else delta,
            "grade": grade,
            "paper source": paper.source,
        })
    return _mark_table(pd.DataFrame(records).set_index("metric"), result)


def published_values(result: dict, spec) -> tuple[float | None, dict]:
    """(the published headline total, its published per-action values {action: mm}) for the setting `result`
    was run in, as `paper_comparison` picks it; (None, {}) where the papers publish none for that setting."""
    conv = result["conventions"]
    protocol = int(conv["protocol"])
    if result["kind"] == "root":
        name = "mrpe" if protocol == 2 and conv["bbox_source"] == "ground_truth" else None
    elif conv.get("protocol_note"):
        name = None
    else:
        name = PUBLISHED_POSE_FIELDS.get(protocol, {}).get(published_setting(result)[0])
    if name is None:
        return None, {}
    total = getattr(spec.paper, name)
    if isinstance(total, dict):  # mrpe: {"total", "x", "y", "z"}
        total = total.get("total")
    return total, dict((spec.paper.per_action or {}).get(name) or {})


def root_reproduction_frame(result: dict) -> pd.DataFrame | None:
    """A root result's roots against the roots of the bbox_root file whose boxes it ran on (sample by sample, mm);
    on the released file's boxes, RootNet's reproduction check. None when the run did not use such a file."""
    block = result.get("root_reproduction")
    if not block:
        return None
    x, y, z = block["mean_abs_xyz_mm"]
    rows = [("reference", block["reference"]), ("samples compared", block["samples"]),
            ("mean distance (mm)", block["mean_mm"]), ("median distance (mm)", block["median_mm"]),
            ("95th percentile (mm)", block["p95_mm"]), ("max distance (mm)", block["max_mm"]),
            ("mean |dx|, |dy|, |dz| (mm)", f"{x:.3f}, {y:.3f}, {z:.3f}"),
            ("largest differences", ", ".join(f"{w['image_id']}: {w['distance_mm']:.2f} mm" for w in block["worst"]))]
    if block.get("released") and block.get("reference_protocol") not in (None, result["conventions"]["protocol"]):
        rows.append(("note", f"the reference roots come from the protocol-{block['reference_protocol']} RootNet, "
                             f"this run is protocol {result['conventions']['protocol']}: expect larger differences"))
    frame = pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
    frame.columns.name = ("RootNet reproduction check: this run vs the released roots" if block.get("released")
                          else "this run's roots vs the bbox_root file's roots")
    return _mark_table(frame, result)


# ------------------------------------------------------------------------------------------------- tables
def _ordered_actions(per_action: dict) -> list[str]:
    unknown = sorted(set(per_action) - set(ACTION_NAMES))
    if unknown:
        raise ValueError(f"unknown action names in result: {unknown}; expected names from protocol.ACTION_NAMES")
    return [a for a in ACTION_NAMES if a in per_action]


def per_action_frame(result: dict, subjects: bool = False) -> pd.DataFrame:
    """Rows: the actions present (official order), then "action mean" and "total" (and with `subjects`, one row
    per test subject). Columns: metrics in mm.

    Root results have one column, MRPE; its action mean is computed here (unweighted mean of the per-action
    values) because the schema stores none for MRPE.
    """
    metrics = result["metrics"]
    present = [k for k in POSE_METRIC_LABELS if k in metrics] if result["kind"] == "pose" else ["mrpe"]
    actions = _ordered_actions(metrics[present[0]]["per_action"])
    frame = pd.DataFrame({METRIC_LABELS[k]: [metrics[k]["per_action"][a] for a in actions] for k in present},
                         index=actions)
    if result["kind"] == "root":
        frame.loc[ACTION_MEAN_ROW] = frame[METRIC_LABELS["mrpe"]].mean()
    else:
        frame.loc[ACTION_MEAN_ROW] = [metrics[k]["action_mean"] for k in present]
    frame.loc[TOTAL_ROW] = [metrics[k]["total"] for k in present]
    if subjects:
        for subject in metrics[present[0]]["per_subject"]:
            frame.loc[subject] = [metrics[k]["per_subject"][subject] for k in present]
    frame.index.name = "action"
    frame.columns.name = setting_label(result)  # which boxes and roots, shown above the table
    return _mark_table(frame.astype(float), result)


def per_joint_frame(result: dict) -> pd.DataFrame:
    """Rows: the 17 evaluated joints. Columns: metrics that carry per-joint means (mm)."""
    if result["kind"] != "pose":
        raise ValueError("per-joint errors exist for pose results only; a root result has one joint (see MRPE)")
    metrics = result["metrics"]
    columns = {label: [metrics[k]["per_joint"][j] for j in EVAL_JOINT_NAMES]
               for k, label in POSE_METRIC_LABELS.items() if k in metrics and "per_joint" in metrics[k]}
    if not columns:
        raise ValueError("the result has no per-joint metrics")
    frame = pd.DataFrame(columns, index=list(EVAL_JOINT_NAMES))
    frame.index.name = "joint"
    frame.columns.name = setting_label(result)
    return _mark_table(frame.astype(float), result)


def format_table(result: dict) -> str:
    """A readable summary: what was evaluated, then per action, action mean, total and per subject (mm)."""
    conv = result["conventions"]
    lines = [
        f"Human3.6M protocol {conv['protocol']} ({result['kind']}): {result['num_samples']} of "
        f"{result['num_expected']} samples, {source_label(result)}, "
        f"flip test {conv['flip_test'] if conv['flip_test'] is not None else 'unknown'}",
        f"headline {result['headline']['metric']} = {result['headline']['value']:.2f} mm",
    ]
    if result.get("partial"):
        lines.append(f"PARTIAL: {result['missing']['count']} test samples have no prediction")
    if result.get("skipped_images"):
        lines.append(f"SKIPPED: {result['skipped_images']['count']} test images were missing")
    if protocol_mismatch(result):
        lines.append(f"PROTOCOL MISMATCH: {protocol_mismatch(result)}")
    if is_random_demo(result):
        lines.append("RANDOM DEMO WEIGHTS: these numbers say nothing about the model")
    frame = per_action_frame(result, subjects=True)
    if result["kind"] == "root":
        mrpe = result["metrics"]["mrpe"]
        lines.append(f"MRPE x {mrpe['x']:.2f}, y {mrpe['y']:.2f}, z {mrpe['z']:.2f} mm")
    lines.append(frame.to_string(float_format=lambda v: f"{v:.2f}", na_rep=""))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- plots
def panels(frame: pd.DataFrame, column: str, width: float, height) -> tuple:
    """One subplot row per distinct value of `frame[column]` (in order of appearance; `frame` not empty):
    (fig, [(ax, value, rows of that value)]). `height`: inches per panel, or a function of its rows."""
    values = list(dict.fromkeys(frame[column]))
    blocks = [frame[frame[column] == value] for value in values]
    sizes = [height(rows) if callable(height) else height for rows in blocks]
    fig, axes = plt.subplots(len(values), 1, figsize=(width, sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    return fig, list(zip(axes[:, 0], values, blocks))


def _bar_chart(frame: pd.DataFrame, columns: list[str], ax, ylabel: str) -> None:
    positions = np.arange(len(frame))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        ax.bar(positions + (i - (len(columns) - 1) / 2) * width, frame[column].to_numpy(), width, label=column)
    ax.set_xticks(positions)
    ax.set_xticklabels(frame.index, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_per_action(result: dict, ax=None):
    """Per-action bars (MPJPE and rigid PA-MPJPE, or MRPE), with the action mean and total at the end."""
    frame = per_action_frame(result)
    columns = ["MRPE"] if result["kind"] == "root" else [
        c for c in ("MPJPE", "PA-MPJPE rigid") if c in frame.columns]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(12, 4.5))
    _bar_chart(frame, columns, ax, "error (mm)")
    ax.set_title(_title(result, "per-action error"), fontsize=10)
    mark_figure(fig, is_random_demo(result))
    return fig


def plot_per_joint(result: dict, ax=None):
    """Per-joint bars of every metric that has per-joint means."""
    frame = per_joint_frame(result)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(12, 4.5))
    _bar_chart(frame, list(frame.columns), ax, "error (mm)")
    ax.set_title(_title(result, "per-joint error"), fontsize=10)
    mark_figure(fig, is_random_demo(result))
    return fig


def write_model_outputs(result: dict, out_dir: str | os.PathLike, spec=None) -> dict[str, Path]:
    """Validate `result`, then write its per-action/per-joint CSVs and PNGs (and the paper comparison when a spec
    is known) into `out_dir`; see `write_model_files`."""
    validate_result(result)
    return write_model_files(result, out_dir, spec)


def write_model_files(result: dict, out_dir: str | os.PathLike, spec=None) -> dict[str, Path]:
    """`write_model_outputs` for a result already validated (`helpers.results.write_result` did it).

    `spec` defaults to the registry entry of `result["model"]["model_id"]` when there is one.
    Returns {name: path} of the files written.
    """
    out_dir = Path(out_dir)
    if spec is None:
        from .models.registry import MODEL_REGISTRY
        spec = MODEL_REGISTRY.get((result.get("model") or {}).get("model_id"))
    paths: dict[str, Path] = {"per_action_csv": write_csv(per_action_frame(result), out_dir / "per_action.csv")}
    fig = plot_per_action(result)
    try:
        paths["per_action_png"] = save_figure(fig, out_dir / PER_ACTION_PNG)
    finally:
        plt.close(fig)
    if result["kind"] == "pose":
        paths["per_joint_csv"] = write_csv(per_joint_frame(result), out_dir / "per_joint.csv")
        fig = plot_per_joint(result)
        try:
            paths["per_joint_png"] = save_figure(fig, out_dir / PER_JOINT_PNG)
        finally:
            plt.close(fig)
    if spec is not None:
        paths["paper_comparison_csv"] = write_csv(paper_comparison(result, spec), out_dir / "paper_comparison.csv")
    reproduction = root_reproduction_frame(result)
    if reproduction is not None:
        paths["root_reproduction_csv"] = write_csv(reproduction, out_dir / "root_reproduction.csv")
    return paths


# -------------------------------------------------------------------------------------------- qualitative
def _side_color(name: str) -> str:
    return LEFT_COLOR if name.startswith("L_") else RIGHT_COLOR if name.startswith("R_") else CENTER_COLOR


def _bone_color(a: int, b: int) -> str:
    for joint in (a, b):
        color = _side_color(JOINT_NAMES[joint])
        if color != CENTER_COLOR:
            return color
    return CENTER_COLOR


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def heatmap_to_crop_pixels(coords, output_shape: tuple[int, int], input_shape: tuple[int, int]) -> np.ndarray:
    """(…, J, ≥2) heatmap x, y → crop pixels (…, J, 2), the same linear map the 3DMPPE back-projection uses."""
    coords = _as_numpy(coords).astype(np.float64)
    scale = np.array([input_shape[1] / output_shape[1], input_shape[0] / output_shape[0]])
    return coords[..., :2] * scale


def camera_to_crop_pixels(points_cam, f, c, bbox, input_shape: tuple[int, int]) -> np.ndarray:
    """(J, 3) camera-space mm -> (J, 2) pixels of the crop of `bbox` [x, y, w, h] at `input_shape` (H, W)."""
    from .geometry import camera_to_pixel

    uv = camera_to_pixel(np.asarray(points_cam, np.float64), f, c)[:, :2]
    bbox = np.asarray(bbox, np.float64)
    return (uv - bbox[:2]) / bbox[2:] * np.array([input_shape[1], input_shape[0]])


def plot_sample_2d(crop_image, coords_2d, skeleton=SKELETON, ax=None, title: str | None = None):
    """Draw the skeleton over one crop.

    `crop_image`: (3,H,W) RGB, 0–255 float or uint8 (numpy or torch); `coords_2d`: (J,2) crop pixels.
    """
    image = _as_numpy(crop_image)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"crop_image must be (3, H, W) RGB; got shape {image.shape}")
    coords = _as_numpy(coords_2d).astype(np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"coords_2d must be (J, 2) crop pixels; got shape {coords.shape}")
    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    ax.imshow(np.clip(image.transpose(1, 2, 0).astype(np.float64), 0, 255).astype(np.uint8))
    for a, b in skeleton:
        if a < len(coords) and b < len(coords):
            ax.plot(coords[[a, b], 0], coords[[a, b], 1], color=_bone_color(a, b), linewidth=2)
    ax.scatter(coords[:, 0], coords[:, 1], s=10, c="yellow", edgecolors="black", linewidths=0.5, zorder=3)
    ax.set_xlim(0, image.shape[2] - 1)
    ax.set_ylim(image.shape[1] - 1, 0)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _draw_skeleton_3d(ax, pose: np.ndarray, skeleton, colored: bool, **style) -> None:
    # camera space is x right, y down, z forward; show x, z (depth) and -y (up)
    for a, b in skeleton:
        if a < len(pose) and b < len(pose):
            color = _bone_color(a, b) if colored else "black"
            ax.plot(pose[[a, b], 0], pose[[a, b], 2], -pose[[a, b], 1], color=color, **style)


def plot_sample_3d(pred_cam, gt_cam, ax=None, skeleton=SKELETON, title: str | None = None):
    """Root-relative 3D skeletons: prediction coloured left (blue) / right (red), ground truth black dashed. mm."""
    pred = _as_numpy(pred_cam).astype(np.float64)
    gt = _as_numpy(gt_cam).astype(np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pred_cam and gt_cam must both be (J, 3) camera mm; got {pred.shape} and {gt.shape}")
    pred = pred - pred[0]
    gt = gt - gt[0]
    if ax is None:
        ax = plt.figure(figsize=(4, 4)).add_subplot(projection="3d")
    _draw_skeleton_3d(ax, gt, skeleton, colored=False, linewidth=1, linestyle="--")
    _draw_skeleton_3d(ax, pred, skeleton, colored=True, linewidth=2)
    extent = max(float(np.abs(np.concatenate([pred, gt])).max()), 1.0)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_zlim(-extent, extent)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("X (mm)")
    ax.set_ylabel("Z depth (mm)")
    ax.set_zlabel("-Y up (mm)")
    ax.view_init(elev=10, azim=-70)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_qualitative_samples(crops, coords_2d, pred_cam=None, gt_cam=None, titles=None, result: dict | None = None):
    """A grid, one row per sample: the crop with the predicted 2D skeleton, and (when given) the 3D comparison.

    `crops`: sequence of (3,H,W) 0–255 images; `coords_2d`: sequence of (J,2) crop pixels;
    `pred_cam`, `gt_cam`: sequences of (J,3) camera mm, or None; `titles`: one string per sample;
    `result`: the result these samples come from, so random demo weights are marked.
    """
    n = len(crops)
    if n == 0:
        raise ValueError("plot_qualitative_samples needs at least one sample")
    for name, seq in (("coords_2d", coords_2d), ("pred_cam", pred_cam), ("gt_cam", gt_cam), ("titles", titles)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} crops")
    if (pred_cam is None) != (gt_cam is None):
        raise ValueError("give both pred_cam and gt_cam for the 3D panels, or neither")
    with_3d = pred_cam is not None
    fig = plt.figure(figsize=(8 if with_3d else 4, 4 * n))
    for i in range(n):
        ax2d = fig.add_subplot(n, 2 if with_3d else 1, i * (2 if with_3d else 1) + 1)
        plot_sample_2d(crops[i], coords_2d[i], ax=ax2d, title=titles[i] if titles else None)
        if with_3d:
            ax3d = fig.add_subplot(n, 2, i * 2 + 2, projection="3d")
            plot_sample_3d(pred_cam[i], gt_cam[i], ax=ax3d, title="prediction (colour) vs ground truth (dashed)")
    demo = result is not None and is_random_demo(result)
    if result is not None:
        fig.suptitle(f"{model_label(result)}: qualitative samples" + (f"\n[{DEMO_MARKER}]" if demo else ""),
                     fontsize=10)
    fig.tight_layout()
    mark_figure(fig, demo)
    return fig
