"""Comparisons across results, for the consolidated report: paired model comparisons and snapshot sweeps.

Every result stores its per-sample errors beside its `result.json` (helpers.results). Two models of one group
are compared on the samples both evaluated, paired by image id: the mean of (a - b) with its recording-bootstrap
interval and p-value (helpers.stats). The snapshots of one training run (results with a `snapshot` block) are
listed epoch by epoch with their intervals.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import report, stats
from .h36m import find_ids

PAIRWISE_COLUMNS = ("group", "metric", "model_a", "model_b", "n_common", "delta", "ci95_low", "ci95_high", "p_value",
                    "significant", "note")
SNAPSHOT_COLUMNS = ("run", "model_id", "epoch", "metric", "value", "ci95_low", "ci95_high", "best", "result")
RANDOM_WEIGHTS_PAIR_NOTE = ("random demo weights: 'significant' only says that two random networks give different "
                            "errors, nothing about the models")
GENERATED_DATA_PAIR_NOTE = "generated data: says nothing about accuracy on Human3.6M"
SELECTION_BIAS_WARNING = (
    "Choosing the best epoch by its test-set error is selection bias: the chosen number is optimistic. "
    "Pick the epoch on a validation split (or fix it in advance, e.g. the last one) and report that.")


def sample_errors_of(item) -> dict | None:
    """The per-sample errors stored beside a loaded result (`consolidate.LoadedResult`); None when there are none."""
    from .evaluate import PredictionError
    from .results import load_per_sample

    block = item.result.get("per_sample_errors")
    if not block:
        return None
    path = Path(item.path).parent / block["file"]
    if not path.is_file():
        return None
    try:
        return load_per_sample(path)
    except PredictionError:
        return None


def pairwise_frame(leaderboard: pd.DataFrame, samples: dict[str, dict | None], *,
                   resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> tuple[pd.DataFrame, list[str]]:
    """Every pair of models inside each group of the leaderboard (in its ranking order, a ranked above b).

    `samples`: result name -> its per-sample errors (None when missing). Returns the table and problems (results
    that could not be compared)."""
    rows, problems = [], []
    metric_keys = {label: key for key, label in report.HEADLINE_LABELS.items()}
    for group in dict.fromkeys(leaderboard["group"]):
        block = leaderboard[leaderboard["group"] == group]
        metric = metric_keys[block["metric"].iloc[0]]
        usable = []
        for name, model, weights, data in zip(block["result"], block["model"], block["weights"], block["data"]):
            errors = samples.get(name)
            if errors is None or metric not in errors["errors"]:
                problems.append(f"`{name}` has no per-sample errors (written before they were stored?): it has no "
                                "paired comparisons; rescore it to get them")
                continue
            usable.append((model, errors, weights, data))
        for (model_a, a, weights_a, data_a), (model_b, b, weights_b, data_b) in combinations(usable, 2):
            rows_b, found = find_ids(b["image_id"], a["image_id"])
            rows_a = np.flatnonzero(found)
            rows_b = rows_b[found]
            if not len(rows_a):
                problems.append(f"`{model_a}` and `{model_b}` share no sample: not compared")
                continue
            notes = []
            if "random_demo" in (weights_a, weights_b):
                notes.append(RANDOM_WEIGHTS_PAIR_NOTE)
            if "generated" in (data_a, data_b):
                notes.append(GENERATED_DATA_PAIR_NOTE)
            if len(rows_a) < max(len(a["image_id"]), len(b["image_id"])):
                notes.append(f"common samples only: {len(rows_a)} of {len(a['image_id'])} ({model_a}) and "
                             f"{len(b['image_id'])} ({model_b})")
            note = "; ".join(notes)
            result = stats.paired_comparison(a["errors"][metric][rows_a], b["errors"][metric][rows_b],
                                             a["subject"][rows_a], a["action_index"][rows_a], a["subaction"][rows_a],
                                             resamples=resamples, seed=seed)
            rows.append({"group": group, "metric": metric, "model_a": model_a, "model_b": model_b,
                         "n_common": result.n_common, "delta": result.delta, "ci95_low": result.ci95_low,
                         "ci95_high": result.ci95_high, "p_value": result.p_value, "significant": result.significant,
                         "note": note})
    return pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS)), problems


def _untagged(name: str) -> str:
    """A model name without its report tags ("[random demo]", "[partial]"): the figure says those once."""
    return name.split(" [", 1)[0]


def plot_pairwise(pairwise: pd.DataFrame, banner: str | None = None):
    """One panel per group: each pair's mean difference (a - b) with its 95 % interval; significant pairs
    (interval excludes 0) filled and red, the others hollow and grey."""
    if not len(pairwise):
        fig, ax = plt.subplots(figsize=(10, 2.0))
        ax.text(0.5, 0.5, "no group holds two comparable models", transform=ax.transAxes, ha="center", color="gray")
        ax.set_axis_off()
        report.mark_figure(fig, banner)
        return fig
    fig, panels = report.panels(pairwise, "group", 10, lambda rows: max(2.0, 0.35 * len(rows) + 1.2))
    for ax, group, rows in panels:
        y = np.arange(len(rows))[::-1]
        for yi, (_, row) in zip(y, rows.iterrows()):
            colour = "tab:red" if row["significant"] else "tab:gray"
            ax.errorbar(row["delta"], yi, xerr=[[row["delta"] - row["ci95_low"]], [row["ci95_high"] - row["delta"]]],
                        fmt="o", color=colour, markerfacecolor=colour if row["significant"] else "white", capsize=3)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{_untagged(a)} − {_untagged(b)}" for a, b in zip(rows["model_a"], rows["model_b"])],
                           fontsize=8)
        metric = report.HEADLINE_LABELS.get(rows["metric"].iloc[0], "error")
        ax.set_xlabel(f"difference in {metric} (mm), a − b, with its 95 % interval; red: significant")
        ax.set_title(group, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    report.mark_figure(fig, banner)
    return fig


# --------------------------------------------------------------------------------------------- snapshots
def snapshot_frame(results) -> pd.DataFrame:
    """One row per snapshot result (a `snapshot` block: one epoch of a training run), grouped by run and sorted by
    epoch; `best` marks the lowest headline error of each run (selection bias: see SELECTION_BIAS_WARNING)."""
    rows = []
    for item in results:
        snapshot = item.result.get("snapshot")
        if not snapshot:
            continue
        interval = (item.result.get("ci95") or {}).get("headline") or [np.nan, np.nan]
        metric = report.HEADLINE_LABELS[item.result["headline"]["metric"]]
        rows.append({"run": snapshot["run"], "model_id": (item.result.get("model") or {}).get("model_id"),
                     "epoch": snapshot.get("epoch"), "metric": metric,
                     "value": float(item.result["headline"]["value"]), "ci95_low": float(interval[0]),
                     "ci95_high": float(interval[1]), "best": False, "result": item.name})
    frame = pd.DataFrame(rows, columns=list(SNAPSHOT_COLUMNS))
    if not len(frame):
        return frame
    frame = frame.sort_values(["run", "epoch", "result"], kind="stable").reset_index(drop=True)
    for _, block in frame.groupby("run", sort=False):
        frame.loc[block["value"].idxmin(), "best"] = True
    return frame


def plot_snapshots(snapshots: pd.DataFrame, banner: str | None = None):
    """Error against epoch for each run, with the 95 % intervals; the best epoch marked."""
    fig, panels = report.panels(snapshots, "run", 9, 3.4)
    for ax, run, rows in panels:
        epochs = rows["epoch"].to_numpy(float)
        values = rows["value"].to_numpy(float)
        ax.errorbar(epochs, values, yerr=[values - rows["ci95_low"].to_numpy(float),
                                          rows["ci95_high"].to_numpy(float) - values],
                    fmt="o-", color="tab:blue", capsize=3, label="error, 95 % interval")
        best = rows[rows["best"]]
        ax.scatter(best["epoch"], best["value"], s=160, facecolors="none", edgecolors="tab:red", linewidths=2,
                   zorder=3, label="best on the test set (selection bias)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{rows['metric'].iloc[0]} (mm)")
        ax.set_title(run, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    report.mark_figure(fig, banner)
    return fig
