"""Merge every `result.json` under a results folder into one leaderboard, plots and `REPORT.md`.

    python -m helpers consolidate [RESULTS_DIR] [--out DIR]

RESULTS_DIR defaults to `environment.default_output_dir()`; the report goes to `RESULTS_DIR/report/`.
Results are grouped by what their numbers mean (kind, protocol, box source and root source): numbers are only
ranked, compared pairwise and plotted side by side inside one group. Invalid files are listed as problems, never dropped silently.
The paper-ready per-action tables (LaTeX, Markdown, CSV and a standalone `tables.tex`, helpers.tables) go to
`report/tables/`, the BibTeX entries of the families compared to `report/references.bib`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from . import comparisons, report, stats
from . import tables as paper_tables
from .atomic import write_json, write_text
from .comparisons import PAIRWISE_COLUMNS, SNAPSHOT_COLUMNS
from .environment import REPORT_SUBDIR, RUNS_SUBDIR
from .models.registry import FAMILIES, MODEL_REGISTRY
from .protocol import ACTION_NAMES
from .result_schema import validate_result

SKIPPED_SUBDIRS = (REPORT_SUBDIR, RUNS_SUBDIR)
DEMO_TAG = " [random demo]"
GENERATED_TAG = " [generated data]"
PARTIAL_TAG = " [partial]"
HEADLINE_COLUMN = "headline (mm)"
LEADERBOARD_COLUMNS = (
    "model", "model_id", "group", "metric", HEADLINE_COLUMN, "ci95_low", "ci95_high", "MPJPE (mm)", "PA rigid (mm)",
    "PA similarity (mm)",
    "action mean (mm)", "MRPE x (mm)", "MRPE y (mm)", "MRPE z (mm)", "paper (mm)", "Δ (mm)", "grade",
    "params (M)", "GFLOPs (MACs)", "images/s", "protocol", "bbox source", "root source", "box/root origin",
    "flip test", "precision", "verified",
    "device", "batch size", "images evaluated", "images expected", "partial", "data", "weights", "result",
)
FILE_NAMES = {
    "report": "REPORT.md", "leaderboard": "leaderboard.csv", "summary": "summary.json",
    "headline_png": "headline_bars.png", "cost_png": "accuracy_vs_cost.png", "heatmap_png": "per_action_heatmap.png",
    "pairwise": "pairwise.csv", "pairwise_png": "pairwise.png",
}
SNAPSHOT_FILE_NAMES = {"snapshots": "snapshots.csv", "snapshots_png": "snapshots.png"}  # only with a sweep
INTERVALS_EXPLAINED = (
    "A 95 % interval says how much a number could move if the test set had been other recordings of the same "
    "people and actions: it is the sampling uncertainty of the test set, so two models whose paired interval "
    "includes 0 are not shown to differ on this data. It does not measure reproduction error (another training "
    "run, checkpoint or software version can move a number by more), and it is not the range of the paper's "
    "value.")


@dataclass
class LoadedResult:
    name: str  # folder of the result.json, relative to the results folder
    path: Path
    result: dict


@dataclass
class Consolidated:
    leaderboard: pd.DataFrame  # one row per valid result, grouped, sorted by headline inside each group
    per_action: pd.DataFrame  # rows: (group, model), columns: actions; headline metric per action (mm)
    results: list[LoadedResult]
    problems: list[str]
    out_dir: Path
    pairwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(PAIRWISE_COLUMNS)))
    snapshots: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SNAPSHOT_COLUMNS)))
    files: dict[str, Path] = field(default_factory=dict)
    tables: list = field(default_factory=list)  # helpers.tables.PaperTable, one per group and metric

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.leaderboard["group"])) if len(self.leaderboard) else []

    @property
    def any_random_demo(self) -> bool:
        return any(report.is_random_demo(r.result) for r in self.results)

    @property
    def any_generated_data(self) -> bool:
        return any(report.is_generated_data(r.result) for r in self.results)

    @property
    def banner(self) -> str | None:
        """What the figures say across their top when any result has random weights or generated data."""
        return report.banner(*(r.result for r in self.results))


# ------------------------------------------------------------------------------------------------ loading
def find_result_files(results_dir: Path) -> list[Path]:
    """Every result.json below `results_dir`, except in the top-level `report/` and `runs/` folders."""
    found = []
    for path in sorted(results_dir.rglob("result.json")):
        parts = path.relative_to(results_dir).parts
        if parts[0] in SKIPPED_SUBDIRS or any(p.startswith(".") for p in parts):
            continue
        found.append(path)
    return found


def load_results(results_dir: Path) -> tuple[list[LoadedResult], list[str]]:
    loaded, problems = [], []
    for path in find_result_files(results_dir):
        name = path.parent.relative_to(results_dir).as_posix() or "."
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            validate_result(obj)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            problems.append(f"`{name}/result.json` was not used: {exc}")
            continue
        loaded.append(LoadedResult(name, path, obj))
    return loaded, problems


# ---------------------------------------------------------------------------------------------- the table
def group_key(result: dict) -> tuple:
    """Numbers are comparable only within one (kind, protocol, box source, root source, protocol note, bbox_root
    file of another protocol).

    A protocol note (e.g. the Integral challenge checkpoint's own crop and split) always gets a group of its own, and
    so do runs on a bbox_root file made for another protocol."""
    conv = result["conventions"]
    kind_rank = 0 if result["kind"] == "pose" else 1
    note = conv.get("protocol_note") or ""
    mismatch = report.protocol_mismatch(result) is not None
    return (kind_rank, -int(conv["protocol"]), bool(note), note, mismatch, conv["bbox_source"] != "ground_truth",
            conv["root_source"] != "ground_truth", conv["bbox_source"], conv["root_source"])


def group_label(result: dict) -> str:
    metric = report.HEADLINE_LABELS[result["headline"]["metric"]]
    label = f"Protocol {result['conventions']['protocol']} {metric}, {report.source_label(result)}"
    note = result["conventions"].get("protocol_note")
    if report.protocol_mismatch(result):
        file_protocol = result["conventions"]["sources"]["protocol_check"].get("file_protocol")
        label += f" [bbox_root file made for protocol {file_protocol}]"
    return f"{label} [not comparable: {note}]" if note else label


def source_origin(result: dict) -> str:
    """Where a result's boxes and roots came from beyond their kind: the files, the RootNet run, the released file."""
    sources = result["conventions"].get("sources") or {}
    parts = []
    bbox_root = sources.get("bbox_root_file") or {}
    if bbox_root.get("origin") == "released":
        parts.append(f"released RootNet output, protocol {bbox_root.get('protocol')}")
    elif bbox_root:
        parts.append(f"bbox_root file {Path(str(bbox_root.get('file'))).name} ({bbox_root.get('origin')} origin)")
    boxes, roots = sources.get("boxes") or {}, sources.get("roots") or {}
    if boxes.get("source") == "detector" and bbox_root.get("origin") != "released":
        first = boxes.get("from") or (boxes.get("file") if boxes.get("file") != bbox_root.get("file") else None)
        if first:
            parts.append(f"boxes from {first}")
    if roots.get("source") == "rootnet_run":
        parts.append(f"roots of RootNet result {roots.get('result_id')} (checkpoint "
                     f"{str(roots.get('checkpoint_sha256'))[:12]}, {roots.get('weights')} weights)")
    if not sources and "detected" in (result["conventions"]["bbox_source"], result["conventions"]["root_source"]):
        parts.append("not recorded (result written before box and root sources were told apart)")
    return "; ".join(parts)


def model_name(result: dict, fallback: str) -> str:
    """"<family display name> <variant>" (e.g. "ConvNeXtPose L"), else the model id, else `fallback`."""
    model = result.get("model") or {}
    # The family's display name: as the result recorded it, else the registry's, else the family id.
    known = FAMILIES.get(model.get("family"))
    family = model.get("family_display_name") or (known.display_name if known else model.get("family"))
    return f"{family} {model['variant']}" if family and model.get("variant") else model.get("model_id") or fallback


def display_name(result: dict, fallback: str) -> str:
    name = model_name(result, fallback)
    if result.get("snapshot"):  # one epoch of a sweep (helpers.sweep)
        name += f" @ epoch {result['snapshot'].get('epoch')}"
    return (name + (DEMO_TAG if report.is_random_demo(result) else "")
            + (GENERATED_TAG if report.is_generated_data(result) else "") + (PARTIAL_TAG if result["partial"] else ""))


def weights_label(result: dict) -> str:
    """The weights' kind ("released", "given", "random_demo"), with the checkpoint's short hash where known."""
    kind = report.provenance(result).weights
    sha = (result.get("weights") or {}).get("sha256") or (result.get("checkpoint") or {}).get("sha256")
    return f"{kind} ({sha[:12]})" if sha and kind != "random_demo" else kind


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else np.nan


def result_precision(result: dict) -> str | None:
    """The precision a result ran in; results written before PRECISION existed recorded `amp` (fp16 autocast)."""
    settings = result.get("settings") or {}
    if settings.get("precision"):
        return settings["precision"]
    if "amp" in settings:
        return "fp16" if settings["amp"] else "fp32"
    return None


def precision_label(result: dict) -> str | None:
    """fp32 as is; reduced precision marked as not the official setting, with its measured deviation."""
    precision = result_precision(result)
    if precision in (None, "fp32"):
        return precision
    check = result.get("precision_check") or {}
    measured = check.get("max_abs_diff_mm")
    return (f"{precision} (not official" + (f"; ≤{measured:.2f} mm vs fp32" if measured is not None else "") + ")")


def _recorded_spec(model: dict, kind: str):
    """A stand-in spec for a model the registry does not know (a family file of your own): the paper numbers
    the result recorded, so it is graded like the built-in models. None when the result records none."""
    from .models.spec import ModelSpec, PaperResult

    paper = model.get("paper")
    if not model.get("model_id") or not isinstance(paper, dict):
        return None
    try:
        paper = PaperResult(**paper)
    except TypeError:  # written by another version of the schema's paper block
        return None
    return ModelSpec(model_id=model["model_id"], family=str(model.get("family")), variant=str(model.get("variant")),
                     builder="unknown:unknown", kind=kind, paper=paper)


def result_spec(result: dict):
    """The model spec of a result: the registry's, else one made of the paper numbers the result recorded."""
    model = result.get("model") or {}
    return MODEL_REGISTRY.get(model.get("model_id")) or _recorded_spec(model, result["kind"])


def _row(item: LoadedResult) -> dict:
    result = item.result
    metrics = result["metrics"]
    model = result.get("model") or {}
    spec = result_spec(result)
    settings = result.get("settings") or {}
    conv = result["conventions"]
    headline_metric = result["headline"]["metric"]
    interval = (result.get("ci95") or {}).get("headline") or [None, None]  # results before #9 have none
    # architecture facts the result does not carry come from the registry (exact counts per model id)
    num_params = model.get("num_params") or (spec.num_params if spec else None)
    gmacs = model.get("gmacs") or (spec.gmacs if spec else None)
    row = {
        "model": display_name(result, item.name),
        "model_id": model.get("model_id"),
        "group": group_label(result),
        "metric": report.HEADLINE_LABELS[headline_metric],
        HEADLINE_COLUMN: float(result["headline"]["value"]),
        "ci95_low": _number(interval[0]), "ci95_high": _number(interval[1]),
        "paper (mm)": np.nan, "Δ (mm)": np.nan,
        "grade": "n/a: model not in the registry" if model.get("model_id") else "n/a: the result names no model",
        "params (M)": _number(num_params) / 1e6,
        "GFLOPs (MACs)": _number(gmacs),
        "images/s": _number((result.get("timing") or {}).get("images_per_s")),
        "protocol": int(conv["protocol"]),
        "bbox source": conv["bbox_source"],
        "root source": conv["root_source"],
        "box/root origin": source_origin(result),
        "flip test": conv.get("flip_test"),
        "precision": precision_label(result),
        "verified": report.verification_label(result),
        "device": settings.get("device"),
        "batch size": settings.get("batch_size"),
        "images evaluated": int(result["num_samples"]),
        "images expected": int(result["num_expected"]),
        "partial": bool(result["partial"]),
        "data": "generated" if report.is_generated_data(result) else "real",
        "weights": weights_label(result),
        "result": item.name,
    }
    row["action mean (mm)"] = float(report.per_action_frame(result).loc[report.ACTION_MEAN_ROW, row["metric"]])
    if result["kind"] == "pose":
        row.update({"MPJPE (mm)": metrics["mpjpe"]["total"], "PA rigid (mm)": metrics["pa_mpjpe_rigid"]["total"],
                    "PA similarity (mm)": metrics["pa_mpjpe_similarity"]["total"]})
    else:
        mrpe = metrics["mrpe"]
        row.update({"MRPE x (mm)": mrpe["x"], "MRPE y (mm)": mrpe["y"], "MRPE z (mm)": mrpe["z"]})
    if spec is not None:
        if spec.kind != result["kind"]:
            row["grade"] = f"n/a: registry says {spec.model_id} is a {spec.kind} model"
        else:
            headline = report.paper_comparison(result, spec).iloc[0]
            row.update({"paper (mm)": headline["paper (mm)"], "Δ (mm)": headline["Δ (mm)"],
                        "grade": headline["grade"]})
    return row


def build_leaderboard(results: list[LoadedResult]) -> pd.DataFrame:
    """One row per result: grouped by conventions, ranked by the headline inside each group."""
    ranked = sorted(results, key=lambda r: (group_key(r.result), float(r.result["headline"]["value"]), r.name))
    frame = pd.DataFrame([_row(r) for r in ranked], columns=list(LEADERBOARD_COLUMNS))
    # two runs of one model in one group (e.g. with and without flip test) must stay distinguishable
    repeated = frame.duplicated(["group", "model"], keep=False)
    frame.loc[repeated, "model"] = frame.loc[repeated, "model"] + " (" + frame.loc[repeated, "result"] + ")"
    return frame.reset_index(drop=True)


def build_per_action(results: list[LoadedResult], leaderboard: pd.DataFrame) -> pd.DataFrame:
    """(group, model) × actions, the headline metric per action (mm); NaN where an action is absent."""
    by_name = {r.name: r.result for r in results}
    rows = []
    for name, metric in zip(leaderboard["result"], leaderboard["metric"]):
        rows.append(report.per_action_frame(by_name[name])[metric].reindex(list(ACTION_NAMES)).to_numpy(float))
    index = pd.MultiIndex.from_frame(leaderboard[["group", "model"]]) if len(leaderboard) else None
    return pd.DataFrame(rows, index=index, columns=list(ACTION_NAMES))


def convention_problems(results: list[LoadedResult]) -> list[str]:
    """Flag differences inside a group that change the numbers but do not split the group."""
    problems = []
    by_group: dict[str, list[LoadedResult]] = {}
    for item in sorted(results, key=lambda r: group_key(r.result)):
        by_group.setdefault(group_label(item.result), []).append(item)
    for label, items in by_group.items():
        for key, what in (("flip_test", "flip test"), ("frame_stride", "frame stride"),
                          ("test_subjects", "test subjects"), ("alignment", "alignment definitions"),
                          ("averaging", "averaging definitions"), ("joints_evaluated", "evaluated joints")):
            values = {json.dumps(i.result["conventions"].get(key), sort_keys=True) for i in items}
            if len(values) > 1:
                names = ", ".join(f"{i.name}={i.result['conventions'].get(key)}" for i in items) if key in (
                    "flip_test", "frame_stride", "test_subjects") else ", ".join(i.name for i in items)
                problems.append(f"group '{label}' mixes {what} ({names}): compare these rows with care")
    for item in results:
        if report.is_random_demo(item.result):
            problems.append(f"`{item.name}` ran with RANDOM DEMO WEIGHTS: its numbers say nothing about the model")
        if report.is_generated_data(item.result):
            problems.append(f"`{item.name}` was evaluated on GENERATED data, not Human3.6M: not comparable with "
                            "the papers")
        mismatch = report.protocol_mismatch(item.result)
        if mismatch:
            problems.append(f"`{item.name}`: {mismatch}; it gets no paper grade")
        conv = item.result["conventions"]
        if "detected" in (conv["bbox_source"], conv["root_source"]):
            problems.append(f"`{item.name}` was written before box and root sources were recorded separately: its "
                            "\"detected\" boxes and roots may be ground-truth boxes with RootNet roots; it gets no "
                            "paper grade (rescore it with --bbox-root)")
        if item.result["partial"]:
            problems.append(f"`{item.name}` is a PARTIAL run ({item.result['num_samples']} of "
                            f"{item.result['num_expected']} samples): not comparable with full runs or the paper")
        skipped = item.result.get("skipped_images")
        if skipped and skipped.get("count"):
            problems.append(f"`{item.name}` skipped {skipped['count']} missing images")
    if len(by_group) > 1:
        problems.append(f"results use {len(by_group)} different conventions; they are reported in separate groups: "
                        + "; ".join(by_group))
    return problems


# ------------------------------------------------------------------------------------------------- plots
def plot_headline_bars(leaderboard: pd.DataFrame, banner: str | None = None):
    """One panel per group: headline bars, published values as markers."""
    fig, panels = report.panels(leaderboard, "group", 10, 3.6)
    for ax, group, rows in panels:
        positions = np.arange(len(rows))
        ax.bar(positions, rows[HEADLINE_COLUMN], width=0.6, color="tab:blue", label="measured")
        ax.set_xlim(-0.75, max(len(rows), 4) - 0.25)  # a lone bar keeps a normal width
        for x, value in zip(positions, rows[HEADLINE_COLUMN]):
            ax.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom", fontsize=8)
        paper = rows["paper (mm)"].to_numpy(dtype=float)
        if np.isfinite(paper).any():
            ax.scatter(positions, paper, marker="D", color="tab:red", zorder=3, label="paper")
        ax.set_xticks(positions)
        ax.set_xticklabels(rows["model"], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{rows['metric'].iloc[0]} (mm)")
        ax.set_title(group, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    report.mark_figure(fig, banner)
    return fig


def plot_accuracy_vs_cost(leaderboard: pd.DataFrame, banner: str | None = None):
    """Rows: groups; columns: headline error vs GFLOPs (MACs), params (M), images/s. Each model is a numbered,
    coloured point (the same in the three panels of its row) and the row's legend names the numbers, so that ten
    or more models stay readable; an axis whose values span more than 10x is logarithmic."""
    groups = list(dict.fromkeys(leaderboard["group"]))
    x_columns = ("GFLOPs (MACs)", "params (M)", "images/s")
    most = max(int((leaderboard["group"] == g).sum()) for g in groups)
    row_height = max(4.0, 0.28 * most + 1.5)
    fig, axes = plt.subplots(len(groups), 3, figsize=(18, row_height * len(groups)), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for axes_row, group in zip(axes, groups):
        rows = leaderboard[leaderboard["group"] == group].reset_index(drop=True)
        y = rows[HEADLINE_COLUMN].to_numpy(dtype=float)
        for ax, column in zip(axes_row, x_columns):
            x = rows[column].to_numpy(dtype=float)
            known = np.isfinite(x) & (x > 0)
            for i in np.flatnonzero(known):
                ax.scatter(x[i], y[i], color=colours[i % len(colours)], s=36, zorder=3)
                ax.annotate(str(i + 1), (x[i], y[i]), textcoords="offset points", xytext=(4, 3), fontsize=7)
            if not known.any():
                ax.text(0.5, 0.5, f"no {column} recorded", transform=ax.transAxes, ha="center", color="gray")
            elif x[known].max() > 10 * x[known].min():
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(mticker.NullFormatter())  # 2x10^0, 3x10^0 ... collide
            ax.set_xlabel(column + (" (log scale)" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel(f"{rows['metric'].iloc[0]} (mm)")
            ax.set_title(group, fontsize=9)
            ax.grid(alpha=0.3, which="both")
        labels = [f"{i + 1}  {name}" for i, name in enumerate(rows["model"])]
        markers = [plt.Line2D([], [], marker="o", linestyle="", color=colours[i % len(colours)])
                   for i in range(len(rows))]
        axes_row[-1].legend(markers, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                            frameon=False, title="model", title_fontsize=8)
    fig.tight_layout()
    report.mark_figure(fig, banner)
    return fig


def plot_per_action_heatmap(per_action: pd.DataFrame, banner: str | None = None):
    """One annotated heatmap per group: models × actions, headline metric (mm)."""
    groups = list(dict.fromkeys(per_action.index.get_level_values("group")))
    heights = [max(1.6, 0.45 * len(per_action.loc[g]) + 1.4) for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(16, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, group in zip(axes[:, 0], groups):
        block = per_action.loc[group]
        values = block.to_numpy(dtype=float)
        image = ax.imshow(values, aspect="auto", cmap="viridis_r")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):  # dark text on the light (low-error) end of the colour map
                light = image.norm(value) < 0.5
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if light else "white")
        ax.set_xticks(np.arange(len(block.columns)))
        ax.set_xticklabels(block.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(np.arange(len(block.index)))
        ax.set_yticklabels(block.index, fontsize=8)
        ax.set_title(f"{group}: per action (mm)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    report.mark_figure(fig, banner)
    return fig


# ------------------------------------------------------------------------------------------------ writing
def _format_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_format_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


REPORT_TABLE_COLUMNS = ("model", "model_id", HEADLINE_COLUMN, "ci95_low", "ci95_high", "MPJPE (mm)", "PA rigid (mm)",
                        "PA similarity (mm)",
                        "action mean (mm)", "paper (mm)", "Δ (mm)", "grade", "params (M)", "GFLOPs (MACs)",
                        "images/s", "flip test", "precision", "verified", "device", "batch size", "images evaluated",
                        "partial", "data", "weights")
ROOT_TABLE_COLUMNS = ("model", "model_id", HEADLINE_COLUMN, "ci95_low", "ci95_high", "MRPE x (mm)", "MRPE y (mm)",
                      "MRPE z (mm)",
                      "action mean (mm)", "paper (mm)", "Δ (mm)", "grade", "params (M)", "images/s", "flip test",
                      "precision", "verified", "device", "batch size", "images evaluated", "partial", "data",
                      "weights")


_FLIP_WORDS = {True: "on", False: "off", None: "unknown"}
_SHARED_CONVENTION_KEYS = ("joints_evaluated", "root_joint", "root_relative", "units", "alignment", "averaging")


def _convention_lines(conv: dict, keys) -> list[str]:
    lines = []
    if "joints_evaluated" in keys:
        lines.append(f"- **Joints:** {len(conv['joints_evaluated'])} evaluated "
                     f"({', '.join(conv['joints_evaluated'])}); root joint {conv['root_joint']}, "
                     f"{'root-relative' if conv.get('root_relative', True) else 'absolute'} poses, "
                     f"units {conv['units']}.")
    if "alignment" in keys:
        lines.append("- **Alignment:** " + "; ".join(f"`{k}`: {v}" for k, v in conv["alignment"].items()) + ".")
    if "averaging" in keys:
        lines.append("- **Averaging:** " + "; ".join(f"`{k}`: {v}" for k, v in conv["averaging"].items()) + ".")
    return lines


def _conventions_section(results: list[LoadedResult]) -> list[str]:
    """Conventions shared by every result once, then what defines each group (split, box/root, flip test)."""
    def distinct(key):
        return {json.dumps(r.result["conventions"].get(key), sort_keys=True) for r in results}

    shared = [k for k in _SHARED_CONVENTION_KEYS if len(distinct(k)) == 1]
    per_group = [k for k in _SHARED_CONVENTION_KEYS if k not in shared]
    lines = ["## Conventions", ""]
    if shared:
        lines += ["Shared by every result:", "", *_convention_lines(results[0].result["conventions"], shared), ""]
    first_of_group: dict[str, dict] = {}
    for item in sorted(results, key=lambda r: group_key(r.result)):
        first_of_group.setdefault(group_label(item.result), item.result)
    for label, result in first_of_group.items():
        conv = result["conventions"]
        flips = sorted({_FLIP_WORDS[i.result["conventions"].get("flip_test")] for i in results
                        if group_label(i.result) == label})
        lines += [
            f"### {label}",
            f"- **Split:** Protocol {conv['protocol']}, test subjects "
            f"{', '.join(f'S{s}' for s in conv['test_subjects'])}, every {conv['frame_stride']}th frame "
            f"(`frame_idx % {conv['frame_stride']} == 0`).",
            f"- **Boxes and roots:** {report.source_label(result)} (`bbox_source` {conv['bbox_source']}, "
            f"`root_source` {conv['root_source']})"
            + (f"; {source_origin(result)}" if source_origin(result) else "") + ".",
            f"- **Flip test:** {', '.join(flips)}.",
            *_convention_lines(conv, per_group),
            "",
        ]
    return lines


def render_report(consolidated: Consolidated, results_dir: Path, plots: dict[str, str]) -> str:
    lb = consolidated.leaderboard
    lines = ["# Human3.6M benchmark report", "",
             f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
             f"{len(consolidated.results)} result(s) in `{results_dir}`.", ""]
    demo = [r.name for r in consolidated.results if report.is_random_demo(r.result)]
    if demo:
        lines += [f"> **⚠ {report.DEMO_MARKER.upper()}.** {len(demo)} of {len(consolidated.results)} result(s) "
                  f"come from random-initialised demo weights ({', '.join(f'`{d}`' for d in demo)}). They only "
                  "prove that the pipeline runs end to end and say nothing about the models; rows marked "
                  f"`{DEMO_TAG.strip()}` must not be compared with the papers or with each other.", ""]
    generated = [r.name for r in consolidated.results if report.is_generated_data(r.result)]
    if generated:
        lines += [f"> **⚠ {report.GENERATED_MARKER.upper()}.** {len(generated)} of {len(consolidated.results)} "
                  f"result(s) were evaluated on generated data ({', '.join(f'`{g}`' for g in generated)}): synthetic "
                  "people in the Human3.6M format, not Human3.6M. Their numbers cannot be compared with the papers; "
                  f"rows marked `{GENERATED_TAG.strip()}` show that the pipeline (and, with a given checkpoint, "
                  "your weights) runs end to end.", ""]
    partial = [r.name for r in consolidated.results if r.result["partial"]]
    if partial:
        lines += [f"> **Partial runs:** {', '.join(f'`{p}`' for p in partial)} evaluated only part of the test "
                  "set; their numbers are not comparable with full runs or the published values.", ""]
    reduced = [r.name for r in consolidated.results if result_precision(r.result) not in (None, "fp32")]
    if reduced:
        lines += [f"> **Reduced precision:** {', '.join(f'`{p}`' for p in reduced)} ran in tf32/fp16/bf16, which is not "
                  "the official setting (the official code runs in fp32). Each records its measured deviation from "
                  "fp32 on its own crops (`precision_check` in its result.json).", ""]
    failed = [(r.name, p) for r in consolidated.results for p in report.verification_problems(r.result)]
    if failed:
        lines += ["> **⚠ Failed checks:** " + "; ".join(f"`{name}`: {problem}" for name, problem in failed)
                  + ". Their rows are marked ✗ in the `verified` column.", ""]
    if consolidated.results:
        lines += _conventions_section(consolidated.results)
    lines += ["## Leaderboard", "",
              "Rows are ranked by the headline metric inside each group; numbers from different groups mean "
              "different things and are never ranked together. Δ = measured − paper. Grades: |Δ| < 1 mm "
              "excellent, < 2 very good, < 5 acceptable, otherwise investigate. GFLOPs are multiply-accumulates "
              "(MACs), as the papers count them.", ""]
    if not len(lb):
        lines += ["No valid result was found.", ""]
    for group in consolidated.groups:
        rows = lb[lb["group"] == group]
        metric = rows["metric"].iloc[0]
        columns = [c for c in (ROOT_TABLE_COLUMNS if metric == "MRPE" else REPORT_TABLE_COLUMNS)
                   if c != f"{metric} (mm)"]  # the headline column already is that metric
        lines += [f"### {group}", "", markdown_table(rows[columns].rename(
            columns={HEADLINE_COLUMN: f"{metric} (mm)"})), ""]
    lines += ["## How each row was verified", "",
              "The `verified` column says what each result was checked with on the machine that ran it (CI has no "
              "GPU, so every run checks itself there):", "",
              *[f"- **{check}**: {meaning}" for check, meaning in report.VERIFICATION_EXPLAINED.items()],
              f"- {report.VERIFICATION_MARKS}", ""]
    lines += _tables_section(consolidated)
    lines += _intervals_section(consolidated)
    lines += _reproduction_section(consolidated)
    lines += _snapshots_section(consolidated)
    if plots:
        lines += ["## Plots", ""]
        titles = {"headline_png": "Headline metric with published values",
                  "cost_png": "Accuracy vs cost (GFLOPs as MACs, parameters, throughput)",
                  "heatmap_png": "Per-action error", "pairwise_png": "Paired differences with 95 % intervals",
                  "snapshots_png": "Error against epoch"}
        for key, file_name in plots.items():
            lines += [f"### {titles[key]}", "", f"![{titles[key]}]({file_name})", ""]
    lines += ["## Problems found", ""]
    lines += [f"- {p}" for p in consolidated.problems] if consolidated.problems else ["None."]
    return "\n".join(lines) + "\n"


def _tables_section(consolidated: Consolidated) -> list[str]:
    if not consolidated.tables:
        return []
    lines = ["## Per-action tables for papers", "",
             f"Each table is in `{paper_tables.TABLES_SUBDIR}/` as a booktabs tabular to `\\input` (`.tex`), as "
             f"Markdown (below) and as CSV; `{paper_tables.TABLES_SUBDIR}/{paper_tables.STANDALONE_FILE}` holds them "
             f"all in one document that compiles with pdflatex, and `{paper_tables.REFERENCES_FILE}` the BibTeX "
             "entries they cite.", ""]
    for table in consolidated.tables:
        lines += [f"### {table.title}", "", f"*{table.caption}*", "", paper_tables.markdown_table(table),
                  f"Files: `{paper_tables.TABLES_SUBDIR}/{table.slug}.tex`, `{paper_tables.TABLES_SUBDIR}/"
                  f"{table.slug}.csv`.", ""]
    return lines


def _intervals_section(consolidated: Consolidated) -> list[str]:
    lines = ["## Confidence intervals and paired comparisons", "", INTERVALS_EXPLAINED, "",
             f"Method: {stats.METHOD}; {int(stats.LEVEL * 100)} % percentile intervals. `ci95_low`/`ci95_high` in "
             "the leaderboard are the headline's interval; `pairwise.csv` compares every two models of a group on "
             "the samples both evaluated, paired by image (delta = a − b; significant: the interval excludes 0).",
             ""]
    pairwise = consolidated.pairwise
    if not len(pairwise):
        return lines + ["No group holds two models with per-sample errors, so there is no paired comparison.", ""]
    columns = ["model_a", "model_b", "n_common", "delta", "ci95_low", "ci95_high", "p_value", "significant", "note"]
    for group in dict.fromkeys(pairwise["group"]):
        rows = pairwise[pairwise["group"] == group][columns].copy()
        rows["p_value"] = [f"{p:.2g}" for p in rows["p_value"]]  # small p-values need more than 2 decimals
        lines += [f"### {group}", "", markdown_table(rows), ""]
    if (pairwise["note"] != "").any():
        lines += ["Rows with a note compare partial results on their common samples only.", ""]
    return lines


def _reproduction_section(consolidated: Consolidated) -> list[str]:
    """Root results run on a bbox_root file's boxes: their roots against the file's, sample by sample."""
    lines = []
    for item in consolidated.results:
        table = report.root_reproduction_frame(item.result)
        if table is None:
            continue
        if not lines:
            lines = ["## RootNet reproduction check", "",
                     "A RootNet run on the boxes of a bbox_root file, compared with that file's roots image by image. "
                     "On the released file's boxes with the released checkpoint of the same protocol it reproduces the "
                     "authors' run, and the two should agree closely.", ""]
        lines += [f"### `{item.name}`: {table.columns.name}", "",
                  markdown_table(table.reset_index()), ""]
    return lines


def _snapshots_section(consolidated: Consolidated) -> list[str]:
    snapshots = consolidated.snapshots
    if not len(snapshots):
        return []
    lines = ["## Snapshots of one training run", "", f"> **Selection bias.** {comparisons.SELECTION_BIAS_WARNING}", ""]
    for run in dict.fromkeys(snapshots["run"]):
        rows = snapshots[snapshots["run"] == run]
        lines += [f"### {run}", "", markdown_table(rows[["epoch", "metric", "value", "ci95_low", "ci95_high",
                                                          "best", "result"]]), ""]
    return lines


def _summary(consolidated: Consolidated, results_dir: Path) -> dict:
    records = json.loads(consolidated.leaderboard.to_json(orient="records", force_ascii=False))
    return {
        "generated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results_dir": str(results_dir),
        "num_results": len(consolidated.results),
        "groups": consolidated.groups,
        "any_random_demo": consolidated.any_random_demo,
        "any_generated_data": consolidated.any_generated_data,
        "leaderboard": records,
        "problems": consolidated.problems,
    }


def table_entries(consolidated: Consolidated) -> list:
    """The leaderboard's rows as helpers.tables needs them."""
    by_name = {r.name: r.result for r in consolidated.results}
    entries = []
    for name, group, folder in zip(consolidated.leaderboard["model"], consolidated.leaderboard["group"],
                                   consolidated.leaderboard["result"]):
        result = by_name[folder]
        entries.append(paper_tables.Entry(name=name, model_name=model_name(result, folder), group=group,
                                          result_name=folder, result=result, spec=result_spec(result),
                                          precision=result_precision(result)))
    return entries


def consolidate(results_dir, out_dir=None, table_options=None) -> Consolidated:
    """Read, validate and merge every result under `results_dir`; write the report into `out_dir`.

    `table_options`: a `helpers.tables.TableOptions` (action order, Avg., reported rows, more metrics) for the
    per-action tables. Raises FileNotFoundError when `results_dir` holds no result.json at all. Invalid files
    become problems.
    """
    results_dir = Path(results_dir).resolve()
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist; run a model notebook first "
                                "or pass the folder that holds <model_id>/result.json")
    if not find_result_files(results_dir):
        raise FileNotFoundError(f"no result.json under {results_dir} (outside report/ and runs/); run a model "
                                "notebook first or point to the right folder")
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    results, problems = load_results(results_dir)
    problems += convention_problems(results)
    leaderboard = build_leaderboard(results)
    samples = {item.name: comparisons.sample_errors_of(item) for item in results}
    pairwise, pair_problems = comparisons.pairwise_frame(leaderboard, samples)
    consolidated = Consolidated(leaderboard=leaderboard, per_action=build_per_action(results, leaderboard),
                                results=results, problems=problems + pair_problems, out_dir=out_dir,
                                pairwise=pairwise, snapshots=comparisons.snapshot_frame(results))
    plots: dict[str, str] = {}
    if results:
        banner = consolidated.banner
        figures = [("headline_png", lambda: plot_headline_bars(consolidated.leaderboard, banner)),
                   ("cost_png", lambda: plot_accuracy_vs_cost(consolidated.leaderboard, banner)),
                   ("heatmap_png", lambda: plot_per_action_heatmap(consolidated.per_action, banner)),
                   ("pairwise_png", lambda: comparisons.plot_pairwise(consolidated.pairwise, banner))]
        if len(consolidated.snapshots):
            figures.append(("snapshots_png", lambda: comparisons.plot_snapshots(consolidated.snapshots, banner)))
        for key, draw in figures:
            fig = draw()
            name = {**FILE_NAMES, **SNAPSHOT_FILE_NAMES}[key]
            try:
                consolidated.files[key] = report.save_figure(fig, out_dir / name)
            finally:
                plt.close(fig)
            plots[key] = name
    consolidated.files["leaderboard"] = write_text(out_dir / FILE_NAMES["leaderboard"],
                                                   consolidated.leaderboard.to_csv(index=False, float_format="%.4f"))
    consolidated.files["pairwise"] = write_text(out_dir / FILE_NAMES["pairwise"],
                                                consolidated.pairwise.to_csv(index=False, float_format="%.6g"))
    if len(consolidated.snapshots):
        consolidated.files["snapshots"] = write_text(out_dir / SNAPSHOT_FILE_NAMES["snapshots"],
                                                     consolidated.snapshots.to_csv(index=False, float_format="%.4f"))
    entries = table_entries(consolidated)
    consolidated.tables = paper_tables.build_tables(entries, table_options)
    bib, bib_problems = paper_tables.references(entries)
    consolidated.problems += bib_problems
    consolidated.files["references"] = write_text(out_dir / paper_tables.REFERENCES_FILE, bib)
    table_files = paper_tables.write_tables(consolidated.tables, out_dir / paper_tables.TABLES_SUBDIR,
                                            bibliography=f"../{Path(paper_tables.REFERENCES_FILE).stem}")
    consolidated.files["tables_tex"] = table_files.pop(paper_tables.STANDALONE_FILE)
    consolidated.files.update({f"tables/{name}": path for name, path in table_files.items()})
    consolidated.files["summary"] = write_json(out_dir / FILE_NAMES["summary"], _summary(consolidated, results_dir))
    consolidated.files["report"] = write_text(out_dir / FILE_NAMES["report"],
                                              render_report(consolidated, results_dir, plots))
    return consolidated


def main(argv: list[str] | None = None) -> int:
    from .environment import default_output_dir

    parser = argparse.ArgumentParser(prog="python -m helpers consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", nargs="?", type=Path, default=None,
                        help="folder holding <model_id>/result.json (default: the environment's output folder)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RESULTS_DIR/report)")
    parser.add_argument("--action-order", choices=list(paper_tables.ACTION_ORDERS), default="paper",
                        help="column order of the per-action tables: the papers' (Dir., Disc., Eat, Greet, Phone, "
                             "Photo, ...; default) or the official action-index order")
    parser.add_argument("--average", choices=paper_tables.AVERAGES, default="total",
                        help="Avg. column: the official total (mean over samples x joints; default) or the mean of "
                             "the 15 action means")
    parser.add_argument("--no-reported", action="store_true", help="no rows of published (reported) values")
    parser.add_argument("--table-metric", action="append", default=[], metavar="METRIC",
                        choices=list(paper_tables.METRIC_LABELS),
                        help="also tabulate this metric, e.g. pa_mpjpe_similarity (repeatable)")
    args = parser.parse_args(argv)
    results_dir = args.results_dir if args.results_dir is not None else default_output_dir()
    options = paper_tables.TableOptions(action_order=args.action_order, average=args.average,
                                        reported=not args.no_reported, metrics=tuple(args.table_metric))
    try:
        consolidated = consolidate(results_dir, args.out, options)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        columns = ["model", "group", HEADLINE_COLUMN, "paper (mm)", "Δ (mm)", "grade", "data", "weights"]
        print(consolidated.leaderboard[columns].to_string(index=False) if consolidated.results else "no valid result")
    for problem in consolidated.problems:
        print(f"problem: {problem}")
    print(f"report: {consolidated.files['report']}")
    return 0 if consolidated.results else 1


if __name__ == "__main__":
    sys.exit(main())
