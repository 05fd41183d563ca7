"""The notebooks, written from one template: every family's model notebook and the consolidation notebook.

A model notebook is a thin narrative of calls into `helpers.runner`; its parameters cell and its `prepare`
call are both written from `runner.RunParams`' fields, and its title, introduction and variant table come
from the family's file (`Family.notebook`). `notebooks/build_notebooks.py` writes the built-in ones into the
repository; `python -m helpers batch --model-file` writes the notebook of a family of your own next to its
outputs. Notebooks are written without outputs or execution counts (nbformat v4, kernel "python3").
"""
from __future__ import annotations

import dataclasses
import json
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
LINE_WIDTH = 116

SETUP = '''\
# Make `helpers` importable: pip-installed, or this repository (the folder above this notebook,
# a clone in /kaggle/working, or a copy attached as a Kaggle dataset).
import sys
from pathlib import Path

try:
    import helpers
except ImportError:
    _places = [Path.cwd(), *Path.cwd().parents]
    for _top in (Path("/kaggle/working"), Path("/kaggle/input")):
        _places += [p for pattern in ("*", "*/*", "*/*/*") for p in sorted(_top.glob(pattern))]
    _repo = next((p for p in _places if (p / "helpers" / "__init__.py").is_file()), None)
    if _repo is None:
        raise ImportError("the helpers package was not found: run the notebook from inside this repository "
                          "(or put the repository on PYTHONPATH), clone it into /kaggle/working, or attach it "
                          "as a Kaggle dataset")
    sys.path.insert(0, str(_repo))
    import helpers

%matplotlib inline
import pandas as pd
from helpers import runner, widgets
from helpers.display import number

pd.set_option("display.max_colwidth", 120)
pd.set_option("display.float_format", number)  # mm with 2 decimals; small p-values with 2 significant digits
print(f"helpers {helpers.__version__} from {Path(helpers.__file__).parent}")'''



