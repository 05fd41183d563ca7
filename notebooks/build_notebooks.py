"""Write the notebooks of this folder from one template: `python notebooks/build_notebooks.py [--check]`.

The notebooks hold no logic, only calls into `helpers.runner`; generating them keeps the six files
consistent. They are written without outputs or execution counts (nbformat v4, kernel "python3") and
validated with `nbformat.validate`. `--check` exits 1 when a committed notebook differs from the template.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers.models.registry import MODEL_REGISTRY  # noqa: E402

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

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

pd.set_option("display.max_colwidth", 120)
print(f"helpers {helpers.__version__} from {Path(helpers.__file__).parent}")'''

PARAMETERS = '''\
# Parameters (papermill overrides this cell; helpers/runner.py RunParams documents each one)
MODEL = "{model}"  # model family of this notebook (or a registry model id)
VARIANT = "{variant}"  # {variants}
CHECKPOINT = None  # path, URL or Google Drive id; None: search the inputs, then the registry's download
DATA_ROOT = None  # folder holding the Human3.6M annotations and images; None: search the input roots
PROTOCOL = 2  # 2: train S1,5,6,7,8 / test S9,S11, MPJPE; 1: test S11, PA-MPJPE (rigid)
USE_GT_INFO = True  # ground-truth box and root depth (the published setting); False: use BBOX_ROOT
BBOX_ROOT = None  # RootNet-format bbox_root file (rootnet.ipynb writes one), used when USE_GT_INFO is False
FLIP_TEST = {flip}  # average with the horizontally flipped crop{flip_note}
BATCH_SIZE = None  # None: the model's default
PRECISION = "fp32"  # "fp32": the official setting; "fp16"/"bf16": faster, checked against fp32 first (recorded)
DECODE = "cpu"  # "cpu": exact JPEG decoding; "gpu": nvjpeg on CUDA, compared with the CPU decoder (recorded)
DEVICE = "auto"  # "auto" | "cpu" | "cuda"
WORLD_SIZE = None  # GPUs to use, one process each; None: every visible GPU
IMAGE_LIMIT = None  # run N test images spread evenly over the test set (a partial result); None: all
OUTPUT_DIR = None  # None: /kaggle/working/outputs on Kaggle, else <repo>/outputs; files go to OUTPUT_DIR/<model_id>/
DEMO = "auto"  # "auto": generated demo data and random weights when no real data is found; True: always; False: never
SKIP_MISSING_IMAGES = False  # True: run the images that exist and record the missing ones in result.json
SEED = 0  # demo data and any randomness
CACHE_DIR = None  # demo data, demo checkpoints, downloads, crops; None: /kaggle/temp/h36m_cache or <repo>/.cache'''

PREPARE = '''\
run = runner.prepare(runner.RunParams(
    model=MODEL, variant=VARIANT, checkpoint=CHECKPOINT, data_root=DATA_ROOT, protocol=PROTOCOL,
    use_gt_info=USE_GT_INFO, bbox_root=BBOX_ROOT, flip_test=FLIP_TEST, batch_size=BATCH_SIZE, precision=PRECISION,
    decode=DECODE, device=DEVICE, world_size=WORLD_SIZE, image_limit=IMAGE_LIMIT, output_dir=OUTPUT_DIR, demo=DEMO,
    skip_missing_images=SKIP_MISSING_IMAGES, seed=SEED, cache_dir=CACHE_DIR))'''

FAMILIES = {
    "convnextpose": dict(
        file="convnextpose.ipynb", title="ConvNeXtPose (IEEE Access 2023) on Human3.6M", default="L",
        intro=("ConvNeXtPose: a ConvNeXt backbone with BatchNorm and ReLU and a light three-layer head, predicting "
               "18 joints as a soft-argmax over a heatmap volume. Four released variants; the checkpoint files are "
               "PyTorch zip archives despite their `.tar` name, and some use legacy head key names (the loader "
               "accepts both).")),
    "rootnet": dict(
        file="rootnet.ipynb", title="RootNet (3DMPPE, ICCV 2019): root localisation on Human3.6M", default="R50",
        intro=("RootNet predicts the absolute camera-space position of the root joint (Pelvis) from a person crop "
               "and the depth prior k = sqrt(2000 mm x 2000 mm x fx x fy / box area). It is scored with MRPE (mean "
               "root position error; x, y, z mean absolute errors alongside). Its output, written here as a "
               "RootNet-format `bbox_root_human36m_output.json`, is what the pose notebooks accept as `BBOX_ROOT` "
               "(with `USE_GT_INFO = False`) to evaluate with detected boxes and roots.")),
    "mobilehumanpose": dict(
        file="mobilehumanpose.ipynb", title="MobileHumanPose (CVPRW 2021) on Human3.6M", default="lpski",
        intro=("MobileHumanPose: MobileNetV2-style inverted residuals with PReLU and a skip-concat decoder. "
               "**No official weights exist**: on real data, set `CHECKPOINT` to a file you trust (a run without one "
               "stops and says so); the embedded demo uses random-initialised weights and says so in every table. `lpski` is the current repository version (32x32x32 output); "
               "`lpski_2021` is the paper-era version (64x64x64) the published numbers describe.")),
    "integral": dict(
        file="integral_pose.ipynb", title="Integral Human Pose (ECCV 2018) on Human3.6M", default="R50",
        intro=("Integral Human Pose: a ResNet backbone with a deconvolution head, decoded by a soft-argmax (integral "
               "regression). It normalises its input with its own statistics (mean 123.675/116.28/103.53, std "
               "58.395/57.12/57.375 on 0-255), which the registry spec selects. The only released checkpoint is the "
               "ECCV'18 challenge ResNet-152 at 384x288 input, trained on a different split, so its numbers are not "
               "comparable with the paper's Protocol 1/2 figures.")),
    "posenet": dict(
        file="posenet.ipynb", title="PoseNet (3DMPPE, ICCV 2019) on Human3.6M", default="R50",
        intro=("3DMPPE PoseNet: ResNet-50 with three deconvolution layers, a 64x64x64 heatmap volume per joint and a "
               "soft-argmax. Published Protocol 2 MPJPE: 53.3 mm with ground-truth box and root, 54.4 mm with "
               "RootNet's "
               "detected box and root (run rootnet.ipynb, then set `USE_GT_INFO = False` and `BBOX_ROOT`).")),
}


def _variant_table(family: str) -> str:
    specs = [s for s in MODEL_REGISTRY.values() if s.family == family]
    lines = ["| variant | model id | input (H×W) | heatmap × depth | params | P2 MPJPE (paper) | P1 PA (paper) |",
             "|---|---|---|---|---|---|---|"]
    for s in specs:
        fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
        params = "–" if s.num_params is None else f"{s.num_params / 1e6:.2f} M"
        lines.append(f"| {s.variant} | `{s.model_id}` | {s.input_shape[0]}×{s.input_shape[1]} | "
                     f"{s.output_shape[0]}×{s.output_shape[1]} × {s.depth_dim} | {params} | "
                     f"{fmt(s.paper.p2_mpjpe)} | {fmt(s.paper.p1_pa_mpjpe)} |")
    return "\n".join(lines)


def model_notebook(family: str) -> nbformat.NotebookNode:
    info = FAMILIES[family]
    root = family == "rootnet"
    variants = [s.variant for s in MODEL_REGISTRY.values() if s.family == family]
    md, code = new_markdown_cell, new_code_cell
    parameters = code(PARAMETERS.format(
        model=family, variant=info["default"], variants=" | ".join(variants), flip=not root,
        flip_note=" (RootNet's official test has none: ignored)" if root else ""))
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        md(f"# {info['title']}\n\n{info['intro']}\n\n{_variant_table(family)}\n\n"
           "Every step below is one call into `helpers.runner`. Change the parameters cell (or pass them with "
           "papermill, see `python -m helpers.batch`) and run all cells. With no real data under the input roots "
           "the notebook runs on a generated demo set with **random demo weights**; its numbers are meaningless and "
           "every table says so."),
        parameters,
        code(SETUP),
        md("## Environment\nPython, torch, CUDA and every GPU with its compute capability. A GPU this torch build "
           "has no kernels for (e.g. the P100, sm_60) is flagged here, before anything runs."),
        code("runner.environment_table()"),
        md("## Check the configuration\n`prepare` checks everything before inference and stops with a message that "
           "says what to change: the model and variant, the data root (and what was searched), the test images "
           "(how many are missing, the first paths, and the skip option), the bbox_root file and the checkpoint "
           "(found, downloaded or demo; then loaded strictly)."),
        code(PREPARE),
        md("## Data\nWhere the annotations and images were found and which test samples this run covers."),
        code("run.data_summary()"),
        md("## Checkpoint\nWhat was loaded: file, format, sha256, epoch, key remaps and parameter counts."),
        code("run.checkpoint_summary()"),
        md("## Inference\nThe official uint8 crops are decoded and cropped once per crop rule and cached, so later "
           "models reuse them. Then batched, " + ("" if root else "flip-tested, ") + "fp32 inference (PRECISION "
           "fp16/bf16 is checked against fp32 first and recorded), resumable: finished shards are reused when the "
           "same run is repeated. Writes `predictions.npz`."),
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
        code("run.save()"),
        md("## Paper comparison\nMeasured minus published, graded: |Δ| < 1 mm excellent, < 2 very good, < 5 "
           "acceptable, otherwise investigate."),
        code("run.paper_comparison()"),
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
OUT_DIR = None  # where the report goes; None: RESULTS_DIR/report'''

CONSOLIDATE = '''\
from helpers import environment
from helpers.consolidate import consolidate

results_dir = Path(RESULTS_DIR) if RESULTS_DIR else environment.default_output_dir()
consolidated = consolidate(results_dir, OUT_DIR)
for problem in consolidated.problems:
    print(f"problem: {problem}")
if consolidated.any_random_demo:
    print("Some results come from RANDOM DEMO WEIGHTS: their numbers are meaningless (marked in every table).")
consolidated.leaderboard'''

SHOW_PLOTS = '''\
from IPython.display import Image, display

for key in ("headline_png", "cost_png", "heatmap_png"):
    if key in consolidated.files:
        display(Image(filename=str(consolidated.files[key])))'''


def consolidate_notebook() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    parameters = code(CONSOLIDATE_PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    setup = SETUP.replace("from helpers import runner, widgets\n", "")
    return _notebook([
        md("# Leaderboard: every model result in one report\n\nReads every `result.json` under the results folder "
           "(what the model notebooks and `python -m helpers.batch` write), validates it, and writes "
           "`REPORT.md`, `leaderboard.csv`, `summary.json` and the plots. Numbers are ranked only within one group "
           "(kind, protocol, box and root source); results from random demo weights are marked."),
        parameters,
        code(setup),
        md("## Leaderboard"),
        code(CONSOLIDATE),
        md("## Per-action headline errors (mm)"),
        code("consolidated.per_action"),
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


def build() -> dict[str, str]:
    """{file name: notebook JSON text} of every notebook."""
    out = {info["file"]: nbformat.writes(model_notebook(family)) + "\n" for family, info in FAMILIES.items()}
    out["consolidate.ipynb"] = nbformat.writes(consolidate_notebook()) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    notebooks = build()
    if "--check" in argv:
        stale = [name for name, text in notebooks.items()
                 if not (HERE / name).is_file() or (HERE / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{name} differs from the template; run python notebooks/build_notebooks.py")
        return 1 if stale else 0
    from helpers.atomic import write_text

    for name, text in notebooks.items():
        write_text(HERE / name, text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
