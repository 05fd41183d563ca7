"""The notebooks: clean nbformat v4 files made by the generator, one papermill parameters cell, and every one
runs headless on the demo (tiny image limit); bad input stops in the first cells with a clear message."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

from helpers import runner
from helpers.result_schema import validate_result

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
MODEL_NOTEBOOKS = {  # notebook -> (variant run in the test, model id it writes)
    "convnextpose.ipynb": ("XS", "convnextpose_XS"),
    "rootnet.ipynb": ("R50", "rootnet"),
    "mobilehumanpose.ipynb": ("lpski", "mobilehumanpose_lpski"),
    "integral_pose.ipynb": ("R50", "integral_r50"),
    "posenet.ipynb": ("R50", "posenet"),
}
ALL_NOTEBOOKS = [*MODEL_NOTEBOOKS, "consolidate.ipynb"]
MODEL_PARAMETERS = ("MODEL", "VARIANT", "CHECKPOINT", "DATA_ROOT", "PROTOCOL", "USE_GT_INFO", "BBOX_ROOT", "DETECTOR_BOXES",
                    "FLIP_TEST", "BATCH_SIZE", "PRECISION", "DECODE", "DEVICE", "WORLD_SIZE", "IMAGE_LIMIT", "OUTPUT_DIR", "DEMO",
                    "SKIP_MISSING_IMAGES", "SEED")
PREPARE_CELL = 6  # index of `runner.prepare(...)` in the model notebooks, before papermill injects its cell
IMAGE_LIMIT = 8


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


# ------------------------------------------------------------------------------------------------ static
@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_papermill_reads_every_parameter_with_its_help(name):
    """papermill's own parser (`papermill --help-notebook`) understands each line of the parameters cell (a comment
    holding "=" defeats it)."""
    import dataclasses

    from papermill.translators import PythonTranslator

    parsed = PythonTranslator.inspect(_parameters_cells(_read(name))[0])
    assert [p.name for p in parsed] == [f.name.upper() for f in dataclasses.fields(runner.RunParams)]
    assert all(p.help for p in parsed)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_is_clean_valid_nbformat_with_one_parameters_cell(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    assert len(_parameters_cells(nb)) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} is committed with outputs"
    params = _parameters_cells(nb)[0]
    assigned = {t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign) for t in node.targets}
    expected = {"RESULTS_DIR", "OUT_DIR"} if name == "consolidate.ipynb" else set(MODEL_PARAMETERS)
    assert expected <= assigned, f"{name} lacks parameters {expected - assigned}"
    # Notebooks hold calls, not logic: every code cell after the setup cell is short.
    for cell in nb.cells[3:]:
        if cell.cell_type == "code":
            assert len(cell.source.splitlines()) <= 12, cell.source


def test_committed_notebooks_match_the_generator():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert sorted(built) == sorted(ALL_NOTEBOOKS)
    for name, text in built.items():
        committed = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert committed == text, f"{name} is stale: run python notebooks/build_notebooks.py"


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_model_notebook_defaults_name_a_registry_model(name):
    params = _parameters_cells(_read(name))[0]
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(params.source).body
              if isinstance(node, ast.Assign) for t in node.targets}
    spec_id = runner.resolve_model_id(values["MODEL"], values["VARIANT"])
    assert runner.RunParams(model=values["MODEL"], variant=values["VARIANT"]).model_id == spec_id
    assert "runner.prepare(" in _read(name).cells[PREPARE_CELL].source


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_parameters_cell_and_prepare_call_are_both_the_runparams_fields(name):
    """One source for each notebook parameter: RunParams' fields, in order, written into both cells."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(runner.RunParams)]
    nb = _read(name)
    params = _parameters_cells(nb)[0]
    assigned = [t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert assigned == [f.upper() for f in fields]
    call = next(node for node in ast.walk(ast.parse(nb.cells[PREPARE_CELL].source))
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "RunParams")
    assert [(k.arg, k.value.id) for k in call.keywords] == [(f, f.upper()) for f in fields]


# ----------------------------------------------------------------------------------------------- execute
@pytest.fixture(scope="module")
def kernel_env():
    # Headless: the widgets cell must not offer controls; the kernels import this checkout of helpers.
    old = {k: os.environ.get(k) for k in ("H36M_BATCH", "PYTHONPATH", "MPLBACKEND")}
    os.environ.update(H36M_BATCH="1", MPLBACKEND="Agg",
                      PYTHONPATH=os.pathsep.join(p for p in (str(REPO), old["PYTHONPATH"]) if p))
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "demo-cache"  # the same folder test_runner.py fills
    runner.ensure_demo_data(cache)
    return cache


def _execute(name: str, out_path: Path, parameters: dict):
    import papermill

    out_path.parent.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(str(NOTEBOOKS / name), str(out_path), parameters=parameters,
                                      cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, demo_cache, kernel_env) -> Path:
    """Every model notebook run once on the demo, into one results folder, then consolidate.ipynb."""
    out = tmp_path_factory.mktemp("notebook-runs")
    for name, (variant, _) in MODEL_NOTEBOOKS.items():
        _execute(name, out / "runs" / name, {"VARIANT": variant, "IMAGE_LIMIT": IMAGE_LIMIT, "BATCH_SIZE": 4,
                                             "OUTPUT_DIR": str(out), "CACHE_DIR": str(demo_cache), "DEMO": True})
    _execute("consolidate.ipynb", out / "runs" / "consolidate.ipynb",
             {"RESULTS_DIR": str(out), "OUT_DIR": str(out / "report")})
    return out


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_model_notebook_runs_headless_and_writes_a_valid_result(executed, name):
    model_id = MODEL_NOTEBOOKS[name][1]
    result = json.loads((executed / model_id / "result.json").read_text())
    validate_result(result)
    assert result["model"]["model_id"] == model_id
    assert result["weights"]["kind"] == "random_demo"
    assert result["num_samples"] == IMAGE_LIMIT and result["partial"] is True
    assert (executed / model_id / "predictions.npz").is_file()
    assert (executed / model_id / "REPRODUCE.md").is_file()
    assert (executed / model_id / "qualitative_samples.png").is_file()
    if model_id == "rootnet":
        assert (executed / "rootnet" / "bbox_root_human36m_output.json").is_file()
    nb = nbformat.read(executed / "runs" / name, as_version=4)
    text = "\n".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "RANDOM DEMO WEIGHTS" in text and "GENERATED DATA" in text
    assert "interactive controls skipped" in text
    # tables show mm with 2 decimals, and no cell ends with a stray value (the save cell's path)
    results = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "execute_result"]
    assert not [o for o in results if "PosixPath" in o["data"].get("text/plain", "")]
    evaluation = next(o["data"]["text/plain"] for c in nb.cells if c.cell_type == "code" and
                      c.source.startswith("run.evaluate()") for o in c.outputs if o.output_type == "execute_result")
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", evaluation)  # the table's, not "Human3.6M"
    assert numbers and all(len(n.split(".")[1]) == 2 for n in numbers), evaluation


