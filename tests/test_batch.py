"""papermill batch runs: the plan format, the default plan, and a batch where one run fails and the rest go on."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import batch, environment, runner
from helpers.models.registry import MODEL_REGISTRY

REPO = Path(__file__).resolve().parents[1]


def test_default_plan_covers_the_benchmark_with_rootnet_first():
    plan = batch.load_plan()
    ids = [r.run_id for r in plan.runs]
    assert ids[0] == "rootnet"
    assert set(ids) == {"rootnet", "convnextpose_XS", "convnextpose_S", "convnextpose_M", "convnextpose_L",
                        "posenet", "mobilehumanpose_lpski", "integral_r50"}
    for run in plan.runs:
        # every run names an existing notebook and the model its id says; defaults are merged in
        assert (REPO / "notebooks" / run.notebook).is_file()
        assert runner.resolve_model_id(run.parameters["MODEL"], run.parameters["VARIANT"]) == run.run_id
        assert run.run_id in MODEL_REGISTRY
        assert run.parameters["DEMO"] == "auto" and run.parameters["PROTOCOL"] == 2
    assert plan.demo_defaults["IMAGE_LIMIT"] > 0  # the README's demo command must stay quick on a CPU


@pytest.mark.parametrize("text, message", [
    ("runs: []", "non-empty 'runs'"),
    ("runs:\n  - parameters: {MODEL: posenet}", "needs at least a 'notebook'"),
    ("runs:\n  - {notebook: a.ipynb, id: x}\n  - {notebook: b.ipynb, id: x}", "'x' is used twice"),
    ("runs:\n  - {notebook: a.ipynb, params: {}}", "unknown key"),
    ("runs:\n  - {notebook: a.ipynb}\nextra: 1", "unknown top-level"),
    ("runs: [", "not valid YAML"),
    ("demo_defaults: [1]\nruns:\n  - {notebook: a.ipynb}", "'demo_defaults' must be a mapping"),
])
def test_malformed_plans_are_refused_with_the_reason(text, message):
    with pytest.raises(batch.PlanError, match=message):
        batch.parse_plan(text, "test.yaml")


def test_only_selects_runs_and_rejects_unknown_ids():
    plan = batch.load_plan()
    assert [r.run_id for r in batch.select_runs(plan, ["posenet", "rootnet"])] == ["rootnet", "posenet"]
    with pytest.raises(batch.PlanError, match="convnextpose_XXL.*known: rootnet"):
        batch.select_runs(plan, ["convnextpose_XXL"])


def test_cli_refuses_bad_arguments(capsys):
    assert batch.main(["--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert batch.main(["--image-limit", "0"]) == 2


@pytest.fixture
def batch_env(monkeypatch, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "demo-cache"  # shared with the runner and notebook tests
    runner.ensure_demo_data(cache)
    # batch.main changes os.environ for its kernels; monkeypatch restores it afterwards
    for key in ("H36M_BATCH", "PYTHONPATH", "MPLBACKEND"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    # No real data under the input roots, so the plan's demo_defaults apply (the kernels run DEMO True anyway)
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    return cache


def _write_plan(path: Path, cache: Path, runs: str) -> Path:
    path.write_text(f"defaults: {{DEMO: true, CACHE_DIR: '{cache}', BATCH_SIZE: 4, IMAGE_LIMIT: 100}}\n"
                    f"demo_defaults: {{IMAGE_LIMIT: 4}}\nruns:\n{runs}")
    return path


@pytest.mark.parametrize("runs, message", [
    ("  - {id: typo, notebook: posenet.ipynb, parameters: {MODEL: posenet, PROTOCL: 1}}\n",
     "'PROTOCL' is not a parameter of posenet.ipynb; did you mean 'PROTOCOL'?"),
    ("  - {id: missing, notebook: posenett.ipynb, parameters: {MODEL: posenet}}\n",
     "notebook .*posenett.ipynb does not exist; did you mean 'posenet.ipynb'?"),
])
def test_a_plan_with_an_unknown_parameter_or_notebook_exits_2_before_anything_runs(tmp_path, batch_env, capsys,
                                                                                   runs, message):
    import re

    plan = _write_plan(tmp_path / "plan.yaml", batch_env, runs)
    out = tmp_path / "out"
    assert batch.main(["--plan", str(plan), "--out", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # nothing ran, no summary points at a notebook that does not exist
    # the defaults and demo_defaults are checked the same way
    plan.write_text(f"defaults: {{CACHE_DIR: '{batch_env}'}}\ndemo_defaults: {{IMAGE_LIMT: 4}}\n"
                    "runs:\n  - {notebook: posenet.ipynb, parameters: {MODEL: posenet}}\n")
    assert batch.main(["--plan", str(plan), "--out", str(out)]) == 2
    assert "'IMAGE_LIMT' is not a parameter of posenet.ipynb; did you mean 'IMAGE_LIMIT'?" in capsys.readouterr().err


def test_batch_records_a_failing_run_and_goes_on(tmp_path, batch_env, capfd):
    plan = _write_plan(tmp_path / "plan.yaml", batch_env, (
        "  - {id: bad_variant, notebook: convnextpose.ipynb, parameters: {MODEL: convnextpose, VARIANT: XXL}}\n"
        "  - {id: convnextpose_XS, notebook: convnextpose.ipynb, parameters: {MODEL: convnextpose, VARIANT: XS}}\n"))
    out = tmp_path / "out"
    assert batch.main(["--plan", str(plan), "--out", str(out), "--image-limit", "4"]) == 0
    printed, errors = capfd.readouterr()
    assert f"report: {out / 'report' / 'REPORT.md'}" in printed
    # the header says what runs: the flag's IMAGE_LIMIT, on the generated data with random weights
    assert "2 run(s) without DATA_ROOT use the generated demo data (random demo weights unless the run sets " \
           "CHECKPOINT); their demo settings: {'IMAGE_LIMIT': 4}" in printed
    # the kernels' routine log lines stay out of the console, in a log beside each executed notebook
    assert "IPKernelApp" not in errors and (out / "runs" / "convnextpose_XS.log").is_file()

    summary = json.loads((out / "batch_summary.json").read_text())
    runs = {r["run_id"]: r for r in summary["runs"]}
    assert [r["run_id"] for r in summary["runs"]] == ["bad_variant", "convnextpose_XS"]
    bad = runs["bad_variant"]
    assert bad["status"] == "failed" and "unknown VARIANT 'XXL'" in bad["error"]
    assert bad["failed_cell"] is not None and bad["failed_cell"] <= 7
    assert Path(bad["output_notebook"]).is_file()  # papermill keeps the notebook up to the error
    ok = runs["convnextpose_XS"]
    assert ok["status"] == "ok" and ok["model_id"] == "convnextpose_XS"
    result = json.loads(Path(ok["result_json"]).read_text())
    assert result["num_samples"] == 4 and result["weights"]["kind"] == "random_demo"
    assert summary["consolidation"]["status"] == "ok" and summary["earlier_results"] == []
    assert (out / "report" / "REPORT.md").is_file() and (out / "runs" / "consolidate.ipynb").is_file()


def test_batch_exits_nonzero_only_when_every_run_failed(tmp_path, batch_env):
    plan = _write_plan(tmp_path / "plan.yaml", batch_env, (
        "  - {id: bad_model, notebook: posenet.ipynb, parameters: {MODEL: hrnet, VARIANT: w32}}\n"))
    out = tmp_path / "out"
    assert batch.main(["--plan", str(plan), "--out", str(out), "--image-limit", "3"]) == 1
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["runs"][0]["status"] == "failed" and "unknown MODEL 'hrnet'" in summary["runs"][0]["error"]
    assert summary["runs"][0]["parameters"]["IMAGE_LIMIT"] == 3  # --image-limit beats the plan
    assert summary["consolidation"] is None and not (out / "report").exists()


def test_batch_decodes_each_image_once_per_crop_rule_and_a_warm_rerun_decodes_none(tmp_path, batch_env):
    import shutil

    import numpy as np

    shutil.rmtree(batch_env / "crops", ignore_errors=True)  # start from a cold crop cache
    plan = _write_plan(tmp_path / "plan.yaml", batch_env, (
        "  - {id: convnextpose_XS, notebook: convnextpose.ipynb, parameters: {MODEL: convnextpose, VARIANT: XS}}\n"
        "  - {id: mobilehumanpose_lpski, notebook: mobilehumanpose.ipynb,"
        " parameters: {MODEL: mobilehumanpose, VARIANT: lpski}}\n"))

    def run(out):
        assert batch.main(["--plan", str(plan), "--out", str(out)]) == 0
        summary = json.loads((out / "batch_summary.json").read_text())
        return {r["run_id"]: json.loads(Path(r["result_json"]).read_text()) for r in summary["runs"]}

    cold = run(tmp_path / "cold")
    # The demo report shows the intervals and the paired comparison of the two models, with its plot.
    import pandas as pd

    leaderboard = pd.read_csv(tmp_path / "cold" / "report" / "leaderboard.csv")
    assert {"ci95_low", "ci95_high"} <= set(leaderboard.columns) and leaderboard["ci95_low"].notna().all()
    pairwise = pd.read_csv(tmp_path / "cold" / "report" / "pairwise.csv")
    assert len(pairwise) == 1 and pairwise["n_common"].iloc[0] == 4
    # "significant" between two random networks says nothing about the models: the note says so
    assert pairwise["note"].iloc[0].startswith("random demo weights: 'significant' only says")
    assert (tmp_path / "cold" / "report" / "pairwise.png").is_file()
    assert "Confidence intervals and paired comparisons" in (tmp_path / "cold" / "report" / "REPORT.md").read_text()
    # Both models crop 256x256 from the same boxes: one rule, so only the first run decodes.
    assert [cold[k]["timing"]["images_decoded"] for k in cold] == [4, 0]
    assert cold["convnextpose_XS"]["crop_cache"]["key"] == cold["mobilehumanpose_lpski"]["crop_cache"]["key"]
    assert cold["mobilehumanpose_lpski"]["crop_cache"]["hits"] == 4
    warm = run(tmp_path / "warm")
    assert [warm[k]["timing"]["images_decoded"] for k in warm] == [0, 0]
    for model_id in cold:
        assert cold[model_id]["settings"]["precision"] == "fp32"
        assert cold[model_id]["precision_check"]["used"] == "fp32"
        with np.load(tmp_path / "cold" / model_id / "predictions.npz") as a, \
                np.load(tmp_path / "warm" / model_id / "predictions.npz") as b:
            assert a["coords"].tobytes() == b["coords"].tobytes()
