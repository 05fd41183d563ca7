"""The reproduction card: `REPRODUCE.md` beside every `result.json`, written with it by the same call
(`helpers.results.write_result`, atomically), from the result alone.

It says what a number rests on and how to get it again: the checkpoint (file, sha256, epoch, source), the data
(real or generated, split, samples evaluated, missing), every setting, the device, precision and every check
the run recorded (any `*_check` block of result.json), the software versions, the headline with its interval,
and the exact `papermill` command that repeats the run. A notebook run records its parameters as result.json's
`parameters` block (`runner.Run.repeat_parameters`): every notebook parameter, with what the run resolved where a
default depends on the machine (device, batch size, number of GPUs, data and checkpoint paths, output and cache
folders, demo mode), so the command repeats this very run rather than whatever the defaults would pick next time.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from . import report
from .atomic import write_text
from .environment import OWN_NOTEBOOKS_SUBDIR, RUNS_SUBDIR

CARD_FILE = "REPRODUCE.md"
NOTEBOOK_DIR = "notebooks"  # the built-in notebooks, relative to the repository root
REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL = "python3"


def card_path(result_path: str | Path) -> Path:
    """`REPRODUCE.md` beside a `result.json`; `<name>.REPRODUCE.md` beside any other name."""
    result_path = Path(result_path)
    if result_path.name == "result.json":
        return result_path.with_name(CARD_FILE)
    return result_path.with_name(f"{result_path.stem}.{CARD_FILE}")


def family_notebook(family_name: str, output_root: str | Path) -> str:
    """The notebook that runs a family: `notebooks/<file>` for a built-in family (relative to the repository
    root), `<OUTPUT_DIR>/runs/notebooks/<file>` for a family file (`python -m helpers batch --model-file`)."""
    from .models.registry import get_family

    family = get_family(family_name)
    if family.source.startswith("helpers.models."):
        return f"{NOTEBOOK_DIR}/{family.notebook.file}"
    return str(Path(output_root) / OWN_NOTEBOOKS_SUBDIR / family.notebook.file)


def _literal(value) -> str:
    """How papermill's `-p` reads a value back: True/False/None and numbers."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"a notebook parameter must be a string, number, bool or None; got {value!r}")


def papermill_lines(parameters: dict, model_id: str) -> list[str]:
    """Shell lines that repeat a notebook run: make the folder for the executed notebook, then papermill with
    every recorded parameter (strings raw with `-r`, so "2" or "None" stay strings; the rest with `-p`)."""
    values = parameters["values"]
    runs = Path(values["OUTPUT_DIR"]) / RUNS_SUBDIR
    executed = runs / f"{model_id}.reproduce.ipynb"
    pairs = []
    for name, value in values.items():
        flag, text = ("-r", value) if isinstance(value, str) else ("-p", _literal(value))
        pairs.append(f"{flag} {name} {shlex.quote(text)}")
    head = f"papermill {shlex.quote(parameters['notebook'])} {shlex.quote(str(executed))} -k {KERNEL}"
    return [f"mkdir -p {shlex.quote(str(runs))}", " \\\n    ".join([head, *pairs])]


def rescore_line(result: dict, result_path: Path) -> str | None:
    """The `rescore` command that evaluates the same predictions file again (results written by `rescore`)."""
    predictions = (result.get("predictions") or {}).get("file")
    annotations = (result.get("annotations") or {}).get("dir")
    if not predictions or not annotations:
        return None
    args = ["python", "-m", "helpers", "rescore", "--annotations", annotations, "--predictions", predictions,
            "--protocol", str(result["conventions"]["protocol"])]
    bbox_root = (result.get("annotations") or {}).get("bbox_root_file")
    sources = result["conventions"].get("sources") or {}
    if result["kind"] == "root" and (sources.get("boxes") or {}).get("source") == "detector":
        detector = bbox_root or (sources.get("detector_file") or {}).get("file") or sources["boxes"].get("file")
        if detector:  # the boxes the root predictions were made on
            args += ["--detector-boxes", str(detector)]
    elif bbox_root:
        args += ["--bbox-root", bbox_root]
    if result.get("partial"):
        args.append("--allow-partial")
    args += ["--out", str(Path(result_path).resolve())]
    return " ".join(shlex.quote(a) for a in args)


def _source_revision() -> str | None:
    """The git commit of this checkout (with "+ local changes" when it has some); None outside a git clone."""
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if dirty else "")