def _literal(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def parameters_cell(family) -> str:
    """The papermill `parameters` cell: one UPPERCASE variable per RunParams field, with its comment."""
    from .runner import RunParams

    root = all(spec.kind == "root" for spec in family.models)
    own = {"model": family.name, "variant": family.notebook.default_variant, "flip_test": not root}
    words = {"variants": " | ".join(family.variants()),
             "flip_note": " (RootNet's official test has none: ignored)" if root else ""}
    lines = ["# Parameters (papermill overrides this cell; helpers/runner.py RunParams documents each one)"]
    for f in dataclasses.fields(RunParams):
        value = own.get(f.name, f.default)
        lines.append(f"{f.name.upper()} = {_literal(value)}  # {f.metadata['help'].format(**words)}")
    return "\n".join(lines)


def prepare_cell() -> str:
    """`run = runner.prepare(runner.RunParams(model=MODEL, ...))` with every RunParams field."""
    from .runner import RunParams

    arguments = ", ".join(f"{f.name}={f.name.upper()}" for f in dataclasses.fields(RunParams))
    body = textwrap.fill(arguments + "))", width=LINE_WIDTH, initial_indent="    ", subsequent_indent="    ",
                         break_on_hyphens=False, break_long_words=False)
    return "run = runner.prepare(runner.RunParams(\n" + body


def _variant_table(family) -> str:
    specs = family.models
    lines = ["| variant | model id | input (H×W) | heatmap × depth | params | P2 MPJPE (paper) | P1 PA (paper) |",
             "|---|---|---|---|---|---|---|"]
    for s in specs:
        fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
        params = "–" if s.num_params is None else f"{s.num_params / 1e6:.2f} M"
        lines.append(f"| {s.variant} | `{s.model_id}` | {s.input_shape[0]}×{s.input_shape[1]} | "
                     f"{s.output_shape[0]}×{s.output_shape[1]} × {s.depth_dim} | {params} | "
                     f"{fmt(s.paper.p2_mpjpe)} | {fmt(s.paper.p1_pa_mpjpe)} |")
    return "\n".join(lines)


def model_notebook(family) -> nbformat.NotebookNode:
    """The notebook of a `registry.Family`: its own title, introduction and variant table, the common cells."""
    text = family.notebook
    root = all(spec.kind == "root" for spec in family.models)
    md, code = new_markdown_cell, new_code_cell
    parameters = code(parameters_cell(family))
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        md(f"# {text.title}\n\n{text.intro}\n\n{_variant_table(family)}\n\n"
           "Every step below is one call into `helpers.runner`. Change the parameters cell (or pass them with "
           "papermill, see `python -m helpers batch`) and run all cells. With no real data under the input roots "
           "the notebook runs on a **generated** demo set (synthetic people in the Human3.6M format), with **random "
           "demo weights** unless CHECKPOINT names your own; every table and file says which data and which "
           "weights it used."),
        parameters,
        code(SETUP),
        md("## Environment\nPython, torch, CUDA and every GPU with its compute capability. A GPU this torch build "
           "has no kernels for (e.g. the P100, sm_60) is flagged here, before anything runs."),
        code("runner.environment_table()"),
        md("## Check the configuration\n`prepare` checks everything before inference and stops with a message that "
           "says what to change: the model and variant, the data root (and what was searched), the test images "
           "(how many are missing, the first paths, and the skip option), the bbox_root file and the checkpoint "
           "(found, downloaded or demo; then loaded strictly)."),
        code(prepare_cell()),
        md("## Data\nWhere the annotations and images were found and which test samples this run covers."),
        code("run.data_summary()"),
        md("## Checkpoint\nWhat was loaded: file, format, sha256, epoch, key remaps and parameter counts."),
        code("run.checkpoint_summary()"),
        md("## Inference\nThe official uint8 crops are decoded and cropped once per crop rule and cached, so later "
           "models reuse them; where OpenCV 4.x is installed, 8 of them are compared with its official crop "
           "(`crop_check`). On a GPU, 8 crops first go through the model on the GPU and on the CPU, both in strict "
           "fp32 (`device_check`; DEVICE_CHECK). Then batched, " + ("" if root else "flip-tested, ") + "strict fp32 "
           "inference (TF32 off; PRECISION tf32/fp16/bf16 is checked against fp32 first and recorded), resumable: "
           "finished shards are reused when the same run is repeated. A failed check prints a WARNING here and is "
           "marked in the report. Writes `predictions.npz`."),
        code("run.infer()"),
        md("## Evaluation\n" + ("MRPE against the ground-truth Pelvis, per action (mm)." if root else
                                "Per-action errors (mm): MPJPE, PA-MPJPE with rigid and with similarity alignment, and "
                                "the official protocol-1 variant fitted on 18 joints. `total` is the official frame "
                                "mean, `action mean` the unweighted mean of the actions.")),
        code("run.evaluate()"),
    ]
    if not root:
        cells.append(code("run.per_joint_table()"))
    cells += [
        md("## Save\n`result.json` (validated against the schema), per-action/per-joint CSV and PNG"
           + (", and the RootNet-format bbox_root file for the other notebooks." if root else ".")),
        code("result_file = run.save()"),
        md("## Paper comparison\nMeasured minus published, graded: |Δ| < 1 mm excellent, < 2 very good, < 5 "
           "acceptable, otherwise investigate. A published number is used only for the setting it was published "
           "in: ground-truth boxes and roots, or detector boxes with RootNet roots; any other box and root "
           "source gets no paper value, and the grade says why."),
        code("run.paper_comparison()"),
    ]
    if root:
        cells += [
            md("## RootNet reproduction check\nWith `USE_GT_INFO = False` and `DETECTOR_BOXES` set to a bbox_root file "
               "(the released RootNet output, for instance), RootNet runs on that file's boxes, and its roots are "
               "compared with the file's, image by image (mm). On the released file's boxes with the released "
               "checkpoint of the same protocol this reproduces the authors' run: the two should agree closely."),
            code("run.root_reproduction()"),
        ]
    cells += [
        md("## Plots"),
        code("run.plots()"),
        md("## Qualitative samples\nFrom the best to the worst sample: the crop with the prediction"
           + (" (the predicted root)." if root else " in 2D, and the 3D prediction (colour) next to the ground "
              "truth (dashed).")),
        code("run.qualitative_samples()"),
        md("## Files written"),
        code("run.files_table()"),
        md("## Interactive controls (optional)\nIn an interactive session: pick another model or variant and press "
           "Run. A batch run skips this cell's widgets."),
        code("controls = widgets.offer_controls(run.params)"),
    ]
    return _notebook(cells)