def test_consolidate_notebook_writes_the_report(executed):
    report = executed / "report"
    for file in ("REPORT.md", "leaderboard.csv", "headline_bars.png", "accuracy_vs_cost.png",
                 "per_action_heatmap.png"):
        assert (report / file).is_file(), file
    text = (report / "REPORT.md").read_text()
    assert "random" in text.lower() and "demo" in text.lower()
    leaderboard = (report / "leaderboard.csv").read_text()
    for _, model_id in MODEL_NOTEBOOKS.values():
        assert model_id in leaderboard
    assert (report / "tables" / "tables.tex").is_file() and (report / "references.bib").is_file()
    assert "## Per-action tables for papers" in text


def test_reproduce_card_command_run_as_printed_repeats_the_predictions(executed, kernel_env):
    """REPRODUCE.md's papermill command, run as printed from the repository root, computes every prediction again
    (the finished shards are removed first, so nothing is reused) and writes the same predictions.npz."""
    import re
    import shutil
    import subprocess

    import numpy as np

    folder = executed / "convnextpose_XS"
    block = re.search(r"```bash\n(.*?)```", (folder / "REPRODUCE.md").read_text(), re.S).group(1)
    with np.load(folder / "predictions.npz") as npz:
        before = {key: npz[key] for key in npz.files}
    shutil.rmtree(folder / "shards")
    (folder / "predictions.npz").unlink()
    run = subprocess.run(["bash", "-e", "-c", block], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with np.load(folder / "predictions.npz") as npz:
        after = {key: npz[key] for key in npz.files}
    assert sorted(after) == sorted(before)
    for key, array in before.items():
        assert after[key].dtype == array.dtype and after[key].shape == array.shape, key
        assert after[key].tobytes() == array.tobytes(), key


def test_notebook_run_with_checkpoint_naming_an_official_file(tmp_path, demo_cache, kernel_env):
    """CHECKPOINT pointing at a file the official training code wrote (ConvNeXtPose's release format: a torch zip
    named .tar with a snapshot root, DataParallel state dict with _metadata, AdamW state) loads strictly in a
    headless notebook run, and the result records it."""
    from helpers.demo_checkpoints import official_payload, save_official
    from helpers.models.checkpoint import DEMO_MARKER_KEY

    payload = official_payload("convnextpose_XS")
    payload["epoch"] = 7
    payload.pop(DEMO_MARKER_KEY)  # a user's own training output, not a demo file
    checkpoint = tmp_path / "my_run" / "snapshot_7.pth.tar"
    checkpoint.parent.mkdir()
    save_official(payload, checkpoint, "zip", epoch=7)
    out = tmp_path / "out"
    _execute("convnextpose.ipynb", tmp_path / "run.ipynb", {
        "VARIANT": "XS", "CHECKPOINT": str(checkpoint), "DATA_ROOT": str(runner.ensure_demo_data(demo_cache)),
        "DEMO": False, "IMAGE_LIMIT": 4, "BATCH_SIZE": 4, "OUTPUT_DIR": str(out), "CACHE_DIR": str(demo_cache)})
    result = json.loads((out / "convnextpose_XS" / "result.json").read_text())
    validate_result(result)
    assert result["checkpoint"]["path"] == str(checkpoint) and result["checkpoint"]["format"] == "torch-zip"
    assert result["checkpoint"]["epoch"] == 7 and result["checkpoint"]["protocol"] is None
    assert result["weights"]["kind"] == "given" and result["num_samples"] == 4
    assert result["data"]["kind"] == "generated"  # DATA_ROOT holds the demo set: never reported as real


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("parameters, message", [
    ({"VARIANT": "XXL"}, "unknown VARIANT 'XXL' for MODEL 'convnextpose'; valid variants: XS, S, M, L"),
    ({"DATA_ROOT": "{tmp}/no_such_folder"}, "DATA_ROOT {tmp}/no_such_folder does not exist"),
    ({"CHECKPOINT": "{tmp}/missing/ConvNeXtPose_XS.tar", "DATA_ROOT": "{demo}"},
     "checkpoint path does not exist: {tmp}/missing/ConvNeXtPose_XS.tar"),
])
def test_bad_input_fails_in_the_first_cells_with_a_clear_message(parameters, message, tmp_path, demo_cache,
                                                                 kernel_env):
    from papermill.exceptions import PapermillExecutionError

    fill = {"tmp": str(tmp_path), "demo": str(runner.ensure_demo_data(demo_cache))}
    parameters = {k: v.format(**fill) for k, v in parameters.items()}
    out = tmp_path / "failed.ipynb"
    with pytest.raises(PapermillExecutionError) as info:
        _execute("convnextpose.ipynb", out, {"VARIANT": "XS", "CACHE_DIR": str(demo_cache),
                                             "OUTPUT_DIR": str(tmp_path / "out"), **parameters})
    assert message.format(**fill) in info.value.evalue
    assert info.value.cell_index <= PREPARE_CELL + 1  # papermill injects one parameters cell
    assert out.is_file()  # the failed notebook is kept, showing the error
    assert not (tmp_path / "out" / "convnextpose_XS" / "result.json").exists()