# -------------------------------------------------------------------------------------------------- card
def _text(value) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows) -> list[str]:
    return ["| item | value |", "|---|---|", *(f"| {k} | {_text(v)} |" for k, v in rows), ""]


def _headline(result: dict) -> list[str]:
    headline = result["headline"]
    interval = (result.get("ci95") or {}).get("headline")
    text = (f"**{report.HEADLINE_LABELS[headline['metric']]} = {headline['value']:.2f} mm** "
            f"({report.setting_label(result)})")
    if interval:
        text += (f", 95 % interval [{interval[0]:.2f}, {interval[1]:.2f}] mm "
                 f"({(result.get('ci95') or {}).get('method', 'bootstrap')})")
    else:
        text += "; no interval recorded"
    metrics = result["metrics"]
    rows = [(report.METRIC_LABELS.get(k, k), f"{v['total']:.2f} mm (action mean "
             f"{v['action_mean']:.2f} mm)" if "action_mean" in v else f"{v['total']:.2f} mm") for k, v in metrics.items()]
    return ["## Headline", "", text + ".", "", *_table(rows)]


def _checkpoint(result: dict) -> list[str]:
    checkpoint = result.get("checkpoint")
    weights = result.get("weights") or {}
    if not checkpoint:
        return ["## Checkpoint", "", "Not recorded: this result was evaluated from a predictions file (`rescore`), "
                f"weights: {weights.get('kind', 'unknown')}.", ""]
    path = str(checkpoint.get("path") or "")
    rows = [("file", Path(path).name), ("path", path), ("sha256", checkpoint.get("sha256")),
            ("epoch", checkpoint.get("epoch")), ("format", checkpoint.get("format")),
            ("where it came from", checkpoint.get("source")),
            ("weights", f"{weights.get('kind', 'unknown')}" + (f" ({weights['note']})" if weights.get("note") else "")),
            ("key remaps", "; ".join(map(str, checkpoint.get("remaps") or [])) or "none")]
    return ["## Checkpoint", "", *_table(rows)]


def _data(result: dict) -> list[str]:
    facts = report.provenance(result)
    conv = result["conventions"]
    mode = {True: "GENERATED demo data (synthetic people, real camera calibration), not Human3.6M recordings",
            False: "real Human3.6M data", None: "not recorded"}[facts.generated_data]
    annotations = result.get("annotations") or {}
    rows = [("data", mode), ("annotations", annotations.get("dir")),
            ("split", f"Protocol {conv['protocol']}: test subjects {', '.join(f'S{s}' for s in conv['test_subjects'])}"
                      f", every {conv['frame_stride']}th frame"),
            ("boxes / roots", report.source_label(result) + (" (roots: the model's output)" if result["kind"] == "root"
                                                            else "")
                              + (f" ({annotations['bbox_root_file']})" if annotations.get("bbox_root_file") else "")),
            ("samples evaluated", f"{facts.samples} of {facts.expected}" + (" (PARTIAL)" if facts.partial else ""))]
    missing = result.get("missing")
    rows.append(("missing", f"{missing['count']} samples without a prediction (first image ids "
                            f"{missing['first_image_ids']})" if missing else "none"))
    skipped = result.get("skipped_images")
    if skipped:
        rows.append(("skipped images", f"{skipped['count']} (first: {', '.join(skipped['first_paths'])})"))
    if conv.get("sources"):
        rows.append(("box and root sources (recorded)", conv["sources"]))
    if conv.get("protocol_note"):
        rows.append(("protocol note", conv["protocol_note"]))
    return ["## Data", "", *_table(rows)]


def _settings(result: dict) -> list[str]:
    lines = ["## Settings", ""]
    settings = result.get("settings")
    lines += _table(settings.items()) if settings else ["None recorded.", ""]
    parameters = (result.get("parameters") or {}).get("values")
    if parameters:
        lines += ["Notebook parameters of the run (resolved where the default depends on the machine):", "",
                  *_table(parameters.items())]
    return lines


def _device(result: dict) -> list[str]:
    settings = result.get("settings") or {}
    rows = [(key, settings[key]) for key in ("device", "world_size", "precision", "batch_size", "batch_size_used",
                                             "cpu_threads", "decode") if key in settings]
    lines = ["## Device, precision and checks", "", *(_table(rows) if rows else ["Not recorded.", ""])]
    checks = {key: value for key, value in result.items() if key.endswith("_check")}
    if not checks:
        lines += ["No check was recorded.", ""]
    for key, value in checks.items():
        lines += [f"### `{key}`", ""]
        lines += _table(value.items()) if isinstance(value, dict) else [f"{_text(value)} (not run)", ""]
    return lines