CONSOLIDATE_PARAMETERS = '''\
# Parameters (papermill overrides this cell)
RESULTS_DIR = None  # folder holding <model_id>/result.json; None: the default output folder
OUT_DIR = None  # where the report goes; None: RESULTS_DIR/report
ACTION_ORDER = "paper"  # per-action table columns: "paper" (Dir., Disc., Eat, Greet, Phone, Photo, ...) or "official"
AVERAGE = "total"  # Avg. column: "total" (official: mean over samples x joints) or "action_mean"'''

CONSOLIDATE = '''\
from helpers import environment
from helpers.consolidate import consolidate
from helpers.tables import TableOptions

results_dir = Path(RESULTS_DIR) if RESULTS_DIR else environment.default_output_dir()
consolidated = consolidate(results_dir, OUT_DIR, TableOptions(action_order=ACTION_ORDER, average=AVERAGE))
for problem in consolidated.problems:
    print(f"problem: {problem}")
if consolidated.banner:
    print(f"Some results carry: {consolidated.banner} (marked in every table).")
consolidated.leaderboard'''

SHOW_TABLES = '''\
from IPython.display import Markdown, display

from helpers.tables import markdown_document

for table in consolidated.tables:
    display(Markdown(markdown_document(table)))
print(f"LaTeX: {consolidated.files[\'tables_tex\']} (pdflatex compiles it as is); "
      f"BibTeX: {consolidated.files[\'references\']}")'''

SHOW_PLOTS = '''\
from IPython.display import Image, display

for key in ("headline_png", "cost_png", "heatmap_png", "pairwise_png", "snapshots_png"):
    if key in consolidated.files:
        display(Image(filename=str(consolidated.files[key])))'''


def consolidate_notebook() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    parameters = code(CONSOLIDATE_PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    setup = SETUP.replace("from helpers import runner, widgets\n", "")
    return _notebook([
        md("# Leaderboard: every model result in one report\n\nReads every `result.json` under the results folder "
           "(what the model notebooks and `python -m helpers batch` write), validates it, and writes "
           "`REPORT.md`, `leaderboard.csv` (with each headline's 95 % interval), `pairwise.csv` (every two models "
           "of a group compared on the images both evaluated), `summary.json` and the plots. Numbers are ranked "
           "only within one group (kind, protocol, box and root source); results from random demo weights or "
           "generated data are marked."),
        parameters,
        code(setup),
        md("## Leaderboard"),
        code(CONSOLIDATE),
        md("## Per-action headline errors (mm)"),
        code("consolidated.per_action"),
        md("## Per-action tables for papers\nOne table per group and metric, in `report/tables/` as LaTeX (a booktabs "
           "tabular to `\\input`), Markdown and CSV, plus `tables.tex`, a standalone document that compiles with "
           "pdflatex, and `report/references.bib`. Columns in the papers' order (or the official one, `ACTION_ORDER`), "
           "one decimal; best value bold, second underlined among comparable rows; rows of random demo weights, "
           "generated data or partial runs are marked and never ranked."),
        code(SHOW_TABLES),
        md("## Paired comparisons\nDelta = a − b (mm) on the common images, with its 95 % interval from a bootstrap "
           "over recordings; `significant` when the interval excludes 0. The interval is the sampling uncertainty "
           "of the test set, not reproduction error."),
        code("consolidated.pairwise"),
        md("## Plots"),
        code(SHOW_PLOTS),
        md("## Files written"),
        code('print(f"report: {consolidated.files[\'report\']}")\n'
             'pd.DataFrame([(k, str(v)) for k, v in consolidated.files.items()], columns=["file", "path"])'
             '.set_index("file")'),
    ])


def _notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    })
    # Stable ids keep the generated files byte-identical from one generation to the next.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def build() -> dict[str, str]:
    """{file name: notebook JSON text} of every built-in family's notebook and the consolidation notebook."""
    from .models.registry import BUILTIN_FAMILY_MODULES, FAMILIES

    out = {FAMILIES[name].notebook.file: notebook_text(model_notebook(FAMILIES[name])) for name in BUILTIN_FAMILY_MODULES}
    out["consolidate.ipynb"] = notebook_text(consolidate_notebook())
    return out