def _software(result: dict) -> list[str]:
    from . import __version__

    environment = result.get("environment") or {}
    rows = [(key, environment[key]) for key in ("python", "platform", "torch", "torchvision", "numpy", "cuda_version",
                                                "cudnn_version", "kaggle", "kaggle_run_type", "cpu_count")
            if key in environment]
    rows += [(f"gpu {gpu.get('index')}", f"{gpu.get('name')}, {gpu.get('memory_gb')} GB, {gpu.get('capability')}")
             for gpu in environment.get("gpus") or []]
    rows += [("helpers (writing this card)", __version__), ("source revision", _source_revision() or "not a git clone")]
    return ["## Software", "", *_table(rows)]


def _repeat(result: dict, result_path: Path) -> list[str]:
    lines = ["## Repeat this run", ""]
    parameters = result.get("parameters")
    model_id = (result.get("model") or {}).get("model_id") or "model"
    if parameters:
        values = parameters["values"]
        lines += [f"From the repository root (this run's: `{REPO_ROOT}`), with the same software:", "", "```bash",
                  *papermill_lines(parameters, model_id), "```", "",
                  f"- It writes `{values['OUTPUT_DIR']}/{model_id}/` again (result.json, predictions.npz, this card); "
                  "give another `OUTPUT_DIR` to keep both. Finished inference shards in that folder's `shards/` that "
                  "match this run (same weights, settings and crops) are reused: delete it to recompute every "
                  "prediction."]
        if not parameters["notebook"].startswith(f"{NOTEBOOK_DIR}/"):
            lines.append(f"- `{parameters['notebook']}` is the notebook `python -m helpers batch --model-file "
                         f"{values.get('MODEL_FILE')} --out {values['OUTPUT_DIR']}` writes for this family file; "
                         "any model notebook runs it with these parameters.")
        checkpoint = result.get("checkpoint") or {}
        if values.get("DEMO") is True:
            made_again = "the generated data" + ("" if values.get("CHECKPOINT") else " and the random weights")
            lines.append(f"- Demo mode: {made_again} are made again from SEED {values.get('SEED')} under CACHE_DIR "
                         "when they are not there.")
        if values.get("CHECKPOINT") and checkpoint.get("sha256"):
            lines.append(f"- The checkpoint must be the same file: `sha256sum` must print `{checkpoint['sha256']}`.")
        if result.get("snapshot"):
            lines.append("- This result is one snapshot of a sweep: the command evaluates every snapshot CHECKPOINT "
                         "names again, this one included.")
    else:
        command = rescore_line(result, result_path)
        if command is None:
            return lines + ["This result records neither its notebook parameters nor its predictions file and "
                            "annotations, so no command can repeat it.", ""]
        lines += ["This result was evaluated from a predictions file; this evaluates the same file again:", "",
                  "```bash", command, "```"]
    return lines + [""]


def render_card(result: dict, result_path: str | Path) -> str:
    """REPRODUCE.md for `result` (a validated result.json dict) written at `result_path`."""
    result_path = Path(result_path)
    model = result.get("model") or {}
    name = model.get("model_id") or result_path.parent.name
    facts = report.provenance(result)
    lines = [f"# Reproducing `{name}`", "",
             f"Written with `{result_path.name}` (created {result['created_utc']}); every fact below is read from it.",
             ""]
    if facts.random_weights:
        lines += [f"> **{report.DEMO_MARKER}.** This run used random-initialised demo weights.", ""]
    if facts.generated_data:
        lines += ["> **Generated data.** This run evaluated the generated demo set, not Human3.6M.", ""]
    if facts.partial:
        lines += [f"> **Partial run:** {facts.samples} of {facts.expected} test samples.", ""]
    for section in (_headline(result), _checkpoint(result), _data(result), _settings(result), _device(result),
                    _software(result), _repeat(result, result_path)):
        lines += section
    return "\n".join(lines)


def write_card(result: dict, result_path: str | Path, text: str | None = None) -> Path:
    """Write the card of `result` beside `result_path` atomically (`text`: the card already rendered)."""
    return write_text(card_path(result_path), text if text is not None else render_card(result, result_path))
